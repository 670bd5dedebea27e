"""The kinds of hostile HTTP/1.1 interaction (a plain request, garbage, a model write,
half-close, stall, trickle, pipeline, reset, flood, big bodies, a slow reader): each builds
an `Interaction` from the generator's draws. `Kinds` and `http_upgrades.UpgradeKinds` are
the top floor of `http_inputs.Generator`, on `http_endpoints.Endpoints`.

Rule: nothing here opens a socket, reads a clock or looks at a node; every choice comes
from the `rng` passed in, in a fixed order (a seed replays the same bytes).
"""

from __future__ import annotations

import random
from typing import Any

from kvs.testing import http_wire as wire
from kvs.testing.http_endpoints import Endpoints
from kvs.testing.http_plan import (
    GRACE,
    MODEL_SLOTS,
    PIPELINE_BYTES,
    Big,
    Conn,
    Interaction,
    ModelOp,
    Step,
)
from kvs.testing.http_vocab import VERSIONS, WEIRD_METHODS, WEIRD_TARGETS, dump, pct
from kvs.testing.procs import HOST


class Kinds(Endpoints):
    """`_kind_<name>(rng, index, node)` for each HTTP/1.1 kind of interaction."""

    def _kind_request(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, data, _, head = self._api_request(rng, node, who)
        conn = Conn([("send", data)], [label], [head])
        if label.startswith("watch"):
            conn.expect, conn.read_timeout, conn.stream = None, 1.0, True
        return Interaction(index, "request", node, who, label, [conn])

    def _kind_garbage(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, method, target, headers, body = self._endpoint(rng, who)
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        version = b"HTTP/1.1"
        framing = "length"
        mutations = rng.sample(
            ["method", "target", "version", "header", "framing", "chunked", "noise", "lines"],
            rng.choice([1, 1, 1, 2]),
        )
        tail = b""
        notes = []
        for mutation in mutations:
            notes.append(mutation)
            if mutation == "method":
                method = rng.choice(WEIRD_METHODS)
            elif mutation == "target":
                target = rng.choice(WEIRD_TARGETS)
            elif mutation == "version":
                version = rng.choice(VERSIONS)
            elif mutation == "header":
                headers = self._garbage_headers(rng, headers)
            elif mutation == "framing":
                framing = "none"
                body = self.resolve(body or b'{"a":1}')  # the lengths are of what is sent
                headers = headers + self._bad_framing(rng, body)
            elif mutation == "chunked":
                framing = "none"
                headers = [*headers, (b"Transfer-Encoding", b"chunked")]
                body = self._bad_chunks(rng)
            elif mutation == "lines":
                pass
        if "noise" in mutations:
            data = self._noise(rng)
        else:
            data = self._request_bytes(
                method, target, headers, body, version=version, framing=framing
            )
            if "lines" in mutations:
                data = rng.choice(
                    [
                        data.replace(b"\r\n", b"\n"),
                        data.replace(b"\r\n", b"\r"),
                        b"\r\n" * rng.choice([1, 3, 1000]) + data,
                        data.replace(b"\r\n\r\n", b"\r\n \r\n", 1),
                    ]
                )
        expect = 1
        if rng.random() < 0.3:  # a well-formed request behind it: is the stream still in step?
            tail = self._request_bytes(
                b"GET", b"/health", [(b"Host", f"{HOST}:{{{{port:{node}}}}}".encode())]
            )
            expect = 2
        conn = Conn(
            [("send", data + tail)],
            [f"garbage({'+'.join(notes)}) {label}"],
            [method == b"HEAD"],
            expect=expect,
        )
        conn.read_timeout = 2.0
        return Interaction(index, "garbage", node, who, conn.labels[0], [conn])

    def _garbage_headers(
        self, rng: random.Random, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        choice = rng.randrange(12)
        if choice == 0:
            return [*headers, (b"X-Fold", b"a\r\n b")]
        if choice == 1:
            return [*headers, (b"NoColonHere\r\nX", b"1")]
        if choice == 2:
            return [*headers, (b"X-Space ", b"1")]
        if choice == 3:
            return [*headers, (b"X-Nul", b"a\x00b")]
        if choice == 4:
            return [*headers, (b"X-Big", b"v" * rng.choice([8000, 20000, 100_000]))]
        if choice == 5:
            n = rng.choice([100, 1000, 10000])
            return headers + [(b"X-H%d" % i, b"v") for i in range(n)]
        if choice == 6:
            return [*headers, (b"", b"empty-name")]
        if choice == 7:
            return [*headers, (b"\xff\xfe", b"x"), (b"a b", b"c")]
        if choice == 8:
            return [(b"Host", b"x"), *headers, (b"Host", b"y")]
        if choice == 9:
            return [h for h in headers if h[0] != b"Host"]
        if choice == 10:
            return [*headers, (b"X-Bin", bytes(range(1, 32)))]
        return [*headers, (b"X-Unicode", "ünï😀".encode())]

    def _bad_framing(self, rng: random.Random, body: bytes) -> list[tuple[bytes, bytes]]:
        n = str(len(body)).encode()
        return rng.choice(
            [
                [(b"Content-Length", n), (b"Transfer-Encoding", b"chunked")],
                [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
                [(b"Transfer-Encoding", b"chunked, identity")],
                [(b"Transfer-Encoding", b"gzip")],
                [(b"Transfer-Encoding", b"xchunked")],
                [(b"Content-Length", b"-1")],
                [(b"Content-Length", b"+" + n)],
                [(b"Content-Length", n + b", " + n)],
                [(b"Content-Length", n), (b"Content-Length", b"1")],
                [(b"Content-Length", b"0x10")],
                [(b"Content-Length", b"9" * rng.choice([20, 5000]))],
                [(b"Content-Length", b"\xc2\xb2")],
                [(b"Content-Length", b" " + n)],
                [(b"Content-Length", b"1")],  # shorter than the body: the rest is "a request"
                [],  # a body and no framing at all
            ]
        )

    def _bad_chunks(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                b"zz\r\nab\r\n0\r\n\r\n",
                b"-1\r\nab\r\n0\r\n\r\n",
                b"ffffffffffffffffffff\r\nab\r\n",
                b"1;ext=" + b"x" * 10000 + b"\r\na\r\n0\r\n\r\n",
                b"2\r\nabc\r\n0\r\n\r\n",
                b"2\r\nab",
                b"0\r\nX-Trailer: \xff\r\nbad trailer\r\n\r\n",
                b"1\r\na\r\n" * 20000 + b"0\r\n\r\n",
                b"\r\n\r\n",
                b"2 \r\nab\r\n0\r\n\r\n",
                b"0x2\r\nab\r\n0\r\n\r\n",
                b"\xc2\xb2\r\nab\r\n0\r\n\r\n",
            ]
        )

    def _noise(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 16, 4096]))),
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\x00" * 20,
                b"SSH-2.0-OpenSSH_9.0\r\n",
                b"\x00" * 1000,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r",  # one byte short of a preface
                b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3,  # never finished
            ]
        )

    def _kind_model(self, rng: random.Random, index: int, node: int) -> Interaction:
        slots_here = [s for s in range(MODEL_SLOTS) if s % self.nodes == node]
        action = rng.choices(["put", "delete", "cas", "batch", "read"], [6, 2, 2, 2, 2])[0]
        if action == "batch":
            slots = sorted(rng.sample(slots_here, min(len(slots_here), rng.randrange(1, 4))))
        else:
            slots = [rng.choice(slots_here)]
        values: list[Any] = []
        for slot in slots:
            if action == "delete" or (action == "batch" and rng.random() < 0.3):
                values.append(None)
            else:
                values.append({"slot": slot, "i": index, "pad": "p" * rng.choice([0, 10, 3000])})
        op = ModelOp(action, slots, values)
        return Interaction(index, "model", node, "writer", f"model {action} {slots}", [], op)

    def _kind_half_close(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, method, target, headers, body = self._endpoint(rng, who)
        if rng.random() < 0.3:
            method, target = rng.choice([(b"POST", b"/health"), (b"GET", b"/health")])
            label = "health"
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        declared = rng.choice([1, 100, 4096, 10**6])
        sent = rng.choice([0, 1, 2, 50])
        head = self._request_bytes(
            method, target, [*headers, (b"Content-Length", str(declared).encode())], framing="none"
        )
        partial = (body or b'{"a":' + b"1" * 100)[: min(sent, declared - 1)]
        cut_in_headers = rng.random() < 0.2
        data = head[: rng.randrange(1, len(head))] if cut_in_headers else head + partial
        conn = Conn([("send", data), ("eof",)], [f"half-close {label} {method.decode('latin-1')}"])
        conn.expect, conn.read_timeout = None, 4.0
        return Interaction(index, "half_close", node, who, conn.labels[0], [conn])

    def _kind_stall(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["anon", "writer", "root"])
        key = self._junk_key(rng)
        in_body = rng.random() < 0.6
        head = self._request_bytes(
            b"PUT",
            b"/kv/" + pct(key),
            [(b"Host", b"fuzz"), *self._auth_headers(rng, who), (b"Content-Length", b"64")],
            framing="none",
        )
        timeout = self.deadlines.body if in_body else self.deadlines.header
        if in_body:
            steps: list[Step] = [("send", head + b'{"v":'), ("mark",)]
            where = "body"
        else:
            cut = rng.randrange(1, len(head) - 2)
            steps = [("mark",), ("send", head[:cut])]
            where = "headers"
        conn = Conn(steps, [f"stall mid-{where} PUT /kv/{{junk}}"], expect=None)
        if timeout is not None:
            conn.deadline = timeout
            steps.append(("sleep", timeout + GRACE + 0.5))
        else:
            steps.append(("sleep", rng.uniform(0.5, 3.0)))
        steps.append(rng.choice([("close",), ("rst",)]))
        return Interaction(index, "stall", node, who, conn.labels[0], [conn])

    def _kind_trickle(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["anon", "writer", "root", "reader"])
        in_body = rng.random() < 0.6
        body = dump({"v": "t" * 200})
        head = self._request_bytes(
            b"PUT",
            b"/kv/" + pct(self._junk_key(rng)),
            [
                *self._host(rng, node)[:1],
                *self._auth_headers(rng, who),
                (b"Content-Length", str(len(body)).encode()),
            ],
            framing="none",
        )
        interval = rng.choice([0.2, 0.5, 1.0])
        timeout = self.deadlines.body if in_body else self.deadlines.header
        budget = (timeout + GRACE + 0.5) if timeout is not None else rng.uniform(1.0, 4.0)
        count = int(budget / interval) + 1
        if in_body:
            steps: list[Step] = [("send", head), ("mark",), ("trickle", body[:count], interval)]
        else:
            steps = [("mark",), ("trickle", head[:count], interval)]
        conn = Conn(
            steps, [f"trickle {'body' if in_body else 'headers'} {interval}s/byte"], expect=None
        )
        conn.read_timeout = 1.0
        if timeout is not None and count < (len(body) if in_body else len(head)):
            conn.deadline = timeout
        return Interaction(index, "trickle", node, who, conn.labels[0], [conn])

    def _kind_pipeline(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        count = rng.choice([2, 5, 20, 100])
        data = b""
        labels, heads = [], []
        for _ in range(count):
            label, one, _, head = self._api_request(rng, node, who, mutate=0.05)
            if label.startswith(("watch", "backup")):
                one = self._request_bytes(b"GET", b"/health", [(b"Host", b"x")])
                label, head = "health GET", False
            if len(data) + len(one) > PIPELINE_BYTES and labels:
                break
            data += one
            labels.append(label)
            heads.append(head)
        conn = Conn([("send", data)], labels, heads, expect=len(labels), read_timeout=5.0)
        return Interaction(index, "pipeline", node, who, f"pipeline x{count}", [conn])

    def _kind_rst(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, data, _, _ = self._api_request(rng, node, who)
        cut = rng.choice([len(data), len(data) // 2, 1])
        steps: list[Step] = [("send", data[:cut])]
        if rng.random() < 0.5:
            steps.append(("sleep", rng.choice([0.0, 0.01, 0.1])))
        steps.append(("rst",))
        conn = Conn(steps, [f"rst {label}"], expect=None)
        return Interaction(index, "rst", node, who, conn.labels[0], [conn])

    def _kind_flood(self, rng: random.Random, index: int, node: int) -> Interaction:
        count = rng.choice([20, 50, 120])
        conns = []
        for _ in range(count):
            shape = rng.randrange(5)
            if shape == 0:
                steps: list[Step] = [
                    ("sleep", rng.uniform(0, 1)),
                    rng.choice([("close",), ("rst",)]),
                ]
            elif shape == 1:
                steps = [("send", b"GET /hea"), ("sleep", rng.uniform(0, 1)), ("rst",)]
            elif shape == 2:
                steps = [
                    ("send", b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"),
                    ("eof",),
                ]
            elif shape == 3:
                steps = [("send", self._request_bytes(b"GET", b"/health", [(b"Host", b"x")]))]
            else:
                steps = [("send", wire.PREFACE), ("sleep", rng.uniform(0, 0.5)), ("close",)]
            conn = Conn(steps, [f"flood shape {shape}"], expect=None if shape != 3 else 1)
            conn.lenient = shape != 3
            conn.read_timeout = 2.0
            conns.append(conn)
        return Interaction(index, "flood", node, "anon", f"flood x{count}", conns)

    def _kind_big_body(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["writer", "writer", "root", "anon", "bad", "reader"])
        count = rng.choice([1, 2, 3, 3, 4])
        conns = []
        shape = rng.choice(
            [
                "batch_ok",
                "batch_oversize_op",
                "batch_bad_tail",
                "kv_put",
                "array",
                "admin",
                "floats",
            ]
        )
        for n in range(count):
            size_mib = rng.choice([5, 16, 29, 31, 40])
            key = f"{self.plan.junk_prefix}/big{n}"
            big, target = self._big_body(rng, shape, key, size_mib)
            method = b"PUT" if target.startswith(b"/kv/") and target != b"/kv/_batch" else b"POST"
            headers = [
                (b"Host", f"{HOST}:{{{{port:{node}}}}}".encode()),
                *self._auth_headers(rng, who),
            ]
            conn = Conn(
                [("big", self._big_request(rng, method, target, headers, big))],
                [f"big {shape} {size_mib} MiB {method.decode()} {target[:30].decode('latin-1')}"],
            )
            conn.read_timeout = 15.0
            conns.append(conn)
        return Interaction(index, "big_body", node, who, f"big {shape} x{count}", conns)

    def _big_body(
        self, rng: random.Random, shape: str, key: str, size_mib: int
    ) -> tuple[Big, bytes]:
        """A body of about `size_mib` MiB of the given shape, and where it is sent."""
        if shape == "batch_ok":
            op = dump({"op": "put", "key": key, "data": "a" * 29_000}) + b","
            repeat = min(999, size_mib * 2**20 // len(op))
            big = Big(b'{"ops":[', op, repeat, dump({"op": "delete", "key": key}) + b"]}")
            return big, b"/kv/_batch"
        if shape == "batch_oversize_op":
            op = dump({"op": "put", "key": key, "data": "a" * (1 << 20) + "a"}) + b","
            return Big(b'{"ops":[', op, size_mib, b'{"op":"delete","key":"x"}]}'), b"/kv/_batch"
        if shape == "batch_bad_tail":
            head = b'{"ops":[{"op":"put","key":"x","data":"'
            return Big(head, b"a" * 4096, size_mib * 256, b""), b"/kv/_batch"
        if shape == "floats":
            head = b'{"ops":[{"op":"put","key":"x","data":['
            return Big(head, b"1.5," * 1024, size_mib * 256, b"0]}]}"), b"/kv/_batch"
        if shape == "array":
            big = Big(b"[", b"1," * 2048, size_mib * 256, b"1]")
            return big, rng.choice(
                [b"/kv/_batch", b"/api/users", b"/kv/" + pct(key) + b"/metadata"]
            )
        if shape == "admin":
            big = Big(b'{"nickname":"', b"n" * 4096, size_mib * 256, b'"}')
            return big, rng.choice([b"/api/users", b"/api/tokens", b"/auth/cluster-bootstrap"])
        return Big(b'{"v":"', b"v" * 4096, size_mib * 256, b'"}'), b"/kv/" + pct(key)

    def _big_request(
        self,
        rng: random.Random,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        big: Big,
    ) -> Big:
        """The whole request around a big body, chunked (each piece one chunk) or with a
        Content-Length, still in pieces."""
        chunked = rng.random() < 0.25
        if chunked:
            head = self._request_bytes(
                method, target, [*headers, (b"Transfer-Encoding", b"chunked")], framing="none"
            )
            fill = b"%x\r\n" % len(big.fill) + big.fill + b"\r\n"
            start = b"%x\r\n" % len(big.head) + big.head + b"\r\n" if big.head else b""
            end = (
                b"%x\r\n" % len(big.tail) + big.tail + b"\r\n" if big.tail else b""
            ) + b"0\r\n\r\n"
            return Big(head + start, fill, big.count, end)
        head = self._request_bytes(
            method,
            target,
            [*headers, (b"Content-Length", str(len(big)).encode())],
            framing="none",
        )
        return Big(head + big.head, big.fill, big.count, big.tail)

    def _kind_slow_reader(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["root", "reader", "writer"])
        one = self._request_bytes(
            b"GET",
            rng.choice(
                [b"/kv/_tree?limit=5000", b"/metrics", b"/kv_changes?limit=1000", b"/api/users"]
            ),
            [(b"Host", b"x"), *self._auth_headers(rng, who)],
        )
        count = rng.choice([50, 200])
        conn = Conn(
            [("send", one * count), ("sleep", rng.uniform(1.0, 3.0)), ("close",)],
            ["slow reader"],
            expect=None,
        )
        return Interaction(index, "slow_reader", node, who, f"slow reader x{count}", [conn])
