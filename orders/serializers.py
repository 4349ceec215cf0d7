from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.models import Order, OrderLine

MAX_LINES = 100
MAX_QUANTITY = 1000


class LineInput(serializers.Serializer):
    book_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)


class OrderInput(serializers.Serializer):
    # A ListField, not LineInput(many=True): its length bounds are validators, which the schema
    # shows as minItems/maxItems, so generated clients and the fuzzer know them.
    lines = serializers.ListField(child=LineInput(), allow_empty=False, min_length=1, max_length=MAX_LINES)

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
        # A just-placed order passes its lines in the context; others read the prefetched rows.
        lines = self.context.get("lines")
        return OrderLineOutput(lines if lines is not None else order.lines.all(), many=True).data  # type: ignore[return-value]  # many=True: a list

    class Meta:
        model = Order
        fields = ["id", "user_id", "status", "total", "created_at", "cancelled_at", "lines"]
        read_only_fields = fields
