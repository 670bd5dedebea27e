"""A watch's server-sent events as `Event`s: the stream parser both clients feed line by line."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvs.client.errors import ConnectionFailed, WatchEnded


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: `id` is the position to resume after."""

    key: str
    uuid: str
    timestamp: int
    deleted: bool
    id: str


class WatchStream:
    """Turns the lines of a watch stream into `Event`s (shared by both clients)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.ready = False
        self._kind = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """Take one line; return an Event when one is complete. Raises WatchEnded when the
        node ends the stream with an error event."""
        if line == "":
            kind, data = self._kind, "\n".join(self._data)
            self._kind, self._data = "message", []
            if not data:
                return None
            payload = json.loads(data)
            if kind == "message":
                event = Event(
                    payload["key"],
                    payload["uuid"],
                    payload["timestamp"],
                    payload["deleted"],
                    payload["id"],
                )
                self.last_id = event.id
                return event
            if kind == "ready":
                self.ready = True
            elif kind == "error":
                raise WatchEnded(
                    str(payload.get("error", "the watch ended")),
                    reason=payload.get("reason"),
                    last_id=self.last_id,
                )
            return None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None

    def closed(self) -> ConnectionFailed:
        return ConnectionFailed("the node closed the watch stream")
