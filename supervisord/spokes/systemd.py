"""The sd_notify spoke: tells systemd that supd is ready, alive, reloading or stopping.

It owns the one datagram socket to ``$NOTIFY_SOCKET`` and the parsing of
``$WATCHDOG_USEC``/``$WATCHDOG_PID``. It speaks the protocol of sd_notify(3):
newline-separated ``KEY=value`` lines in one ``AF_UNIX``/``SOCK_DGRAM`` datagram.
Under systemd's ``Type=notify`` the hub calls ``ready()`` once the pool is up,
``watchdog()`` every ``watchdog_interval_s``, ``reloading()`` on HUP (then
``ready()`` again when the reload is done) and ``stopping()`` when it drains.

Sending never raises into the caller: a failure is logged at debug and counted
in ``failures``. Without ``$NOTIFY_SOCKET`` (not run by systemd) every call is a
no-op. Stdlib only; it must not import the rest of the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

__all__ = ["Notifier", "format_status"]

log = logging.getLogger(__name__)


class Notifier:
    """One sd_notify socket, opened once; every send is best-effort."""

    def __init__(self, address: str | None = None, watchdog_interval_s: float | None = None) -> None:
        # address: a filesystem path, or "@name" for an abstract socket; None disables.
        self.address: str | None = address
        self.watchdog_interval_s: float | None = watchdog_interval_s if address else None
        self.failures = 0
        self._target: str | bytes | None = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        if self._target is not None:
            try:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            except OSError as exc:
                self.failures += 1
                log.debug("sd_notify socket failed address=%s error=%r", address, exc)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A Notifier for ``$NOTIFY_SOCKET``, or a disabled one when it is unset or unusable."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # e.g. systemd 254's "vsock:CID:PORT": not for a service on the same host.
            log.debug("sd_notify unsupported address=%s", address)
            address = None
        return cls(address, _watchdog_interval_s(environ))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        self._send(None, text)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more from now before systemd's start/stop timeout fires."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}", None)

    def reloading(self) -> None:
        """Reload has begun; call ``ready()`` when it is done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}", None)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, state: str | None, status: str | None) -> None:
        if self._sock is None or self._target is None:
            return
        lines = [state] if state else []
        if status is not None:
            lines.append("STATUS=" + " ".join(status.splitlines()))  # one line: the protocol is line-based
        try:
            self._sock.sendto("\n".join(lines).encode(), self._target)
        except OSError as exc:  # ENOENT/ECONNREFUSED (systemd gone), EAGAIN (its queue full)
            self.failures += 1
            log.debug("sd_notify failed address=%s failures=%d error=%r", self.address, self.failures, exc)


def format_status(children_ready: int, children_total: int, queued: int, running: int, failed: int) -> str:
    """The short STATUS= line ``systemctl status supd`` shows."""
    return f"children {children_ready}/{children_total} ready; tasks {running} running, {queued} queued, {failed} failed"


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # abstract namespace
    return address


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC``, when the watchdog is meant for this process."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        pid = environ.get("WATCHDOG_PID")
        if pid is not None and pid != "" and int(pid) != os.getpid():
            return None  # inherited from a parent that systemd watches, not us
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
