"""Judging one interaction's connections: what a node may answer to hostile HTTP (no 5xx but
the allowed 503s, errors in JSON or the parser's own bare statuses, HTTP/2 refused with
GOAWAY, no upgrade taken, deadlines kept, the marker never shown to a caller who may not
read it); every breach becomes a `Finding`.

Rule: test tooling (see kvs.testing); it talks to nodes only as a client would.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field

from kvs.testing import http_wire as wire
from kvs.testing.http_conn import ConnResult, looks_like_h2
from kvs.testing.http_monitor import (
    Finding,
    shape,
)
from kvs.testing.http_plan import (
    GRACE,
    Conn,
    Interaction,
)

# --- judging ------------------------------------------------------------------------------------


@dataclass
class Stats:
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    kind_statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    connections: int = 0
    connect_errors: int = 0
    bytes_sent: int = 0
    model_acked: int = 0


PARSER_STATUSES = (400, 408, 413, 431, 505)  # what the HTTP parser may answer bare, before the app


def judge(
    inter: Interaction, conn: Conn, res: ConnResult, stats: Stats, marker: bytes
) -> list[Finding]:
    out: list[Finding] = []

    def fail(kind: str, signature: str, detail: str) -> None:
        out.append(Finding(kind, signature, inter.index, inter.node, detail))

    label = conn.labels[0] if conn.labels else inter.what
    answers = list(res.answers)
    if res.pending is not None and (not answers or conn.stream):
        answers.append(res.pending)
    for n, answer in enumerate(answers):
        stats.statuses[answer.status] += 1
        stats.kind_statuses[(inter.kind, answer.status)] += 1
        which = conn.labels[n] if n < len(conn.labels) else label
        body = answer.body[:300].decode("utf-8", "replace")
        if answer.status >= 500:
            if answer.status != 503:
                shown = shape(body[:60]) if body.strip() else "(empty body)"
                fail("http-5xx", f"{answer.status} {shown}", f"{which}: {body}")
            elif answer.header(b"retry-after") is None and b'"mode"' not in answer.body:
                fail("http-503-unexplained", _route(which), f"{which}: {body}")
        elif answer.status == 101:
            if conn.upgrade != "h2c":  # an accepted h2c upgrade is judged as HTTP/2 served
                fail("upgrade-accepted", f"101 {conn.upgrade or 'unasked'}", f"{which}")
        elif (
            400 <= answer.status < 500
            and answer.complete
            and not (n < len(conn.heads) and conn.heads[n])
        ):
            if not _json_error(answer.body) and not (
                answer.status in PARSER_STATUSES and not answer.body.strip().startswith(b"{")
            ):
                fail("http-4xx-not-json", f"{answer.status} {_route(which)}", f"{which}: {body}")
        elif answer.status == 0:
            fail("http-garbled", _route(which), repr(res.raw[:200]))
    speaks_h2 = conn.h2 or looks_like_h2(res.garbage) or looks_like_h2(res.upgraded or b"")
    if res.garbage and not speaks_h2 and inter.kind in ("request", "pipeline", "model"):
        fail("http-garbled", _route(label), repr(res.garbage[:200]))
    if res.marker_seen and not conn.may_see_marker:
        leaked = [
            (conn.labels[n] if n < len(conn.labels) else label, a)
            for n, a in enumerate(answers)
            if marker in a.body
        ]
        which, shown = leaked[0] if leaked else (label, None)
        text = shown.body[:400] if shown is not None else bytes(res.raw[:400])
        status = shown.status if shown is not None else "?"
        fail("marker-leak", _route(which), f"{inter.who}: {which} -> {status}: {text!r}")
    if conn.upgrade == "h2c" and res.upgraded is not None:
        fail("http2-served", "h2c upgrade accepted (101)", label)
    elif speaks_h2:
        # The prior-knowledge preface (or bytes the server took for one): the answer must be
        # a refusal (SETTINGS, GOAWAY HTTP_1_1_REQUIRED, close), never a served stream.
        data = bytes(res.garbage) if res.garbage else bytes(res.raw)
        out.extend(_judge_h2(inter, label, data, res, lenient=conn.lenient))
    if conn.deadline is not None and res.mark is not None:
        limit = res.mark + conn.deadline + GRACE
        answered = any(a.complete for a in res.answers)
        closed = res.server_closed_at
        ended = res.we_ended_at or time.monotonic()
        if not answered and (closed is None or closed > limit) and ended >= limit:
            waited = (closed or ended) - res.mark
            fail(
                "no-deadline",
                label.split(" ")[0] + " " + label.split(" ")[1],
                f"{label}: still open {waited:.1f} s after the clock started "
                f"(deadline {conn.deadline} s + {GRACE} s grace)",
            )
    return out


def _route(label: str) -> str:
    return label[:80]


def _json_error(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and "error" in document


def _judge_h2(
    inter: Interaction, label: str, data: bytes, res: ConnResult, *, lenient: bool
) -> list[Finding]:
    frames, _ = wire.parse_frames(data)
    names = [f.name for f in frames]
    served = [n for n in names if n in ("HEADERS", "DATA", "PUSH_PROMISE", "CONTINUATION")]
    codes = [f.goaway_code() for f in frames if f.kind == wire.GOAWAY]
    first_ok = bool(frames) and frames[0].kind == wire.SETTINGS and not frames[0].flags & wire.ACK
    closed = res.server_closed_at is not None
    detail = f"{label}: frames {names[:12]} goaway codes {codes}; closed={closed}"

    def finding(kind: str, signature: str) -> list[Finding]:
        return [Finding(kind, signature, inter.index, inter.node, detail)]

    if data.startswith(b"HTTP/1"):
        return finding("http2-not-refused", "answered as HTTP/1.1")
    if served:
        return finding("http2-served", "server sent " + "/".join(sorted(set(served))))
    if lenient:  # we hung up early: only what was sent is judged
        return []
    if not (first_ok and wire.HTTP_1_1_REQUIRED in codes and closed):
        sig = f"frames {'/'.join(dict.fromkeys(names)) or 'none'} goaway {codes} closed={closed}"
        return finding("http2-not-refused", shape(sig))
    return []
