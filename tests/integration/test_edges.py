"""The daemon at its edges: hostile numbers, bad config, few file descriptors, two daemons
on one directory, socket files deleted under it. Real daemons, real sockets, psutil."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from proto import control as ctl
from proto.task import TaskSpec
from supervisord.ctl.client import Client
from tests.conftest import ROOT, Supd, child_env, gate, short_tmpdir

pytestmark = pytest.mark.timeout(120)

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(ctl.Reply)


def raw(d: Supd, message: dict[str, Any], timeout_s: float = 10.0) -> ctl.Reply:
    """Send a hand-built msgpack request (what a hostile client can send), return the reply."""
    with d.client(timeout_s) as c:
        c.sock.send(ENC.encode(message))
        assert c.sock.poll(int(timeout_s * 1000)), "no reply"
        return DEC.decode(c.sock.recv())


def exec_spec(**kw: Any) -> dict[str, Any]:
    return {"kind": "exec", "argv": ["true"], **kw}


HOSTILE = [
    ({"type": "Submit", "tasks": [exec_spec(retries=2**63)]}, "tasks[0].retries", "<= 100"),
    ({"type": "Submit", "tasks": [exec_spec(priority=2**63)]}, "tasks[0].priority", "<= 2147483647"),
    ({"type": "Submit", "tasks": [exec_spec(priority=-(2**63))]}, "tasks[0].priority", ">= -2147483648"),
    ({"type": "Submit", "tasks": [exec_spec(timeout_s=1e308)]}, "tasks[0].timeout_s", "<= 2592000"),
    ({"type": "Submit", "tasks": [exec_spec(stall_timeout_s=-1.0)]}, "tasks[0].stall_timeout_s", "> 0"),
    ({"type": "Submit", "tasks": [exec_spec(max_turns=2**62)]}, "tasks[0].max_turns", "<= 10000"),
    ({"type": "Submit", "tasks": [exec_spec(max_budget_usd=1e300)]}, "tasks[0].max_budget_usd", "<= 1000000"),
    ({"type": "Submit", "tasks": [exec_spec()], "tracestate": "k=" + "v" * 300_000}, "tracestate", "<= 512"),
    ({"type": "Submit", "tasks": [exec_spec()], "traceparent": "not-a-traceparent"}, "traceparent", "regex"),
    ({"type": "Wait", "ids": ["t1"] * 700_000}, "ids", "<= 10000"),
    ({"type": "Wait", "ids": ["t1"], "timeout_s": 1e300}, "timeout_s", "<= 3600"),
    ({"type": "List", "limit": 2**62}, "limit", "<= 10000"),
    ({"type": "Scale", "children": 2**40}, "children", "<= 1024"),
    ({"type": "Prune", "older_than_s": -1.0}, "older_than_s", ">= 0"),
    ({"type": "RestartSlot", "slot": ""}, "slot", "length >= 1"),
]


def test_hostile_numbers_are_refused_naming_the_field_and_the_daemon_keeps_serving(supd_factory: Any) -> None:
    d = supd_factory(children=1).start()
    pid = d.proc.pid
    for message, field, bound in HOSTILE:
        reply = raw(d, message)
        assert isinstance(reply, ctl.Error), (message.get("type"), reply)
        assert reply.kind == "bad_request"
        assert reply.message.startswith(f"cannot decode request: {field}: "), reply.message
        assert bound in reply.message, reply.message
    # The new verbs answer: nothing to prune yet; w00 is not fatal.
    assert d.request(ctl.Prune(older_than_s=60.0)) == ctl.Ok(message="pruned 0 finished tasks older than 60s")
    reply = d.request(ctl.RestartSlot(slot="w00"))
    assert isinstance(reply, ctl.Error) and "not fatal" in reply.message, reply
    assert psutil.pid_exists(pid) and d.proc.poll() is None
    [task] = d.wait(d.submit(TaskSpec(kind="exec", argv=["echo", "still here"], retries=100, priority=2**31 - 1)))
    assert task.state == "succeeded" and task.result == "still here\n"
    assert d.info(ctl.Stats())  # answers
    assert "OverflowError" not in d.log() and "Traceback" not in d.log()


def supctl(state_dir: Path, *args: str | bytes, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout_s)


@pytest.mark.parametrize(("args", "message"), [
    (["submit", "--kind", "exec", "--retries", "9" * 30, "--", "true"], "argument --retries: 999"),
    (["submit", "--priority", "9223372036854775808", "hi"], "must be between -2147483648 and 2147483647"),
    (["submit", "--timeout", "inf", "hi"], "argument --timeout: inf is out of range"),
    (["scale", "99999999999999999999"], "argument N: 99999999999999999999 is out of range"),
    (["list", "--limit", "-1"], "argument --limit"),
    (["submit", "--kind", "exec", "--", "echo", b"\xff\xfe"], "not valid UTF-8: \\xff\\xfe"),
    (["submit", b"caf\xe9"], "not valid UTF-8"),
    (["prune", "--older-than", "7 weeks"], "argument --older-than: not a duration: '7 weeks'"),
    (["wait", "--timeout", "-1", "t1"], "argument --timeout: -1 is out of range"),
])
def test_supctl_refuses_huge_and_undecodable_arguments_with_exit_2(state_dir: Path, args: list[Any],
                                                                     message: str) -> None:
    argv = [os.fsdecode(a) if isinstance(a, bytes) else a for a in args]  # surrogate-escaped, as Python sees it
    r = supctl(state_dir, *argv)
    assert r.returncode == 2, r
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_supctl_with_no_daemon_says_not_running_at_once(state_dir: Path) -> None:
    t0 = time.monotonic()
    r = supctl(state_dir, "status")
    assert r.returncode == 4 and "supd is not running (no " in r.stderr and "control.sock" in r.stderr, r
    # A socket file nobody listens on (a daemon killed with -9): refused at once, same exit.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state_dir / "control.sock"))
    stale.close()
    r = supctl(state_dir, "status")
    assert r.returncode == 4 and "supd is not running" in r.stderr and "refuses connections" in r.stderr, r
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(("config", "key"), [
    ("[daemon]\nheartbeat_s = inf\n", "daemon.heartbeat_s = inf: must be between 0.05 and 60"),
    ("[daemon]\nheartbeat_s = 1e-6\n", "daemon.heartbeat_s = 1e-06: must be between 0.05 and 60"),
    ("[limits]\nmax_message_bytes = 0\n", "limits.max_message_bytes = 0: must be between 65536"),
    ("[metrics]\nprometheus_port = 99999\n", "metrics.prometheus_port = 99999: must be between 0 and 65535"),
])
def test_bad_config_at_start_exits_2_naming_the_key(supd_factory: Any, config: str, key: str) -> None:
    d = supd_factory(config=config).start(wait_ready=False)
    assert d.proc.wait(20) == 2
    assert key in d.log() and "Traceback" not in d.log()
    assert not (d.state_dir / "control.sock").exists()


def test_bad_config_on_reload_is_refused_and_the_old_kept(supd_factory: Any) -> None:
    d = supd_factory(config="[daemon]\nheartbeat_s = 0.5\n", children=1).start()
    d.config_path.write_text("[daemon]\nheartbeat_s = inf\n")
    r = d.supctl("reload")
    assert r.returncode == 1 and "daemon.heartbeat_s = inf: must be between 0.05 and 60" in r.stderr, r
    [task] = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"


class Limited(Supd):
    """A supd started under `prlimit --nofile=SOFT:HARD` (util-linux), which execs it."""

    nofile = "64:64"

    @property
    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", *super().argv]


needs_prlimit = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")


@needs_prlimit
def test_too_few_open_files_is_refused_at_start_naming_ulimit(state_dir: Path) -> None:
    d = Limited(state_dir, children=16)
    d.start(wait_ready=False)
    assert d.proc.wait(20) == 2
    log = d.log()
    assert "ulimit -n" in log and "the limit is 64" in log and "16 children and 1 spare need 163 open files" in log, log
    assert "Traceback" not in log and "Assertion" not in log


@needs_prlimit
def test_a_low_soft_limit_is_raised_and_16_children_take_32_parallel_submits(state_dir: Path) -> None:
    d = Limited(state_dir, children=16)
    d.nofile = "64:1024"
    d.start()
    try:
        soft, hard = psutil.Process(d.proc.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert soft >= 160 and hard == 1024
        import concurrent.futures

        def one(i: int) -> list[str]:
            return d.submit(TaskSpec(kind="exec", argv=["echo", str(i)]))

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            ids = [tid for batch in pool.map(one, range(32)) for tid in batch]
        tasks = d.wait(ids)
        assert [t.result for t in tasks] == [f"{i}\n" for i in range(32)]
        # Scaling past what the limit carries is refused, naming it; the pool is unchanged.
        r = d.supctl("scale", "1024")
        assert r.returncode == 1 and "ulimit -n" in r.stderr, r
        assert d.info(ctl.Status())["pool"]["size"] == 16
        assert len(os.listdir(f"/proc/{d.proc.pid}/fd")) < 16 * 3 + 48  # the budget's numbers hold
    finally:
        d.stop()


def test_a_second_daemon_on_one_state_dir_is_refused_even_without_the_lock_file(supd_factory: Any,
                                                                               state_dir: Path) -> None:
    first = supd_factory(children=1).start()
    [tid] = first.submit(TaskSpec(kind="exec", argv=gate(state_dir / "go")))
    deadline = time.monotonic() + 10
    while first.info(ctl.Status())["tasks"]["running"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    task_pids = [p.pid for p in psutil.Process(first.proc.pid).children(recursive=True)]
    (state_dir / "supd.lock").unlink()
    second = supd_factory(children=1).start(wait_ready=False)
    assert second.proc.wait(20) == 4
    assert f"another supd (pid {first.proc.pid}) is running on {state_dir}" in second.log() or \
        f"another supd is running on {state_dir}" in second.log(), second.log()
    # The first is untouched: reachable, its task still running (not SIGTERMed, not run twice).
    assert all(psutil.pid_exists(p) for p in task_pids)
    (state_dir / "go").touch()
    [task] = first.wait([tid])
    assert task.state == "succeeded" and task.attempts == 1


def test_two_daemons_on_one_runtime_dir(state_dir: Path) -> None:
    runtime = short_tmpdir("supd-rt-")
    other_state = short_tmpdir()
    first = Supd(state_dir, children=1, extra_args=["--runtime-dir", str(runtime)])
    second = Supd(other_state, children=1, extra_args=["--runtime-dir", str(runtime)])
    try:
        first.start(wait_ready=False)
        deadline = time.monotonic() + 20
        while not (runtime / "control.sock").exists():
            assert time.monotonic() < deadline and first.proc.poll() is None, first.log()
            time.sleep(0.05)
        second.start(wait_ready=False)
        assert second.proc.wait(20) == 4
        assert f"is running on {runtime}" in second.log(), second.log()
        with_runtime = Client(f"ipc://{runtime / 'control.sock'}", timeout_s=10)
        reply = with_runtime.request(ctl.Status())
        assert isinstance(reply, ctl.Info) and reply.data["pid"] == first.proc.pid
        with_runtime.close()
    finally:
        first.stop()
        second.stop()
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(other_state, ignore_errors=True)
    assert not any(runtime.glob("*.sock")) if runtime.exists() else True


def test_a_live_daemon_on_a_socket_file_is_refused_and_a_stale_one_removed(supd_factory: Any,
                                                                          state_dir: Path) -> None:
    """No lock can be had on another host's directory, or after the directory was replaced:
    the socket file itself is asked who serves it."""
    squatter = socket.socket(socket.AF_UNIX)
    squatter.bind(str(state_dir / "events.sock"))
    squatter.listen()
    try:
        d = supd_factory(children=1).start(wait_ready=False)
        assert d.proc.wait(20) == 4
        assert f"another supd (pid {os.getpid()}) serves {state_dir / 'events.sock'}" in d.log(), d.log()
    finally:
        squatter.close()
    # Now nobody listens: the file is stale, removed, and the daemon starts.
    d = supd_factory(children=1).start()
    assert "socket_stale" in d.log()


def test_deleted_socket_files_are_rebound_and_removed_at_exit(supd_factory: Any, state_dir: Path) -> None:
    d = supd_factory(config="[daemon]\nheartbeat_s = 0.2\n", children=1).start()
    for name in ("control.sock", "children.sock", "events.sock"):
        (state_dir / name).unlink()
    deadline = time.monotonic() + 10
    while not all((state_dir / n).exists() for n in ("control.sock", "children.sock", "events.sock")):
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    assert d.log().count("socket_missing") == 3
    assert oct((state_dir / "control.sock").stat().st_mode & 0o777) == "0o600"
    # A new child can connect again: kill the one we have, its replacement gets a task.
    [old] = d.children_pids()
    psutil.Process(old).kill()
    deadline = time.monotonic() + 20
    while True:
        children = d.info(ctl.Status())["children"]
        if children[0]["state"] == "idle" and children[0]["pid"] not in (None, old):
            break
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    [task] = d.wait(d.submit(TaskSpec(kind="exec", argv=["echo", "ok"])))
    assert task.state == "succeeded"
    r = d.supctl("status")
    assert r.returncode == 0, r
    assert d.stop() == 0
    assert not list(state_dir.glob("*.sock"))  # a clean exit leaves no socket file
    r = d.supctl("status", timeout_s=10)
    assert r.returncode == 4 and "supd is not running" in r.stderr


def test_wait_timeout_0_answers_at_once(supd_factory: Any, state_dir: Path) -> None:
    d = supd_factory(children=1).start()
    [running] = d.submit(TaskSpec(kind="exec", argv=gate(state_dir / "go")))
    t0 = time.monotonic()
    r = d.supctl("wait", "--timeout", "0", "--json", running)
    assert r.returncode == 3 and time.monotonic() - t0 < 5, r
    assert msgspec.json.decode(r.stdout)["pending"] == [running]
    (state_dir / "go").touch()
    d.wait([running])
