"""The web dashboard's server (`[web] port` > 0): aiohttp on the daemon's own loop.

Owns the HTTP listener, its access token and the token file, the static pages, and the
JSON/SSE routes. It reads the hub's state only by asking, like any control client: a
request (`Status`, `List`, `Get`, `Cancel`, `Diff`, `Batch`, `FlowStatus`, `FlowCancel`, …) goes on
the inbox as a `RequestReceived` whose envelope starts with `WEB_MARK`, and the hub's
answer comes back through `reply` (the hub's control link routes envelopes with that mark
here). So the buttons call the very verbs supctl calls, and nothing here touches the
hub's structures. What each page shows is put together in `webviews` (one module for the
views' data access); the live stream is `webfeed`'s.

Access: every request needs the token — `?token=…` once (answered with a cookie and a
redirect that drops it from the address bar), the cookie, or `Authorization: Bearer …`;
anything else is a 401. The token is random, kept in `STATE_DIR/web.json` (0600, with
the URL and the daemon's pid: `supctl web` prints them) and reused by the next start so
bookmarks keep working. A host that is not loopback is said in the log. A POST must
come from the page itself (its Origin, if any, is this server). Must not import other
spokes (`webfeed` and `webviews` are this spoke's own parts).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from proto import control as ctl
from supervisord.config import WebConfig
from supervisord.events import Event, RequestReceived
from supervisord.logs import log
from supervisord.spokes import webviews
from supervisord.spokes.webfeed import Feed

#: First envelope frame of a request the dashboard put on the inbox. A ZeroMQ routing id is
#: never this: libzmq's own ids are 5 bytes starting with a zero byte, and one a client sets
#: may not start with a zero byte; the tcp control socket's mark is the empty frame.
WEB_MARK = b"\x00web"
#: The longest the dashboard waits for the hub's answer to one request.
ASK_TIMEOUT_S = 5.0
#: Requests the dashboard may have on the inbox at once; past it a page gets a 503.
MAX_ASKING = 64
COOKIE = "supd_token"
TOKEN_FILE = "web.json"
STATIC = Path(__file__).resolve().parent.parent / "web"
_JSON = msgspec.json.Encoder()


class WebError(Exception):
    """The hub could not be asked (too busy, no answer in time): a 503 naming why."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(path: Path) -> str | None:
    """The token of an earlier start, if its file is ours, 0600, and well-formed."""
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            return None
        token = json.loads(path.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) and len(token) >= 32 and token.isascii() else None


def write_token_file(path: Path, data: dict[str, Any]) -> None:
    """Written 0600 from the first byte, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data) + "\n")
    os.replace(tmp, path)


class WebServer:
    def __init__(self, cfg: WebConfig, inbox: asyncio.Queue[Event], state_dir: Path, feed: Feed,
                 wall: Callable[[], float]) -> None:
        self.cfg, self.inbox, self.state_dir, self.feed, self.wall = cfg, inbox, state_dir, feed, wall
        self.token_path = state_dir / TOKEN_FILE
        self.token = load_token(self.token_path) or secrets.token_urlsafe(32)
        self._asking: dict[bytes, asyncio.Future[ctl.Reply]] = {}
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self.port = cfg.port
        self.url = ""
        #: requests refused for want of a token
        self.refused = 0

    # ---- asking the hub --------------------------------------------------------------

    async def ask(self, request: ctl.Request, timeout_s: float = ASK_TIMEOUT_S) -> ctl.Reply:
        """Put `request` on the inbox like the control socket does; the hub's answer (a 503
        after `timeout_s`)."""
        if len(self._asking) >= MAX_ASKING:
            raise WebError(f"the dashboard has {MAX_ASKING} requests waiting on the daemon already")
        self._seq += 1
        key = str(self._seq).encode()
        future: asyncio.Future[ctl.Reply] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        self.inbox.put_nowait(RequestReceived((WEB_MARK, key), request))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise WebError(f"the daemon did not answer {type(request).__name__} within {timeout_s:g} s") from None
        finally:
            self._asking.pop(key, None)

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        """The hub's answer to one of our requests (a late one, after its timeout, is dropped)."""
        future = self._asking.get(envelope[1]) if len(envelope) == 2 else None
        if future is not None and not future.done():
            future.set_result(reply)

    # ---- the server ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024)
        views = webviews.Views(self.ask, self.feed, self.wall)
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC, follow_symlinks=False)
        r.add_get("/api/overview", _json(views.overview))
        r.add_get("/api/tasks", _json(views.tasks))
        r.add_get("/api/task/{id}", _json(views.task))
        r.add_get("/api/task/{id}/diff", _json(views.diff))
        r.add_post("/api/task/{id}/cancel", _json(views.cancel))
        r.add_post("/api/task/{id}/retry", _json(views.retry))
        r.add_get("/api/batches", _json(views.batches))
        r.add_get("/api/batch/{id}", _json(views.batch))
        r.add_get("/api/workflows", _json(views.workflows))
        r.add_get("/api/workflow/{id}", _json(views.workflow))
        r.add_post("/api/workflow/{id}/cancel", _json(views.workflow_cancel))
        r.add_get("/api/hosts", _json(views.hosts))
        r.add_get("/api/events", self.feed.stream)
        return app

    async def start(self) -> bool:
        """Listen on host:port; False (and a log line) when it cannot: the dashboard is
        lost, never the supervisor."""
        host = self.cfg.host
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            log("web_failed", logging.ERROR, host=host, port=self.cfg.port, error=e.strerror)
            await self._runner.cleanup()
            self._runner = None
            return False
        server = site._server  # the bound port, for port numbers the OS picked
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        write_token_file(self.token_path, {"url": self.url, "token": self.token, "pid": os.getpid()})
        self.feed.start()
        log("web_listening", host=host, port=self.port, url=self.url, token_file=self.token_path)
        if not is_loopback(host):
            log("web_exposed", logging.WARNING, host=host, port=self.port,
                note="the dashboard listens beyond this machine; every request needs the token")
        return True

    async def close(self) -> None:
        self.feed.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for future in self._asking.values():
            future.cancel()

    # ---- access ------------------------------------------------------------------------

    def _token_ok(self, request: web.Request) -> bool:
        given = [request.cookies.get(COOKIE, ""), request.query.get("token", "")]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:])
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not self._token_ok(request):
            self.refused += 1
            return web.Response(status=401, content_type="text/html", text=_REFUSED,
                                headers={"WWW-Authenticate": 'Bearer realm="supd"'})
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and origin.rstrip("/") != f"{request.scheme}://{request.host}":
                return web.json_response({"ok": False, "error": f"cross-site request from {origin} refused"},
                                         status=403)
        if "token" in request.query and request.method == "GET" and request.path == "/":
            response = web.HTTPSeeOther("/")  # the token leaves the address bar and the history
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            return response
        return await handler(request)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def _json(view: Callable[[web.Request], Awaitable[Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        try:
            body = await view(request)
        except WebError as e:
            return web.Response(status=503, content_type="application/json",
                                body=_JSON.encode({"ok": False, "error": str(e)}))
        except webviews.BadInput as e:
            return web.Response(status=400, content_type="application/json",
                                body=_JSON.encode({"ok": False, "error": str(e)}))
        return web.Response(content_type="application/json", body=_JSON.encode(body),
                            headers={"Cache-Control": "no-store"})

    return handler


_REFUSED = """<!doctype html><meta charset="utf-8"><title>supd: token required</title>
<body style="font-family: sans-serif; margin: 3em"><h1>401: this dashboard needs its token</h1>
<p>Run <code>supctl web</code> on the daemon's machine: it prints the URL with the token.</p></body>
"""
