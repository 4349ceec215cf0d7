"""PostgreSQL as settings.py configures it (django-prometheus's instrumented backend, Django's pool),
with every connection taken through the database circuit breaker (resilience/db/guard.py).

The contract in full: docs/resilience.md#the-postgresql-backend-behind-the-database-breaker.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from django.apps import apps
from django.conf import settings
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.utils import DatabaseErrorWrapper
from django.utils.functional import cached_property
from django_prometheus.db.backends.postgresql import base

log = logging.getLogger("bookstore.db")


class GuardedErrorWrapper(DatabaseErrorWrapper):
    """Report a connection lost under any database call before Django converts the error."""

    wrapper: DatabaseWrapper

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is not None:
            self.wrapper.report_if_lost()
        super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]  # django_prometheus is untyped
    _ticket: Any = None  # the breaker's ticket for the connection held, until its outcome is reported
    _unpooled = False  # the connection held is a trial's own, not the pool's
    # Per alias, one per process as the pools are: drained since PostgreSQL was last reached, and
    # the breaker generation of the last ticket.
    _drained: ClassVar[set[str]] = set()
    _generations: ClassVar[dict[str, int]] = {}
    # Aliases whose statement timeout this process has checked (behind a transaction pooler).
    _timeout_checked: ClassVar[set[str]] = set()

    @property
    def pool(self) -> Any:
        # While a trial's own connection is held, Django's non-pool paths configure and close it.
        if self._unpooled:
            return None
        return super().pool

    @cached_property
    def wrap_database_errors(self) -> GuardedErrorWrapper:
        return GuardedErrorWrapper(self)

    def _guarded(self) -> bool:
        # Not the server-level connection that creates databases, nor before the apps are loaded.
        return self.alias != NO_DB_ALIAS and apps.ready

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self._guarded():
            return super().get_new_connection(conn_params)
        from resilience.db.guard import DatabaseUnavailable, guard

        try:
            ticket = guard.acquire()
        except DatabaseUnavailable:
            self._drain_pool(once=True)
            raise
        seen = self._generations.get(self.alias, ticket.permit.generation)
        self._generations[self.alias] = ticket.permit.generation
        if seen != ticket.permit.generation:
            self._drain_pool(once=False)
        self._unpooled = ticket.permit.trial and super().pool is not None
        try:
            connection = super().get_new_connection(conn_params)
        except self.Database.OperationalError:  # refused, timed out, PoolTimeout, bad credentials
            self._unpooled = False
            guard.failed(ticket)
            self._drain_pool(once=True)
            raise
        except BaseException:
            # Not about reaching the server (a configuration error): report nothing. A trial's
            # slot is then freed by the trial lease.
            self._unpooled = False
            raise
        self._drained.discard(self.alias)
        self._ticket = guard.succeeded(ticket) if ticket.permit.trial else ticket
        return connection

    def report_if_lost(self) -> None:
        """Report the connection held as failed if it is broken (once per connection)."""
        ticket, connection = self._ticket, self.connection
        if ticket is None or connection is None or not getattr(connection, "broken", False):
            return
        from resilience.db.guard import guard

        self._ticket = None
        guard.failed(ticket)
        self._drain_pool(once=True)

    def _configure_connection(self, connection: Any) -> bool:
        commit: bool = super()._configure_connection(connection)
        if getattr(settings, "DB_TRANSACTION_POOLING", False) and self.alias not in self._timeout_checked:
            self._timeout_checked.add(self.alias)
            self._check_statement_timeout(connection)
            commit = True  # the query opened a transaction where the connection is not in autocommit
        return commit

    def _check_statement_timeout(self, connection: Any) -> None:
        """Log loudly when the server does not apply the configured timeout (the pooler cannot pass it on)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
            (found,) = cursor.fetchone()
        wanted = settings.DB_STATEMENT_TIMEOUT_MS
        if int(found) != wanted:
            log.error(
                "the statement timeout in force is %s ms, not the %s ms configured: set it on the role "
                "or in the pooler's connect_query",
                found,
                wanted,
                extra={"event": "statement_timeout_mismatch", "in_force_ms": int(found), "configured_ms": wanted},
            )

    def _drain_pool(self, *, once: bool) -> None:
        """Drop the pool's idle connections (with once=True, only once until PostgreSQL is reached again)."""
        if once and self.alias in self._drained:
            return
        self._drained.add(self.alias)
        pool = self._connection_pools.get(self.alias)
        if pool is not None:
            # Connections in use are discarded when handed back; replacements are made in the
            # background (and given up after DB_POOL_RECONNECT_TIMEOUT while the server is gone).
            pool.drain()

    def _close(self) -> None:
        if self._ticket is not None:
            self.report_if_lost()
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            from resilience.db.guard import guard

            guard.succeeded(ticket)
        try:
            super()._close()
        finally:
            self._unpooled = False
