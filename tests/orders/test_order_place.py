"""Placing orders: all-or-nothing stock, unknown and duplicate books, idempotent retries."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.http import HttpResponse
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.exceptions import InsufficientStock, OrderTotalTooLarge, UnknownBooks
from orders.models import MAX_ORDER_TOTAL, Order, OrderLine
from orders.services import LineRequest, order_place
from tests.conftest import assert_problem, client_for

ORDERS = "/api/orders"


@pytest.fixture(autouse=True, params=["sql", "orm"])
def _statements(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test here with PostgreSQL's written-out statements and with the ORM's (other databases)."""
    if request.param == "orm":
        monkeypatch.setattr("orders.statements.use_sql", lambda: False)


def _stock(book: Book) -> int:
    book.refresh_from_db()
    return book.stock


def _post(client: APIClient, lines: list[dict], key: str | None = None) -> HttpResponse:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(ORDERS, {"lines": lines}, format="json", **headers)


# --- placing ---------------------------------------------------------------------------------


def test_order_place_decrements_stock_and_records_prices(
    customer: User, customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    first = make_book(stock=5, price="12.50")
    second = make_book(stock=3, price="7.25")

    response = _post(customer_client, [{"book_id": first.pk, "quantity": 2}, {"book_id": second.pk, "quantity": 3}])

    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == f"/api/orders/{body['id']}"
    assert "Idempotent-Replayed" not in response
    assert body["user_id"] == customer.pk
    assert body["status"] == "placed"
    assert body["cancelled_at"] is None
    assert Decimal(body["total"]) == Decimal("46.75")
    assert sorted((line["book_id"], line["quantity"], line["unit_price"]) for line in body["lines"]) == sorted(
        [(first.pk, 2, "12.50"), (second.pk, 3, "7.25")]
    )
    assert _stock(first) == 3
    assert _stock(second) == 0


def test_order_place_keeps_price_history_when_catalogue_changes(customer: User, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=5, price="10.00")
    result = order_place(user=customer, lines=[LineRequest(book_id=book.pk, quantity=1)])

    Book.objects.filter(pk=book.pk).update(price=Decimal("99.00"))

    line = OrderLine.objects.get(order=result.order)
    assert line.unit_price == Decimal("10.00")
    assert result.order.total == Decimal("10.00")
    assert result.replayed is False


def test_order_place_can_sell_the_last_copy(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=2)

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 2}])

    assert response.status_code == 201
    assert _stock(book) == 0


def test_order_place_rejects_when_stock_short(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    plenty = make_book(stock=10)
    short = make_book(stock=1)
    empty = make_book(stock=0)

    response = _post(
        customer_client,
        [
            {"book_id": plenty.pk, "quantity": 4},
            {"book_id": short.pk, "quantity": 2},
            {"book_id": empty.pk, "quantity": 1},
        ],
    )

    body = assert_problem(response, 409)
    assert body["type"].endswith("/insufficient-stock")
    assert sorted(body["short_lines"], key=lambda line: line["book_id"]) == sorted(
        [
            {"book_id": short.pk, "requested": 2, "available": 1},
            {"book_id": empty.pk, "requested": 1, "available": 0},
        ],
        key=lambda line: line["book_id"],
    )
    # All or nothing: the line that could be filled was not.
    assert _stock(plenty) == 10
    assert _stock(short) == 1
    assert _stock(empty) == 0
    assert Order.objects.count() == 0
    assert OrderLine.objects.count() == 0


def test_order_place_short_line_rolls_back_whole_order_in_service(
    customer: User, make_book: Callable[..., Book]
) -> None:
    books = [make_book(stock=5), make_book(stock=5), make_book(stock=1)]
    lines = [LineRequest(book_id=books[0].pk, quantity=5), LineRequest(book_id=books[1].pk, quantity=1)]
    lines.append(LineRequest(book_id=books[2].pk, quantity=3))

    with pytest.raises(InsufficientStock) as excinfo:
        order_place(user=customer, lines=lines)

    assert excinfo.value.lines == [{"book_id": books[2].pk, "requested": 3, "available": 1}]
    assert [_stock(book) for book in books] == [5, 5, 1]
    assert not Order.objects.exists()
    assert not OrderLine.objects.exists()


def test_order_place_rejects_unknown_books_naming_them(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    missing = [book.pk + 1000, book.pk + 999]

    response = _post(
        customer_client,
        [
            {"book_id": book.pk, "quantity": 1},
            {"book_id": missing[0], "quantity": 1},
            {"book_id": missing[1], "quantity": 1},
        ],
    )

    body = assert_problem(response, 400)
    assert body["type"].endswith("/unknown-books")
    assert body["book_ids"] == sorted(missing)
    assert _stock(book) == 5
    assert Order.objects.count() == 0
    assert OrderLine.objects.count() == 0


def test_order_place_service_raises_unknown_books(customer: User) -> None:
    with pytest.raises(UnknownBooks):
        order_place(user=customer, lines=[LineRequest(book_id=10**9, quantity=1)])

    assert not Order.objects.exists()


def test_order_place_rejects_duplicate_book_lines(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=5)

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 1}, {"book_id": book.pk, "quantity": 2}])

    body = assert_problem(response, 400)
    assert [(error["field"], error["code"]) for error in body["errors"]] == [("lines", "duplicate_book")]
    assert _stock(book) == 5
    assert Order.objects.count() == 0


# --- totals one order cannot hold ------------------------------------------------------------

# The dearest price the catalogue accepts (numeric(10,2)); 101 copies of it pass the 12-digit total.
DEAREST = "99999999.99"


def _nothing_written(*books: tuple[Book, int]) -> None:
    assert not Order.objects.exists()
    assert not OrderLine.objects.exists()
    assert [_stock(book) for book, _ in books] == [stock for _, stock in books]


def test_order_place_rejects_a_line_that_alone_totals_too_much_naming_it(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    cheap = make_book(stock=5)
    dear = make_book(stock=5000, price=DEAREST)

    response = _post(customer_client, [{"book_id": cheap.pk, "quantity": 1}, {"book_id": dear.pk, "quantity": 1000}])

    body = assert_problem(response, 422)
    assert body["type"].endswith("/order-total-too-large")
    assert body["max_total"] == str(MAX_ORDER_TOTAL) == "9999999999.99"
    assert [(error["field"], error["code"]) for error in body["errors"]] == [("lines[1].quantity", "max_total")]
    assert "99999999990.00" in body["errors"][0]["message"]
    _nothing_written((cheap, 5), (dear, 5000))


def test_order_place_rejects_lines_that_together_total_too_much_naming_the_lines(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    first, second = make_book(stock=100, price=DEAREST), make_book(stock=100, price=DEAREST)

    # 60 copies of each come to 5,999,999,999.40: each line fits, the two together do not.
    response = _post(customer_client, [{"book_id": first.pk, "quantity": 60}, {"book_id": second.pk, "quantity": 60}])

    body = assert_problem(response, 422)
    assert [(error["field"], error["code"]) for error in body["errors"]] == [("lines", "max_total")]
    assert "11999999998.80" in body["errors"][0]["message"]
    _nothing_written((first, 100), (second, 100))


def test_order_place_refuses_the_largest_request_naming_every_line(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    """The request bounds (100 lines, 1000 copies a line) still reach the total limit; it is checked too."""
    books = [make_book(stock=1000, price=DEAREST) for _ in range(100)]

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 1000} for book in books])

    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == [f"lines[{i}].quantity" for i in range(100)]
    assert not Order.objects.exists()


def test_order_place_takes_a_total_of_exactly_the_limit_and_refuses_a_cent_more(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    dear = make_book(stock=200, price=DEAREST)
    cheap, cent_dearer = make_book(stock=1, price="0.99"), make_book(stock=1, price="1.00")

    # 100 x 99,999,999.99 = 9,999,999,999.00: plus 0.99 is the limit exactly, plus 1.00 a cent over.
    taken = _post(
        client_for(make_user()), [{"book_id": dear.pk, "quantity": 100}, {"book_id": cheap.pk, "quantity": 1}]
    )
    refused = _post(
        client_for(make_user()), [{"book_id": dear.pk, "quantity": 100}, {"book_id": cent_dearer.pk, "quantity": 1}]
    )

    assert taken.status_code == 201, taken.content
    assert taken.json()["total"] == "9999999999.99"
    assert Order.objects.get().total == MAX_ORDER_TOTAL
    body = assert_problem(refused, 422)
    assert [error["field"] for error in body["errors"]] == ["lines"]
    assert (_stock(dear), _stock(cheap), _stock(cent_dearer)) == (100, 0, 1)
    assert Order.objects.count() == 1


def test_order_place_too_large_total_is_not_remembered_for_the_idempotency_key(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=1000, price=DEAREST)

    for _ in range(2):
        assert_problem(_post(customer_client, [{"book_id": book.pk, "quantity": 101}], key="too-much"), 422)
    response = _post(customer_client, [{"book_id": book.pk, "quantity": 100}], key="too-much")

    assert response.status_code == 201, response.content
    assert _stock(book) == 900


def test_order_place_service_raises_order_total_too_large(customer: User, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=200, price=DEAREST)

    with pytest.raises(OrderTotalTooLarge) as excinfo:
        order_place(user=customer, lines=[LineRequest(book_id=book.pk, quantity=101)])

    assert [error["field"] for error in excinfo.value.errors] == ["lines[0].quantity"]
    _nothing_written((book, 200))


# --- idempotency ------------------------------------------------------------------------------


def test_order_place_replays_same_key_and_body(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=5)
    lines = [{"book_id": book.pk, "quantity": 2}]

    first = _post(customer_client, lines, key="order-123")
    second = _post(customer_client, lines, key="order-123")

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second["Location"] == first["Location"]
    assert _stock(book) == 3
    assert Order.objects.count() == 1


def test_order_place_replay_ignores_line_order(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    first_book, second_book = make_book(stock=5), make_book(stock=5)
    lines = [{"book_id": first_book.pk, "quantity": 1}, {"book_id": second_book.pk, "quantity": 2}]

    first = _post(customer_client, lines, key="k")
    second = _post(customer_client, list(reversed(lines)), key="k")

    assert second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert (_stock(first_book), _stock(second_book)) == (4, 3)


def test_order_place_rejects_key_reused_with_different_body(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    assert _post(customer_client, [{"book_id": book.pk, "quantity": 1}], key="k").status_code == 201

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 2}], key="k")

    body = assert_problem(response, 422)
    assert body["type"].endswith("/idempotency-key-reused")
    assert _stock(book) == 4
    assert Order.objects.count() == 1


def test_order_place_key_is_scoped_to_the_user(make_user: Callable[..., User], make_book: Callable[..., Book]) -> None:
    alice, bob = make_user(), make_user()
    book = make_book(stock=5)
    lines = [{"book_id": book.pk, "quantity": 1}]

    alices = _post(client_for(alice), lines, key="shared-key")
    bobs = _post(client_for(bob), lines, key="shared-key")

    assert alices.status_code == bobs.status_code == 201
    assert "Idempotent-Replayed" not in bobs
    assert alices.json()["id"] != bobs.json()["id"]
    assert bobs.json()["user_id"] == bob.pk
    assert _stock(book) == 3
    # A different body under the same key is fine for another user too.
    carols = _post(client_for(make_user()), [{"book_id": book.pk, "quantity": 2}], key="shared-key")
    assert carols.status_code == 201
    assert _stock(book) == 1


def test_order_place_without_key_is_not_deduplicated(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    lines = [{"book_id": book.pk, "quantity": 1}]

    assert _post(customer_client, lines).status_code == 201
    assert _post(customer_client, lines).status_code == 201

    assert Order.objects.count() == 2
    assert _stock(book) == 3


def test_order_place_accepts_longest_key(customer_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=5)

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 1}], key="k" * 255)

    assert response.status_code == 201
    assert Order.objects.get().idempotency_key == "k" * 255


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 256, id="too-long"),
        pytest.param("abc\x01def", id="control-char"),
        pytest.param("abc\x7f", id="delete-char"),
        pytest.param("clé-été", id="non-ascii"),
        pytest.param("   ", id="blank"),
        pytest.param("", id="empty"),
    ],
)
def test_order_place_rejects_invalid_idempotency_key(
    customer_client: APIClient, make_book: Callable[..., Book], key: str
) -> None:
    book = make_book(stock=5)

    response = _post(customer_client, [{"book_id": book.pk, "quantity": 1}], key=key)

    body = assert_problem(response, 400)
    assert [error["field"] for error in body["errors"]] == ["Idempotency-Key"]
    assert _stock(book) == 5
    assert Order.objects.count() == 0


def test_order_place_retry_after_conflict_places_the_order(
    customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=1)
    lines = [{"book_id": book.pk, "quantity": 2}]
    assert _post(customer_client, lines, key="retry").status_code == 409

    Book.objects.filter(pk=book.pk).update(stock=2)  # restocked
    response = _post(customer_client, lines, key="retry")

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert _stock(book) == 0
