"""Request bodies as JSON: one document (a value, an admin payload), or a batch op by op.

A batch body may be tens of MiB. Parsed whole, its Python objects took ten times its size
(three concurrent 29 MiB batches took a node from 60 MB to 950 MB) and the parse held the
event loop for seconds, delaying the node's gossip probes. Read op by op, a batch holds at
most one op's objects at a time besides the body's text, is refused at its 1,001st op
before the rest is parsed, and the loop is handed back between ops. A batch no longer than
one op may be (the common bulk write, ~150 KB) is parsed whole, as fast as a value is.

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

import orjson
import trio

from kvs.api.errors import ApiError
from kvs.model import json_number_shapes

SHAPE = 'batch body must be {"ops": [...]}'
YIELD_EVERY = 64 * 1024  # characters parsed between two checkpoints (a few ms)
FIRST_WINDOW = 4096  # characters an op is first parsed in (most ops are far smaller)
MAX_FIELD_NAME = 256

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


def parse_json_document(body: bytes, shapes: tuple[bool, bool] | None = None) -> Any:
    """Validate a client's JSON document. Raises ApiError(400) saying what is wrong.

    `shapes` is `json_number_shapes(body)`, for a caller that has it already."""
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON document")
    _, may_hold_huge_int = shapes or json_number_shapes(body)
    # orjson parses 2-5x faster, and refuses all the stdlib refuses below (NaN, Infinity,
    # numbers that overflow a double, bad UTF-8, ...) and a little more (lone surrogate
    # escapes): whatever it refuses, the stdlib decides, and explains. But it reads an integer
    # beyond 64 bits as a float, losing digits, so a document that may hold one goes to the
    # stdlib, which keeps it exact. And it takes nesting the stdlib refuses (its limit, ~950
    # levels, depends on the stack): orjson.dumps, cheap next to parsing, refuses more than
    # 254 levels, so a document it writes is far from that limit; a deeper one goes to the
    # stdlib too.
    if not may_hold_huge_int:
        try:
            document = orjson.loads(body)
            orjson.dumps(document)
            return document
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 encoded JSON") from None
    try:
        document = DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise invalid_json(exc) from None
    refuse_lone_surrogates(document)
    return document


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
            raise self.error(self.at, f"expected {what}")
        self.at += 1

    def value(self, limit: int, what: str) -> Any:
        """The JSON value at the cursor, if its text is at most `limit` characters.

        Parsed in a window of the text that grows (8x) up to `limit`: a value longer than
        that is refused (413) having cost the parse of `limit` characters at most, never the
        Python objects of the whole body (29 MiB of floats made 700 MB of them)."""
        self.skip_space()
        start, text = self.at, self.text
        window = min(FIRST_WINDOW, limit)
        while True:
            end = min(start + window, len(text))
            whole = end == len(text)
            try:
                value, used = DECODER.raw_decode(text[start:end] if start or not whole else text)
            except json.JSONDecodeError as exc:
                if whole:
                    raise self.error(start + exc.pos, exc.msg) from None
                if window < limit:
                    window = min(window * 8, limit)  # the window may have cut the value short
                    continue
                # At the limit: an error in the window's last few characters (a literal or an
                # escape cut in two) or an unterminated string means the value goes on.
                if exc.pos < end - start - 8 and not exc.msg.startswith("Unterminated string"):
                    raise self.error(start + exc.pos, exc.msg) from None
                raise ApiError(413, f"{what} is longer than {limit} characters of JSON") from None
            except (ValueError, RecursionError) as exc:
                raise invalid_json(exc) from None
            if not whole and used >= end - start and window < limit:
                window = min(window * 8, limit)  # it may go on past the window: look further
                continue
            self.at = start + used
            return value

    def error(self, at: int, message: str) -> ApiError:
        line = self.text.count("\n", 0, at) + 1
        column = at - self.text.rfind("\n", 0, at)
        return ApiError(
            400, f"request body is not valid JSON: {message} at line {line} column {column}"
        )


async def iter_batch_ops(
    body: bytes | bytearray,
    max_ops: int,
    max_op_chars: int,
    *,
    whole_up_to: int | None = None,
    shapes: tuple[bool, bool] | None = None,
) -> AsyncIterator[tuple[int, Any]]:
    """Yield `(index, op)` for each element of the body's `ops` array, parsed one at a time.

    An op's JSON text may be at most `max_op_chars` long (413 past it, before it is parsed
    whole). The body is `{"ops": [...]}` and nothing else: another field is a 400 (a field
    of any size would otherwise have to be parsed to be skipped), and so is `ops` twice.
    A body up to `whole_up_to` characters (default `max_op_chars`) is parsed whole; `shapes`
    is `json_number_shapes(body)`, for a caller that has it already."""
    whole = max_op_chars if whole_up_to is None else whole_up_to
    if len(body) <= whole and body.count(b'"ops"') <= 1:
        # As short as one op may be: parsed whole (the same refusals, 5x faster). Naming ops
        # twice needs the key twice, which sends a body down the op-by-op path to be refused.
        for index, op in enumerate(_whole_batch_ops(body, max_ops, shapes)):
            yield index, op
        return
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
        reader.value(max_op_chars, "the body")  # invalid JSON says so; else the shape is wrong
        raise ApiError(400, SHAPE)
    reader.at += 1
    seen_ops = False
    first = True
    checkpoint = 0
    while reader.peek() != "}":
        if not first:
            reader.expect(",", "',' or '}'")
        first = False
        if reader.peek() != '"':
            raise reader.error(reader.at, "expected a field name")
        name = reader.value(MAX_FIELD_NAME, "a field name")
        reader.expect(":", "':'")
        if name != "ops":
            raise ApiError(400, f"unknown field {name[:64]!r}: {SHAPE}")
        if seen_ops:
            raise ApiError(400, "batch body names ops twice")
        seen_ops = True
        if reader.peek() != "[":
            raise ApiError(400, SHAPE)
        reader.at += 1
        index = 0
        while reader.peek() != "]":
            if index:
                reader.expect(",", "',' or ']'")
            if index >= max_ops:
                raise ApiError(400, f"a batch holds at most {max_ops} ops")
            op = reader.value(max_op_chars, f"op {index}")
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
        raise reader.error(reader.at, "extra data after the document")
    if not seen_ops:
        raise ApiError(400, SHAPE)


def _whole_batch_ops(
    body: bytes | bytearray, max_ops: int, shapes: tuple[bool, bool] | None
) -> list[Any]:
    """The ops of a body parsed whole, with the op-by-op path's refusals."""
    document = parse_json_document(body, shapes)
    if isinstance(document, dict) and document.keys() - {"ops"}:
        other = next(name for name in document if name != "ops")
        raise ApiError(400, f"unknown field {other[:64]!r}: {SHAPE}")
    ops = document.get("ops") if isinstance(document, dict) else None
    if not isinstance(ops, list):
        raise ApiError(400, SHAPE)
    if len(ops) > max_ops:
        raise ApiError(400, f"a batch holds at most {max_ops} ops")
    return ops


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
