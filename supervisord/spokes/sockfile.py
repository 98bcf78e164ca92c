"""The file behind an ipc:// socket: bind it 0600, notice when it is gone, remove it at exit.

Owns the rules every bound ipc endpoint keeps (the control socket, the children socket,
the event bus): the file is born 0600 (umask, then chmod), we remember its inode, and
`BoundFile.check` rebinds the same ZMQ socket when the path is missing or is now some
other file (a `rm -rf` of the runtime dir, tmpfiles cleaning /run). At a clean exit we
remove the file only if it is still ours. Imports zmq and the stdlib only; no other spoke.
"""

from __future__ import annotations

import logging
import os

import zmq

from supervisord.logs import log


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class BoundFile:
    """One ZMQ socket bound to one endpoint, and (for ipc) the inode of its file."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, mode: int = 0o600) -> None:
        self.sock, self.endpoint, self.mode = sock, endpoint, mode
        self.path = ipc_path(endpoint)
        self.inode: tuple[int, int] | None = None
        #: times the file was found missing (or replaced) and the socket rebound
        self.rebinds = 0
        self.bind()

    def bind(self) -> None:
        old = os.umask(0o777 & ~self.mode)  # the socket file is born with `mode`
        try:
            self.sock.bind(self.endpoint)
        finally:
            os.umask(old)
        if self.path is not None:
            os.chmod(self.path, self.mode)
            st = os.stat(self.path)
            self.inode = (st.st_dev, st.st_ino)

    def present(self) -> bool:
        if self.path is None:
            return True
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.inode

    def check(self) -> bool:
        """True when the file is in place; otherwise log `socket_missing`, rebind the same
        socket (connected peers keep their connections) and return False."""
        if self.present():
            return True
        self.rebinds += 1
        log("socket_missing", logging.WARNING, socket=self.path, action="rebind")
        try:
            self.sock.unbind(self.endpoint)  # libzmq unlinks the path: it is ours to replace
        except zmq.ZMQError:
            pass
        try:
            if self.path is not None:  # the whole runtime dir may be gone: make it again, 0700
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self.bind()
        except (zmq.ZMQError, OSError) as e:  # e.g. the directory itself is gone: try next time
            self.inode = None
            log("socket_rebind_failed", logging.ERROR, socket=self.path, error=str(e))
        return False

    def remove(self) -> None:
        """At exit: remove the file if it is still the one we bound (never another's)."""
        if self.path is not None and self.inode is not None and self.present():
            try:
                os.unlink(self.path)
            except OSError:
                pass
