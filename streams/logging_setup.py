"""Log lines as text for people or as JSON lines for log pipelines, with secrets redacted.

Fields bound with :func:`bind` (the agent binds the message's topic, partition and offset)
ride along on every record logged inside the block, including from the tasks it starts; a
record's own ``extra=`` fields are added beside them. Every formatted line passes through
redaction of the configured secrets, so an API key that slips into a message or a traceback
is never written out.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.config
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from streams.netguard import redact_urls

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "bind", "configure", "dict_config"]

LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Libraries whose INFO lines (one per HTTP request, per partition move) drown the outcome lines.
_CHATTY = ("httpx", "httpcore", "aiokafka")


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (and the tasks it starts)."""
    token = _context.set({**_context.get({}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get({}))
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
    return fields


class _Redacting(logging.Formatter):
    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Short strings would redact ordinary words; real keys are long.
        self._secrets = tuple(s for s in secrets if len(s) >= 8)

    def _redact(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, "***")
        # Presigned URLs carry their signature in the query, and httpx logs each request's
        # full URL at DEBUG: no URL leaves with its query or userinfo.
        return redact_urls(line)


class TextFormatter(_Redacting):
    """``time LEVEL logger: message``, for people."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", secrets=secrets)

    def format(self, record: logging.LogRecord) -> str:
        """Format the record and redact secrets."""
        return self._redact(super().format(record))


class JsonFormatter(_Redacting):
    """One JSON object per line: ts, level, logger, message, bound and extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record and redact secrets."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        text = orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._redact(text)


def dict_config(
    log_format: LogFormat = "text", level: int | str = "INFO", *, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` configuration: one handler on stderr."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    quiet = "DEBUG" if level in ("DEBUG", logging.DEBUG) else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"streams": {"()": formatter, "secrets": list(secrets)}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "streams",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": quiet} for name in _CHATTY},
    }


def configure(
    log_format: LogFormat = "text", level: int | str = "INFO", *, secrets: Iterable[str] = ()
) -> None:
    """Apply :func:`dict_config` to the logging system."""
    logging.config.dictConfig(dict_config(log_format, level, secrets=secrets))
