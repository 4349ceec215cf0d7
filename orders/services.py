"""Placing and cancelling orders: each service owns one transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from catalog.models import Book
from orders.exceptions import IdempotencyKeyReused, InsufficientStock, OrderNotCancellable, UnknownBooks
from orders.lock_objects import books_select_for_update
from orders.models import Order, OrderLine


@dataclass(frozen=True)
class LineRequest:
    book_id: int
    quantity: int


@dataclass(frozen=True)
class PlaceResult:
    order: Order
    replayed: bool  # True when an Idempotency-Key matched an earlier order


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


def order_place(*, user: User, lines: list[LineRequest], idempotency_key: str | None = None) -> PlaceResult:
    """Place an order atomically, or replay the one placed earlier with the same key.

    Books are locked in primary-key order, every line is checked, and only when all can be
    filled is stock decremented and the order written. Raise InsufficientStock naming every
    short line (nothing written), UnknownBooks, or IdempotencyKeyReused.
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
    books = {book.pk: book for book in books_select_for_update(line.book_id for line in lines)}
    missing = sorted({line.book_id for line in lines} - books.keys())
    if missing:
        raise UnknownBooks(missing)
    if idempotency_key is not None:
        # Checked again under the locks: a same-key request that held them has committed by now.
        replay = _replay(user, idempotency_key, digest)
        if replay is not None:
            return replay

    short = [
        {"book_id": line.book_id, "requested": line.quantity, "available": books[line.book_id].stock}
        for line in lines
        if books[line.book_id].stock < line.quantity
    ]
    if short:
        raise InsufficientStock(short)

    for line in sorted(lines, key=lambda item: item.book_id):
        Book.objects.filter(pk=line.book_id).update(stock=F("stock") - line.quantity)
    total = sum((books[line.book_id].price * line.quantity for line in lines), Decimal("0"))
    order = Order.objects.create(
        user=user, total=total, idempotency_key=idempotency_key, request_digest=digest
    )
    OrderLine.objects.bulk_create(
        OrderLine(
            order=order, book_id=line.book_id, quantity=line.quantity, unit_price=books[line.book_id].price
        )
        for line in lines
    )
    return PlaceResult(order=order, replayed=False)


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
    order.refresh_from_db()
    return order
