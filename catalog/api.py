"""Public read API and staff-only writes for the catalogue."""

from __future__ import annotations

import functools
from typing import Any

from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils.functional import cached_property
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from accounts.permissions import IsStaffOrReadOnly
from bookstore.pagination import PageNumberPagination
from catalog import http, selectors, services
from catalog.models import Book
from catalog.serializers import BookInput, BookListFilter, BookOutput, BookReplaceInput, BookSearchInput
from resilience.http.guards import breaker


def _query(request: Request) -> tuple[tuple[str, str], ...]:
    # Plain pairs: DRF reads a missing boolean in a QueryDict as False, which would hide
    # out-of-stock books from everyone who did not ask about stock at all.
    return tuple(sorted(request.query_params.items()))  # type: ignore[arg-type]  # items(): each key's last value, a str


@functools.lru_cache(maxsize=1024)
def _valid(serializer: type[Serializer], query: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Return the validated query parameters, or raise the 400; remembered, since validation is a pure function
    of the query and DRF's serializers cost a list page a tenth of its CPU. Callers must not change the dict."""
    params = serializer(data=dict(query))
    params.is_valid(raise_exception=True)
    return params.validated_data


def _requested(request: Request, paginator: PageNumberPagination) -> slice | None:
    """Return the slice of rows the request's page holds, or None if Django's paginator will not read its number."""
    size = paginator.get_page_size(request)
    try:
        # int() as Paginator.validate_number reads the number; "last" and the like are left to it.
        number = int(request.query_params.get(paginator.page_query_param) or 1)
    except ValueError:
        return None
    # Past bigint, PostgreSQL would refuse the OFFSET: such a page is past the last one anyway.
    if not size or number < 1 or number * size >= 2**63:
        return None
    return slice((number - 1) * size, number * size)


class _CountedPaginator(Paginator):
    """Django's paginator, with the count taken from the count cache when the page has a version."""

    def __init__(self, object_list: selectors.PageRows, per_page: int, count_key: tuple | None) -> None:
        super().__init__(object_list, per_page)  # type: ignore[arg-type]  # PageRows counts and slices, all Paginator asks
        self.count_key = count_key

    @cached_property
    def count(self) -> int:
        if self.count_key is None:
            return super().count
        count = _counts.get(self.count_key)
        if count is None:
            if len(_counts) >= 1024:  # bounded: filters are client input
                _counts.clear()
            count = _counts[self.count_key] = super().count
        return count


# Result counts by (catalogue version, view, filters): a count changes only with the catalogue, and
# COUNT(*) over the filtered books was a page's most expensive query. Per process; an old version's
# entries are never asked for again.
_counts: dict[tuple, int] = {}


def _paginated(request: Request, view: APIView, queryset: QuerySet, filters: dict) -> Response:
    key = (type(view).__name__, tuple(sorted(filters.items())))
    version = getattr(request, http.VERSION, None)
    paginator = PageNumberPagination()
    paginator.django_paginator_class = functools.partial(  # type: ignore[assignment]  # a factory of Paginators
        _CountedPaginator, count_key=None if version is None else (version, *key)
    )
    rows: list[tuple[Any, ...]] | None = paginator.paginate_queryset(
        selectors.PageRows(queryset, key),  # type: ignore[arg-type]  # it slices as a sequence does
        request,
        view=view,
    )
    return paginator.get_paginated_response(selectors.book_page(rows or []))


class BookListApi(APIView):
    permission_classes = [IsStaffOrReadOnly]
    pagination_class = PageNumberPagination  # read by the schema generator

    @extend_schema(
        parameters=[BookListFilter, *http.SCHEMA_PARAMETERS],
        responses={200: BookOutput(many=True), 304: http.NOT_MODIFIED},
        operation_id="books_list",
    )
    @http.conditional_page
    def get(self, request: Request) -> Response:
        filters = _valid(BookListFilter, _query(request))
        return _paginated(request, self, selectors.book_list(**filters), filters)

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
    # Not kept (catalog/http.py): the words are any client's input, and pages for them would push out
    # the list and detail pages every visitor shares.
    keep_pages = False

    @extend_schema(
        parameters=[BookSearchInput, *http.SCHEMA_PARAMETERS],
        responses={200: BookOutput(many=True), 304: http.NOT_MODIFIED},
        operation_id="books_search",
    )
    # The whole page runs inside the guard, its catalogue version read and its query (pagination
    # evaluates it): a failing or slow search trips the breaker, and later searches get a fast 503
    # that touches neither the database nor Redis.
    @breaker("search")
    @http.conditional_page
    def get(self, request: Request) -> Response:
        query = _valid(BookSearchInput, _query(request))["q"]
        if connection.vendor != "postgresql":
            return _paginated(request, self, selectors.book_search(query=query), {"q": query})
        # DRF's paginator as for every list (its page numbers, 404s and links), over rows that bring their count.
        paginator = PageNumberPagination()
        rows = selectors.SearchRows(query, _requested(request, paginator))
        page: list[dict[str, object]] | None = paginator.paginate_queryset(
            rows,  # type: ignore[arg-type]  # it counts and slices, all the paginator asks
            request,
            view=self,
        )
        return paginator.get_paginated_response(page or [])


class BookDetailApi(APIView):
    permission_classes = [IsStaffOrReadOnly]

    def _book(self, pk: int) -> Book:
        return get_object_or_404(Book, pk=pk)

    @extend_schema(
        parameters=http.SCHEMA_PARAMETERS,
        responses={200: BookOutput, 304: http.NOT_MODIFIED},
        operation_id="books_retrieve",
    )
    @http.conditional_page
    def get(self, request: Request, pk: int) -> Response:
        book = selectors.book_detail(pk=pk)
        if book is None:
            raise Http404
        return Response(book)

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
