from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.models import Order, OrderLine

MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_BOOK_ID = 2**63 - 1  # a bigint
_LINE_KEYS = {"book_id", "quantity"}


class LineInput(serializers.Serializer):
    book_id = serializers.IntegerField(min_value=1, max_value=MAX_BOOK_ID)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)


class OrderInput(serializers.Serializer):
    # A ListField, not LineInput(many=True): its length bounds are validators, which the schema
    # shows as minItems/maxItems, so generated clients and the fuzzer know them.
    lines = serializers.ListField(child=LineInput(), allow_empty=False, min_length=1, max_length=MAX_LINES)

    @staticmethod
    def plain_lines(data: object) -> list[dict] | None:
        """Return the lines of a body already in canonical form (what clients send), or None.

        Only JSON integers in range, no other keys, no book twice: exactly what validation would
        return unchanged. Anything else, every error included, is left to the serializer, at a
        cost per line that an order's request otherwise does not need to pay.
        """
        if type(data) is not dict or data.keys() != {"lines"}:
            return None
        lines = data["lines"]
        if type(lines) is not list or not 1 <= len(lines) <= MAX_LINES:
            return None
        seen: set[int] = set()
        for line in lines:
            if type(line) is not dict or line.keys() != _LINE_KEYS:
                return None
            book_id, quantity = line["book_id"], line["quantity"]
            if type(book_id) is not int or type(quantity) is not int:  # not bool, not a float or a string
                return None
            if not (1 <= book_id <= MAX_BOOK_ID and 1 <= quantity <= MAX_QUANTITY) or book_id in seen:
                return None
            seen.add(book_id)
        return lines

    def validate_lines(self, lines: list[dict]) -> list[dict]:
        seen: set[int] = set()
        for line in lines:
            if line["book_id"] in seen:
                raise serializers.ValidationError(
                    f"Book {line['book_id']} appears on more than one line; use one line per book.",
                    code="duplicate_book",
                )
            seen.add(line["book_id"])
        return lines


class OrderLineOutput(serializers.ModelSerializer):
    book_id = serializers.IntegerField()

    class Meta:
        model = OrderLine
        fields = ["book_id", "quantity", "unit_price"]
        read_only_fields = fields


class OrderOutput(serializers.ModelSerializer):
    lines = serializers.SerializerMethodField()
    user_id = serializers.IntegerField()

    @extend_schema_field(OrderLineOutput(many=True))
    def get_lines(self, order: Order) -> list[dict]:
        return OrderLineOutput(order.lines.all(), many=True).data  # type: ignore[return-value]  # many=True: a list

    class Meta:
        model = Order
        fields = ["id", "user_id", "status", "total", "created_at", "cancelled_at", "lines"]
        read_only_fields = fields


# OrderOutput's fields for a just-placed order, built once: a ModelSerializer builds its fields
# anew for every instance, which costs an order more CPU than its own queries.
_TOTAL = serializers.DecimalField(max_digits=12, decimal_places=2)
_UNIT_PRICE = serializers.DecimalField(max_digits=10, decimal_places=2)
_WHEN = serializers.DateTimeField()


def placed_order_data(order: Order, lines: list[OrderLine]) -> dict:
    """Return what OrderOutput says of an order just placed, with the lines it was placed with."""
    return {
        "id": order.pk,
        "user_id": order.user_id,
        "status": order.status,
        "total": _TOTAL.to_representation(order.total),
        "created_at": _WHEN.to_representation(order.created_at),
        "cancelled_at": _WHEN.to_representation(order.cancelled_at) if order.cancelled_at else None,
        "lines": [
            {
                "book_id": line.book_id,
                "quantity": line.quantity,
                "unit_price": _UNIT_PRICE.to_representation(line.unit_price),
            }
            for line in lines
        ],
    }
