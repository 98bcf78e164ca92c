"""A stand-in daemon for driving one real child process (`python -m children`) in tests.

Binds a ROUTER on an ipc path, spawns the child through `supervisord.spokes.procs` with
`--daemon-pid` = this process, and speaks the protocol: `send` a DaemonMessage,
`recv`/`until` ChildMessages. While it waits it sends a Heartbeat every heartbeat_s,
like the daemon, unless `silent` is set (to play a stopped daemon). With `cgroups` (the
default, where a writable cgroup v2 exists: root), it makes a cgroup subtree for the
child's attempts like the daemon does and passes `--cgroup`. Single-threaded: the
socket is only touched from the test's thread.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import psutil
import zmq

from proto.children import ChildMessage, DaemonMessage, Dispatch, Heartbeat, Hello, Limits, Result
from proto.task import TaskSpec
from supervisord.spokes import cgroups, procs

REPO = Path(__file__).resolve().parent.parent
M = TypeVar("M")
#: Task ids carry this run's token, so psutil checks never see another run's processes.
RUN_TOKEN = uuid.uuid4().hex[:8]


def tid(name: str) -> str:
    """A task id unique to this test run."""
    return f"{name}.{RUN_TOKEN}"


def limits(**overrides: object) -> Limits:
    base: dict[str, object] = {"timeout_s": 20.0, "stall_timeout_s": None, "result_grace_s": 1.0,
                               "kill_grace_s": 0.5, "output_cap_bytes": 1 << 20}
    base.update(overrides)
    return Limits(**base)  # type: ignore[arg-type]


def exec_dispatch(task_id: str, argv: list[str], *, attempt: int = 1, **limit_overrides: object) -> Dispatch:
    spec_fields = {k: limit_overrides.pop(k) for k in ("input", "cwd", "env") if k in limit_overrides}
    spec = TaskSpec(kind="exec", argv=argv, **spec_fields)  # type: ignore[arg-type]
    return Dispatch(task_id=task_id, attempt=attempt, spec=spec, limits=limits(**limit_overrides))


class ChildHarness:
    def __init__(self, *, heartbeat_s: float = 0.2, liveness: int = 25, identity: str = "w00.1",
                 env: dict[str, str] | None = None, daemon_pid: int | None = None, cgroups: bool = True,
                 extra_args: list[str] | None = None, launcher: str | None = None) -> None:
        self.heartbeat_s, self.identity = heartbeat_s, identity
        self.dir = tempfile.mkdtemp(prefix="supd-child-")  # short: ipc paths max ~107 bytes
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(f"ipc://{self.dir}/children.sock")
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(ChildMessage).decode
        self.silent = False
        self.next_hb = time.monotonic()
        self.messages: list[ChildMessage] = []
        self.task_ids: set[str] = set()
        child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                     "PYTHONPATH": str(REPO), "HOME": self.dir, **(env or {})}
        argv = [sys.executable, "-m", "children", "--endpoint", f"ipc://{self.dir}/children.sock",
                "--identity", identity, "--daemon-pid", str(daemon_pid or os.getpid()),
                "--heartbeat-s", str(heartbeat_s), "--liveness", str(liveness), *(extra_args or [])]
        self.cgroup_base = _open_base(self.dir) if cgroups else None
        if self.cgroup_base is not None:
            argv += ["--cgroup", self.cgroup_base]
        if launcher is not None:  # a stand-in daemon process between us and the child
            argv = [sys.executable, "-c", launcher, *argv]
        try:
            self.proc: procs.Spawned = procs.spawn_child(argv, env=child_env)
        except BaseException:  # no child: close the socket, or the context's term() hangs the run at exit
            self.router.close(0)
            self.ctx.term()
            raise

    # ---- talking ---------------------------------------------------------------------

    def send(self, msg: DaemonMessage) -> None:
        if isinstance(msg, Dispatch):
            self.task_ids.add(msg.task_id)
        self.send_raw(self.encode(msg))

    def send_raw(self, payload: bytes) -> None:
        self.router.send_multipart([self.identity.encode(), payload])

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if not self.silent and now >= self.next_hb:
            self.send(Heartbeat())
            self.next_hb = now + self.heartbeat_s

    def recv(self, timeout_s: float) -> ChildMessage | None:
        """The next message within timeout_s (heartbeating meanwhile), or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._heartbeat()
            now = time.monotonic()
            if now >= deadline:
                return None
            wait_s = min(deadline, self.next_hb if not self.silent else deadline) - now
            if self.router.poll(max(1, int(wait_s * 1000)), zmq.POLLIN):
                ident, payload = self.router.recv_multipart()
                assert ident == self.identity.encode()
                msg: ChildMessage = self.decode(payload)
                self.messages.append(msg)
                return msg

    def until(self, kind: type[M], timeout_s: float = 10.0, *, skip_heartbeats: bool = True) -> tuple[M, list[ChildMessage]]:
        """Messages up to and including the first of `kind`; fails on timeout."""
        seen: list[ChildMessage] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                break
            if isinstance(msg, kind):
                return msg, seen
            if not (skip_heartbeats and isinstance(msg, Heartbeat)):
                seen.append(msg)
        raise AssertionError(f"no {kind.__name__} within {timeout_s}s; got {seen!r}")

    def hello(self, timeout_s: float = 10.0) -> Hello:
        hello, _ = self.until(Hello, timeout_s)
        return hello

    def run(self, dispatch: Dispatch, timeout_s: float = 10.0) -> tuple[Result, list[ChildMessage]]:
        self.send(dispatch)
        return self.until(Result, timeout_s)

    def pump(self, seconds: float) -> None:
        """Keep the conversation going (heartbeats in, messages collected) for a while."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.recv(left)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.pump(0.05)
        return condition()

    def wait_exit(self, timeout_s: float) -> int | None:
        """The child's exit code once it has exited (and is reaped), pumping meanwhile."""
        self.wait_for(lambda: self.proc.poll() is not None, timeout_s)
        return self.proc.returncode

    # ---- checks ----------------------------------------------------------------------

    def child_children(self) -> list[psutil.Process]:
        return procs.descendants(self.proc.pid)

    def leftovers(self) -> list[psutil.Process]:
        """Processes still tagged with any task id this harness dispatched."""
        found: list[psutil.Process] = []
        for task_id in self.task_ids:
            found += procs.tagged(task_id)
        return found

    def groups(self) -> list[str]:
        """The cgroups that exist now under this harness's subtree (the worker's own, and
        any left marked with an attempt that would not die)."""
        return cgroups.groups(self.cgroup_base) if self.cgroup_base else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.proc.wait(5) is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        self.proc.close_pidfd()
        if self.cgroup_base is not None:
            for path in cgroups.groups(self.cgroup_base):
                cgroups.kill(path)
                deadline = time.monotonic() + 2
                while not cgroups.remove(path) and time.monotonic() < deadline:
                    time.sleep(0.02)
            cgroups.remove(self.cgroup_base)
        self.router.close(0)
        self.ctx.term()
        try:
            os.unlink(f"{self.dir}/children.sock")
        except FileNotFoundError:
            pass
        os.rmdir(self.dir)


def _open_base(state_dir: str) -> str | None:
    base, _ = cgroups.open_base(state_dir)
    return base


def cgroups_writable() -> tuple[bool, str]:
    """Whether this process can make cgroups for attempts (root with a writable cgroup v2)."""
    probe = tempfile.mkdtemp(prefix="supd-probe-")
    try:
        base, why = cgroups.open_base(probe)
        if base is not None:
            cgroups.remove(base)
        return base is not None, why
    finally:
        os.rmdir(probe)
