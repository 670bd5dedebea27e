"""The building blocks of hostile HTTP input: tables of hostile values (numbers, durations,
hosts, strings, bad JSON, methods, targets, versions), JSON spliced as is, placeholders for
tokens, and fake JWTs.

Rule: tables and pure functions; every random choice comes from the caller's generator.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any
from urllib.parse import quote

from kvs.testing.http_plan import MARKER_READERS

# --- tables ------------------------------------------------------------

# fmt: off  (tables of hostile values, kept dense)
NUMBERS = [
    "0",
    "1",
    "-1",
    "100",
    "1001",
    "5001",
    "999999999999999999999999",
    "²",
    "١٢",
    "𝟗",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e3",
    "1.5",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "1_000",
    "",
    "true",
    "null",
    "[]",
    "9" * 4301,
    "9" * 5000,
    "-" + "9" * 5000,
    "0" * 5000 + "1",
    "²³",
    "1e400",
    "-0",
    "18446744073709551616",
    "9223372036854775808",
    "140737488355328",
]
DURATIONS = [
    "30s",
    "1h",
    "500ms",
    "0",
    "0s",
    "-1s",
    "1e400",
    "1e400s",
    "NaN",
    "nans",
    "infs",
    "inf",
    "²s",
    "²",
    "١s",
    "1e-9s",
    "9" * 5000,
    "9" * 5000 + "s",
    "1y",
    "30",
    "1.5m",
    " ",
    "𝟗s",
    "100000000000000d",
    "3153600001",
    "0.0001ms",
    "1" + "0" * 308 + "ms",
    "-0",
    "1_0s",
]
HOSTS = [
    "a" * 64,
    "a" * 64 + ".example",
    "x." * 130 + "x",
    "ünï.example",
    "xn--",
    "[::1]:80",
    "[::1",
    "h:99999",
    "h:-1",
    "h:²",
    "h:",
    ":80",
    "h h",
    "h/x",
    "%00",
    "a" * 10000,
    "h:80:80",
    "localhost",
    "a..b",
    ".",
    "-a-.example",
    "h:0",
    "h:65536",
    "h:" + "9" * 5000,
    "1.2.3.4.5",
    "[zz]",
    "a_b",
    "\u212a.example",
]
NASTY_STRINGS = [
    "",
    " ",
    "\u0000",
    "\ud7ff",
    "\u2028",
    "ünïcødé",
    "😀" * 50,
    "x" * 300,
    "x" * 100_000,
    "../../etc/passwd",
    "%00",
    "²",
    "NaN",
    "null",
    "{}",
    "\u202e",
    "a\nb",
    "a\r\nX-Injected: 1",
]
BAD_JSON = [
    b"",
    b" ",
    b"{",
    b"}",
    b"[1,]",
    b"{'a': 1}",
    b'{"a" 1}',
    b'{"a": 1} trailing',
    b"NaN",
    b"[NaN]",
    b'{"a": Infinity}',
    b"[-Infinity]",
    b"1e400",
    b"[1e400, -1e400]",
    b'{"a": "\xff\xfe"}',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"\\ud800"',
    b'{"a": "\\ud83d"}',
    b"\xef\xbb\xbf{}",
    b"\x00",
    b"[" + b"1," * 10 + b"]",
    b'{"a":1,"a":2}',
    b'{"":0}',
    b"0" * 5000,
    b"9" * 5000,
    b"-" + b"9" * 5000,
    b"[" + b"9" * 5000 + b"]",
    b'"\\u0000"',
    b"true",
    b"null",
    b"[]",
    b'"string"',
    b"-0",
    b"1.0e-400",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\t\n\r ",
    b'{"a":[1,2,{"b":null}]}',
]
METHODS = [b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"]
SAFE_METHODS = [b"GET", b"HEAD", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"]
WEIRD_METHODS = [
    b"get",
    b"GE T",
    b"GET\x00",
    b"\xffGET",
    b"X" * 10000,
    b"PRI",
    b"M-SEARCH",
    b"G\rET",
    b"",
    b"PROPFIND",
    b"\xc3\xa9T",
    b"GET\t",
]
WEIRD_TARGETS = [
    b"*",
    b"?a=1",
    b"http://127.0.0.1/kv/a",
    b"http://evil.example/health",
    b"https://[::1]:99999/kv/a",
    b"//kv//a",
    b"/%",
    b"/%zz",
    b"/kv/%00",
    b"/kv/a\x00b",
    b"/kv/\xff\xfe",
    b"/" + b"a" * 100_000,
    b"/kv/" + b"%2F" * 200,
    b"",
    b"#",
    b"/kv/a#frag",
    b"/../../etc/passwd",
    b"/kv/..%2F..%2Fx",
    b"/kv/a?%",
    b"/kv/a?a=%zz&&&=&",
    b"/kv/a?" + b"a=1&" * 5000,
    b"\\kv\\a",
    b"/kv/a b",
    b"/health?" + b"x" * 60000,
    b"/kv/%C2%B2",
    b"/kv/_ls?limit=%C2%B2",
    b"/kv/\xc2\xb2/_ls",
    b"/cluster/info?x=1",
    b"?",
    b"/kv/_watch?since=%C2%B2",
    b"/kv/%ED%A0%80",
    b"/kv/%FF",
    b"/api/data/%FF/history",
    b"/kv/a%2F%2E%2E",
]
VERSIONS = [
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/9.9",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"HTTP/1",
    b"",
    b"HTTP/1.1\x00",
    b"HTTP/11.1",
    b"XTTP/1.1",
    b"HTTP/3",
]
# fmt: on


class Raw:
    """JSON text spliced in as is by `dump` (NaN, 5000-digit numbers, deep nesting...)."""

    def __init__(self, text: bytes) -> None:
        self.text = text


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs: duplicates allowed."""


def dump(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return b"{" + b",".join(dump(str(k)) + b":" + dump(v) for k, v in value) + b"}"
    if isinstance(value, dict):
        return b"{" + b",".join(dump(str(k)) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def pct(text: str) -> bytes:
    return quote(text, safe="/").encode()


def tok(name: str) -> bytes:
    return b"{{tok:" + name.encode() + b"}}"


MARKER_READ_TOKENS = tuple(tok(name) for name in MARKER_READERS)


def fake_jwt(rng: random.Random) -> bytes:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = rng.choice(
        [b'{"alg":"none","typ":"JWT"}', b'{"alg":"HS512"}', b'{"alg":"RS256"}', b"{}", b"\xff"]
    )
    payload = rng.choice(
        [
            b'{"sub":"root","exp":99999999999}',
            b"{}",
            b'{"exp":"' + b"9" * 5000 + b'"}',
            b"[]",
            b"\x00",
        ]
    )
    return b64(header) + b"." + b64(payload) + b"." + rng.choice([b"", b"sig", b64(b"\x00" * 32)])
