"""The HTTP fuzzer's inputs (kvs.testing.http_inputs) without any node: a seed replays the
same bytes, and the generator keeps the promises its oracle relies on."""

from __future__ import annotations

import re

from kvs.testing.http_inputs import KINDS, Generator
from kvs.testing.http_plan import MARKER_READERS, Interaction
from kvs.testing.http_wire import AnswerReader, chunked, parse_frames


def _bytes_of(inter: Interaction) -> list[bytes]:
    out = []
    for conn in inter.conns:
        for step in conn.steps:
            if step[0] in ("send", "trickle"):
                out.append(step[1])
            elif step[0] == "big":
                out.append(step[1].head + step[1].fill[:100] + step[1].tail)
    return out


def test_a_seed_replays_the_same_interactions_in_any_order() -> None:
    first, second = Generator(1234, 3), Generator(1234, 3)
    forward = [_bytes_of(first.interaction(i)) for i in range(400)]
    backward = [_bytes_of(second.interaction(i)) for i in reversed(range(400))][::-1]
    assert forward == backward
    assert forward != [_bytes_of(Generator(1235, 3).interaction(i)) for i in range(400)]


def test_leaving_kinds_out_does_not_change_the_others() -> None:
    full, some = Generator(7, 2), Generator(7, 2, kinds=[k for k in KINDS if k != "garbage"])
    for index in range(400):
        inter = full.interaction(index)
        if inter.kind != "garbage":
            assert _bytes_of(some.interaction(index)) == _bytes_of(inter)
        else:
            assert some.interaction(index).kind != "garbage"


def test_the_generator_keeps_the_promises_the_oracle_relies_on() -> None:
    """Only model ops touch model keys; callers that may read the marker never write, delete
    or change the metadata of a private key (that would change who may read it); the marker
    itself is never sent."""
    gen = Generator(99, 3)
    plan = gen.plan
    model_prefix = plan.model_key(0).rsplit("/", 1)[0].encode()
    private = [k.encode() for k in plan.private_keys + plan.deleted_private_keys]
    for index in range(3000):
        inter = gen.interaction(index)
        sent = b"".join(_bytes_of(inter))
        assert plan.marker.encode() not in sent
        if inter.kind != "model":
            assert model_prefix not in sent, index
        if inter.who in MARKER_READERS:
            for line in sent.split(b"\r\n"):
                method = line.split(b" ", 1)[0]
                if method in (b"PUT", b"DELETE", b"POST") and any(k in line for k in private):
                    raise AssertionError(f"#{index} {inter.who} may change a private key: {line!r}")


def _long_values(data: bytes) -> bytes:
    """A resolver whose values are much longer than the placeholders they replace."""
    return re.sub(rb"\{\{[^}]*\}\}", lambda m: b"v" * 300, data)


def test_lengths_are_computed_over_the_resolved_bytes() -> None:
    """Placeholders are filled in before Content-Length, chunk sizes and HPACK lengths are
    computed: a JSON body naming a user, or an HTTP/2 :authority with a port, arrives whole."""
    gen = Generator(5, 3, resolve=_long_values)
    checked = {"length": 0, "h2": 0}
    for index in range(3000):
        inter = gen.interaction(index)
        for data in _bytes_of(inter):
            assert b"{{" not in data, index
        if inter.kind == "request" and inter.conns[0].steps[0][0] == "send":
            data = inter.conns[0].steps[0][1]
            head, _, body = data.partition(b"\r\n\r\n")
            declared = re.findall(rb"\r\nContent-Length: (\d+)", head)
            if declared and b"Transfer-Encoding" not in head:
                assert int(declared[-1]) == len(body), (index, head[:200])
                checked["length"] += 1
        if inter.kind == "h2_prior":
            frames, rest = parse_frames(inter.conns[0].steps[0][1][24:])
            if frames and frames[0].kind == 4 and len(frames) > 1 and frames[1].kind == 1:
                checked["h2"] += 1
    assert checked["length"] > 100 and checked["h2"] > 10, checked


def test_the_answer_reader_splits_pipelined_answers() -> None:
    body = b'{"error":"x"}'
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 400 \r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
        + b"HTTP/1.1 200 \r\ntransfer-encoding: chunked\r\n\r\n"
        + chunked(b"hello world", 4)
        + b"HTTP/1.1 404 \r\ncontent-length: 5\r\n\r\n"  # a HEAD answer: no body follows
        + b"HTTP/1.1 200 \r\n\r\nto the end"
    )
    reader = AnswerReader(head_requests=[False, False, True, False])
    for n in range(0, len(data), 7):  # in small pieces, as a socket may deliver them
        reader.feed(data[n : n + 7])
    reader.close()
    assert [(a.status, a.body) for a in reader.answers] == [
        (400, body),
        (200, b"hello world"),
        (404, b""),
        (200, b"to the end"),
    ]
    assert not reader.garbage
