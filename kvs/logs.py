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
import trio


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

    Hostile input (a client, a peer) can cause one kind of failure at request speed;
    logging each one would let it fill the disk and drown the lines that matter. The first
    few of a kind are logged, the rest only counted, and the next line logged says how many
    were left out. Kinds are a few fixed labels, never peer data. Counting for metrics is
    the caller's job: this class only decides what reaches the log. The clock is Trio's by
    default (the simulator's, under simulation)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 1,
        period: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.logger = logger
        self._clock = clock
        self._burst = burst
        self._period = period
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind: (start, logged, skipped)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | bool | None = None,
    ) -> bool:
        """Log `message % args` unless this kind's quota is spent; True if it was logged."""
        now = self._clock() if self._clock is not None else trio.current_time()
        start, logged, skipped = self._windows.get(kind, (now, 0, 0))
        if now - start >= self._period:
            start, logged = now, 0
        if logged >= self._burst:
            self._windows[kind] = (start, logged, skipped + 1)
            return False
        if skipped:
            message += f" ({skipped} more like this were not logged)"
        self._windows[kind] = (start, logged + 1, 0)
        self.logger.log(level, message, *args, exc_info=exc_info)
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
