"""Order placement, listing and cancellation."""

from __future__ import annotations

from typing import cast

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.permissions import IsActiveAccount
from bookstore.pagination import PageNumberPagination
from bookstore.parsers import JSONParser
from orders import selectors, services
from orders.models import MAX_ORDER_TOTAL, Order
from orders.serializers import OrderInput, OrderOutput, placed_order_data


def _user(request: Request) -> User:
    """Return the signed-in user: every view here requires one (IsAuthenticated)."""
    return cast(User, request.user)


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    # What _idempotency_key accepts: 1 to 255 printable ASCII characters (outer spaces are dropped).
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]([ -~]*[!-~])?$"},
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the first result instead of ordering twice.",
)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not (1 <= len(key) <= 255) or not key.isprintable() or not key.isascii():
        raise exceptions.ValidationError(
            {"Idempotency-Key": ["Use 1 to 255 printable ASCII characters."]}, code="invalid"
        )
    return key


class OrderListApi(APIView):
    pagination_class = PageNumberPagination  # read by the schema generator
    # Lines are a list of objects, which form encodings cannot carry: JSON only (415 otherwise),
    # and the schema documents just that body.
    parser_classes = [JSONParser]

    def get_permissions(self) -> list:
        return [IsActiveAccount()] if self.request.method == "POST" else [IsAuthenticated()]

    @extend_schema(responses=OrderOutput(many=True), operation_id="orders_list")
    def get(self, request: Request) -> Response:
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.order_list(user=_user(request)), request, view=self)
        return paginator.get_paginated_response(OrderOutput(page, many=True).data)

    @extend_schema(
        request=OrderInput,
        responses={201: OrderOutput},
        parameters=[IDEMPOTENCY_HEADER],
        operation_id="orders_create",
        description=(
            "Place an order: all lines or none. 409 names every short line (`short_lines`); 400 names unknown "
            f"books (`book_ids`); 422 when the order would total more than {MAX_ORDER_TOTAL} (`errors` names "
            "`lines[i].quantity` for a line that alone is too much, else `lines`) or when an Idempotency-Key is "
            "reused with a different body."
        ),
    )
    def post(self, request: Request) -> Response:
        key = _idempotency_key(request)
        plain = OrderInput.plain_lines(request.data)
        if plain is None:
            serializer = OrderInput(data=request.data)
            serializer.is_valid(raise_exception=True)
            plain = serializer.validated_data["lines"]
        lines = [services.LineRequest(**line) for line in plain]
        result = services.order_place(user=_user(request), lines=lines, idempotency_key=key)
        headers = {"Location": f"/api/orders/{result.order.pk}"}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        if result.lines is not None:  # just written: serialise what we hold, no second read
            data = placed_order_data(result.order, result.lines)
        else:
            data = OrderOutput(Order.objects.prefetch_related("lines").get(pk=result.order.pk)).data
        return Response(data, status=status.HTTP_201_CREATED, headers=headers)


class OrderDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses=OrderOutput, operation_id="orders_retrieve")
    def get(self, request: Request, pk: int) -> Response:
        order = get_object_or_404(selectors.order_list(user=_user(request)), pk=pk)
        return Response(OrderOutput(order).data)


class OrderCancelApi(APIView):
    permission_classes = [IsActiveAccount]

    @extend_schema(request=None, responses=OrderOutput, operation_id="orders_cancel")
    def post(self, request: Request, pk: int) -> Response:
        order = get_object_or_404(selectors.order_list(user=_user(request)), pk=pk)
        order = services.order_cancel(order=order)
        return Response(OrderOutput(Order.objects.prefetch_related("lines").get(pk=order.pk)).data)
