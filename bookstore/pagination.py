"""Pagination shared by every list endpoint."""

from __future__ import annotations

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """Page through results with ?page= and an optional ?page_size= up to 100."""

    page_size_query_param = "page_size"
    max_page_size = 100
