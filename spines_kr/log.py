"""Structured logs: dotted event names with key=value fields, one line per event.

Data model: one process-wide sink (level, renderer, output) set by ``configure``; loggers are
cheap handles (``get_logger(name)``) that every module may hold from import time.  A logger's
``debug``/``info``/``warning``/``error``/``critical(event, **fields)`` writes one line:
    JSON  ``{...fields, "event": "neighbor.up", "level": "info", "timestamp": "...Z"}`` -- the
          keys and order of structlog's JSONRenderer, for journald, log shippers, lab log files
          and the tests that read them; used whenever the output is not a terminal
    console  structlog's ConsoleRenderer, for a person at a terminal (``log_format`` forces
          either).  structlog is imported only then: it loads asyncio and ssl, about 11 MB that
          a daemon on a small router has no use for.
Output goes to a file (``-lf``, line-buffered, appended) or to whatever ``sys.stderr`` is at
the time of the call (never a stream object that may since have closed).

Entry points: ``configure(level, fmt, log_file) -> Logger``, ``get_logger(name)``.
Until ``configure`` is called, warnings and errors go to stderr as JSON.
"""

from __future__ import annotations

import json
import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _timestamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _json(level: str, event: str, fields: dict) -> str:
    fields["event"] = event
    fields["level"] = level
    fields["timestamp"] = _timestamp()
    return json.dumps(fields, default=str)


class _Sink:
    def __init__(self) -> None:
        self.level = LEVELS["warning"]
        self.render = _json
        self.stream = None  # None: sys.stderr at the time of each call

    def emit(self, level: str, event: str, fields: dict) -> None:
        if LEVELS[level] < self.level:
            return
        try:
            line = self.render(level, event, fields)
        except Exception as e:  # noqa: BLE001 - a field that cannot be rendered is no crash
            line = _json(level, event, {"render_error": repr(e)})
        stream = self.stream or sys.stderr
        try:
            stream.write(line + "\n")
            if self.stream is None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or a closed stream must not stop the daemon


_sink = _Sink()


class Logger:
    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def debug(self, event: str, **fields) -> None:
        if _sink.level <= 10:
            _sink.emit("debug", event, fields)

    def info(self, event: str, **fields) -> None:
        if _sink.level <= 20:
            _sink.emit("info", event, fields)

    def warning(self, event: str, **fields) -> None:
        _sink.emit("warning", event, fields)

    def error(self, event: str, **fields) -> None:
        _sink.emit("error", event, fields)

    def critical(self, event: str, **fields) -> None:
        _sink.emit("critical", event, fields)

    warn = warning


def get_logger(name: str | None = None) -> Logger:
    return Logger(name)


def _console(tty: bool):
    import structlog  # a person is reading: structlog's renderer is worth its import here

    renderer = structlog.dev.ConsoleRenderer(colors=tty)

    def render(level: str, event: str, fields: dict) -> str:
        fields["event"] = event
        fields["level"] = level
        fields["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return renderer(None, level, fields)

    return render


def configure(level: str = "info", fmt: str = "auto", log_file: str | None = None) -> Logger:
    """Set the process's log level, format and output; returns a logger."""
    if _sink.stream is not None and _sink.stream not in (sys.stdout, sys.stderr):
        try:
            _sink.stream.close()
        except OSError:
            pass
    _sink.stream = open(log_file, "a", buffering=1, encoding="utf-8") if log_file else None
    tty = (_sink.stream or sys.stderr).isatty()
    _sink.render = _console(tty) if fmt == "console" or (fmt == "auto" and tty) else _json
    _sink.level = LEVELS[level]
    return Logger()
