"""Reading a `_batch` body one op at a time.

A batch body may be tens of MiB. Parsed whole, its Python objects took ten times its size
(three concurrent 29 MiB batches took a node from 60 MB to 950 MB) and the parse held the
event loop for seconds, delaying the node's gossip probes. Read op by op, a batch holds at
most one op's objects at a time besides the body's text, is refused at its 1,001st op
before the rest is parsed, and the loop is handed back between ops.

Rule: this module decides what the body says, nothing else. It accepts exactly the JSON
the rest of the API accepts (the standard library's parser with the same refusals: NaN,
Infinity, numbers that overflow a double, lone surrogate escapes, nesting deeper than the
parser's recursion limit) and raises ApiError(400) saying what is wrong and where.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import trio

from kvs.api.errors import ApiError

SHAPE = 'batch body must be {"ops": [...]}'
YIELD_EVERY = 64 * 1024  # characters parsed between two checkpoints (a few ms)

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """Refuse numbers that overflow a double: they would be re-serialised as `Infinity`
    (invalid JSON) and read back as infinity by most clients."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is out of range (it overflows a 64-bit float)")
    return value


DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def invalid_json(exc: Exception) -> ApiError:
    """The 400 for a document the parser refused, saying where when it knows."""
    if isinstance(exc, json.JSONDecodeError):
        where = f" at line {exc.lineno} column {exc.colno}"
        return ApiError(400, f"request body is not valid JSON: {exc.msg}{where}")
    if isinstance(exc, RecursionError):
        return ApiError(400, "request body is not valid JSON: it is nested too deeply")
    return ApiError(400, f"request body is not valid JSON: {exc}")


class _Reader:
    """A cursor over the body's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        match = _WHITESPACE.match(self.text, self.at)
        assert match is not None  # `*` matches the empty string
        self.at = match.end()

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.at : self.at + 1]

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {what}")
        self.at += 1

    def value(self) -> Any:
        self.skip_space()
        try:
            value, self.at = DECODER.raw_decode(self.text, self.at)
        except (ValueError, RecursionError) as exc:
            raise invalid_json(exc) from None
        return value

    def error(self, message: str) -> ApiError:
        line = self.text.count("\n", 0, self.at) + 1
        column = self.at - self.text.rfind("\n", 0, self.at)
        return ApiError(
            400, f"request body is not valid JSON: {message} at line {line} column {column}"
        )


async def iter_batch_ops(body: bytes | bytearray, max_ops: int) -> AsyncIterator[tuple[int, Any]]:
    """Yield `(index, op)` for each element of the body's `ops` array, parsed one at a time.

    Fields other than `ops` are parsed (they must be valid JSON) and ignored, as a whole-
    document parse would. `ops` given twice is refused: a whole-document parse would keep
    the second silently."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 encoded JSON") from None
    del body  # the caller passed its only reference: the bytes go, the text stays
    if not text.strip(" \t\n\r"):
        raise ApiError(400, "request body is empty; send a JSON document")
    check_surrogates = _SURROGATE_ESCAPE.search(text) is not None
    reader = _Reader(text)
    if reader.peek() != "{":
        reader.value()  # invalid JSON says so; valid JSON of another shape is refused below
        raise ApiError(400, SHAPE)
    reader.at += 1
    seen_ops = False
    first = True
    checkpoint = 0
    while reader.peek() != "}":
        if not first:
            reader.expect(",", "',' or '}'")
        first = False
        name = reader.value()
        if not isinstance(name, str):
            raise reader.error("expected a field name")
        reader.expect(":", "':'")
        if name != "ops":
            reader.value()
            continue
        if seen_ops:
            raise ApiError(400, "batch body names ops twice")
        seen_ops = True
        if reader.peek() != "[":
            reader.value()
            raise ApiError(400, SHAPE)
        reader.at += 1
        index = 0
        while reader.peek() != "]":
            if index:
                reader.expect(",", "',' or ']'")
            if index >= max_ops:
                raise ApiError(400, f"a batch holds at most {max_ops} ops")
            op = reader.value()
            if check_surrogates:
                refuse_lone_surrogates(op)
            yield index, op
            index += 1
            if reader.at - checkpoint >= YIELD_EVERY:
                checkpoint = reader.at
                await trio.lowlevel.checkpoint()
        reader.at += 1
    reader.at += 1
    reader.skip_space()
    if reader.at != len(text):
        raise reader.error("extra data after the document")
    if not seen_ops:
        raise ApiError(400, SHAPE)


def refuse_lone_surrogates(value: Any) -> None:
    """The parser takes a lone surrogate escape (`"\\ud800"`) that no UTF-8 text can hold:
    such a key or value could be neither stored nor echoed back in an error."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "request body is not valid JSON: it holds a lone surrogate escape (\\uD800-\\uDFFF)",
        ) from None
