"""ISBN parsing: ISBN-13 is canonical, ISBN-10 is converted, everything else is refused."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from catalog.isbn import InvalidIsbn, normalize_isbn
from catalog.models import validate_isbn13


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9780306406157", "9780306406157"),
        ("978-0-306-40615-7", "9780306406157"),
        ("978 0 306 40615 7", "9780306406157"),
        (" 978-0306406157 ", "9780306406157"),
        ("979-10-90636-07-1", "9791090636071"),
        ("9791090636071", "9791090636071"),
    ],
)
def test_normalize_isbn_accepts_valid_isbn13(text: str, expected: str) -> None:
    assert normalize_isbn(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0306406152", "9780306406157"),
        ("0-306-40615-2", "9780306406157"),
        ("0 306 40615 2", "9780306406157"),
        ("99921-58-10-7", "9789992158104"),
        ("1-84356-028-3", "9781843560289"),
        # X stands for the check value 10, upper or lower case.
        ("0-8044-2957-X", "9780804429573"),
        ("080442957x", "9780804429573"),
    ],
)
def test_normalize_isbn_converts_isbn10_to_isbn13(text: str, expected: str) -> None:
    assert normalize_isbn(text) == expected


def test_normalize_isbn_is_idempotent() -> None:
    once = normalize_isbn("0-8044-2957-X")

    assert normalize_isbn(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "---",
        "9780306406158",  # ISBN-13 check digit off by one
        "9780306406150",
        "0306406153",  # ISBN-10 check digit off by one
        "0-8044-2957-1",
        "X306406152",  # X is only a check digit
        "03064061X2",
        "978030640615X",  # no X in ISBN-13
        "9770306406150",  # valid EAN-13 checksum, but not a book (977 is for serials)
        "1234567890123",
        "978030640615",  # 12 digits
        "97803064061577",  # 14 digits
        "030640615",  # 9 digits
        "03064061522",  # 11 digits
        "978-0-306-40615-7-1",
        "978_0_306_40615_7",
        "978.0.306.40615.7",
        "978\u20130\u2013306\u201340615\u20137",  # en dashes are not separators
        "ISBN9780306406157",
        "abcdefghij",
        "abcdefghijklm",
        "\x000306406152",
        "030640615\x00",
    ],
)
def test_normalize_isbn_rejects_invalid(text: str) -> None:
    with pytest.raises(InvalidIsbn):
        normalize_isbn(text)


@pytest.mark.parametrize(
    "text",
    [
        "\u00b2" * 10,  # superscript two: str.isdigit() is True but int() refuses it
        "\u00b2" * 13,
        "\u0660\u0663\u0660\u0666\u0664\u0660\u0666\u0661\u0665\u0662",  # Arabic-Indic 0306406152
        "\u0669\u0667\u0668\u0660\u0663\u0660\u0666\u0664\u0660\u0666\u0661\u0665\u0667",  # ... 9780306406157
        "\uff10\uff13\uff10\uff16\uff14\uff10\uff16\uff11\uff15\uff12",  # full-width 0306406152
    ],
)
def test_normalize_isbn_rejects_non_ascii_digits(text: str) -> None:
    with pytest.raises(InvalidIsbn):
        normalize_isbn(text)


def test_normalize_isbn_rejects_none() -> None:
    with pytest.raises(InvalidIsbn):
        normalize_isbn(None)  # type: ignore[arg-type]  # a wrong type on purpose


def test_normalize_isbn_accepts_an_integer() -> None:
    assert normalize_isbn(9780306406157) == "9780306406157"  # type: ignore[arg-type]  # a wrong type on purpose


def test_a_bad_isbn_is_caught_by_callers_that_know_only_value_error() -> None:
    with pytest.raises(ValueError, match="check digit"):
        normalize_isbn("9780306406158")


def test_validate_isbn13_accepts_canonical_form() -> None:
    validate_isbn13("9780306406157")


@pytest.mark.parametrize("value", ["0306406152", "978-0-306-40615-7", "9780306406158", ""])
def test_validate_isbn13_rejects_anything_but_canonical_isbn13(value: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_isbn13(value)

    assert excinfo.value.code == "isbn"
