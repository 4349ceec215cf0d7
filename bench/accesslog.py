"""A lean gunicorn access log for the scenario: request id, status and service time, nothing else.

gunicorn's own access log builds a dictionary of every atom (all request and response headers
among them) and goes through the logging module for each line. That costs about 0.3 ms of CPU per
request on this machine, a fifth of what a whole 429 costs: the instrument would weigh on what it
measures. This one writes the same three fields as `%({x-request-id}i)s %(s)s %(D)s` with one
append-mode write per line (atomic for a short line, so the workers can share the file).

Use: `gunicorn --logger-class bench.accesslog.ServiceTimeLogger --access-logfile PATH ...`
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger


class ServiceTimeLogger(Logger):
    """Write "<request id> <status> <service µs>" per request to the access log file."""

    _fd: int | None = None

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if cfg.accesslog and cfg.accesslog != "-":
            self._fd = os.open(cfg.accesslog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if self._fd is None:
            return
        rid = next((value for name, value in req.headers if name == "X-REQUEST-ID"), "-")
        micros = (request_time.days * 86400 + request_time.seconds) * 1_000_000 + request_time.microseconds
        os.write(self._fd, f"{rid} {str(resp.status)[:3]} {micros}\n".encode())
