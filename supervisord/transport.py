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
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(endpoint)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(cp.ChildMessage)
        self._reader: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
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

    def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        self.sock.close(linger=0)
