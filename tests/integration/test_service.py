"""supd as a service, with real processes: sd_notify to a socket the test binds (as
systemd would), SIGHUP / `supctl reload` and `supctl scale` applied live."""

from __future__ import annotations

import itertools
import queue
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import Supd, child_env, gate, short_tmpdir

pytestmark = pytest.mark.timeout(120)


class NotifySocket:
    """What systemd's end of $NOTIFY_SOCKET sees: datagrams of KEY=value lines, timestamped.

    Like systemd, it reads all the time (a thread): a unix datagram queue holds only ~10
    messages, and a reader that pauses would make the daemon's sends fail with EAGAIN."""

    def __init__(self) -> None:
        self.dir = short_tmpdir("supd-n-")
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, dict[str, str]]] = []
        self._queue: queue.Queue[tuple[float, dict[str, str]]] = queue.Queue()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self._queue.put((time.monotonic(), fields))

    def next(self, timeout_s: float = 20.0) -> dict[str, str] | None:
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self.seen.append(item)
        return item[1]

    def until(self, key: str, value: str | None = None, timeout_s: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            if msg is not None and key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value or '*'} within {timeout_s}s; saw {[m for _, m in self.seen]}")

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        start = len(self.seen)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.next(max(0.01, end - time.monotonic()))
        return self.seen[start:]

    def close(self) -> None:
        self._stop.set()
        self._reader.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


def pool(d: Supd) -> dict[str, Any]:
    return d.info(ctl.Status())["pool"]


def wait_pool(d: Supd, idle: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Until the pool has exactly `idle` children, all idle (retired ones gone)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = d.info(ctl.Status())
        states = [c["state"] for c in status["children"]]
        if states == ["idle"] * idle and status["pool"]["size"] == idle:
            return status
        time.sleep(0.05)
    raise AssertionError(f"pool never reached {idle} idle: {status.get('children')}\n{d.log()[-3000:]}")


def sleeper(seconds: float) -> TaskSpec:
    return TaskSpec(kind="exec", argv=[sys.executable, "-c", f"import time; time.sleep({seconds}); print('done')"])


def wait_running(d: Supd, n: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if d.info(ctl.Status())["tasks"]["running"] >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} tasks never ran at once")


# ---- sd_notify -------------------------------------------------------------------


def test_sd_notify_ready_status_watchdog_and_stopping(supd_factory, notify):
    env = child_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    d = supd_factory(children=3, env=env).start(wait_ready=False)

    ready = notify.until("READY", "1")
    status = d.info(ctl.Status())  # asked the moment READY=1 arrived
    assert status["phase"] == "running"
    assert [c["state"] for c in status["children"]] == ["idle"] * 3, "READY=1 before every child was idle"
    assert ready["STATUS"].startswith("children 3/3 ready"), ready
    # the hub's lines for the slots (the spare, booted alongside, is no part of READY=1)
    hub_ready = [line for line in d.log().splitlines() if "event=child_ready child=w" in line]
    assert len(hub_ready) == 3 and "event=daemon_ready" in d.log().split(hub_ready[-1], 1)[1]
    assert sum("READY" in m for _, m in notify.seen) == 1, notify.seen

    # Watchdog: about every WATCHDOG_USEC/2; an idle daemon sends nothing else.
    idle = notify.collect(2.0)
    pings = [t for t, m in idle if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 4, idle
    gap = statistics.median(b - a for a, b in itertools.pairwise(pings))
    assert 0.1 <= gap < 0.4, f"watchdog median gap {gap:.3f}s for WATCHDOG_USEC=0.4s"
    assert not any("STATUS" in m for _, m in idle), f"STATUS repeated while nothing changed: {idle}"

    # STATUS= follows live counts.
    (tid,) = d.submit(sleeper(0.5))
    running = notify.until("STATUS")
    assert "1 running" in running["STATUS"], running
    d.wait([tid])
    deadline = time.monotonic() + 10
    while "0 running" not in notify.until("STATUS")["STATUS"]:
        assert time.monotonic() < deadline

    # Shutdown: STOPPING=1 with more time asked for, then a clean exit.
    out = d.supctl("shutdown")
    assert out.returncode == 0, out.stderr
    stopping = notify.until("STOPPING", "1")
    extend = stopping if "EXTEND_TIMEOUT_USEC" in stopping else notify.until("EXTEND_TIMEOUT_USEC")
    assert int(extend["EXTEND_TIMEOUT_USEC"]) >= 60 * 1_000_000  # drain_s (60 by default) + a margin
    assert d.proc.wait(30) == 0


def test_sighup_notifies_reloading_then_ready(supd_factory, notify):
    env = child_env(NOTIFY_SOCKET=notify.path)
    d = supd_factory(children=1, env=env, config="[daemon]\nchildren = 1\n").start(wait_ready=False)
    notify.until("READY", "1")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    reloading = notify.until("RELOADING", "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    notify.until("READY", "1")


# ---- reload and scale ------------------------------------------------------------


def test_supctl_reload_applies_children_defaults_and_limits_without_dropping_tasks(supd_factory, tmp_path):
    d = supd_factory(children=2, config="[daemon]\nchildren = 2\n").start()
    go = tmp_path / "go"
    ids = d.submit(*[TaskSpec(kind="exec", argv=gate(go)) for _ in range(2)])
    wait_running(d, 2)
    assert d.config_path is not None
    d.config_path.write_text("[daemon]\nchildren = 3\n[tasks]\ntimeout_s = 0.5\n[limits]\nmax_prompt_bytes = 10\n")
    out = d.supctl("reload")
    assert out.returncode == 0, out.stderr
    assert "reloaded" in out.stdout
    assert d.info(ctl.Status())["tasks"]["running"] == 2, "both tasks are still running after the reload"
    go.touch()
    assert [t.state for t in d.wait(ids)] == ["succeeded"] * 2, "tasks running across the reload must finish"
    wait_pool(d, 3)
    # New defaults: tasks.timeout_s=0.5 now applies to a task without its own timeout.
    (slow,) = d.wait(d.submit(sleeper(5)))
    assert slow.state == "timed_out", slow
    # New limits: a prompt over limits.max_prompt_bytes=10 is refused.
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="claude", prompt="x" * 11)]))
    assert isinstance(reply, ctl.Error) and "limits.max_prompt_bytes" in reply.message


def test_invalid_reload_is_refused_with_the_key_and_the_old_config_kept(supd_factory):
    d = supd_factory(children=2, config="[daemon]\nchildren = 2\n").start()
    before = [c["pid"] for c in d.info(ctl.Status())["children"]]
    assert d.config_path is not None
    for bad, key in [("[daemon]\nchildren = 'many'\n", "daemon.children"),
                     ("[tasks]\ntimeout_z = 1\n", "tasks.timeout_z"),
                     ("[daemon]\nchildren = -1\n", "daemon.children"),
                     ("[daemon\n", "TOML")]:
        d.config_path.write_text(bad)
        out = d.supctl("reload")
        assert out.returncode != 0, out.stdout
        assert key in out.stderr, out.stderr
        assert d.proc is not None and d.proc.poll() is None
    assert [c["pid"] for c in d.info(ctl.Status())["children"]] == before, "the old pool must be kept"
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"


def test_sighup_reloads_and_an_invalid_file_is_logged_and_survived(supd_factory):
    d = supd_factory(children=1, config="[daemon]\nchildren = 1\n").start()
    assert d.config_path is not None and d.proc is not None
    d.config_path.write_text("[daemon]\nchildren = 2\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_pool(d, 2)
    d.config_path.write_text("[daemon]\nchildren = 'x'\n")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "event=reload_refused" not in d.log():
        assert time.monotonic() < deadline, d.log()[-2000:]
        time.sleep(0.05)
    refused = next(line for line in d.log().splitlines() if "event=reload_refused" in line)
    assert "daemon.children" in refused
    assert d.proc.poll() is None
    wait_pool(d, 2)
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"


def test_scale_up_and_down_live_lets_running_tasks_finish(supd_factory, tmp_path):
    d = supd_factory(children=2).start()
    out = d.supctl("scale", "4")
    assert out.returncode == 0, out.stderr
    wait_pool(d, 4)
    go = tmp_path / "go"
    ids = d.submit(*[TaskSpec(kind="exec", argv=gate(go)) for _ in range(4)])
    wait_running(d, 4)
    out = d.supctl("scale", "1")
    assert out.returncode == 0, out.stderr
    status = d.info(ctl.Status())
    assert status["pool"]["size"] == 1 and status["tasks"]["running"] == 4
    go.touch()
    assert [t.state for t in d.wait(ids)] == ["succeeded"] * 4
    wait_pool(d, 1)
    assert d.supctl("scale", "0").returncode == 0
    wait_pool(d, 0)
    assert d.supctl("scale", "2").returncode == 0
    wait_pool(d, 2)
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"
    bad = d.supctl("scale", "100000")
    assert bad.returncode == 2 and "argument N: 100000 is out of range: must be between 0 and 1024" in bad.stderr


def test_reload_without_a_config_file_is_a_no_op(supd_factory):
    d = supd_factory(children=1).start()
    out = d.supctl("reload")
    assert out.returncode == 0 and "nothing to reload" in out.stdout
    assert Path(d.state_dir / "control.sock").exists()
