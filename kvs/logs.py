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
