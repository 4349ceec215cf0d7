"""Usernames that cannot pass for someone else's: a small implementation of Unicode TR39.

A new username is NFKC-normalised (fullwidth "ｒｅａｄｅｒ" is "reader"); may not contain "@" (the
token endpoint reads a login with "@" as an email address, so such a name could be shadowed by
someone's email); must be written in one script, TR39's "highly restrictive" level (one script, or
Latin with the Han-based sets that Japanese, Chinese and Korean are written in), so Cyrillic "а" in
"аdmin" is refused; and its confusable skeleton (TR39 section 4) must not be an existing user's:
"paypa1" and "paypal" share one, as do all-Cyrillic "ерох" and Latin "epox".

The data are Unicode's own files, unmodified, in accounts/unicode/: confusables.txt (security
data 13.0.0) and Scripts.txt, ScriptExtensions.txt, PropertyValueAliases.txt (UCD 15.0.0). To
update them, replace the files and recompute User.username_skeleton (migration 0004 shows how).
No package from PyPI fits: confusable-homoglyphs (django-registration's choice) keeps the pairs
without saying which side is the prototype, so it cannot compute a skeleton, and ICU's
SpoofChecker comes only with PyICU, which is built against a system ICU.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from django.core.exceptions import ValidationError

DATA = Path(__file__).resolve().parent / "unicode"
MIN_LENGTH, MAX_LENGTH = 3, 150  # after normalisation; the column holds 150
ALLOWED = re.compile(r"[\w.+-]+")  # \w: letters and digits of any script, and _

COMMON = frozenset({"Common", "Inherited"})  # digits, punctuation, combining marks: go with any script
# TR39 5.1: Han, Hiragana, Katakana, Hangul and Bopomofo also stand for the writing systems using them.
JAPANESE, KOREAN, CHINESE = "Japanese", "Korean", "Han with Bopomofo"
WRITING_SYSTEMS = frozenset({JAPANESE, KOREAN, CHINESE})


def _records(name: str) -> Iterator[list[str]]:
    """Yield the semicolon-separated fields of each data line of a Unicode data file."""
    with open(DATA / name, encoding="utf-8-sig") as f:
        for line in f:
            data = line.split("#", 1)[0].strip()
            if data:
                yield [field.strip() for field in data.split(";")]


def _code_points(field: str) -> tuple[int, int]:
    first, _, last = field.partition("..")
    return int(first, 16), int(last or first, 16)


@functools.cache
def _script_data() -> tuple[list[int], list[tuple[int, frozenset[str]]], dict[int, frozenset[str]]]:
    """Return range starts, (range end, scripts) and the per-code-point Script_Extensions."""
    long_names = {fields[1]: fields[2] for fields in _records("PropertyValueAliases.txt") if fields[0] == "sc"}
    ranges = sorted((*_code_points(cps), script) for cps, script in _records("Scripts.txt"))
    starts = [start for start, _, _ in ranges]
    ends = [(end, frozenset({script})) for _, end, script in ranges]
    extensions: dict[int, frozenset[str]] = {}
    for cps, codes in _records("ScriptExtensions.txt"):
        first, last = _code_points(cps)
        scripts = frozenset(long_names[code] for code in codes.split())
        extensions.update(dict.fromkeys(range(first, last + 1), scripts))
    return starts, ends, extensions


def scripts_of(char: str) -> frozenset[str]:
    """Return the scripts a character is used in (its Script_Extensions), e.g. {"Latin"}."""
    starts, ends, extensions = _script_data()
    cp = ord(char)
    if cp in extensions:
        return extensions[cp]
    index = bisect.bisect_right(starts, cp) - 1
    if index >= 0 and cp <= ends[index][0]:
        return ends[index][1]
    return frozenset({"Unknown"})


def _augmented(scripts: frozenset[str]) -> frozenset[str]:
    extra: set[str] = set()
    if "Han" in scripts:
        extra |= WRITING_SYSTEMS
    if scripts & {"Hiragana", "Katakana"}:
        extra.add(JAPANESE)
    if "Hangul" in scripts:
        extra.add(KOREAN)
    if "Bopomofo" in scripts:
        extra.add(CHINESE)
    return scripts | extra


def _resolved(chars: str) -> frozenset[str] | None:
    """Return the scripts every character shares (TR39's resolved script set); None means any script."""
    resolved: frozenset[str] | None = None
    for char in chars:
        scripts = scripts_of(char)
        if scripts <= COMMON:
            continue
        scripts = _augmented(scripts)
        resolved = scripts if resolved is None else resolved & scripts
    return resolved


def mixed_scripts(name: str) -> list[str]:
    """Return the scripts a name mixes (sorted), or [] if it is highly restrictive in TR39's terms."""
    resolved = _resolved(name)
    if resolved is None or resolved:
        return []  # one script
    # Latin beside one CJK writing system (Latin + Han + Kana, + Bopomofo, or + Hangul) is allowed.
    rest = _resolved("".join(char for char in name if "Latin" not in scripts_of(char)))
    if rest is not None and rest & WRITING_SYSTEMS:
        return []
    return sorted({script for char in name for script in scripts_of(char)} - COMMON)


@functools.cache
def _prototypes() -> dict[int, str]:
    """Return confusables.txt as a str.translate table: each source character to its prototype."""
    return {
        int(source, 16): "".join(chr(int(cp, 16)) for cp in target.split())
        for source, target, *_ in _records("confusables.txt")
    }


def skeleton(name: str) -> str:
    """Return the TR39 skeleton of a name: two names that look alike have the same one."""
    decomposed = unicodedata.normalize("NFD", name)
    return unicodedata.normalize("NFD", decomposed.translate(_prototypes()))


def username_clean(value: str) -> str:
    """Return the username in NFKC form, or raise ValidationError saying what is wrong with it."""
    name = unicodedata.normalize("NFKC", value)
    if "@" in name:
        raise ValidationError(
            'A username cannot contain "@": a sign-in with "@" is read as an email address.', code="at_sign"
        )
    if not ALLOWED.fullmatch(name):
        raise ValidationError("Use only letters, digits and the characters . + - _", code="invalid")
    if len(name) < MIN_LENGTH:
        raise ValidationError(f"Use at least {MIN_LENGTH} characters.", code="min_length")
    if len(name) > MAX_LENGTH:
        raise ValidationError(f"Use at most {MAX_LENGTH} characters.", code="max_length")
    mixed = mixed_scripts(name)
    if mixed:
        raise ValidationError(
            f"A username must be written in one script; this one mixes {', '.join(mixed)}.", code="mixed_script"
        )
    return name


def username_validate(value: str, *, exclude_pk: int | None = None) -> str:
    """Return the cleaned username, or raise ValidationError if it is malformed or looks like another user's."""
    from accounts.selectors import user_lookalike_exists

    name = username_clean(value)
    if user_lookalike_exists(username=name, exclude_pk=exclude_pk):
        raise ValidationError("This username looks too much like an existing one; choose another.", code="confusable")
    return name
