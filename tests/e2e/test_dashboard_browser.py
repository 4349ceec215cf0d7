"""A staff member in a real browser: tune a limit from the dashboard, force a breaker open, watch it update.

Headless Chromium (Debian's package, driven by Playwright) against real gunicorn workers on the
test database. `.ci/run` installs the browser; Playwright never downloads one here. Every request
of every page (admin, dashboard, Swagger UI, Redoc) is recorded: the shop works offline, so one
to another origin fails the test, and so does a Content-Security-Policy violation in the console.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from django.core.management import call_command
from pytest_django.fixtures import Settings

from accounts.models import User
from resilience.models import CircuitBreakerPolicy, RateLimitPolicy
from resilience.runtime import get_runtime, workers_key
from tests.live import ROOT, LiveServer, with_live_password

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Response

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = ROOT / "test-output"
PASSWORD = "correct-horse-battery"
# The product's promise: a saved change is in force on every worker within this long (s).
PROPAGATION_SECONDS = 1.0
# The dashboard refreshes every 3 s; a change shows within two refreshes.
REFRESH_WAIT_MS = 8_000
# How long any single page step may take before the test fails (ms).
STEP_MS = 10_000


def make_login(role: str, username: str, *, superuser: bool = False) -> User:
    """Create a user whose password the servers' production hashers can check."""
    if superuser:
        user = User.objects.create_superuser(username=username, email=f"{username}@example.com", password=None)
    else:
        user = User.objects.create_user(username=username, email=f"{username}@example.com", role=role)
    return with_live_password(user, PASSWORD)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Yield a headless Debian Chromium driven by Playwright; fail (never skip) when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is not installed: the browser tests need Debian's chromium package, "
            "which .ci/run installs (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


class BrowserLog:
    """What a browser context did: every request, every failed response, every CSP violation."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.requested: list[str] = []
        self.failed: list[str] = []
        self.violations: list[str] = []

    def watch(self, context: BrowserContext) -> BrowserContext:
        """Record what context's pages do; return context."""
        context.on("request", lambda request: self.requested.append(request.url))
        context.on("response", self._response)
        context.on("console", self._console)
        return context

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            location = message.location
            self.violations.append(f"{location.get('url')}:{location.get('lineNumber')}: {text}")

    def foreign(self) -> list[str]:
        """Return the requested URLs that are not this site's (a blob: the page made itself is)."""
        local = (f"{self.base}/", f"blob:{self.base}/", "data:")
        return sorted({url for url in self.requested if not url.startswith(local)})


def sign_in(page: Page, base: str, username: str, next_path: str) -> None:
    """Sign in through the admin's login form, as a person would."""
    page.goto(f"{base}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#login-form input[type=submit]")
    page.wait_for_load_state()


def collect_static(settings: Settings, root: Path) -> Path:
    """Collect the static files into root, as a deployment does (the servers run with DEBUG off)."""
    settings.STATIC_ROOT = root
    call_command("collectstatic", "--noinput", verbosity=0)
    return root


def test_staff_tunes_a_limit_and_forces_a_breaker_open_from_the_dashboard(
    live_servers: Callable[..., LiveServer], settings: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    # Everything the database needs is written before the browser starts: Playwright's event
    # loop would make Django refuse ORM calls from this thread.
    make_login(User.Role.STAFF, "ops", superuser=True)
    make_login(User.Role.CUSTOMER, "reader")
    breaker = CircuitBreakerPolicy(name="dash-search", match_type="code", pattern="dash-search")
    breaker.full_clean()
    breaker.save()
    static_root = collect_static(settings, tmp_path / "static")
    # Workers of earlier tests' servers reported policy versions of a database flushed since, whose
    # numbers this one reuses: the propagation card is about these two workers only.
    get_runtime().shared.client.delete(workers_key())  # type: ignore[attr-defined]  # the Redis store here
    server = live_servers(workers=2, env_overrides={"STATIC_ROOT": str(static_root)})
    # Created once the workers are up, so their start-up probes of /api/books count against no one.
    policy = RateLimitPolicy(name="books-ip", match_type="prefix", pattern="/api/books", key="ip", limit=100, period=60)
    policy.full_clean()
    policy.save()
    # A token bucket: its burst is what its clients see as q in RateLimit-Policy, and the refill time as w.
    bucket = RateLimitPolicy(
        name="search-ip", match_type="prefix", pattern="/api/books/search", key="ip", algorithm="token_bucket",
        limit=100, period=60, burst=20,
    )  # fmt: skip
    bucket.full_clean()
    bucket.save()
    base = server.url
    dashboard = "/admin/resilience/dashboard/"

    with chromium() as browser:
        log = BrowserLog(base)
        staff = log.watch(browser.new_context(base_url=base))
        page = staff.new_page()
        page.set_default_timeout(STEP_MS)

        # Sign in, then open the dashboard from the policies' changelist.
        sign_in(page, base, "ops", "/admin/resilience/ratelimitpolicy/")
        expect(page).to_have_url(re.compile(r"/admin/resilience/ratelimitpolicy/$"))
        page.get_by_role("link", name="Dashboard").click()
        expect(page).to_have_url(re.compile(f"{dashboard}$"))
        expect(page.locator("#rs-health-database-engine")).to_have_text("PostgreSQL")
        expect(page.locator("#rs-health-database")).to_have_text(re.compile(r"^up"))
        expect(page.locator("#rs-health-redis")).to_have_text(re.compile(r"^up"))
        expect(page.locator('tr[data-breaker="dash-search"] td[data-state]')).to_have_attribute("data-state", "closed")
        books_row = page.locator('tr[data-policy="books-ip"]')
        expect(books_row).to_contain_text("100/60s")
        expect(page.locator('tr[data-policy="search-ip"]')).to_contain_text("burst 20, refills in 12 s")

        # Follow the policy's link to its change form and lower the limit to 3 per minute.
        books_row.get_by_role("link", name="books-ip").click()
        expect(page).to_have_url(re.compile(rf"/admin/resilience/ratelimitpolicy/{policy.pk}/change/$"))
        limit = page.locator("#id_limit")
        expect(limit).to_have_value("100")
        limit.fill("")
        limit.press_sequentially("3")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.locator('input[name="_save"]').click()
        saved = time.monotonic()
        assert posted.value.status == 302
        expect(page.locator("ul.messagelist")).to_contain_text("In force on every worker by")

        # An API client: 3 requests admitted, the 4th refused. A worker that checked the policy
        # version just before the save may decide by its old snapshot until the promised second
        # has passed, so the client starts then (the browser round trips above took part of it).
        time.sleep(max(0.0, saved + PROPAGATION_SECONDS - time.monotonic()))
        replies = [requests.get(f"{base}/api/books", timeout=10) for _ in range(4)]
        refused_after = time.monotonic() - saved
        assert [r.status_code for r in replies] == [200, 200, 200, 429], [r.text[:200] for r in replies]
        assert replies[3].headers["Content-Type"] == "application/problem+json"
        assert "q=3;w=60" in replies[0].headers["RateLimit-Policy"]
        assert refused_after < PROPAGATION_SECONDS + 1.5, f"4th request answered {refused_after:.2f} s after save"

        # The dashboard, left open in its tab, counts those requests.
        page.goto(dashboard)
        expect(books_row).to_contain_text("3/60s")
        expect(books_row.locator("td").nth(7)).to_have_text("1")  # limited
        # Both workers served requests before the save; whichever has not served one since is idle,
        # not behind: no alarm, and the one that served this page confirmed the change.
        propagation = page.locator("#rs-propagation")
        expect(propagation).to_have_attribute("data-behind", "0")
        expect(propagation).not_to_have_class(re.compile(r"\brs-bad\b"))
        expect(propagation).to_contain_text("confirmed")
        states = page.locator("#rs-workers li").evaluate_all("items => items.map(i => i.dataset.state)")
        assert "confirmed" in states, states
        assert "behind" not in states, states
        expect(page.locator("#rs-top tbody")).to_contain_text("127.0.0.1")
        breaker_state = page.locator('tr[data-breaker="dash-search"] td[data-state]')
        expect(breaker_state).to_have_attribute("data-state", "closed")

        # In a second tab: force the breaker open from its changelist.
        other = staff.new_page()
        other.set_default_timeout(STEP_MS)
        other.goto("/admin/resilience/circuitbreakerpolicy/")
        other.locator(f'input[name="_selected_action"][value="{breaker.pk}"]').check()
        other.select_option('select[name="action"]', label="Force selected breakers open")
        other.locator('button[name="index"]').click()
        expect(other.locator("ul.messagelist")).to_contain_text("1 breaker(s) forced open")
        other.close()

        # Back on the dashboard: its refresh loop shows the breaker open, with no reload.
        page.bring_to_front()
        expect(breaker_state).to_have_attribute("data-state", "open", timeout=REFRESH_WAIT_MS)
        expect(breaker_state).to_contain_text("forced open")
        # Held until an operator releases it: no countdown to half-open.
        expect(page.locator('tr[data-breaker="dash-search"] td').nth(2)).to_have_text("held until released")
        expect(page.locator("#rs-updated")).to_contain_text("counters from the shared store")
        SCREENSHOTS.mkdir(exist_ok=True)
        shot = SCREENSHOTS / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")

        # The API docs, as anyone opens them: Swagger UI and Redoc render from this site alone.
        page.goto("/api/docs/")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Bookstore API")
        expect(page.locator(".opblock").first).to_be_visible()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / "swagger-ui.png"))
        page.goto("/api/redoc/")
        expect(page.locator("h1").first).to_contain_text("Bookstore API")
        # The sidebar's footer is where Redoc's bundle shows a logo it would fetch from a CDN.
        expect(page.get_by_text("API docs by Redocly")).to_be_attached()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / "redoc.png"))

        assert log.foreign() == [], "no page loads anything from another origin"
        assert log.violations == [], "\n".join(log.violations)
        assert log.failed == [], "every page, stylesheet, script and refresh loads"

        # A customer signing in gets no further than the login page.
        customer = log.watch(browser.new_context(base_url=base))
        page = customer.new_page()
        page.set_default_timeout(STEP_MS)
        sign_in(page, base, "reader", dashboard)
        expect(page.locator(".errornote")).to_contain_text("staff account")
        page.goto(dashboard)
        expect(page).to_have_url(re.compile(r"/admin/login/\?next="))
        expect(page.locator("#rs-dashboard")).to_have_count(0)
        data = customer.request.get("/admin/resilience/dashboard/data.json", max_redirects=0)
        assert data.status == 302
        assert "/admin/login/" in data.headers["location"]
        customer.close()
        staff.close()
        assert log.foreign() == []
        assert log.violations == []

    assert time.monotonic() - started < 60
