"""Logging through structlog: readable in a terminal, JSON lines with ``--log-format json``.

An event logged with ``exc_info`` (``log.exception(...)``, or ``exc_info=exc``) shows its
traceback the way each format's reader wants it: in console format the event line with its
key=value fields, then the plain multi-line Python traceback; in JSON format an
``exception`` list (``exc_type``, ``exc_value``, ``frames``) inside the one JSON line. Never
pass a formatted traceback as a field: it renders as one quoted string full of ``\\n``.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# The method a structlog event was logged with -> its level, for _DropBelow.
_METHOD_LEVELS = {
    **_LEVELS,
    "exception": logging.ERROR,
    "warn": logging.WARNING,
    "msg": logging.INFO,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

# One list for the life of the process, changed in place: each logger structlog has cached
# (every module's ``log``, on its first use) holds this very list, so a reload's new format
# and level reach them too; a new list would reach only loggers not used yet.
_PROCESSORS: list[structlog.types.Processor] = []


class _DropBelow:
    """Drops events under a level. The level is checked here rather than by the wrapper
    class because cached loggers keep the wrapper class they were made with."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(
        self, _logger: object, method: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        if _METHOD_LEVELS.get(method, logging.CRITICAL) < self.level:
            raise structlog.DropEvent
        return event_dict


def info_enabled(level: str) -> bool:
    """Whether a server at log level ``level`` writes info lines."""
    return _LEVELS[level] <= logging.INFO


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Send structlog and stdlib logs (grpc, aiohttp) to stderr in one format.

    Called again (a config reload), it changes the format and level of every logger,
    those already used included.
    """
    numeric = _LEVELS[level]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions: list[structlog.types.Processor]
    if log_format == "json":
        # Frames without their locals: those may hold request tensors or secrets, and
        # rendering them costs more than the failure they describe.
        exceptions = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
        renderer: structlog.types.Processor = structlog.processors.JSONRenderer()
    else:
        # The renderer prints exc_info itself, below the event line. Plain, not rich's
        # boxes (rich is often installed): the same text in a terminal, a file or a test.
        exceptions = []
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    # Our own events render straight to stderr: the stdlib route costs a quarter of the
    # server's per-request CPU when every request writes an access-log line.
    # Debug events pass the wrapper class and _DropBelow drops them (about a microsecond
    # each; the kernel logs debug on no request's success path), so that lowering the level
    # on a reload reaches cached loggers too.
    drop = [_DropBelow(numeric)] if numeric > logging.DEBUG else []
    _PROCESSORS[:] = [*drop, *shared, *exceptions, renderer]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )
    # Third-party libraries log through the stdlib; their records (exc_info included) go
    # through the same processors, so every line on stderr has one format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, _strip_message, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Python warnings (a framework's deprecations) as records too: printed raw, they would be
    # the only lines of a JSON log that are not JSON.
    logging.captureWarnings(True)
    # aiohttp's own access log duplicates ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _strip_message(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """A stdlib message without its trailing newline (a captured warning ends with one)."""
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = event.rstrip()
    return event_dict
