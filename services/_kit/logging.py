"""Structured logging for every CloudMart process: JSON in prod, a readable console in dev.

:func:`configure_logging` sets up structlog (and routes the standard library's loggers, e.g.
uvicorn's, through the same renderer) once per process; calling it again with the same
settings does nothing, with different ones reconfigures. Context such as ``request_id``,
``correlation_id``, ``saga_id`` or ``order_id`` is bound with :mod:`structlog.contextvars`
at the boundaries (an HTTP request, a consumed message) and appears on every line logged
inside them.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid

import structlog

from activities.faults import is_infrastructure_fault
from services._kit.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
CORRELATION_ID_HEADER = "X-Correlation-ID"

# An incoming id is echoed into logs and a response header: only accept a tame one.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# structlog's configuration is process-wide by nature; remember what it was set to, so that
# several apps built in one process (tests, embedded mode) configure it once.
_configured_as: tuple[bool, int] | None = None


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the standard ``logging`` root for ``settings`` (idempotent)."""
    global _configured_as
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    wanted = (settings.json_logs, level)
    if _configured_as == wanted:
        return

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_logs
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_QuietDeadConnections())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if settings.json_logs else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cloudmart", False)]:
        root.removeHandler(old)
    handler._cloudmart = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _configured_as = wanted


class _QuietDeadConnections(logging.Filter):
    """Drop the pool's traceback for a connection it could not close because the database or
    the network had already dropped it ("Exception terminating connection"): one per pooled
    connection at every outage, saying what the outage's one ``dependency.lost`` line says."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("sqlalchemy.pool"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not is_infrastructure_fault(exc)


def request_id_from(value: str | None) -> str:
    """The caller's request id when it is a tame token, else a fresh one."""
    if value and _SAFE_ID.match(value):
        return value
    return uuid.uuid4().hex
