"""The dashboard, plugged into the hub: its requests' answers routed back to it.

Owns `Replies`, the hub's control link when the dashboard is on: an answer whose
envelope starts with `spokes.web.WEB_MARK` goes to the web server, every other to the
control socket. The dashboard's requests are thereby handled by `commands` exactly as
supctl's are (Cancel from a page is supctl's Cancel). `start` builds the web spoke
when `[web] port` > 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import zmq.asyncio

from proto import control as ctl
from supervisord.config import WebConfig
from supervisord.events import Event
from supervisord.hub.state import ControlLink
from supervisord.spokes.web import WEB_MARK, WebServer
from supervisord.spokes.webfeed import Feed


class Replies:
    """A `ControlLink` that sends the dashboard's answers to the dashboard."""

    def __init__(self, control: ControlLink, web: WebServer) -> None:
        self.control, self.web = control, web

    @property
    def bad_requests(self) -> int:
        return self.control.bad_requests

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        if envelope and envelope[0] == WEB_MARK:
            self.web.reply(envelope, reply)
        else:
            self.control.reply(envelope, reply)

    def check_socket(self) -> bool:
        return self.control.check_socket()


async def start(cfg: WebConfig, ctx: zmq.asyncio.Context, events_endpoint: str, inbox: asyncio.Queue[Event],
                state_dir: Path, wall: Callable[[], float]) -> WebServer | None:
    """The dashboard, listening; None when it is off or its port cannot be had (logged)."""
    if cfg.port <= 0:
        return None
    server = WebServer(cfg, inbox, state_dir, Feed(ctx, events_endpoint, wall), wall)
    return server if await server.start() else None
