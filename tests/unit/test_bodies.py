"""kvs.api.bodies: a `_batch` body read op by op accepts what a whole-document parse does."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.api import bodies
from kvs.api.bodies import iter_batch_ops
from kvs.api.errors import ApiError


async def ops_of(
    body: bytes, max_ops: int = 1000, max_op_chars: int = 1 << 20, whole_up_to: int = 0
) -> list[Any]:
    ops = iter_batch_ops(body, max_ops, max_op_chars, whole_up_to=whole_up_to)
    return [op async for _, op in ops]


def run(
    body: bytes, max_ops: int = 1000, max_op_chars: int = 1 << 20, whole: bool = False
) -> list[Any]:
    """The ops of `body`, read op by op (or, `whole`, by the whole-body path)."""
    return trio.run(ops_of, body, max_ops, max_op_chars, 1 << 30 if whole else 0)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(json_values, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    window=st.sampled_from([8, 64, 4096]),
    whole=st.booleans(),
)
def test_it_yields_exactly_what_a_whole_parse_finds(
    ops: list[Any], indent: int | None, window: int, whole: bool
) -> None:
    # A tiny first window makes values cross window edges: growing it must not change them.
    body = json.dumps({"ops": ops}, indent=indent, ensure_ascii=False).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bodies, "FIRST_WINDOW", window)
        assert run(body, whole=whole) == json.loads(body)["ops"]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet='{}[],:" \n\tops0123456789.eE-+truefalsnx\\u', max_size=40).map(
        lambda t: '{"ops": [' + t
    )
)
@pytest.mark.parametrize("whole", [False, True])
def test_it_refuses_what_a_whole_parse_refuses(text: str, whole: bool) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        expected = None
    if (
        not isinstance(expected, dict)
        or expected.keys() != {"ops"}
        or not isinstance(expected["ops"], list)
    ):
        with pytest.raises(ApiError) as refused:
            run(text.encode(), whole=whole)
        assert refused.value.status == 400
    elif text.count('"ops"') == 1:
        assert run(text.encode(), whole=whole) == expected["ops"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"[]", '{"ops": [...]}'),
        (b'{"ops": {}}', '{"ops": [...]}'),
        (b'{"other": 1}', "unknown field 'other'"),
        (b'{"ops": [], "x": [1.5, 1.5]}', "unknown field 'x'"),
        (b'{"ops": [], "ops": []}', "twice"),
        (b'{"ops": [1,]}', "not valid JSON"),
        (b'{"ops": [1] x', "not valid JSON"),
        (b'{"ops": [1]} []', "extra data"),
        (b'{"ops": [NaN]}', "not valid JSON"),
        (b'{"ops": [1e999]}', "out of range"),
        (b'{"ops": ["\\ud800"]}', "lone surrogate"),
        (b'{"ops": [\xff]}', "UTF-8"),
        (b'{"ops": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "nested too deeply"),
    ],
)
@pytest.mark.parametrize("whole", [False, True])
def test_bad_bodies_are_a_400_saying_why(body: bytes, message: str, whole: bool) -> None:
    with pytest.raises(ApiError) as refused:
        run(body, whole=whole)
    assert refused.value.status == 400
    assert message.lower() in refused.value.message.lower()


def test_the_op_past_the_limit_is_refused_before_the_rest_is_parsed() -> None:
    # The tail is not even JSON: the refusal comes at op 3, before the parser reaches it.
    body = b'{"ops": [1, 2, 3, ' + b"@" * 1000
    with pytest.raises(ApiError) as refused:
        run(body, max_ops=3)
    assert "at most 3 ops" in refused.value.message


async def test_a_large_body_hands_the_event_loop_back_while_it_is_parsed() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    body = json.dumps({"ops": [{"data": "x" * 10_000} for _ in range(200)]}).encode()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        assert len(await ops_of(body)) == 200
        nursery.cancel_scope.cancel()
    assert ticks >= 20  # ~2 MB of text: the other task ran between ops, many times


def test_an_op_longer_than_its_limit_is_a_413_before_it_is_parsed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[int] = []
    raw_decode = bodies.DECODER.raw_decode

    def counting(text: str, idx: int = 0) -> Any:
        parsed.append(len(text))
        return raw_decode(text, idx)

    monkeypatch.setattr(bodies.DECODER, "raw_decode", counting)
    # 4 MB of floats in one op: as objects, ~64 MB; refused having parsed at most 100 KB.
    body = b'{"ops": [{"op": "put", "key": "k", "data": [' + b"1.5," * 1_000_000 + b"0]}]}"
    with pytest.raises(ApiError) as refused:
        run(body, max_op_chars=100_000)
    assert refused.value.status == 413
    assert "op 0 is longer than 100000 characters" in refused.value.message
    assert max(parsed) <= 100_000


def test_an_op_within_its_limit_but_past_the_first_window_is_read_whole() -> None:
    op = {"op": "put", "key": "k", "data": "x" * 50_000}
    body = json.dumps({"ops": [op, op]}).encode()
    assert run(body, max_op_chars=60_000) == [op, op]
    with pytest.raises(ApiError) as refused:
        run(body, max_op_chars=40_000)
    assert refused.value.status == 413


def test_an_error_past_the_first_window_names_its_place_in_the_body() -> None:
    body = b'{"ops": [\n{"data": "' + b"x" * 10_000 + b'", "bad": tru}]}'
    with pytest.raises(ApiError) as refused:
        run(body)
    assert refused.value.status == 400
    assert "line 2 column" in refused.value.message
