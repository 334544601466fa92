"""sicog's log lines: plain for a person at a terminal, one JSON object a line for a platform's log pipeline.

SICOG_LOG_FORMAT=json (the default in the images, so in every pod sicog runs in): every log record of
the process, the status lines of sicog.console.say included, is one JSON object on one line of
standard error, with these keys in this order:

    {"time": "2026-05-04T09:30:12.345Z", "level": "info", "run_id": "3f2a...", "cycle": 1,
     "step": "score", "logger": "sicog.status", "message": "scorer: serving all-MiniLM-L6-v2 on cpu"}

plus "exception" (the traceback's text) when the record carries one. time: ISO 8601, UTC,
milliseconds; level: debug | info | warning | error | critical; cycle: null outside a step.
Uncaught exceptions and Python warnings become such lines too, and rich progress bars are off
(sicog.console.progress): a pod has no terminal to draw them on.

Otherwise (plain, the default outside the images) nothing changes for a person: status lines stay
`who: message` on standard output, and a process whose entry point called `configure()` prints
log records at WARNING and above as `level: message` on standard error. SICOG_LOG_LEVEL (debug,
info, ...) overrides the level: info in JSON mode, warning in plain mode.

Where a line's context comes from:
- run_id: `configure(run_id=...)`, else the environment's SICOG_RUN_ID (the compiled pipeline sets it
  on every task pod from the pod's `pipeline/runid` label; a PyTorchJob's pods get their launching
  task's);
- cycle and step: `context(step=..., cycle=...)`, which sicog.steps' `open_step` enters for a step's
  body. The innermost open context is also the process's: threads that did not inherit it (a
  thread pool's workers) log with it too.

Foundation module: imports nothing from sicog.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

FORMAT_ENV, LEVEL_ENV, RUN_ID_ENV = "SICOG_LOG_FORMAT", "SICOG_LOG_LEVEL", "SICOG_RUN_ID"
KEYS = ("time", "level", "run_id", "cycle", "step", "logger", "message")  # every JSON line has these, in this order
STATUS_LOGGER = "sicog.status"  # sicog.console.say's records
# Libraries that log every HTTP request at INFO (the remote sampler sends thousands): WARNING unless SICOG_LOG_LEVEL=debug.
CHATTY = ("httpx", "httpcore", "urllib3", "botocore", "filelock")

_context: ContextVar[dict | None] = ContextVar("sicog_log_context", default=None)
_process: dict = {}  # configure()'s values, then the innermost open context: what threads without a context see
_lock = threading.Lock()


def json_enabled() -> bool:
    """SICOG_LOG_FORMAT=json: every log line is one JSON object (read at each line, not once)."""
    return os.environ.get(FORMAT_ENV, "").strip().lower() == "json"


def current() -> dict:
    """{"run_id", "cycle", "step"} of a line logged here and now."""
    ctx = _context.get()
    base = _process if ctx is None else ctx
    return {"run_id": base.get("run_id") or os.environ.get(RUN_ID_ENV, ""), "cycle": base.get("cycle"), "step": base.get("step", "")}


@contextmanager
def context(*, step: str | None = None, cycle: int | None = None, run_id: str | None = None) -> Iterator[None]:
    """Lines logged inside carry these (None: the enclosing context's value)."""
    global _process
    given = {k: v for k, v in (("step", step), ("cycle", cycle), ("run_id", run_id)) if v is not None}
    outer = _context.get()
    with _lock:
        previous = _process
        _process = {**(_process if outer is None else outer), **given}
        token = _context.set(_process)
    try:
        yield
    finally:
        _context.reset(token)
        with _lock:
            _process = previous


def _time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object, one line: KEYS (+ "exception", "stack" when the record has them)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": _time(record.created), "level": record.levelname.lower(), **current(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """`level: message` (+ the traceback's lines)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_JSON, _PLAIN = JsonFormatter(), PlainFormatter()


def format_record(record: logging.LogRecord) -> str:
    """The record as this process writes it now (JSON or plain)."""
    return (_JSON if json_enabled() else _PLAIN).format(record)


class _StderrHandler(logging.Handler):
    """The root's handler: format_record() on whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(format_record(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


class _StatusHandler(logging.Handler):
    """sicog.console.say's lines: JSON on stderr in JSON mode, else `who: message` on stdout (or stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if json_enabled():
                text, stream = _JSON.format(record), sys.stderr
            else:
                text, stream = record.getMessage(), sys.stderr if getattr(record, "to_stderr", False) else sys.stdout
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001
            self.handleError(record)


def status_logger() -> logging.Logger:
    """The logger of status lines (its own handler, so it works before and without configure())."""
    log = logging.getLogger(STATUS_LOGGER)
    if not any(isinstance(h, _StatusHandler) for h in log.handlers):
        with _lock:
            if not any(isinstance(h, _StatusHandler) for h in log.handlers):
                log.addHandler(_StatusHandler())
                log.setLevel(logging.INFO)
                log.propagate = False  # the root's handler would write it a second time
    return log


def _level(json_mode: bool) -> int:
    name = os.environ.get(LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else None
    return level if isinstance(level, int) else (logging.INFO if json_mode else logging.WARNING)


def _excepthook(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("sicog").critical("uncaught %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("sicog").critical(
        "uncaught %s in thread %s: %s", args.exc_type.__name__, name, args.exc_value, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def configure(run_id: str | None = None, cycle: int | None = None, step: str | None = None) -> None:
    """Set up the process's logging (idempotent; entry points call it first): the root's handler,
    its level, and the process's run_id / cycle / step (None: keep). In JSON mode also: handlers
    others put on the root (a launcher's logging.basicConfig) go, so that every line has one format;
    Python warnings and uncaught exceptions become log records."""
    json_mode = json_enabled()
    with _lock:
        for key, value in (("run_id", run_id), ("cycle", cycle), ("step", step)):
            if value is not None:
                _process[key] = value
        root = logging.getLogger()
        if not any(isinstance(h, _StderrHandler) for h in root.handlers):
            if json_mode:
                for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
                    root.removeHandler(handler)
            root.addHandler(_StderrHandler())
        level = _level(json_mode)
        root.setLevel(level)
        for name in CHATTY:
            logging.getLogger(name).setLevel(max(level, logging.WARNING) if level > logging.DEBUG else logging.NOTSET)
    status_logger()
    if json_mode:
        logging.captureWarnings(True)
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        adopt("transformers")


def adopt(name: str) -> None:
    """In JSON mode, a library logger that writes through a plain handler of its own (transformers
    adds a StreamHandler and stops propagation) logs through the root's instead. Call it once the
    library is imported (configure() does, for transformers if it is)."""
    if not json_enabled() or name not in logging.root.manager.loggerDict:
        return
    log = logging.getLogger(name)
    for handler in [h for h in log.handlers if type(h) is logging.StreamHandler]:
        log.removeHandler(handler)
    log.propagate = True
