"""The event stream: a ZeroMQ PUB socket next to the control socket (`events.sock`).

Owns the socket and the event encoding. Topics are paths so a subscriber can pick
by prefix: `task/<id>/<event>` (queued, started, progress, retry, finished),
`child/<identity>/<event>` (spawned, ready, exited, fatal), `breaker/<state>`.
Frames: [topic, JSON object]. Publishing never blocks the hub (a slow subscriber
loses events, never stalls the daemon). Must not import other spokes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio


class EventBus:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.PUB)  # plain: a PUB only sends, never waits
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        old = os.umask(0o177)
        try:
            self.sock.bind(endpoint)
        finally:
            os.umask(old)
        self._enc = msgspec.json.Encoder()
        self.published = 0

    def publish(self, topic: str, **data: Any) -> None:
        data["topic"], data["ts"] = topic, time.time()
        try:
            self.sock.send_multipart([topic.encode(), self._enc.encode(data)], flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError:
            pass  # no subscriber can take it now: events are best-effort by design

    def close(self) -> None:
        self.sock.close(linger=0)
