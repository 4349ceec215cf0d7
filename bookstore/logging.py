"""Log lines for machines: one JSON object per line, carrying the request id and every `extra=` field.

settings.LOGGING picks JsonFormatter (LOG_FORMAT=json, the default with DEBUG off) or a plain
line that still shows the request id (LOG_FORMAT=plain, the default with DEBUG on).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from bookstore.request_id import get_request_id

# Attributes every LogRecord has: anything else on a record came from `extra=` (or a filter).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _jsonable(value: Any) -> Any:
    """Return value if json can write it as is, else its str() (requests, Decimals, enums...)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, request_id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": get_request_id(),
        }
        for key, value in record.__dict__.items():
            # The fixed fields win over an extra of the same name: every line reads the same way.
            if key not in _RECORD_ATTRS and key not in payload and not key.startswith("_"):
                payload[key] = _jsonable(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Put the current request id on each record as `request_id` (for the plain format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = get_request_id() or "-"
        return True


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """Return the dictConfig for LOG_FORMAT json or plain, everything to stdout at level."""
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
                "stream": "ext://sys.stdout",
                "formatter": fmt,
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }
