"""Bytes on the wire for hostile HTTP tests: HTTP/1.1 requests built by hand (so they can
be as wrong as wanted), a forgiving parser for the answers, and HTTP/2 frames.

Rule: nothing here opens a socket or reads a clock; bytes in, bytes or values out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CRLF = b"\r\n"

# --- HTTP/1.1 requests ---------------------------------------------------------------------------


def request_bytes(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
    framing: str = "length",
) -> bytes:
    """A request; `framing` is "length" (Content-Length added), "chunked" (body sent in
    chunks, Transfer-Encoding added), or "none" (the headers are taken as given)."""
    lines = [method + b" " + target + b" " + version]
    extra: list[tuple[bytes, bytes]] = []
    payload = body
    if framing == "length" and (body or method in (b"PUT", b"POST")):
        extra.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        extra.append((b"Transfer-Encoding", b"chunked"))
        payload = chunked(body, 4096)
    for name, value in [*headers, *extra]:
        lines.append(name + b": " + value)
    return CRLF.join(lines) + CRLF + CRLF + payload


def chunked(body: bytes, size: int) -> bytes:
    out = bytearray()
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += b"%x\r\n" % len(piece) + piece + CRLF
    return bytes(out + b"0\r\n\r\n")


# --- HTTP/1.1 answers ----------------------------------------------------------------------------


@dataclass
class Answer:
    """One response as received. `complete` is false when the connection ended (or the
    reader gave up) in the middle of it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = True
    version: bytes = b"HTTP/1.1"

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class AnswerReader:
    """Parses answers out of the bytes a server sent, as they arrive.

    `head_requests` says, per answer in order, whether it answers a HEAD (no body). After a
    `101` the rest of the stream is another protocol: `upgraded` holds it."""

    head_requests: list[bool] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    garbage: bytes = b""  # what did not parse as HTTP/1.1
    upgraded: bytes | None = None
    _buffer: bytes = b""

    def feed(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded += data
            return
        if self.garbage:
            self.garbage += data
            return
        self._buffer += data
        while self._buffer and self.upgraded is None and not self.garbage:
            if not self._parse_one(closed=False):
                break

    def close(self) -> None:
        """The connection ended: a body delimited by the close is complete, others are cut."""
        while self._buffer and self.upgraded is None and not self.garbage:
            if not self._parse_one(closed=True):
                break

    def _parse_one(self, *, closed: bool) -> bool:
        buf = self._buffer
        if not buf.startswith(b"HTTP/"):
            if len(buf) >= 5 or closed:
                self.garbage = buf
                self._buffer = b""
            return False
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if closed:
                self.answers.append(self._partial_head(buf))
                self._buffer = b""
            return False
        head = buf[:end].split(b"\r\n")
        rest = buf[end + 4 :]
        status_line = head[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit():
            self.garbage = buf
            self._buffer = b""
            return False
        status = int(status_line[1])
        reason = status_line[2] if len(status_line) > 2 else b""
        headers = []
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        answer = Answer(status, reason, headers, version=status_line[0])
        if 100 <= status < 200:
            if status == 101:
                self.answers.append(answer)
                self.upgraded = rest
                self._buffer = b""
                return False
            self._buffer = rest  # 100 Continue: the real answer follows
            return True
        index = len(self.answers)
        is_head = index < len(self.head_requests) and self.head_requests[index]
        if is_head or status in (204, 304):
            self.answers.append(answer)
            self._buffer = rest
            return True
        te = answer.header(b"transfer-encoding")
        cl = answer.header(b"content-length")
        if te is not None and b"chunked" in te.lower():
            body, used, done = _read_chunked(rest)
            if not done:
                if closed:
                    answer.body, answer.complete = body, False
                    self.answers.append(answer)
                    self._buffer = b""
                return False
            answer.body = body
            self.answers.append(answer)
            self._buffer = rest[used:]
            return True
        if cl is not None and cl.isdigit():
            size = int(cl)
            if len(rest) < size:
                if closed:
                    answer.body, answer.complete = rest, False
                    self.answers.append(answer)
                    self._buffer = b""
                return False
            answer.body = rest[:size]
            self.answers.append(answer)
            self._buffer = rest[size:]
            return True
        if not closed:  # the body runs to the end of the connection
            return False
        answer.body = rest
        self.answers.append(answer)
        self._buffer = b""
        return False

    def _partial_head(self, buf: bytes) -> Answer:
        first = buf.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
        return Answer(status, b"", [], complete=False)

    def pending(self) -> Answer | None:
        """The answer whose head has arrived but not its whole body (a stream), if any."""
        buf = self._buffer
        end = buf.find(b"\r\n\r\n")
        if not buf.startswith(b"HTTP/") or end < 0:
            return None
        reader = AnswerReader(head_requests=[False])
        reader._buffer = buf
        reader.close()
        return reader.answers[0] if reader.answers else None


def _read_chunked(data: bytes) -> tuple[bytes, int, bool]:
    """(body so far, bytes used, finished)."""
    out = bytearray()
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(out), pos, False
        size_text = data[pos:line_end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), pos, False
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:  # no trailers: "0\r\n\r\n"
                return bytes(out), line_end + 4, True
            if data[line_end + 2 : line_end + 4] == b"\r\n":
                return bytes(out), line_end + 4, True
            if trailer_end < 0:
                return bytes(out), pos, False
            return bytes(out), trailer_end + 4, True
        start = line_end + 2
        if len(data) < start + size + 2:
            out += data[start : start + size]
            return bytes(out), pos, False
        out += data[start : start + size]
        pos = start + size + 2


# --- HTTP/2 --------------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
HTTP_1_1_REQUIRED = 0xD
FRAME_NAMES = {
    0: "DATA",
    1: "HEADERS",
    2: "PRIORITY",
    3: "RST_STREAM",
    4: "SETTINGS",
    5: "PUSH_PROMISE",
    6: "PING",
    7: "GOAWAY",
    8: "WINDOW_UPDATE",
    9: "CONTINUATION",
}


def frame(
    kind: int, flags: int, stream: int, payload: bytes, *, length: int | None = None
) -> bytes:
    """One frame; `length` overrides the length field (to lie about it)."""
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size & 0xFFFFFF)[1:]
        + bytes([kind & 0xFF, flags & 0xFF])
        + (struct.pack(">I", stream & 0xFFFFFFFF) + payload)
    )


def settings(pairs: list[tuple[int, int]] = (), ack: bool = False) -> bytes:  # type: ignore[assignment]
    body = b"".join(struct.pack(">HI", k & 0xFFFF, v & 0xFFFFFFFF) for k, v in pairs)
    return frame(SETTINGS, ACK if ack else 0, 0, body)


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman: any bytes at all."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def header_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(hpack_literal(n, v) for n, v in fields)


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.kind, f"type{self.kind}")

    def goaway_code(self) -> int | None:
        if self.kind != GOAWAY or len(self.payload) < 8:
            return None
        return int(struct.unpack(">I", self.payload[4:8])[0])


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Complete frames at the start of `data`, and what is left over."""
    frames = []
    pos = 0
    while len(data) - pos >= 9:
        size = int.from_bytes(data[pos : pos + 3], "big")
        if len(data) - pos - 9 < size:
            break
        kind, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append(Frame(kind, flags, stream, data[pos + 9 : pos + 9 + size]))
        pos += 9 + size
    return frames, data[pos:]
