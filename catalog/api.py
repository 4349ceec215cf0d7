"""Public read API and staff-only writes for the catalogue."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsStaffOrReadOnly
from bookstore.pagination import PageNumberPagination
from catalog import selectors, services
from catalog.models import Book
from catalog.serializers import BookInput, BookListFilter, BookOutput, BookReplaceInput, BookSearchInput
from resilience.breakers import breaker


def _query(request: Request) -> dict[str, str]:
    # A plain dict: DRF reads a missing boolean in a QueryDict as False, which would hide
    # out-of-stock books from everyone who did not ask about stock at all.
    return dict(request.query_params.items())  # type: ignore[arg-type]  # items(): each key's last value, a str


def _paginated(request: Request, view: APIView, queryset: QuerySet[Book]) -> Response:
    paginator = PageNumberPagination()
    page = selectors.attach_authors(list(paginator.paginate_queryset(queryset, request, view=view)))  # type: ignore[arg-type]  # None only without a page size
    return paginator.get_paginated_response(BookOutput(page, many=True).data)


class BookListApi(APIView):
    permission_classes = [IsStaffOrReadOnly]
    pagination_class = PageNumberPagination  # read by the schema generator

    @extend_schema(parameters=[BookListFilter], responses=BookOutput(many=True), operation_id="books_list")
    def get(self, request: Request) -> Response:
        filters = BookListFilter(data=_query(request))
        filters.is_valid(raise_exception=True)
        return _paginated(request, self, selectors.book_list(**filters.validated_data))

    @extend_schema(request=BookInput, responses={201: BookOutput}, operation_id="books_create")
    def post(self, request: Request) -> Response:
        serializer = BookInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        book = services.book_create(**serializer.validated_data)
        return Response(BookOutput(book).data, status=status.HTTP_201_CREATED)


class BookSearchApi(APIView):
    permission_classes = [AllowAny]
    pagination_class = PageNumberPagination  # read by the schema generator
    resilience_tags = ("search",)

    @extend_schema(parameters=[BookSearchInput], responses=BookOutput(many=True), operation_id="books_search")
    def get(self, request: Request) -> Response:
        params = BookSearchInput(data=_query(request))
        params.is_valid(raise_exception=True)
        # The query runs inside the guard (pagination evaluates it), so a failing or slow search
        # trips the breaker and later searches get a fast 503 instead of piling onto the database.
        with breaker("search"):
            return _paginated(request, self, selectors.book_search(query=params.validated_data["q"]))


class BookDetailApi(APIView):
    permission_classes = [IsStaffOrReadOnly]

    def _book(self, pk: int) -> Book:
        return get_object_or_404(Book, pk=pk)

    @extend_schema(responses=BookOutput, operation_id="books_retrieve")
    def get(self, request: Request, pk: int) -> Response:
        (book,) = selectors.attach_authors([self._book(pk)])
        return Response(BookOutput(book).data)

    @extend_schema(
        request=BookReplaceInput,
        responses=BookOutput,
        operation_id="books_update",
        description=(
            'Replace the whole book: every field is required (send `[]`, `""` or `null` to empty one), '
            "so a field left out is a 400 naming it rather than a reset. To change some fields, use PATCH."
        ),
    )
    def put(self, request: Request, pk: int) -> Response:
        book = self._book(pk)
        serializer = BookReplaceInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        book = services.book_update(book=book, **serializer.validated_data)
        return Response(BookOutput(book).data)

    @extend_schema(
        request=BookInput(partial=True),
        responses=BookOutput,
        operation_id="books_partial_update",
        description="Change only the fields sent; the others keep their values.",
    )
    def patch(self, request: Request, pk: int) -> Response:
        book = self._book(pk)
        serializer = BookInput(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        book = services.book_update(book=book, **serializer.validated_data)
        return Response(BookOutput(book).data)

    @extend_schema(responses={204: None}, operation_id="books_destroy")
    def delete(self, request: Request, pk: int) -> Response:
        services.book_delete(book=self._book(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
