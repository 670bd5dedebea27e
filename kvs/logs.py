"""Log output for a node: text for people (the default) or one JSON object per line.

JSON lines carry `time` (UTC, ISO 8601 with milliseconds), `level`, `node_id`, `logger`
and `message` (plus `exception` when there is one). Only the formatted message is
written, never the record's arguments or extra attributes, so nothing reaches the log
that the code did not put in a message on purpose (secrets never are).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "node_id": self.node_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class LogLimiter:
    """At most `burst` log lines per `period` seconds for each kind of event.

    Hostile input can cause one kind of failure at request speed; logging each one would let
    a client fill the disk and drown the lines that matter. The first few of a kind are
    logged, the rest only counted, and the next line logged says how many were left out.
    Counting for metrics is the caller's job: this class only decides what reaches the log."""

    def __init__(self, clock: Callable[[], float], *, burst: int = 5, period: float = 60.0) -> None:
        self._clock = clock
        self._burst = burst
        self._period = period
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind: (start, logged, skipped)

    def log(
        self,
        logger: logging.Logger,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log `message % args` unless this kind's quota is spent; True if it was logged."""
        now = self._clock()
        start, logged, skipped = self._windows.get(kind, (now, 0, 0))
        if now - start >= self._period:
            start, logged = now, 0
        if logged >= self._burst:
            self._windows[kind] = (start, logged, skipped + 1)
            return False
        if skipped:
            message += f" ({skipped} more like this were not logged)"
        if len(self._windows) > 1000:  # kinds are fixed strings; a bound all the same
            self._windows.clear()
        self._windows[kind] = (start, logged + 1, 0)
        logger.log(level, message, *args, exc_info=exc_info)
        return True


def setup_logging(level: str, node_id: str, log_format: str = "text") -> None:
    """Send the node's log to stderr, one line per event, each naming the node."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # httpx logs every request at INFO; a seed lookup is not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)
