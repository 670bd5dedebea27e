"""Log output: the JSON format is one parseable object per line, naming the node."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from kvs.logs import JsonFormatter, LogLimiter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("kvs.node", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_lines_carry_time_level_node_logger_and_the_formatted_message():
    line = JsonFormatter("node-7").format(record("peer %s is %d ms ahead", "n2", 1500))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "peer n2 is 1500 ms ahead"
    assert entry["level"] == "warning" and entry["node_id"] == "node-7"
    assert entry["logger"] == "kvs.node"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert set(entry) == {"time", "level", "node_id", "logger", "message"}


def test_a_multi_line_message_and_a_traceback_stay_on_one_line():
    line = JsonFormatter("n").format(record("first\nsecond", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "first\nsecond"
    assert "ValueError: boom" in entry["exception"]


def test_extra_attributes_are_not_written():
    rec = record("hello")
    rec.cluster_secret = "s3cret"  # as `extra=` would set it
    assert "s3cret" not in JsonFormatter("n").format(rec)


def test_log_limiter_logs_a_burst_then_counts_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("kvs.test.limiter")
    limiter = LogLimiter(logger, burst=2, period=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="kvs.test.limiter"):
        logged = [limiter.log(logging.WARNING, "a", "event %d", i) for i in range(5)]
        assert limiter.log(logging.WARNING, "b", "other kind")  # its own quota
        now[0] = 61.0
        assert limiter.log(logging.WARNING, "a", "event again")
    assert logged == [True, True, False, False, False]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "event 0",
        "event 1",
        "other kind",
        "event again (3 more like this were not logged)",
    ]
