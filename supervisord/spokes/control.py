"""The control socket: a ZeroMQ ROUTER that supctl talks to, one request, one reply.

Owns the socket, its permissions and request decoding. A frame that fails to decode
(also a number out of its range: `proto` bounds every field) is answered with an
`Error(kind="bad_request")` here and then, naming the field; a good request becomes a
`RequestReceived` on the inbox, and the hub answers through `reply`. Must not import
other spokes (`sockfile` is a helper, not a spoke).

Back-pressure, so a flood of clients cannot grow the daemon's memory without bound: the
reader counts requests it has put on the inbox and not yet seen answered (and their
bytes). Past `MAX_IN_FLIGHT` requests or `max_in_flight_bytes` it stops reading until
`reply` brings it back under; meanwhile requests wait in libzmq's pipes, which hold at
most `RCVHWM` messages per client, after which libzmq stops reading the clients'
connections and the kernel's socket buffers push back on the clients themselves.

With `[security] control_endpoint = "tcp://…"` a second ROUTER listens there as a
CurveZMQ server (`curve`); its envelopes carry a leading empty frame — never a ZMQ
routing id — so `reply` knows which socket a request came in on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import msgspec
import zmq
import zmq.asyncio

from proto import DECODE_ERRORS, readable_error
from proto import control as ctl
from supervisord.events import Event, RequestReceived
from supervisord.logs import log
from supervisord.spokes import curve
from supervisord.spokes.sockfile import BoundFile

#: First envelope frame of a request that came in over tcp (a routing id is never empty).
_VIA_TCP = b""
#: Unanswered requests (long-polling waits included) past which the reader pauses.
MAX_IN_FLIGHT = 4096
#: Messages libzmq queues per client connection, each way.
HWM = 1000


class ControlServer:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, inbox: asyncio.Queue[Event],
                 max_message_bytes: int, tcp: tuple[str, curve.ServerKeys] | None = None) -> None:
        self.endpoint = endpoint
        self.inbox = inbox
        self.sock = ctx.socket(zmq.ROUTER)
        self._setup(self.sock, max_message_bytes)
        self.bound = BoundFile(self.sock, endpoint)  # the file is born 0600: its owner only
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(ctl.Request)
        self._readers: list[asyncio.Task[None]] = []
        #: requests refused because they did not decode (or were out of range)
        self.bad_requests = 0
        #: frames without a routing id, which cannot be answered
        self.dropped = 0
        #: replies libzmq would not take (the client is gone, or its pipe is full)
        self.send_errors = 0
        #: times the reader paused because too much was in flight
        self.paused = 0
        self.max_in_flight_bytes = 4 * max_message_bytes
        self._in_flight: dict[tuple[bytes, ...], deque[int]] = {}
        self._in_flight_n = 0
        self._in_flight_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self.tcp: zmq.asyncio.Socket | None = None
        self._auth: object | None = None
        if tcp is not None:
            tcp_endpoint, keys = tcp
            self._auth = curve.start_authenticator(ctx, keys)
            self.tcp = ctx.socket(zmq.ROUTER)
            self._setup(self.tcp, max_message_bytes)
            curve.make_server(self.tcp, keys)
            self.tcp.bind(tcp_endpoint)
            log("control_tcp", endpoint=tcp_endpoint, curve="on", client_keys=keys.clients)

    @staticmethod
    def _setup(sock: zmq.Socket[bytes], max_message_bytes: int) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply that cannot go is an error we count, not silence

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._readers.append(loop.create_task(self._read(self.sock, ())))
        if self.tcp is not None:
            self._readers.append(loop.create_task(self._read(self.tcp, (_VIA_TCP,))))

    def check_socket(self) -> bool:
        """True when control.sock is in place; else log `socket_missing`, rebind, False."""
        return self.bound.check()

    async def _read(self, sock: zmq.asyncio.Socket, via: tuple[bytes, ...]) -> None:
        while True:
            if not self._room.is_set():
                self.paused += 1
                log("control_paused", logging.WARNING, in_flight=self._in_flight_n, bytes=self._in_flight_bytes)
                await self._room.wait()
            frames = await sock.recv_multipart()
            if len(frames) < 2:
                self.dropped += 1
                continue  # no routing id: nothing to answer
            envelope, payload = (*via, *frames[:-1]), frames[-1]
            try:
                request = self._dec.decode(payload)
            except DECODE_ERRORS as e:
                self.bad_requests += 1
                message = readable_error(str(e))
                log("bad_request", logging.WARNING, error=message[:200])
                self._send(envelope, ctl.Error(kind="bad_request", message=f"cannot decode request: {message}"))
                continue
            self._taken(envelope, len(payload))
            self.inbox.put_nowait(RequestReceived(envelope, request))

    def _taken(self, envelope: tuple[bytes, ...], size: int) -> None:
        self._in_flight.setdefault(envelope, deque()).append(size)
        self._in_flight_n += 1
        self._in_flight_bytes += size
        if self._in_flight_n >= MAX_IN_FLIGHT or self._in_flight_bytes >= self.max_in_flight_bytes:
            self._room.clear()

    def _answered(self, envelope: tuple[bytes, ...]) -> None:
        sizes = self._in_flight.get(envelope)
        if not sizes:
            return
        self._in_flight_n -= 1
        self._in_flight_bytes -= sizes.popleft()
        if not sizes:
            del self._in_flight[envelope]
        if self._in_flight_n < MAX_IN_FLIGHT and self._in_flight_bytes < self.max_in_flight_bytes:
            self._room.set()

    @property
    def in_flight(self) -> int:
        """Requests handed to the hub and not answered yet."""
        return self._in_flight_n

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        self._answered(envelope)
        self._send(envelope, reply)

    def _send(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        sock = self.sock
        if envelope and envelope[0] == _VIA_TCP and self.tcp is not None:
            sock, envelope = self.tcp, envelope[1:]
        try:
            sock.send_multipart([*envelope, self._enc.encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            self.send_errors += 1
            log("reply_failed", logging.WARNING, error=e.strerror, reply=type(reply).__name__)

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        self.bound.remove()
        self.sock.close(linger=0)
        if self.tcp is not None:
            self.tcp.close(linger=0)
        if self._auth is not None:
            self._auth.stop()  # type: ignore[attr-defined]
