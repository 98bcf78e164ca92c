"""The control socket: a ZeroMQ ROUTER that supctl talks to, one request, one reply.

Owns the socket, its permissions and request decoding. A frame that fails to decode
is answered with an `Error` here and then; a good request becomes a
`RequestReceived` on the inbox, and the hub answers through `reply`. Must not import
other spokes.
"""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec
import zmq
import zmq.asyncio

from proto import control as ctl
from supervisord.events import Event, RequestReceived
from supervisord.logs import log


class ControlServer:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, inbox: asyncio.Queue[Event],
                 max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.inbox = inbox
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        old = os.umask(0o177)  # the socket file is born 0600: reachable by its owner only
        try:
            self.sock.bind(endpoint)
        finally:
            os.umask(old)
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint[len("ipc://"):], 0o600)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(ctl.Request)
        self._reader: asyncio.Task[None] | None = None
        self.bad_requests = 0

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) < 2:
                continue  # no routing id: nothing to answer
            envelope, payload = tuple(frames[:-1]), frames[-1]
            try:
                request = self._dec.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self.bad_requests += 1
                log("bad_request", logging.WARNING, error=str(e))
                self.reply(envelope, ctl.Error(kind="bad_request", message=f"cannot decode request: {e}"))
                continue
            self.inbox.put_nowait(RequestReceived(envelope, request))

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        try:
            self.sock.send_multipart([*envelope, self._enc.encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log("reply_failed", logging.DEBUG, error=e.strerror)

    def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        self.sock.close(linger=0)
