"""A lean gunicorn access log: "<pid> <status> <service µs> <request id>", one append-mode write a line."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger


class ServiceTimeLogger(Logger):
    _fd: int | None = None

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if cfg.accesslog and cfg.accesslog != "-" and self._fd is None:
            self._fd = os.open(cfg.accesslog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if self._fd is not None:
            rid = next((value for name, value in req.headers if name == "X-REQUEST-ID"), "-")
            micros = request_time // timedelta(microseconds=1)
            os.write(self._fd, f"<{os.getpid()}> {str(resp.status)[:3]} {micros} {rid}\n".encode())
