"""Log lines for machines: one JSON object per line, carrying the request id and every `extra=` field.

settings.LOGGING picks JsonFormatter (LOG_FORMAT=json, the default with DEBUG off) or a plain
line that still shows the request id (LOG_FORMAT=plain, the default with DEBUG on), written to
stdout, or to stderr for management commands (LOG_STREAM, which manage.py sets): a command's
stdout is what it means to print, for a pipe or a script to read.

The formatter is written here rather than taken from python-json-logger or django-structlog.
python-json-logger would still need this module's code for what matters here (the request id
from the context or the record, fixed fields that an extra cannot overwrite, the exception as
one field), and it lets extras replace fixed fields; django-structlog brings a second logging
pipeline and request_started/finished lines for every request, which doubles the volume under
attack. What is left is a few dozen lines of standard library.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from bookstore.request_id import get_request_id

# Attributes every LogRecord has: anything else on a record came from `extra=` (or a filter).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def record_request_id(record: logging.LogRecord) -> str | None:
    """Return the id of the request a record is about: the one in progress, or the record's own.

    django.request logs a 4xx/5xx after the whole middleware stack has returned, when no request
    is in progress any more; it hands the request over as ``extra={"request": ...}``.
    """
    request_id = get_request_id()
    if request_id is None:
        request_id = getattr(getattr(record, "request", None), "request_id", None)
    return request_id


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, request_id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": record_request_id(record),
        }
        for key, value in record.__dict__.items():
            # The fixed fields win over an extra of the same name: every line reads the same way.
            if key not in _RECORD_ATTRS and key not in payload and not key.startswith("_"):
                if key == "request" and hasattr(value, "path") and hasattr(value, "method"):
                    # django.request's HttpRequest: what to grep for, not "<WSGIRequest: GET '/api/books'>".
                    payload.setdefault("method", value.method)
                    payload.setdefault("path", value.path)
                    continue
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # default=str: Decimals, exceptions, enums and the like are written as their text.
        return json.dumps(payload, ensure_ascii=False, default=str)


class RequestIdFilter(logging.Filter):
    """Put the request id on each record as `request_id` (for the plain format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = record_request_id(record) or "-"
        return True


class Sampled:
    """Log a recurring condition at most once per interval, with how often it occurred since the last line.

    For failures every request meets alike (the database is down): one line says it, its
    ``count`` says how many requests it cost, and the metrics count every one of them.
    """

    def __init__(self, logger: logging.Logger, event: str, interval: float) -> None:
        self.logger = logger
        self.event = event
        self.interval = interval
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._count = 0

    def occurred(self, message: str, *args: object, **fields: Any) -> bool:
        """Count one occurrence; log a WARNING line with the count if the interval has passed. Return True if so."""
        now = time.monotonic()
        with self._lock:
            self._count += 1
            if now - self._last < self.interval:
                return False
            self._last, count, self._count = now, self._count, 0
        self.logger.warning(message, *args, extra={"event": self.event, "count": count, **fields})
        return True


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(*, fmt: str, level: str, stream: str = "stdout") -> dict[str, Any]:
    """Return the dictConfig for LOG_FORMAT json or plain, everything to stream (stdout or stderr) at level."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "bookstore.logging.RequestIdFilter"}},
        "formatters": {
            "json": {"()": "bookstore.logging.JsonFormatter"},
            "plain": {"format": PLAIN_FORMAT},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "stream": f"ext://sys.{stream}",
                "formatter": fmt,
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }
