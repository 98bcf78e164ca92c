"""The event stream: a ZeroMQ PUB socket next to the control socket (`events.sock`).

Owns the socket and the event encoding. Topics are paths so a subscriber can pick
by prefix: `task/<id>/<event>` (queued, started, progress, retry, finished),
`child/<identity>/<event>` (spawned, ready, exited, fatal), `breaker/<state>`.
Frames: [topic, JSON object]. Publishing never blocks the hub (a slow subscriber
loses events, never stalls the daemon). The socket is an XPUB: it hears what the
subscribers want, so an event nobody subscribed to is never even encoded (four per
task, on the dispatch hot path). Must not import other spokes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from supervisord.logs import log
from supervisord.spokes.sockfile import BoundFile


class EventBus:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.XPUB)  # plain socket on the loop's reader
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.bound = BoundFile(self.sock, endpoint)
        self._enc = msgspec.json.Encoder()
        self.published = 0
        #: events libzmq refused (XPUB drops for a slow subscriber silently; this is the rest)
        self.send_errors = 0
        #: topic prefixes with at least one subscriber (XPUB passes the first subscribe and
        #: the last unsubscribe of each, also when a subscriber disconnects)
        self.wanted: set[bytes] = set()
        #: this daemon's name in a fleet: every event it publishes says `host` (None: one host)
        self.host: str | None = None
        self._fd = self.sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._hear)
        self._loop.call_soon(self._hear)

    def _hear(self) -> None:
        """Take every (un)subscription there is: the FD is edge-triggered."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self.wanted.add(frame[1:])
            elif frame[:1] == b"\x00":
                self.wanted.discard(frame[1:])

    def check_socket(self) -> bool:
        """True when events.sock is in place; else log `socket_missing`, rebind, False."""
        return self.bound.check()

    def publish(self, topic: str, **data: Any) -> None:
        if not self.wanted:
            return
        raw = topic.encode()
        if not any(raw.startswith(prefix) for prefix in self.wanted):
            return
        data["topic"], data["ts"] = topic, time.time()
        if self.host is not None:
            data.setdefault("host", self.host)
        try:
            self.sock.send_multipart([raw, self._enc.encode(data)], flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError as e:  # events are best-effort by design: count it, say it, go on
            self.send_errors += 1
            log("event_send_failed", logging.WARNING, topic=topic, error=e.strerror)
        if self._loop is not None and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._hear)  # a send can swallow the FD's edge

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        self.bound.remove()
        self.sock.close(linger=0)
