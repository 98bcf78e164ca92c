"""The control socket: a ZeroMQ ROUTER that supctl talks to, one request, one reply.

Owns the socket, its permissions and request decoding. A frame that fails to decode
is answered with an `Error` here and then; a good request becomes a
`RequestReceived` on the inbox, and the hub answers through `reply`. Must not import
other spokes.

With `[security] control_endpoint = "tcp://…"` a second ROUTER listens there as a
CurveZMQ server (`curve`); its envelopes carry a leading empty frame — never a ZMQ
routing id — so `reply` knows which socket a request came in on.
"""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec
import zmq
import zmq.asyncio

from proto import DECODE_ERRORS
from proto import control as ctl
from supervisord.events import Event, RequestReceived
from supervisord.logs import log
from supervisord.spokes import curve

#: First envelope frame of a request that came in over tcp (a routing id is never empty).
_VIA_TCP = b""


class ControlServer:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, inbox: asyncio.Queue[Event],
                 max_message_bytes: int, tcp: tuple[str, curve.ServerKeys] | None = None) -> None:
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
        self._tcp_reader: asyncio.Task[None] | None = None
        self.bad_requests = 0
        self.tcp: zmq.asyncio.Socket | None = None
        self._auth: object | None = None
        if tcp is not None:
            tcp_endpoint, keys = tcp
            self._auth = curve.start_authenticator(ctx, keys)
            self.tcp = ctx.socket(zmq.ROUTER)
            self.tcp.setsockopt(zmq.LINGER, 0)
            self.tcp.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            curve.make_server(self.tcp, keys)
            self.tcp.bind(tcp_endpoint)
            log("control_tcp", endpoint=tcp_endpoint, curve="on", client_keys=keys.clients)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(self.sock, ()))
        if self.tcp is not None:
            self._tcp_reader = loop.create_task(self._read(self.tcp, (_VIA_TCP,)))

    async def _read(self, sock: zmq.asyncio.Socket, via: tuple[bytes, ...]) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) < 2:
                continue  # no routing id: nothing to answer
            envelope, payload = (*via, *frames[:-1]), frames[-1]
            try:
                request = self._dec.decode(payload)
            except DECODE_ERRORS as e:
                self.bad_requests += 1
                log("bad_request", logging.WARNING, error=str(e))
                self.reply(envelope, ctl.Error(kind="bad_request", message=f"cannot decode request: {e}"))
                continue
            self.inbox.put_nowait(RequestReceived(envelope, request))

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        sock = self.sock
        if envelope and envelope[0] == _VIA_TCP and self.tcp is not None:
            sock, envelope = self.tcp, envelope[1:]
        try:
            sock.send_multipart([*envelope, self._enc.encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log("reply_failed", logging.DEBUG, error=e.strerror)

    def close(self) -> None:
        for reader in (self._reader, self._tcp_reader):
            if reader:
                reader.cancel()
        self.sock.close(linger=0)
        if self.tcp is not None:
            self.tcp.close(linger=0)
        if self._auth is not None:
            self._auth.stop()  # type: ignore[attr-defined]
