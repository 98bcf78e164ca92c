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
from supervisord.spokes.sockfile import BoundFile

#: zmq's flags and options as plain ints: an enum operation per send costs microseconds
_NOBLOCK, _SNDMORE_NOBLOCK = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


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
        # Unlimited queues on purpose: a child's Result must never be dropped, and what one
        # child may send is bounded by MAXMSGSIZE and its one task at a time.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.bound = BoundFile(self.sock, endpoint)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(cp.ChildMessage)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = self.sock.getsockopt(zmq.FD)
        self._drain_pending = False
        #: frames from children that did not decode
        self.dropped = 0
        #: messages to children libzmq would not take (the child is gone)
        self.send_errors = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.drain)
        self._schedule_drain()  # what arrived before we were watching

    def check_socket(self) -> bool:
        """True when children.sock is in place; else log `socket_missing`, rebind, False
        (running children keep their connections; new ones can connect again)."""
        return self.bound.check()

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
                frames = self.sock.recv_multipart(_NOBLOCK)
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
        sock = self.sock
        try:
            # Two frames as two sends: the hot path, and send_multipart checks every frame
            # in Python. A ROUTER_MANDATORY failure comes at the first frame, so nothing is half sent.
            sock.send(identity.encode(), _SNDMORE_NOBLOCK)
            sock.send(self._enc.encode(message), _NOBLOCK)
            return True
        except zmq.ZMQError as e:
            self.send_errors += 1
            log("child_send_failed", logging.WARNING, child=identity, error=e.strerror, message=type(message).__name__)
            return False
        finally:
            # A send can consume the FD's edge for input that arrived meanwhile: look again.
            if sock.getsockopt(_EVENTS) & _POLLIN:
                self._schedule_drain()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        self.bound.remove()
        self.sock.close(linger=0)
