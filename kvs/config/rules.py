"""What a setting's value may be: the parsers behind every key, each with its bounds in words.

A `Rule` turns what YAML gave into the typed value (or raises ValueError with a message for
people) and says, for the generated documentation, what it accepts. `render` writes a typed
value back the way a person would type it in the file (`500ms`, `1MiB`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from kvs.model import parse_duration
from kvs.net.seeds import split_seed


class ConfigError(Exception):
    """A bad config value. `str()` is one line naming the file and key."""

    def __init__(self, key: str, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.key = key
        self.path = str(path) if path else None
        where = f"{self.path}: " if self.path else ""
        shown = key if key.isprintable() else repr(key)  # a key with a line break stays one line
        super().__init__(f"{where}{shown}: {message}")


@dataclass(frozen=True)
class Rule:
    """How one kind of value is read (`parse`), and what it accepts, in words (`accepts`)."""

    parse: Callable[[Any], Any]
    accepts: str
    unit: str = ""  # "duration" or "size": how `render` writes the value

    def __call__(self, value: Any) -> Any:
        return self.parse(value)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like `1MiB`, `512KB`, `64GiB`."""
    if isinstance(value, bool):
        raise ValueError("must be a size in bytes (1048576) or a string like '1MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(
        f"{value!r} is not a size: use bytes (1048576) or a number with a unit (1MiB, 512KB, 64GiB)"
    )


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


BOOL = Rule(_bool, "`true` or `false`")


def integer(lo: int, hi: int) -> Rule:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return Rule(parse, f"integer, {lo:_}–{hi:_}".replace("_", ","))


def _workers(value: Any) -> int:
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_HTTP_WORKERS))
    return integer(1, MAX_HTTP_WORKERS).parse(value)


MAX_HTTP_WORKERS = 64
WORKERS = Rule(_workers, f"integer, 1–{MAX_HTTP_WORKERS}, or `auto` (one per CPU)")


def port(*, zero: bool) -> Rule:
    rule = integer(0 if zero else 1, 65535)
    return Rule(rule.parse, "port, 0–65535 (0: derived)" if zero else "port, 1–65535")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


TEXT = Rule(_str, "text")


def _keyring(value: Any) -> str | list[str]:
    """A cluster secret, or a keyring: a list of them, the first used to send, all accepted.
    Never echoes a value: these are secrets."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError("must be a string, or a non-empty list of strings (a keyring)")
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError("every secret of the keyring must be a non-empty string")
    if len(set(value)) != len(value):
        raise ValueError("the keyring lists the same secret twice")
    return list(value)


KEYRING = Rule(_keyring, "text, or a list of texts (a keyring)")
PATH = Rule(lambda v: _str(v) or ".", "path, relative to the config file's directory")
FILE = Rule(_str, "file, relative to the config file's directory")


def _node_id(value: Any) -> str:
    value = _str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(f"{value!r} is not a node id: use 1-64 letters, digits, '.', '_' or '-'")
    return value


NODE_ID = Rule(_node_id, "1–64 letters, digits, `.`, `_`, `-`")


def _address(value: Any) -> str:
    value = _str(value)
    if value in ("localhost", ""):
        return value or "127.0.0.1"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address (for example 127.0.0.1 or 0.0.0.0)"
        ) from None
    return value


def _advertise(value: Any) -> str:
    value = _address(value)
    if value in ("0.0.0.0", "::"):
        raise ValueError("must be an address peers can reach, not a wildcard")
    return value


ADDRESS = Rule(_address, "IP address")
ADVERTISE = Rule(_advertise, "IP address, not a wildcard")


def _seeds(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of host:port or https://host:port entries")
    for entry in value:
        split_seed(entry)
    return [entry.strip() for entry in value]


SEEDS = Rule(_seeds, "list of `host:port`, `http://host:port` or `https://host:port`")


def _duration(value: Any) -> float:
    return parse_duration(value, what="value")


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value, what="value")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


DURATION = Rule(_duration, "duration, 0 or more", "duration")


def integer_duration(lo: int, hi: int) -> Rule:
    """A duration of whole seconds between `lo` and `hi` (tokens count in seconds)."""

    def parse(value: Any) -> float:
        seconds = parse_duration(value, what="value")
        if not lo <= seconds <= hi:
            raise ValueError(
                f"must be between {render(lo, 'duration')} and {render(hi, 'duration')}"
            )
        return float(int(seconds))

    return Rule(parse, f"duration, {render(lo, 'duration')}–{render(hi, 'duration')}", "duration")


POSITIVE_DURATION = Rule(_positive_duration, "duration, above 0", "duration")


def choice(*choices: str) -> Rule:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return Rule(parse, " or ".join(f"`{c}`" for c in choices))


def size(lo: int) -> Rule:
    def parse(value: Any) -> int:
        size = parse_size(value)
        if size < lo:
            raise ValueError(f"must be at least {lo} bytes")
        return size

    shown = render(lo, "size")
    return Rule(
        parse, f"size, at least {shown if not shown.isdigit() else shown + ' bytes'}", "size"
    )


def _cron(value: Any) -> str:
    from croniter import croniter

    value = _str(value).strip()
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a cron expression: five fields, minute hour day-of-month month"
            " day-of-week, in UTC (for example '0 0 * * *', daily at midnight)"
        )
    return value


CRON = Rule(_cron, "cron expression, five fields, UTC")

_DURATION_UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "m"), (1.0, "s"), (0.001, "ms"))
_BINARY_UNITS = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))


def render(value: Any, unit: str = "") -> str:
    """`value` as a person writes it in the YAML file: `500ms`, `7d`, `1MiB`, `true`, `[]`."""
    if unit == "duration":
        if value == 0:
            return "0s"
        for scale, suffix in _DURATION_UNITS:
            count = value / scale
            if count >= 1 and abs(count - round(count)) < 1e-9:
                return f"{round(count)}{suffix}"
        return f"{value}s"
    if unit == "size":
        for scale, suffix in _BINARY_UNITS:
            if value >= scale and value % scale == 0:
                return f"{value // scale}{suffix}"
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (
        not re.fullmatch(r"[A-Za-z0-9._/-]+", value) or yaml.safe_load(value) != value
    ):
        return json.dumps(value)  # a YAML double-quoted scalar: read back as this very text
    return json.dumps(value) if isinstance(value, list) else str(value)
