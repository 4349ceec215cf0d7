"""The product's URLs plus two views that only benchmarks serve, each the least its comparison needs."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bookstore.urls import urlpatterns as product
from catalog.models import Book


def ping(request: HttpRequest) -> HttpResponse:
    """Answer at once: a path where no view hides what the middleware costs (bench/hotpath.py)."""
    return HttpResponse(b"pong", content_type="text/plain")


@csrf_exempt
@require_POST
def order(request: HttpRequest, pk: int) -> HttpResponse:
    """Take one copy of a book with only what an order needs on its row: lock, decrement, save (bench/orders.py)."""
    with transaction.atomic():
        book = Book.objects.select_for_update().get(pk=pk)
        book.stock -= 1
        book.save(update_fields=["stock"])
    return HttpResponse(status=200)


# The trivial path is under /api/, where API calls take the lean middleware stack (bookstore/lean.py).
urlpatterns = [path("api/bench/ping", ping), path("bench/order/<int:pk>", order), *product]
