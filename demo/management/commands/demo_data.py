"""Create a demo catalogue generated locally, plus a demo staff and a demo customer account.

Safe to run again: accounts are ensured, and books are only added while the catalogue holds
fewer than --books (use --reset to empty books, authors and orders first). It lives in the demo
app rather than the catalogue because it spans accounts, books and the orders that protect them.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import date, timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts.models import User
from catalog.models import Author, Book
from catalog.services import catalogue_changed
from orders.models import Order

DEMO_STAFF = ("staff", "staff@bookstore.example", "bookstore-staff")
DEMO_CUSTOMER = ("reader", "reader@bookstore.example", "bookstore-reader")

_FIRST = (
    "Ada Alan Barbara Chinua Clarice Dorothy Edsger Frances Grace Gabriel Haruki Ivy Jorge Kazuo Leslie "
    "Margaret Naguib Octavia Orhan Primo Radia Ray Salman Toni Ursula Virginia Wislawa Yukio Zadie"
).split()
_LAST = (
    "Achebe Atwood Borges Butler Calvino Dijkstra Eco Hopper Ishiguro Knuth Lamport Le-Guin Levi "
    "Lispector Lovelace Mahfouz Marquez Morrison Murakami Pamuk Perlman Rushdie Smith Szymborska "
    "Turing Woolf Mishima Bradbury Allen Liskov"
).split()
_WORDS = (
    "river night garden machine city silence winter letters stone memory light shadow kingdom "
    "map harbour algorithm engine clock signal mirror forest station archive ocean ember voyage "
    "library bridge compass lantern orchard thread cipher tide meadow"
).split()
_TOPICS = (
    "a family saga; a history of computing; a detective story; essays on language; a quiet "
    "romance; a war memoir; poems of the sea; a field guide; a political thriller; a cookbook"
).split("; ")


def _isbn13(n: int) -> str:
    body = f"978{n:09d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


class Command(BaseCommand):
    help = "Create demo books, authors and the demo staff and customer accounts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--books", type=int, default=300, help="books to have in the catalogue (default 300)")
        parser.add_argument("--seed", type=int, default=7, help="random seed, for repeatable data")
        parser.add_argument("--reset", action="store_true", help="delete orders, books and authors first")

    def handle(self, *args: object, books: int, seed: int, reset: bool, **options: object) -> str:
        rng = random.Random(seed)
        self._ensure_user(*DEMO_STAFF, role=User.Role.STAFF, superuser=True)
        self._ensure_user(*DEMO_CUSTOMER, role=User.Role.CUSTOMER)
        if reset:
            with transaction.atomic():
                Order.objects.all().delete()
                Book.objects.all().delete()
                Author.objects.all().delete()
        existing = Book.objects.count()
        wanted = max(0, books - existing)
        if wanted:
            self._create_books(
                rng, wanted, start=(Book.objects.order_by("-id").values_list("id", flat=True).first() or 0)
            )
        return f"catalogue holds {Book.objects.count()} books ({wanted} added)"

    def _ensure_user(self, username: str, email: str, password: str, *, role: str, superuser: bool = False) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User(username=username, email=email, role=role, is_superuser=superuser, is_staff=superuser)
        user.set_password(password)
        user.save()

    def _create_books(self, rng: random.Random, count: int, *, start: int) -> None:
        author_count = max(10, count // 3)
        base_authors = Author.objects.count()
        Author.objects.bulk_create(
            Author(name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {base_authors + i}") for i in range(author_count)
        )
        authors = list(Author.objects.order_by("-id").values_list("id", "name")[:author_count])
        through = Book.authors.through
        batch = 5000
        started = time.monotonic()
        offset = start + 1  # ids only grow, so numbering ISBNs after the highest id never collides
        done = 0
        while done < count:
            size = min(batch, count - done)
            picks = [rng.sample(authors, k=rng.choice((1, 1, 1, 2, 3))) for _ in range(size)]
            new_books = [
                Book(
                    isbn=_isbn13(offset + done + i),
                    title=" ".join(rng.sample(_WORDS, k=rng.choice((2, 3, 4)))).title(),
                    authors_text=", ".join(sorted(name for _, name in picks[i])),
                    description=f"{rng.choice(_TOPICS).capitalize()} about "
                    f"{rng.choice(_WORDS)} and {rng.choice(_WORDS)}.",
                    price=Decimal(rng.randrange(299, 6999)) / 100,
                    stock=rng.choice((0, 1, 2, 5, 10, 25, 50, 100)),
                    published_on=date(1950, 1, 1) + timedelta(days=rng.randrange(27000)),
                )
                for i in range(size)
            ]
            with transaction.atomic():
                created = Book.objects.bulk_create(new_books)
                through.objects.bulk_create(
                    through(book_id=book.pk, author_id=author_id)
                    for book, chosen in zip(created, picks, strict=True)
                    for author_id, _ in chosen
                )
                catalogue_changed()  # bulk_create sends no signal
            done += size
            rate = done / max(time.monotonic() - started, 1e-6)
            sys.stderr.write(f"\r  books {done}/{count} ({rate:,.0f}/s)")
            sys.stderr.flush()
        sys.stderr.write("\n")
