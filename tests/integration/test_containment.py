"""Nothing a task starts outlives it; no exit status, signal or Result goes astray.

Real processes only (a real child over a real socket, real supd daemons, the real Claude
CLI against bench/fakeapi.py), checked with psutil. The cgroup tests need root (writes
under the cgroup v2 mount) and skip with the reason otherwise; their fallback twins run
anywhere (`SUPD_CGROUPS=0`, or the harness's `cgroups=False`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from proto.children import Dispatch, Heartbeat, Progress, Result, Started
from proto.task import TaskSpec
from supervisord.spokes import procs
from tests.childharness import ChildHarness, cgroups_writable, exec_dispatch, limits, tid
from tests.conftest import assert_no_leftovers, child_env

pytestmark = pytest.mark.timeout(90)
PY = sys.executable
WRITABLE, WHY = cgroups_writable()
needs_cgroups = pytest.mark.skipif(not WRITABLE, reason=f"needs a writable cgroup v2 (root): {WHY}")
MODES = [pytest.param(True, marks=needs_cgroups, id="cgroup"), pytest.param(False, id="subreaper")]


def _gone(pid: int) -> bool:
    """Dead and reaped (a zombie still counts: someone has to reap it)."""
    return not psutil.pid_exists(pid)


def _wait(cond: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# ---- 1. exit statuses are ours -----------------------------------------------------------


#: Spawns `readlink /proc/self/fd/0` as a task (no input) and prints what its stdin is.
_STDIN_OF_A_TASK = """
import os
from supervisord.spokes import procs
p = procs.spawn(["readlink", "/proc/self/fd/0"], env={"PATH": "/usr/bin:/bin"}, cwd=None,
                stdin_data=False, new_session=True)
p.wait(10)
print(os.read(p.stdout.fileno(), 4096).decode().strip())
"""


@pytest.mark.parametrize("ours", ["devnull", "pipe", "closed"])
def test_a_task_without_input_reads_dev_null_whatever_our_stdin_is(ours: str) -> None:
    """A /dev/null stdin of ours is passed on as it is; a pipe or no fd 0 never is."""
    stdin = {"devnull": subprocess.DEVNULL, "pipe": subprocess.PIPE, "closed": None}[ours]
    argv = [PY, "-c", ("import os; os.close(0)\n" if ours == "closed" else "") + _STDIN_OF_A_TASK]
    out = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, timeout=30, env=child_env(),
                         check=True)
    assert out.stdout.strip() == "/dev/null"


def test_a_dropped_child_handle_keeps_its_exit_status_for_the_daemon() -> None:
    """The daemon's pattern: spawn, keep only the pid and pidfd, reap on the pidfd. Other
    code creating a Popen meanwhile (subprocess._cleanup) must not steal the status."""
    proc = procs.spawn_child([PY, "-c", "raise SystemExit(3)"], env=dict(os.environ))
    pid, pidfd = proc.pid, proc.pidfd
    proc.pidfd = None  # the daemon holds the pidfd on its loop, not the handle
    del proc
    import select

    select.select([pidfd], [], [], 10)
    subprocess.run(["true"], check=True)  # runs subprocess._cleanup()
    assert procs.reap(pid) == 3
    os.close(pidfd)


def test_signals_go_through_the_pidfd_and_stop_once_reaped() -> None:
    proc = procs.spawn_child([PY, "-c", "import time; time.sleep(30)"], env=dict(os.environ))
    assert proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert proc.pidfd is None and not proc.send_signal(signal.SIGKILL)


def test_our_children_are_read_afresh_at_each_look() -> None:
    """The list's file stays open between looks: each look sees the children of that moment
    (a new one, one exited but unreaped, none once reaped), not the first look's."""
    me = os.getpid()
    before = set(procs.children_pids(me))
    proc = procs.spawn_child([PY, "-c", "import time; time.sleep(30)"], env=dict(os.environ))
    assert set(procs.children_pids(me)) - before == {proc.pid}
    assert proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(procs.children_pids(me)) - before == {proc.pid}, "a zombie is still our child"
    assert proc.wait(10) == -signal.SIGKILL
    assert set(procs.children_pids(me)) - before == set()


# ---- 3. a stopped task is continued before SIGTERM --------------------------------------------

STOPPED = r"""
import os, signal, sys
def term(*_):
    open(sys.argv[1], "w").write("term")
    os._exit(0)
signal.signal(signal.SIGTERM, term)
print("stopping", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
import time
# Continued: only the SIGTERM's handler ends it. Short sleeps, not one long one: a SIGTERM that
# lands between the continue and the start of a sleep's syscall is only handled when that sleep
# returns (CPython checks for pending handlers on EINTR and between bytecodes, not before it
# sleeps), so one 60 s sleep made this test wait for the SIGKILL now and then.
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("contained", MODES)
def test_a_stopped_task_gets_sigcont_then_sigterm(contained: bool, tmp_path: Path) -> None:
    from proto.children import Cancel, Stop

    h = ChildHarness(cgroups=contained)
    try:
        h.hello()
        marker = tmp_path / "marker"
        h.send(exec_dispatch(tid("t-stopped"), [PY, "-c", STOPPED, str(marker)], kill_grace_s=10.0))
        started, _ = h.until(Started)
        assert h.wait_for(lambda: psutil.Process(started.pid).status() == psutil.STATUS_STOPPED, 5)
        t0 = time.monotonic()
        h.send(Cancel(task_id=tid("t-stopped")))
        result, _ = h.until(Result, 8)
        assert time.monotonic() - t0 < 5, "waited for the SIGKILL: the SIGTERM was held by the stop"
        assert marker.read_text() == "term" and result.outcome.exit_code == 0
        h.send(Stop())
        assert h.wait_exit(5) == 0
    finally:
        h.close()


# ---- 5./6. Results are never dropped and always fit ---------------------------------------

#: A fake Claude CLI flooding stream-json lines, then its result line.
FLOOD = r"""
import sys
line = b'{"type":"system","subtype":"flood"}\n' * 1000
for _ in range(int(sys.argv[-1] if sys.argv[-1].isdigit() else 60)):
    sys.stdout.buffer.write(line)
sys.stdout.buffer.write(b'{"type":"result","subtype":"success","is_error":false,"result":"flooded","num_turns":1}\n')
"""


def test_a_result_survives_a_flood_while_the_daemon_does_not_read(tmp_path: Path) -> None:
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    h = ChildHarness(heartbeat_s=0.2, liveness=3)
    try:
        h.hello()
        spec = TaskSpec(kind="claude", prompt="x")
        h.send(Dispatch(task_id=tid("t-flood"), attempt=1, spec=spec, limits=limits(), claude_command=[PY, str(script)]))
        time.sleep(4.0)  # the daemon "paused": nothing read, no heartbeat sent
        result, seen = h.until(Result, 20)
        assert result.state == "succeeded" and result.outcome.result == "flooded", result
        progress = sum(isinstance(m, Progress) for m in seen)
        print(f"FIGURE progress_kept_of_60001={progress}")
        assert any(isinstance(m, Started) for m in seen), "Started is kept too"
        assert h.proc.poll() is None
    finally:
        h.close()


def test_a_result_above_the_message_limit_is_cut_to_fit() -> None:
    h = ChildHarness()
    try:
        h.hello()
        script = "import sys; sys.stdout.write('é' * 200_000); sys.stderr.write('e' * 100_000)"
        d = exec_dispatch(tid("t-big"), [PY, "-c", script], output_cap_bytes=1 << 20)
        d = Dispatch(task_id=d.task_id, attempt=1, spec=d.spec, limits=limits(max_result_bytes=50_000))
        result, _ = h.run(d)
        size = len(msgspec.msgpack.encode(result))
        assert size <= 50_000, size
        o = result.outcome
        assert o.truncated and o.result and o.result == "é" * len(o.result) and o.stderr
        assert size > 40_000, "cut to fit, not emptied"
    finally:
        h.close()


# ---- 8. reloaded heartbeat settings; epochs echoed ----------------------------------------------


def test_heartbeat_settings_from_the_daemon_apply_and_the_epoch_is_echoed(tmp_path: Path) -> None:
    from proto.children import Cancel

    h = ChildHarness(heartbeat_s=0.5, liveness=20)
    try:
        h.hello()
        gate = tmp_path / "gate"
        wait_gate = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
        d = exec_dispatch(tid("t-epoch"), [PY, "-c", wait_gate])
        h.send(Dispatch(task_id=d.task_id, attempt=1, epoch=7, spec=d.spec, limits=d.limits))
        started, _ = h.until(Started)
        assert started.epoch == 7
        h.send(Heartbeat(heartbeat_s=0.05, liveness=100))
        h.silent = True
        h.messages.clear()
        h.pump(1.0)
        beats = [m for m in h.messages if isinstance(m, Heartbeat)]
        assert len(beats) >= 6, f"{len(beats)} beats in 1 s: the new heartbeat_s was not applied"
        assert all(b.task_id == tid("t-epoch") and b.epoch == 7 for b in beats)
        h.silent = False
        gate.touch()
        result, _ = h.until(Result)
        assert result.epoch == 7 and result.state == "succeeded"
        h.send(Cancel(task_id="nobody"))
    finally:
        h.close()


# ---- 9. prompts go on stdin ----------------------------------------------------------------------


def test_a_300_kib_prompt_reaches_the_api_through_the_real_cli(tmp_path: Path) -> None:
    from tests.integration.test_child import CLAUDE, claude_dispatch

    if CLAUDE is None:
        pytest.skip("needs the Claude CLI")
    from bench.fakeapi import FakeAPI

    api = FakeAPI()
    url = api.start()
    h = ChildHarness()
    try:
        h.hello()
        prompt = "supd-big-prompt " + "lorem ipsum dolor sit amet " * (300 * 1024 // 27 + 1)
        assert len(prompt) > 300 * 1024
        result, _ = h.run(claude_dispatch(tid("c-big"), prompt, url, tmp_path), timeout_s=60)
        assert result.state == "succeeded", result
        assert (result.outcome.result or "").startswith("ECHO: supd-big-prompt")
        assert prompt.strip() in api.stats()["by_prompt"], "the stand-in did not receive the whole prompt"
    finally:
        h.close()
        api.stop()


# ---- 2. containment: a task that scrubs its env, escapes with setsid and kills its worker ---------

ESCAPE = r"""
import os, signal, subprocess, sys, time
subprocess.Popen(["env", "-i", "setsid", sys.executable, "-c",
    "import os, sys, time; tagged = 'SUPD_TASK_ID' in os.environ; alone = os.getsid(0) == os.getpid();"
    " open(sys.argv[1] + '.tmp', 'w').write(f'{os.getpid()} {tagged} {alone}');"
    " os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(300)", sys.argv[1]],
    start_new_session=False)
while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
    time.sleep(0.01)
os.kill(os.getppid(), signal.SIGKILL)  # the worker
time.sleep(300)
"""


@pytest.mark.parametrize("contained", MODES)
def test_an_escaped_task_that_kills_its_worker_leaves_nothing(supd_factory: Any, contained: bool,
                                                               tmp_path: Path) -> None:
    env = child_env() if contained else child_env(SUPD_CGROUPS="0")
    config = "[tasks]\nkill_grace_s = 1.0\n"
    d = supd_factory(children=1, env=env, config=config).start()
    marker = tmp_path / "escapee"
    (task_id,) = d.submit(TaskSpec(kind="exec", argv=[PY, "-c", ESCAPE, str(marker)], retries=0))
    assert _wait(marker.exists, 20), d.log()[-2000:]
    pid, tagged, alone = marker.read_text().split()  # as the escapee saw itself (it may be gone already)
    escapee = int(pid)
    assert os.environ.get("SUPD_TASK_ID") is None
    assert tagged == "False", "the test needs an untagged escapee"
    assert alone == "True", "the test needs an escapee in its own session"
    t0 = time.monotonic()
    (task,) = d.wait([task_id], timeout_s=30)
    assert task.state == "failed" and task.error is not None and task.error.kind == "worker_lost", task.error
    assert _wait(lambda: _gone(escapee), 10), f"escapee {escapee} survived: {psutil.Process(escapee).status()}"
    print(f"FIGURE escapee_gone_after_worker_loss_s[{'cgroup' if contained else 'subreaper'}]="
          f"{time.monotonic() - t0:.3f}")
    mode = "cgroup" if contained else "subreaper"
    assert f"event=containment mode={mode}" in d.log(), d.log()[-2000:]
    assert_no_leftovers([escapee], {task_id})
    assert [p for p in psutil.Process(d.proc.pid).children() if _zombie(p)] == []


def _zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # a child that exited (and was reaped) while we looked
        return False


# ---- 7. a paused daemon keeps its children --------------------------------------------------------


def _pause_daemon_with_a_task(supd_factory: Any, tmp_path: Path) -> tuple[Any, str, int, int, Path]:
    config = "[daemon]\n" + "heartbeat_s = 0.2\nliveness = 5\n"
    d = supd_factory(children=1, config=config).start()
    gate = tmp_path / "gate"
    argv = [PY, "-c", f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\nprint('go')"]
    (task_id,) = d.submit(TaskSpec(kind="exec", argv=argv))
    assert _wait(lambda: _tagged(task_id), 20)
    (child_pid,) = d.children_pids()
    (task_pid,) = [p.pid for p in _tagged_procs(task_id)]
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(3.0)  # 3 s > liveness 5 x 0.2 s
    d.proc.send_signal(signal.SIGCONT)
    return d, task_id, child_pid, task_pid, gate


def test_a_daemon_stopped_longer_than_liveness_finds_its_child_and_task_alive(supd_factory: Any,
                                                                               tmp_path: Path) -> None:
    """The child's side: silent for 3 s with liveness 1 s, the daemon's process still there."""
    d, task_id, child_pid, task_pid, gate = _pause_daemon_with_a_task(supd_factory, tmp_path)
    assert psutil.Process(child_pid).is_running() and psutil.Process(task_pid).is_running()
    assert "event=child_leaving" not in d.log() and "event=daemon_silent" in d.log()
    gate.touch()
    d.wait([task_id], timeout_s=30)


def test_after_a_pause_the_task_finishes_on_its_first_attempt(supd_factory: Any, tmp_path: Path) -> None:
    d, task_id, child_pid, _, gate = _pause_daemon_with_a_task(supd_factory, tmp_path)
    gate.touch()
    (task,) = d.wait([task_id], timeout_s=30)
    assert task.state == "succeeded" and task.attempts == 1, task.error
    assert d.children_pids() == [child_pid]


def _tagged_procs(task_id: str) -> list[psutil.Process]:
    from tests.conftest import tagged_processes

    return tagged_processes({task_id})


def _tagged(task_id: str) -> bool:
    return bool(_tagged_procs(task_id))



# ---- 10. a worker's own group: attempts born there, marked while they may live -------------------

SPAWNS_A_DAEMON = r"""
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("ready", flush=True)
time.sleep(60)
"""


def _group_of(pid: int) -> str:
    from supervisord.spokes import cgroups

    return cgroups.home_dir(pid) or ""


def _mark(path: str) -> bytes | None:
    try:
        return os.getxattr(path, "user.supd.attempt")
    except OSError:
        return None


@needs_cgroups
def test_a_worker_lives_in_its_own_group_and_its_attempts_are_born_marked_there(tmp_path: Path) -> None:
    from proto.children import Stop

    h = ChildHarness(identity="w05.3")
    try:
        hello = h.hello()
        task_id = tid("t-marked")
        h.send(exec_dispatch(task_id, [PY, "-c", SPAWNS_A_DAEMON], timeout_s=1.0, kill_grace_s=0.5))
        started, _ = h.until(Started)
        group = _group_of(hello.pid)
        assert h.cgroup_base is not None
        assert group == os.path.join(h.cgroup_base, f"w05.3-{hello.pid}"), group
        assert _group_of(started.pid) == group, "the task is born in its worker's group"
        assert _mark(group) == f"{task_id} 0 1".encode()
        assert h.wait_for(lambda: len(procs.tagged(task_id)) == 2, 5), "its setsid grandchild runs"
        escaped = [p.pid for p in procs.tagged(task_id) if p.pid != started.pid]
        result, _ = h.until(Result, 10)  # the wall-clock timeout: TERM, then cgroup.kill
        assert result.state == "timed_out", result
        assert all(_gone(p) for p in [started.pid, *escaped])
        assert _group_of(hello.pid) == group, "back in its group after the kill"
        assert _mark(group) is None, "no mark once the tree is dead"
        again, _ = h.run(exec_dispatch(tid("t-next"), ["true"]))
        assert again.state == "succeeded" and _mark(group) is None
        h.send(Stop())
        assert h.wait_exit(5) == 0
    finally:
        h.close()


@needs_cgroups
def test_the_daemon_removes_a_worker_group_once_its_worker_is_gone(supd_factory: Any) -> None:
    from proto import control as ctl

    d = supd_factory(children=2, config="[daemon]\nspares = 1\n").start()
    d.wait(d.submit(TaskSpec(kind="exec", argv=["true"]), TaskSpec(kind="exec", argv=["true"])), timeout_s=30)

    def workers() -> list[int]:  # the spare's too: it is a worker like the others until it is given a slot
        status = d.info(ctl.Status())
        return [c["pid"] for c in status["children"] + status["spares"] if c["pid"] and c["state"] == "idle"]

    # a worker moves into its group right after its Hello (before any Dispatch of its is read)
    assert _wait(lambda: len(workers()) == 3 and len({os.path.dirname(_group_of(pid)) for pid in workers()}) == 1, 5)
    (base,) = {os.path.dirname(_group_of(pid)) for pid in workers()}
    assert len([e for e in os.scandir(base) if e.is_dir()]) == 3, "one group per worker"
    reply = d.request(ctl.Scale(children=1))
    assert not isinstance(reply, ctl.Error), reply
    assert _wait(lambda: len([e for e in os.scandir(base) if e.is_dir()]) == 2, 10)
    assert sorted(os.path.basename(_group_of(pid)) for pid in workers()) == \
        sorted(e.name for e in os.scandir(base) if e.is_dir())


@needs_cgroups
def test_a_lost_attempt_is_killed_by_its_mark_and_no_other_worker_is_touched(supd_factory: Any) -> None:
    from proto import control as ctl

    d = supd_factory(children=2, config="[tasks]\nkill_grace_s = 0.5\n").start()
    sleeper = [PY, "-c", "import time; time.sleep(60)"]
    lost, kept = d.submit(TaskSpec(kind="exec", argv=sleeper, retries=0), TaskSpec(kind="exec", argv=sleeper))
    assert _wait(lambda: _tagged(lost) and _tagged(kept), 20)
    (lost_proc,) = _tagged_procs(lost)
    (kept_proc,) = _tagged_procs(kept)
    lost_worker, kept_worker = lost_proc.ppid(), kept_proc.ppid()
    assert lost_worker != kept_worker and {lost_worker, kept_worker} == set(d.children_pids())
    os.kill(lost_worker, signal.SIGKILL)
    (task,) = d.wait([lost], timeout_s=30)
    assert task.state == "failed" and task.error is not None and task.error.kind == "worker_lost"
    assert _wait(lambda: _gone(lost_proc.pid), 10)
    assert kept_proc.is_running() and psutil.Process(kept_worker).is_running(), "the other worker's group is not its"
    assert (_mark(_group_of(kept_worker)) or b"").startswith(kept.encode() + b" ")
    d.request(ctl.Cancel(id=kept))
    d.wait([kept], timeout_s=30)
