"""The client side of the control socket, for supctl and the benchmarks.

Owns one DEALER connection and the rule that a client never hangs: every request has
a reply deadline, and a daemon that does not answer in time is an error that says so.
Imports proto, zmq and msgspec only.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Self, TypeVar

import msgspec
import zmq

from proto import DECODE_ERRORS
from proto import control as ctl

T = TypeVar("T")


class ClientError(Exception):
    """The daemon could not be reached or did not answer; the message says which."""


class RequestFailed(Exception):
    """The daemon answered with an `Error` (or a reply of the wrong kind)."""


def expect(reply: ctl.Reply, kind: type[T]) -> T:
    """`reply` if it is a `kind`; the daemon's `Error` (kind: message) raised otherwise."""
    if isinstance(reply, ctl.Error):
        raise RequestFailed(f"{reply.kind}: {reply.message}")
    if not isinstance(reply, kind):
        raise RequestFailed(f"unexpected reply {type(reply).__name__}")
    return reply


def control_endpoint(state_dir: str | None, runtime_dir: str | None) -> str:
    state_dir = state_dir or os.environ.get("SUPD_STATE_DIR")
    runtime_dir = runtime_dir or os.environ.get("SUPD_RUNTIME_DIR")
    base = runtime_dir or state_dir
    if not base:
        raise ClientError("no state dir: pass --state-dir DIR or set SUPD_STATE_DIR")
    return f"ipc://{Path(base).resolve() / 'control.sock'}"


def listening(path: str) -> None:
    """Raise `ClientError` at once when nothing listens on the ipc socket `path` (no file,
    or a file left by a daemon that is gone): ZMQ would retry a refused connect forever."""
    if not os.path.exists(path):
        raise ClientError(f"supd is not running (no {path})")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise ClientError(f"supd is not running ({path} refuses connections: left by a daemon that is gone)") from None
        if e.errno != errno.EAGAIN:  # EAGAIN: a full backlog, someone is listening
            raise ClientError(f"cannot connect to {path}: {e.strerror}") from None
    finally:
        probe.close()


class Client:
    """`curve`: (client public, client secret, server public) keys, z85, for a tcp:// endpoint
    that is a CurveZMQ server; without them such a daemon never answers."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        if path is not None:
            listening(path)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(ctl.Reply)

    def request(self, req: ctl.Request, timeout_s: float | None = None) -> ctl.Reply:
        """Send one request and return its reply, or raise `ClientError` after the deadline."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self.sock.send(self._enc.encode(req))
        if not self.sock.poll(int(timeout * 1000)):
            raise ClientError(f"the daemon did not answer within {timeout:g}s ({self.endpoint})")
        try:
            return self._dec.decode(self.sock.recv())
        except DECODE_ERRORS as e:
            raise ClientError(f"cannot decode the daemon's reply: {e}") from None

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
