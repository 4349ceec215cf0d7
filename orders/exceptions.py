"""Domain errors of ordering; each carries what the client needs to act on it."""

from __future__ import annotations

from decimal import Decimal

from bookstore.exceptions import ApplicationError


class InsufficientStock(ApplicationError):
    """Some lines ask for more copies than are in stock; nothing was written."""

    status_code = 409
    slug = "insufficient-stock"
    title = "Not enough stock"

    def __init__(self, lines: list[dict[str, int]]) -> None:
        super().__init__(f"{len(lines)} line(s) cannot be filled; nothing was ordered.", short_lines=lines)
        self.lines = lines


class OrderTotalTooLarge(ApplicationError):
    """The order would total more than one order may; `errors` names the lines; nothing was written."""

    status_code = 422
    slug = "order-total-too-large"
    title = "Order total too large"

    def __init__(self, errors: list[dict[str, str]], *, max_total: Decimal) -> None:
        super().__init__(
            f"One order may total at most {max_total}; nothing was ordered.", errors=errors, max_total=f"{max_total}"
        )
        self.errors = errors


class UnknownBooks(ApplicationError):
    status_code = 400
    slug = "unknown-books"
    title = "Unknown books"

    def __init__(self, book_ids: list[int]) -> None:
        super().__init__("Some lines name books that do not exist.", book_ids=book_ids)


class IdempotencyKeyReused(ApplicationError):
    status_code = 422
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class OrderNotCancellable(ApplicationError):
    status_code = 409
    slug = "order-not-cancellable"
    title = "Order already cancelled"
