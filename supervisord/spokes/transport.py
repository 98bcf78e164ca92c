"""The children socket: a ZeroMQ ROUTER the children's DEALERs connect to.

Owns the socket and the wire encoding in both directions. Its reader decodes each
frame and puts a `ChildSaid` on the inbox; a frame that fails to decode is logged
and dropped — it never reaches the hub. `send` never blocks and never raises into
the hub (a vanished child is logged). Must not import other spokes.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import zmq
import zmq.asyncio

from proto import DECODE_ERRORS
from proto import children as cp
from supervisord.events import ChildSaid, Event
from supervisord.logs import log


class ChildTransport:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, inbox: asyncio.Queue[Event],
                 max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.inbox = inbox
        # A plain (not zmq.asyncio) socket on the loop's reader: this is the hot path, and
        # zmq.asyncio builds a future per message. See `_drain` for the edge-trigger rules.
        self.sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(endpoint)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(cp.ChildMessage)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = self.sock.getsockopt(zmq.FD)
        self._drain_pending = False
        self.dropped = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.drain)
        self._schedule_drain()  # what arrived before we were watching

    def _schedule_drain(self) -> None:
        if not self._drain_pending and self._loop is not None:
            self._drain_pending = True
            self._loop.call_soon(self.drain)

    def drain(self) -> None:
        """ZMQ's FD is edge-triggered: take every message there is (until EAGAIN) so it can
        signal again; after 1024, yield to the loop and come back."""
        self._drain_pending = False
        for _ in range(1024):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._drop(frames[0] if frames else b"?", f"{len(frames)} frames")
                continue
            identity, payload = frames
            try:
                message = self._dec.decode(payload)
            except DECODE_ERRORS as e:
                self._drop(identity, str(e))
                continue
            self.inbox.put_nowait(ChildSaid(identity.decode(errors="replace"), message))
        self._schedule_drain()

    def _drop(self, identity: bytes, why: str) -> None:
        self.dropped += 1
        log("child_frame_dropped", logging.WARNING, child=identity.decode(errors="replace"), error=why)

    def send(self, identity: str, message: cp.DaemonMessage) -> bool:
        try:
            self.sock.send_multipart([identity.encode(), self._enc.encode(message)], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            log("child_send_failed", logging.DEBUG, child=identity, error=e.strerror)
            return False
        finally:
            # A send can consume the FD's edge for input that arrived meanwhile: look again.
            if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._schedule_drain()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        self.sock.close(linger=0)
