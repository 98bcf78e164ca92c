"""The dashboard's live stream: the event bus, heard like `supctl watch` hears it, fanned
out to browsers as server-sent events.

Owns a SUB socket on `events.sock` (the same stream as `supctl watch`), what it keeps of
that stream — the last hour as a `Series`, the recent transcript lines of recent tasks —
and the SSE clients. Memory is bounded everywhere: a client's buffer holds at most
`CLIENT_EVENTS` events or `CLIENT_BYTES` bytes; past either the client is dropped with a
`reload` event (its page says so), so a slow browser never slows the daemon or grows
it. Transcripts: `TRANSCRIPT_TASKS` tasks × `TRANSCRIPT_LINES` lines. Every second at
most (and every `SNAPSHOT_EVERY_S` anyway) while someone watches, one `snapshot` event
(status, health, stats, the hour) goes to every client: one set of requests to the hub
however many pages are open. Must not import other spokes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import web

from supervisord.core.series import Series
from supervisord.logs import log

#: A client's buffer: past either bound it is dropped with a `reload` event.
CLIENT_EVENTS = 1000
CLIENT_BYTES = 1 << 20
#: Browsers served at once; one more gets a 503.
MAX_CLIENTS = 64
#: A write a browser has not taken in this long ends its stream.
WRITE_TIMEOUT_S = 10.0
#: A comment line this often keeps proxies from closing an idle stream.
PING_S = 15.0
#: Snapshots: at most one a second, at least one every SNAPSHOT_EVERY_S while watched.
SNAPSHOT_MIN_S, SNAPSHOT_EVERY_S = 1.0, 5.0
TRANSCRIPT_TASKS, TRANSCRIPT_LINES, LINE_CHARS = 256, 500, 2000
#: Messages libzmq holds for us before it drops (a busy loop loses events, never memory).
RCVHWM = 10_000

RELOAD = b'event: reload\ndata: {"reason": "this page fell behind the stream: reload it"}\n\n'


def sse(data: bytes, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


@dataclass(slots=True, eq=False)  # one per browser, by identity
class Client:
    """One browser's stream: a bounded buffer and what it wants."""

    task: str | None = None
    progress: bool = False
    buffer: deque[bytes] = field(default_factory=deque)
    size: int = 0
    dropped: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, topic: str) -> bool:
        if self.task is not None:
            return topic.startswith(f"task/{self.task}/")
        return self.progress or not topic.endswith("/progress")

    def push(self, message: bytes) -> None:
        if self.dropped:
            return
        if len(self.buffer) >= CLIENT_EVENTS or self.size + len(message) > CLIENT_BYTES:
            self.dropped = True  # too far behind: say so and stop, rather than grow
            self.buffer.clear()
            self.buffer.append(RELOAD)
            self.size = len(RELOAD)
        else:
            self.buffer.append(message)
            self.size += len(message)
        self.ready.set()

    def take(self) -> bytes:
        out = b"".join(self.buffer)
        self.buffer.clear()
        self.size = 0
        self.ready.clear()
        return out


class Feed:
    def __init__(self, ctx: zmq.asyncio.Context, events_endpoint: str, wall: Callable[[], float] = time.time) -> None:
        self.ctx, self.endpoint, self.wall = ctx, events_endpoint, wall
        self.series = Series()
        self.transcripts: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.clients: set[Client] = set()
        #: builds the snapshot (set by the views: it asks the hub)
        self.snapshot: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.heard = 0
        #: clients dropped for falling behind
        self.dropped = 0
        self._dirty = True
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._sock = self.ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(self.endpoint)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._snapshots())]

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for c in self.clients:
            c.dropped = True
            c.ready.set()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # ---- what the stream says ------------------------------------------------------------

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                event = json.loads(frames[1])
                self.hear(frames[0].decode(), event, frames[1])
            except (ValueError, UnicodeDecodeError, AttributeError) as e:
                log("web_event_dropped", logging.WARNING, error=repr(e)[:200])

    def hear(self, topic: str, event: dict[str, Any], raw: bytes | None = None) -> None:
        """One event from the bus: keep what the pages need, pass it to who wants it."""
        self.heard += 1
        self._dirty = True
        parts = topic.split("/")
        if parts[0] == "task" and len(parts) == 3:
            task_id, what = parts[1], parts[2]
            if what == "progress":
                self._line(task_id, event)
            elif what == "finished":
                tokens = event.get("tokens")
                self.series.record(float(event.get("ts") or self.wall()), ok=event.get("state") == "succeeded",
                                   duration_s=event.get("duration_s"), tokens=int(tokens or 0),
                                   cost_usd=float(event.get("cost_usd") or 0.0))
        if self.clients:
            message = sse(raw if raw is not None else json.dumps(event).encode())
            for c in self.clients:
                if c.wants(topic):
                    c.push(message)
        self._count_drops()

    def _count_drops(self) -> None:
        for c in [c for c in self.clients if c.dropped]:
            self.clients.discard(c)
            self.dropped += 1
            log("web_client_dropped", logging.WARNING, reason="fell behind", buffer_events=CLIENT_EVENTS,
                buffer_bytes=CLIENT_BYTES)

    def _line(self, task_id: str, event: dict[str, Any]) -> None:
        lines = self.transcripts.get(task_id)
        if lines is None:
            lines = self.transcripts[task_id] = deque(maxlen=TRANSCRIPT_LINES)
            while len(self.transcripts) > TRANSCRIPT_TASKS:
                self.transcripts.popitem(last=False)
        else:
            self.transcripts.move_to_end(task_id)
        lines.append({"ts": event.get("ts"), "event": str(event.get("event") or "")[:200],
                      "summary": str(event.get("summary") or "")[:LINE_CHARS]})

    # ---- snapshots -----------------------------------------------------------------------

    async def _snapshots(self) -> None:
        last = 0.0
        while True:
            await self._wake.wait()  # set while someone watches
            now = time.monotonic()
            if self._dirty or now - last >= SNAPSHOT_EVERY_S:
                self._dirty = False
                last = now
                await self._send_snapshot()
            await asyncio.sleep(SNAPSHOT_MIN_S)

    async def _send_snapshot(self) -> None:
        if self.snapshot is None or not self.clients:
            return
        try:
            data = await self.snapshot()
        except Exception as e:  # noqa: BLE001 (the hub too busy to answer: the next one will do)
            log("web_snapshot_failed", logging.WARNING, error=str(e)[:200])
            return
        message = sse(json.dumps(data, default=str).encode(), "snapshot")
        for c in self.clients:
            if c.task is None:
                c.push(message)
        self._count_drops()

    # ---- the SSE route --------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if len(self.clients) >= MAX_CLIENTS:
            return web.json_response({"ok": False, "error": f"{MAX_CLIENTS} live pages are open already"},
                                     status=503)
        client = Client(task=request.query.get("task") or None, progress=request.query.get("progress") == "1")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self.clients.add(client)
        self._wake.set()
        self._dirty = True
        try:
            await resp.write(b"retry: 3000\n\n" + sse(b'{"ok": true}', "hello"))
            while not (client.dropped and not client.buffer):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.ready.wait(), PING_S)
                chunk = client.take() or b": ping\n\n"
                await asyncio.wait_for(resp.write(chunk), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.clients.discard(client)
            if not self.clients:
                self._wake.clear()
        return resp
