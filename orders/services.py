"""Placing and cancelling orders: each service owns one transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from catalog.models import Book
from catalog.services import catalogue_changed
from orders import statements
from orders.exceptions import (
    IdempotencyKeyReused,
    InsufficientStock,
    OrderNotCancellable,
    OrderTotalTooLarge,
    UnknownBooks,
)
from orders.lock_objects import books_select_for_update
from orders.models import MAX_ORDER_TOTAL, Order, OrderLine


@dataclass(frozen=True)
class LineRequest:
    book_id: int
    quantity: int


@dataclass(frozen=True)
class PlaceResult:
    order: Order
    replayed: bool  # True when an Idempotency-Key matched an earlier order
    lines: list[OrderLine] | None = None  # the new order's lines (None on a replay)


def _digest(lines: list[LineRequest]) -> str:
    canonical = json.dumps(sorted((line.book_id, line.quantity) for line in lines))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(user: User, key: str, digest: str) -> PlaceResult | None:
    order = Order.objects.filter(user=user, idempotency_key=key).first()
    if order is None:
        return None
    if order.request_digest != digest:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different order body.", idempotency_key=key
        )
    return PlaceResult(order=order, replayed=True)


def _total(lines: list[LineRequest], prices: Mapping[int, Decimal]) -> Decimal:
    """Return the order's total at these prices; raise OrderTotalTooLarge if one order cannot hold it.

    Each line that alone exceeds the limit is named (`lines[3].quantity`, in the client's line
    order); when none does but together they do, the error names `lines`.
    """
    subtotals = [prices[line.book_id] * line.quantity for line in lines]
    total = sum(subtotals, Decimal("0"))
    if total <= MAX_ORDER_TOTAL:
        return total
    errors = [
        {
            "field": f"lines[{index}].quantity",
            "code": "max_total",
            "message": (
                f"{line.quantity} copies of book {line.book_id} at {prices[line.book_id]} come to {subtotal}, "
                f"more than one order may total ({MAX_ORDER_TOTAL})."
            ),
        }
        for index, (line, subtotal) in enumerate(zip(lines, subtotals, strict=True))
        if subtotal > MAX_ORDER_TOTAL
    ]
    if not errors:
        errors = [
            {
                "field": "lines",
                "code": "max_total",
                "message": f"The lines come to {total}, more than one order may total ({MAX_ORDER_TOTAL}).",
            }
        ]
    raise OrderTotalTooLarge(errors, max_total=MAX_ORDER_TOTAL)


def order_place(*, user: User, lines: list[LineRequest], idempotency_key: str | None = None) -> PlaceResult:
    """Place an order atomically, or replay the one placed earlier with the same key.

    Books are locked in primary-key order, every line is checked, and only when all can be
    filled is stock decremented and the order written. Raise InsufficientStock naming every
    short line (nothing written), UnknownBooks, OrderTotalTooLarge, or IdempotencyKeyReused.
    """
    digest = _digest(lines)
    if idempotency_key is not None:
        replay = _replay(user, idempotency_key, digest)
        if replay is not None:
            return replay
    try:
        return _place(user=user, lines=lines, idempotency_key=idempotency_key, digest=digest)
    except IntegrityError:
        # A concurrent request with the same key committed first; its order is the answer.
        if idempotency_key is not None:
            replay = _replay(user, idempotency_key, digest)
            if replay is not None:
                return replay
        raise


@transaction.atomic
def _place(*, user: User, lines: list[LineRequest], idempotency_key: str | None, digest: str) -> PlaceResult:
    # The order and its lines are written first, at the prices read without a lock, so the book
    # rows stay locked only for what needs the lock: check, decrement, commit. On a hot book
    # that hold time is the whole throughput. A short line still rolls everything back, and a
    # concurrent request with the same Idempotency-Key waits on the unique index and then fails
    # with IntegrityError, which order_place answers with the committed order.
    wanted = {line.book_id for line in lines}
    prices = statements.prices(wanted)
    missing = sorted(wanted - prices.keys())
    if missing:
        raise UnknownBooks(missing)
    order, order_lines = statements.insert_order(
        user=user,
        total=_total(lines, prices),
        idempotency_key=idempotency_key,
        digest=digest,
        lines=lines,
        unit_prices=prices,
    )
    # A short, deleted or repriced book changes nothing here: the locking path below says which.
    if len(lines) == 1 and statements.take_at_price(lines[0], prices[lines[0].book_id]):
        catalogue_changed()  # the book pages show stock
        return PlaceResult(order=order, replayed=False, lines=order_lines)

    books = {book.pk: book for book in books_select_for_update(wanted).only("pk", "stock", "price")}
    deleted = sorted(wanted - books.keys())
    if deleted:
        # Staff deleted a book between the two reads (the lines written so far are not committed,
        # so nothing protected it); it is as unknown now as a book that never existed.
        raise UnknownBooks(deleted)
    short = [
        {"book_id": line.book_id, "requested": line.quantity, "available": books[line.book_id].stock}
        for line in lines
        if books[line.book_id].stock < line.quantity
    ]
    if short:
        raise InsufficientStock(short)
    if any(books[pk].price != price for pk, price in prices.items()):
        # Staff changed a price between the two reads: the locked price is the one sold at, and
        # the total is checked again, since a raised price can take it past what an order holds.
        locked_prices = {pk: book.price for pk, book in books.items()}
        order.total = _total(lines, locked_prices)
        for order_line in order_lines:
            order_line.unit_price = locked_prices[order_line.book_id]
        OrderLine.objects.bulk_update(order_lines, ["unit_price"])
        order.save(update_fields=["total"])
    statements.take(lines)
    catalogue_changed()  # the book pages show stock; last, so the version row is locked only for the commit
    return PlaceResult(order=order, replayed=False, lines=order_lines)


@transaction.atomic
def order_cancel(*, order: Order) -> Order:
    """Cancel a placed order and put its copies back in stock, exactly once.

    The conditional UPDATE is the claim: of two concurrent cancels only one changes the row;
    the other raises OrderNotCancellable (409).
    """
    claimed = Order.objects.filter(pk=order.pk, status=Order.Status.PLACED).update(
        status=Order.Status.CANCELLED, cancelled_at=timezone.now()
    )
    if claimed != 1:
        raise OrderNotCancellable("This order was already cancelled.", order_id=order.pk)
    quantities = dict(OrderLine.objects.filter(order_id=order.pk).values_list("book_id", "quantity"))
    list(books_select_for_update(quantities))  # same lock order as placing
    for book_id in sorted(quantities):
        Book.objects.filter(pk=book_id).update(stock=F("stock") + quantities[book_id])
    catalogue_changed()
    order.refresh_from_db()
    return order
