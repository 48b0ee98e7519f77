"""JSON-lines logging to stderr, with shard/sequence/batch context, and the daemon's lines.

Every line is one JSON object: ``ts``, ``level``, ``logger``, ``msg``, then the static context
given to :func:`configure_logging`, the bound context (:func:`bind_context`,
:func:`log_context`), and any ``extra={...}`` of the call. stderr, because a processor's
stdout is the KCL protocol channel.

Context lives in a ContextVar: it follows the code that bound it and never leaks between
threads (a new thread starts with an empty context).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, TextIO

_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "aetherstream_log_context", default=MappingProxyType({})
)

# LogRecord's own attributes; anything else on a record came from extra={...}.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}
_FIXED = ("ts", "level", "logger", "msg")
# A relayed line (see java_log_line_to_json) carries its own time and logger; they win.
_OVERRIDABLE = frozenset({"ts", "logger"})
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "opensearch")


def bind_context(**values: Any) -> Token[Mapping[str, Any]]:
    """Add fields to every following log line of this context; returns a token to reset."""
    return _CONTEXT.set({**_CONTEXT.get(), **values})


def reset_context(token: Token[Mapping[str, Any]]) -> None:
    _CONTEXT.reset(token)


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Fields for the lines logged inside the block only, e.g. one batch's sequence range."""
    token = bind_context(**values)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_CONTEXT.get())


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, static_context: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static_context or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for source in (self.static, _CONTEXT.get()):
            out.update((k, v) for k, v in source.items() if k not in _FIXED)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and (key not in _FIXED or key in _OVERRIDABLE):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at emit time (test capture, redirection)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def configure_logging(
    level: str | int = "INFO", *, stream: IO[str] | None = None, **static_context: Any
) -> logging.Handler:
    """Route all logging to JSON lines on stderr (or ``stream``); returns the handler."""
    handler: logging.Handler = (
        _StderrHandler() if stream is None else logging.StreamHandler(stream)
    )
    handler.setFormatter(JsonFormatter(static_context))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Client libraries log every request at DEBUG/INFO; keep them at WARNING unless asked.
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    logging.captureWarnings(True)
    return handler


# --- the Java daemon's output ----------------------------------------------------------------
JAVA_PREFIX = "KCL|"
_NEWLINE_MARK = " ⏎ "  # what logback.xml turns newlines into
_JAVA_LEVELS = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}
_STDERR_RELAY = re.compile(r"^Received error line from subprocess \[(.*)\] for shard (\S+)$", re.S)
_TRACE_LINE = re.compile(r"^(\s+at |Caused by: |\s*\.\.\. \d+ more|[\w$.]+(Exception|Error)\b)")


def java_log_line_to_json(line: str) -> dict[str, Any]:
    """One line of the daemon's output as a log record dict (ts, level, logger, msg, ...).

    Three kinds of line arrive on the daemon's pipe:
    - its logback events (``KCL|ts|level|thread|logger|msg``, see logback.xml);
    - a processor's stderr line, which the daemon copies raw: our JSON, kept as it is;
    - anything else (printStackTrace, usage text): wrapped, ERROR if it looks like a trace.
    Keys never clash with LogRecord attributes, so the dict can go to ``extra=``.
    """
    line = line.rstrip("\r\n")
    if line.startswith(JAVA_PREFIX):
        parsed = _logback_line(line)
        if parsed is not None:
            return parsed
    if line.startswith("{"):
        relayed = _json_object(line)
        if relayed is not None:
            return relayed
    level = "ERROR" if _TRACE_LINE.match(line) else "INFO"
    return {"level": level, "logger": "kcl.daemon.output", "msg": line}


def _logback_line(line: str) -> dict[str, Any] | None:
    parts = line.split("|", 5)
    if len(parts) != 6:
        return None
    _, ts, level, thread, logger, msg = parts
    msg = msg.replace(_NEWLINE_MARK, "\n")
    relay = _STDERR_RELAY.match(msg)
    if relay:  # DrainChildSTDERRTask, if a custom logback config lets it through
        inner = _json_object(relay.group(1))
        if inner is not None:
            return inner
        return {"ts": ts, "level": "WARNING", "logger": "kcl.processor.stderr",
                "msg": relay.group(1), "shard": relay.group(2)}
    return {"ts": ts, "level": _JAVA_LEVELS.get(level, level), "logger": logger, "msg": msg,
            "java_thread": thread}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or "msg" not in value:
        return None
    # Keys that LogRecord owns would make logging raise when passed as extra=.
    return {k if k in _FIXED or k not in _RECORD_ATTRS else f"{k}_": v for k, v in value.items()}
