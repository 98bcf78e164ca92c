"""Issue 3, "never lose a task, never leave a process": faults injected into a real supd.

Real processes only (supd, its children, exec tasks, the real Claude CLI against the
project's stand-in API). Every test ends with psutil checks that no tagged task process
and no zombie is left. Timing figures are measured and printed as `FIGURE name=value`
lines (run with `-s` to see them); they are never asserted, except as loose lower bounds
that only get safer on a loaded machine.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
import pytest

from children.executors import ClaudeExecutor
from proto import control as ctl
from proto.task import ErrorKind, TaskSpec, TaskState, TaskView
from supervisord.core.pool import ChildState, Policy, Pool
from tests.conftest import (
    ROOT,
    assert_no_leftovers,
    child_env,
    descendants_of,
    tagged_processes,
)

pytestmark = pytest.mark.timeout(240)

PY = sys.executable
T = TypeVar("T")

#: A tree that ignores SIGTERM and escapes with setsid. SIG_IGN survives exec, so the
#: grandchild ignores SIGTERM from its first instruction; it writes its pid once it has
#: left the session, so the test knows the escape happened before the timeout.
STUBBORN_TREE = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c",
    "import os, sys, time; os.setsid(); open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)",
    sys.argv[1]])
time.sleep(300)
"""

#: First attempt: a setsid'd grandchild that ignores SIGTERM plus `sleep 30` (and the
#: marker file is created);
#: a later attempt sleeps `argv[2]` seconds and succeeds.
SECOND_TIME_LUCKY = r"""
import os, subprocess, sys, time
marker = sys.argv[1]
if os.path.exists(marker):
    time.sleep(float(sys.argv[2]))
    print("second attempt")
    sys.exit(0)
open(marker, "w").close()
subprocess.Popen([sys.executable, "-c",
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.setsid(); time.sleep(300)"])
subprocess.run(["sleep", "30"])
"""


def figure(name: str, value: object) -> None:
    print(f"FIGURE {name}={value}", flush=True)


def wait_for(probe: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def exec_spec(*argv: str, **kw: Any) -> TaskSpec:
    return TaskSpec(kind="exec", argv=list(argv), **kw)


def get(d: Any, task_id: str) -> TaskView:
    reply = d.request(ctl.Get(id=task_id))
    assert isinstance(reply, ctl.Tasks), reply
    return reply.tasks[0]


def children(d: Any) -> dict[str, dict[str, Any]]:
    return {c["slot"]: c for c in d.info(ctl.Status())["children"]}


def child_running(d: Any, task_id: str) -> dict[str, Any] | None:
    return next((c for c in children(d).values() if c["task"] == task_id), None)


def gone(pid: int) -> bool:
    """Not running any more (a zombie counts as gone here; reaping is checked separately)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def zombies_under(pid: int) -> list[int]:
    out = []
    for p in descendants_of(pid):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def assert_children_clean(d: Any, timeout_s: float = 10.0) -> None:
    """Every live child has no descendant at all (no leftover, no zombie) once idle."""
    def clean() -> bool:
        rows = children(d).values()
        return all(not descendants_of(c["pid"]) for c in rows if c["pid"] and c["state"] == "idle")
    wait_for(clean, timeout_s, "children without descendants")


def toml(**sections: dict[str, object]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        for k, v in keys.items():
            out.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}")
    return "\n".join(out) + "\n"


def with_sections(base: str, **sections: dict[str, object]) -> str:
    return base + toml(**sections)


# ---- 1. timeouts and the kill escalation ---------------------------------------------


def test_wall_and_stall_timeouts_of_exec_tasks(supd_factory):
    d = supd_factory(children=2, config=toml(tasks={"kill_grace_s": 1.0})).start()
    wall, stall = d.submit(exec_spec("sleep", "30", timeout_s=1),
                           exec_spec("sleep", "30", timeout_s=60, stall_timeout_s=1))
    wall_t, stall_t = d.wait([wall, stall], timeout_s=60)
    assert wall_t.state == "timed_out" and wall_t.error.kind == ErrorKind.TIMEOUT, wall_t.error
    assert stall_t.state == "timed_out" and stall_t.error.kind == ErrorKind.STALL, stall_t.error
    assert wall_t.attempts == 1 and stall_t.attempts == 1
    assert_no_leftovers([], {wall, stall})
    assert_children_clean(d)


def test_timeout_kills_a_tree_that_ignores_sigterm_and_escaped_with_setsid(supd_factory, tmp_path):
    kill_grace_s = 1.0
    d = supd_factory(children=1, config=toml(tasks={"kill_grace_s": kill_grace_s})).start()
    ready = tmp_path / "grandchild.pid"
    (tid,) = d.submit(exec_spec(PY, "-c", STUBBORN_TREE, str(ready), timeout_s=1))
    child = wait_for(lambda: child_running(d, tid), 10, "the task on a child")
    grandchild = int(wait_for(lambda: ready.exists() and ready.read_text(), 10, "the setsid'd grandchild"))
    tree = [p.pid for p in tagged_processes({tid})]
    assert grandchild in tree and len(tree) >= 2, tree
    assert psutil.Process(grandchild).pid == os.getsid(grandchild), "the grandchild leads its own session"
    # Watch the tree die: the deadline is the task's start (child's wall clock) + timeout_s.
    last_gone = wait_for(lambda: all(not psutil.pid_exists(p) for p in tree) and time.time(), 30,
                         "the whole tree to be reaped", interval_s=0.01)
    (task,) = d.wait([tid], timeout_s=30)
    assert task.state == "timed_out" and task.error.kind == ErrorKind.TIMEOUT, task.error
    assert task.started_at is not None
    latency = last_gone - (task.started_at + 1.0)
    figure("timeout_to_dead_s", f"{latency:.3f} (kill_grace_s={kill_grace_s})")
    assert latency >= kill_grace_s - 0.2, "SIGKILL must wait for the grace (the tree ignored SIGTERM)"
    assert tagged_processes({tid}) == []
    assert zombies_under(child["pid"]) == []
    assert_no_leftovers(tree, {tid})
    assert_children_clean(d)


# ---- 2. Claude failure modes through the real CLI --------------------------------------


def test_stalled_claude_stream_times_out_and_the_cli_is_gone(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    (tid,) = d.submit(TaskSpec(kind="claude", prompt=f"[[stall]] {uuid.uuid4().hex[:8]}", stall_timeout_s=2))
    cli = wait_for(lambda: tagged_processes({tid}), 20, "the CLI to start")
    (task,) = d.wait([tid], timeout_s=60)
    assert task.state == "timed_out" and task.error.kind == ErrorKind.STALL, task.error
    assert_no_leftovers([p.pid for p in cli], {tid})
    assert_children_clean(d)


def test_claude_auth_failure_fails_fast_without_retries(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    prompt = f"[[status:401]] {uuid.uuid4().hex[:8]}"
    t0 = time.time()
    (tid,) = d.submit(TaskSpec(kind="claude", prompt=prompt, retries=3))
    (task,) = d.wait([tid], timeout_s=60)
    figure("auth_failure_s", f"{task.finished_at - t0:.3f}")
    assert task.state == "failed" and task.error.kind == ErrorKind.AUTH, task.error
    assert task.attempts == 1
    assert fakeapi.stats()["by_prompt"].get(prompt) == 1
    assert_no_leftovers([], {tid})


def test_claude_overloaded_is_retried_then_fails(supd_factory, fakeapi, claude_config):
    config = with_sections(claude_config, tasks={"retry_base_s": 0.1, "retry_max_s": 0.5})
    d = supd_factory(children=1, config=config).start()
    prompt = f"[[status:529]] {uuid.uuid4().hex[:8]}"
    (tid,) = d.submit(TaskSpec(kind="claude", prompt=prompt, retries=2))
    (task,) = d.wait([tid], timeout_s=90)
    assert task.state == "failed" and task.error.kind == ErrorKind.OVERLOADED, task.error
    assert task.attempts == 3
    assert fakeapi.stats()["by_prompt"].get(prompt) == 3, "each attempt reaches the API once"
    assert d.info(ctl.Stats())["retries"] == 2
    assert_no_leftovers([], {tid})


def test_claude_bash_tool_leftover_is_killed_when_the_cli_exits(supd_factory, fakeapi, claude_config, tmp_path):
    """The CLI's Bash tool leaves a background process (setsid, stdio closed) and the CLI
    exits 0: the task succeeds and the leftover is killed, not left to init."""
    d = supd_factory(children=1, config=claude_config).start()
    pidfile = tmp_path / "bg.pid"
    cmd = f"setsid nohup {PY} -c 'import os, time; open(\"{pidfile}\", \"w\").write(str(os.getpid())); " \
          "time.sleep(120)' >/dev/null 2>&1 &"
    (tid,) = d.submit(TaskSpec(kind="claude", prompt=f"[[bash:{cmd}]]", allowed_tools=["Bash"]))
    (task,) = d.wait([tid], timeout_s=60)
    assert task.state == "succeeded", (task.error, task.result)
    assert pidfile.exists(), f"the Bash tool did not run the command: {task.result}"
    assert_no_leftovers([int(pidfile.read_text())], {tid})
    assert f"task={tid} why=leftovers" in d.log(), "supd's child killed it (not the CLI on its way out)"
    assert_children_clean(d)


def test_claude_result_line_then_kill_still_counts_as_success():
    """The result-grace path, at the level that is pure: a CLI that printed its result line
    and then had to be killed (no verdict of its own) is judged by the line.

    The grace timer itself runs against the real CLI in tests/integration/test_child.py
    (a slow SessionEnd hook keeps the CLI alive after its result line)."""
    ex = ClaudeExecutor(cap_bytes=1 << 16)
    ex.feed_stdout(b'{"type":"system","subtype":"init"}\n')
    assert not ex.result_seen
    active, progress = ex.feed_stdout(
        b'{"type":"result","subtype":"success","is_error":false,"result":"ok","num_turns":1}\n')
    assert active and ex.result_seen and progress[-1][0] == "result/success"
    state, outcome = ex.finish(-signal.SIGTERM, None)
    assert state is TaskState.SUCCEEDED and outcome.result == "ok" and outcome.signal == signal.SIGTERM


# ---- 3. a child SIGKILLed mid-task -------------------------------------------------------


def _kill_child_mid_task(d: Any, tid: str) -> tuple[dict[str, Any], list[int]]:
    wait_for(lambda: len(tagged_processes({tid})) >= 3, 20, "python + setsid grandchild + sleep 30")
    child = child_running(d, tid)
    assert child is not None
    tree = [p.pid for p in tagged_processes({tid})]
    os.kill(child["pid"], signal.SIGKILL)
    return child, tree


def test_child_killed_mid_task_tree_is_killed_and_the_task_retried(supd_factory, tmp_path):
    # kill_grace_s is shorter than the second attempt: the daemon's SIGKILL sweep of the
    # lost attempt (at loss + kill_grace_s) must not hit the new attempt, which carries
    # the same SUPD_TASK_ID.
    config = toml(tasks={"kill_grace_s": 1.0, "retry_base_s": 0.05, "retry_max_s": 0.1})
    d = supd_factory(children=2, config=config).start()
    marker = tmp_path / "marker"
    (tid,) = d.submit(exec_spec(PY, "-c", SECOND_TIME_LUCKY, str(marker), "2.5", retries=1))
    child, tree = _kill_child_mid_task(d, tid)
    (task,) = d.wait([tid], timeout_s=60)
    assert task.state == "succeeded", (task.error, d.log()[-3000:])
    assert task.attempts == 2 and task.result == "second attempt\n"
    assert_no_leftovers([child["pid"], *tree], {tid})
    assert d.info(ctl.Stats())["child_restarts"] == 1
    assert_children_clean(d)


def test_child_killed_mid_task_without_retries_fails_worker_lost(supd_factory, tmp_path):
    d = supd_factory(children=1, config=toml(tasks={"kill_grace_s": 1.0})).start()
    (tid,) = d.submit(exec_spec(PY, "-c", SECOND_TIME_LUCKY, str(tmp_path / "m"), "0", retries=0))
    child, tree = _kill_child_mid_task(d, tid)
    (task,) = d.wait([tid], timeout_s=60)
    assert task.state == "failed" and task.error.kind == ErrorKind.WORKER_LOST, task.error
    assert task.attempts == 1
    assert_no_leftovers([child["pid"], *tree], {tid})
    # The slot came back and works.
    (after,) = d.wait(d.submit(exec_spec("true")))
    assert after.state == "succeeded"


# ---- 4. the daemon SIGKILLed with work queued and running ------------------------------


def test_daemon_sigkill_children_leave_and_a_new_daemon_finishes_everything(supd_factory):
    d = supd_factory(children=2).start()
    ids = d.submit(*[exec_spec("sleep", "2") for _ in range(6)])
    wait_for(lambda: d.info(ctl.Status())["tasks"]["running"] == 2 and len(tagged_processes(set(ids))) == 2, 20,
             "two tasks running")
    rows = list(children(d).values())
    running = {c["task"] for c in rows if c["task"]}
    child_pids = [c["pid"] for c in rows]
    task_pids = [p.pid for p in tagged_processes(set(ids))]
    assert len(running) == 2
    t_kill = time.monotonic()
    d.proc.kill()
    d.proc.wait()
    wait_for(lambda: all(gone(p) for p in child_pids + task_pids), 10, "children and tasks to exit", 0.01)
    figure("child_exit_after_daemon_sigkill_s", f"{time.monotonic() - t_kill:.3f}")
    assert_no_leftovers(child_pids + task_pids, set(ids), timeout_s=10)

    d.start()
    tasks = d.wait(ids, timeout_s=90)
    figure("recovery_accepted_vs_finished", f"{len(ids)}/{sum(t.state == 'succeeded' for t in tasks)}")
    assert [t.state for t in tasks] == ["succeeded"] * 6
    for t in tasks:
        assert t.attempts == (2 if t.id in running else 1), (t.id, t.attempts, running)
    assert "task_recovered" in d.log()


def test_daemon_and_children_sigkilled_together_leftover_trees_are_killed_on_recovery(supd_factory, tmp_path):
    """`kill -9` of supd and its children at once (no one left to clean up): the task trees
    survive as orphans of init. The next supd kills them before it re-runs their tasks."""
    d = supd_factory(children=2, config=toml(tasks={"kill_grace_s": 1.0})).start()
    ids = d.submit(*[exec_spec(PY, "-c", SECOND_TIME_LUCKY, str(tmp_path / f"m{i}"), "0.2") for i in range(2)])
    wait_for(lambda: len(tagged_processes(set(ids))) >= 6, 20, "two trees of three")
    child_pids = [c["pid"] for c in children(d).values()]
    tree = [p.pid for p in tagged_processes(set(ids))]
    d.proc.send_signal(signal.SIGSTOP)  # it must not see its children die
    for pid in child_pids:
        os.kill(pid, signal.SIGKILL)
    d.proc.kill()
    d.proc.wait()
    wait_for(lambda: all(gone(p) for p in child_pids), 10, "the children to die")
    survivors = [p for p in tree if not gone(p)]
    assert survivors, "the test needs orphaned task processes"
    d.start()
    tasks = d.wait(ids, timeout_s=60)
    assert [(t.state, t.attempts) for t in tasks] == [("succeeded", 2)] * 2, [t.error for t in tasks]
    assert_no_leftovers(child_pids + tree, set(ids))


# ---- 5. restart policy ------------------------------------------------------------------


def _kill_and_time_respawn(d: Any, slot: str, timeout_s: float = 20) -> tuple[float, bool]:
    """SIGKILL the slot's child; seconds until its successor is idle, and whether the
    slot was seen in backoff on the way."""
    old = children(d)[slot]
    assert old["state"] == "idle", old
    t0 = time.monotonic()
    os.kill(old["pid"], signal.SIGKILL)
    saw_backoff = False
    while time.monotonic() - t0 < timeout_s:
        row = children(d)[slot]
        saw_backoff |= row["state"] == "backoff"
        if row["state"] == "fatal":
            return time.monotonic() - t0, saw_backoff
        if row["state"] == "idle" and row["pid"] != old["pid"]:
            return time.monotonic() - t0, saw_backoff
        time.sleep(0.01)
    raise AssertionError(f"{slot} not replaced in {timeout_s}s: {children(d)[slot]}")


def test_restart_backoff_reset_and_intensity_goes_fatal(supd_factory):
    config = toml(daemon={"spares": 0},  # each successor boots (a spare's takeover: the unit tables)
                  restart={"backoff_base_s": 1.0, "backoff_max_s": 4.0, "stable_after_s": 2.5,
                           "intensity": 3, "period_s": 300.0})
    d = supd_factory(children=2, config=config).start()
    first, _ = _kill_and_time_respawn(d, "w00")  # isolated: at once
    second, saw_backoff = _kill_and_time_respawn(d, "w00")  # unstable: base * (0.5..1)
    assert saw_backoff and second >= 0.5, "a crash soon after a restart backs off"
    time.sleep(2.5 + 0.5)  # the successor outlives stable_after_s
    third, _ = _kill_and_time_respawn(d, "w00")  # stable again: failures reset, at once
    figure("restart_delays_s", f"isolated={first:.3f} unstable={second:.3f} after_stable={third:.3f}")
    # The decisions themselves, as the daemon logged them: at once, backed off, at once again.
    delays = [float(line.split("respawn_in_s=")[1].split()[0]) for line in d.log().splitlines()
              if "event=child_exited child=w00." in line and "respawn_in_s=" in line]
    assert delays[0] == 0.0 and 0.5 <= delays[1] <= 1.0 and delays[2] == 0.0, delays
    _kill_and_time_respawn(d, "w00")  # the 4th exit in period_s > intensity 3
    row = children(d)["w00"]
    assert row["state"] == "fatal" and row["pid"] is None
    assert "intensity 3" in row["fatal_reason"], row
    health = d.info(ctl.Health())
    assert health["status"] != "ok" and health["children"]["fatal"] == 1, health
    assert children(d)["w01"]["state"] == "idle", "the other slot is untouched"
    (task,) = d.wait(d.submit(exec_spec("true")))
    assert task.state == "succeeded" and task.child.startswith("w01")


def test_restart_policy_table():
    """The pure rules behind the test above, without a clock: isolated crash at once,
    exponential backoff with jitter while unstable, reset after stable uptime, FATAL
    beyond intensity in period, boot failure FATAL at once."""
    pool = Pool(Policy(backoff_base_s=1.0, backoff_max_s=4.0, stable_after_s=10.0, intensity=4, period_s=100.0))
    pool.resize(1, 0.0)
    slot = pool.slots[0]

    def crash(at: float, uptime: float = 1.0, rand: float = 1.0) -> float:
        """Spawn at `at`, SIGKILLed `uptime` later: the respawn delay, or -1 for FATAL."""
        pool.spawning(slot)
        pool.spawned(slot, 100, at)
        pool.hello(slot, at, 0.0)
        exit_ = pool.exited(slot, -9, at + uptime, rand)
        return exit_.respawn_at - (at + uptime) if exit_.verdict == "respawn" else -1.0

    assert crash(0.0) == 0.0  # isolated
    assert crash(2.0) == 1.0  # unstable: base * 2**0, jitter at its top
    assert crash(4.0, rand=0.0) == 1.0  # ceiling base * 2**1, jitter at its bottom (ceiling/2)
    assert crash(10.0, uptime=12.0) == 0.0  # ran >= stable_after_s: the count resets
    assert crash(30.0) == -1.0  # 5 exits in period_s > intensity 4
    assert slot.state is ChildState.FATAL and "intensity 4" in (slot.fatal_reason or "")
    pool2 = Pool(Policy())
    pool2.resize(1, 0.0)
    s2 = pool2.slots[0]
    pool2.spawning(s2)
    pool2.spawned(s2, 1, 0.0)
    assert pool2.exited(s2, 3, 0.5, 0.0).verdict == "fatal" and "boot failure" in (s2.fatal_reason or "")


@pytest.mark.parametrize("module", ["zmq", "psutil"])
def test_child_that_cannot_boot_goes_fatal_at_once(supd_factory, module, tmp_path):
    """A dependency broken under a running daemon (a shadowing package appears on
    PYTHONPATH): the daemon has it loaded and keeps working, the next child cannot import
    it, exits BOOT_FAILURE_EXIT (3), and its slot goes FATAL without a restart loop."""
    shadow = tmp_path
    d = supd_factory(children=2, env=child_env(PYTHONPATH=f"{shadow}:{ROOT}"), config=toml(daemon={"spares": 0})).start()
    (shadow / module).mkdir()
    (shadow / module / "__init__.py").write_text(f'raise ImportError("{module}: broken install (test shadow)")\n')
    victim = children(d)["w00"]
    os.kill(victim["pid"], signal.SIGKILL)
    row = wait_for(lambda: (r := children(d)["w00"])["state"] == "fatal" and r, 20, "w00 to go fatal")
    assert row["fatal_reason"] == "boot failure (exit 3)", row
    assert "boot_failed" in d.log() and "broken install" in d.log()
    assert d.info(ctl.Stats())["child_fatal"] == 1
    assert d.info(ctl.Health())["status"] == "degraded"
    assert d.log().count("event=child_spawned child=w00.") == 2, "one spawn at start, one replacement, no loop"
    (task,) = d.wait(d.submit(exec_spec("true")))
    assert task.state == "succeeded" and task.child.startswith("w01")


def test_a_spare_that_cannot_boot_goes_fatal_and_the_daemon_says_so(supd_factory, tmp_path):
    """The same broken dependency with a spare: the crashed slot takes over the spare booted
    before the breakage and runs on; the spare's next boot fails, and it goes FATAL (health
    degraded: the next crash would find no spare) instead of looping."""
    d = supd_factory(children=2, env=child_env(PYTHONPATH=f"{tmp_path}:{ROOT}")).start()
    spare = wait_for(lambda: (r := d.info(ctl.Status())["spares"][0])["state"] == "idle" and r, 20, "the spare")
    (tmp_path / "zmq").mkdir()
    (tmp_path / "zmq" / "__init__.py").write_text('raise ImportError("zmq: broken install (test shadow)")\n')
    os.kill(children(d)["w00"]["pid"], signal.SIGKILL)
    row = wait_for(lambda: (r := d.info(ctl.Status())["spares"][0])["state"] == "fatal" and r, 20, "spare0 fatal")
    assert row["fatal_reason"] == "boot failure (exit 3)", row
    assert (children(d)["w00"]["state"], children(d)["w00"]["pid"]) == ("idle", spare["pid"])
    health = d.info(ctl.Health())
    assert health["status"] == "degraded" and health["spares"] == {"ready": 0, "total": 1, "fatal": 1}, health
    assert d.log().count("event=child_spawned child=spare0.") == 2, "one spawn at start, one replacement, no loop"
    (task,) = d.wait(d.submit(exec_spec("true")))
    assert task.state == "succeeded"


@pytest.mark.parametrize(("spares", "verdict"), [(0, "respawn"), (1, "took_spare")])
def test_restart_latency_of_an_isolated_crash(supd_factory, spares, verdict):
    config = toml(daemon={"spares": spares}, restart={"stable_after_s": 0.3, "intensity": 100, "period_s": 60.0})
    d = supd_factory(children=2, config=config).start()
    samples = []
    for _ in range(10):
        if spares:  # the pool at rest: the spare taken by the last crash is booted again
            wait_for(lambda: d.info(ctl.Status())["spares"][0]["state"] == "idle", 20, "the spare")
        latency, _ = _kill_and_time_respawn(d, "w00")
        samples.append(latency)
        time.sleep(0.4)  # > stable_after_s: the next crash is isolated again
    isolated = [line for line in d.log().splitlines() if "event=child_exited" in line and " slot=w00 " in line]
    assert len(isolated) == 10 and all(f"verdict={verdict} " in line for line in isolated), "each crash was isolated"
    samples.sort()
    figure(f"restart_latency_p50_s_spares_{spares}",
           f"{statistics.median(samples):.3f} min={samples[0]:.3f} max={samples[-1]:.3f}")
    assert children(d)["w00"]["state"] == "idle"
    assert d.info(ctl.Stats())["child_restarts"] == 10


# ---- 6. recycling -------------------------------------------------------------------------


def test_recycling_replaces_children_between_tasks(supd_factory):
    d = supd_factory(children=2, config=toml(recycle={"max_tasks": 2})).start()
    script = "import os, time; time.sleep(0.3); print(os.getppid())"
    ids = d.submit(*[exec_spec(PY, "-c", script) for _ in range(6)])
    tasks = d.wait(ids, timeout_s=90)
    assert [t.state for t in tasks] == ["succeeded"] * 6, [t.error for t in tasks]
    assert all(t.attempts == 1 for t in tasks), "no task was cut short by a recycle"
    by_child: dict[str, set[str]] = {}
    for t in tasks:
        by_child.setdefault(t.child, set()).add(t.result.strip())
    assert all(len(pids) == 1 for pids in by_child.values()), by_child  # one process per identity
    counts = {c: sum(t.child == c for t in tasks) for c in by_child}
    assert max(counts.values()) <= 2, counts
    assert len({pid for pids in by_child.values() for pid in pids}) == len(by_child) >= 3
    assert max(int(c.split(".")[1]) for c in by_child) >= 2, "generations went up"
    assert d.info(ctl.Stats())["child_restarts"] == 0, "a recycle is not a crash"
    assert_children_clean(d)


# ---- 7. the circuit breaker ----------------------------------------------------------------


def test_breaker_opens_holds_claude_tasks_then_probe_closes_it(supd_factory, fakeapi, claude_config):
    open_s = 2.0
    config = with_sections(claude_config, breaker={"threshold": 3, "open_s": open_s})
    d = supd_factory(children=2, config=config).start()
    run = uuid.uuid4().hex[:8]
    failing = d.submit(*[TaskSpec(kind="claude", prompt=f"[[status:529]] {run} {i}", retries=0) for i in range(3)])
    failed = d.wait(failing, timeout_s=90)
    assert [t.error.kind for t in failed] == [ErrorKind.OVERLOADED] * 3
    assert d.info(ctl.Status())["breaker"]["state"] == "open"
    health = d.info(ctl.Health())
    assert health["breaker"]["state"] == "open" and health["status"] != "ok"
    t_submit = time.monotonic()
    (probe,) = d.submit(TaskSpec(kind="claude", prompt=f"after the storm {run}"))
    early = get(d, probe)
    if time.monotonic() - t_submit < 1.0:  # still well inside open_s: it must be waiting
        assert early.state == "queued", early
    # An exec task is not held by the Claude breaker.
    (other,) = d.wait(d.submit(exec_spec("true")))
    assert other.state == "succeeded"
    (done,) = d.wait([probe], timeout_s=60)
    assert done.state == "succeeded" and done.attempts == 1, done.error
    opened_at = max(t.finished_at for t in failed)
    figure("breaker_probe_wait_s", f"{done.started_at - opened_at:.3f} (open_s={open_s})")
    assert done.started_at >= opened_at + open_s - 0.1, "the probe waited for open_s"
    assert d.info(ctl.Status())["breaker"]["state"] == "closed"
    assert d.info(ctl.Health())["status"] == "ok"


# ---- 8. back-pressure and the output cap -------------------------------------------------


def test_queue_full_is_refused_naming_the_key(supd_factory):
    d = supd_factory(children=0, config=toml(daemon={"max_queued": 3})).start()
    ids = d.submit(*[exec_spec("true") for _ in range(3)])
    reply = d.request(ctl.Submit(tasks=[exec_spec("true")]))
    assert isinstance(reply, ctl.Error) and reply.kind == "queue_full", reply
    assert "daemon.max_queued" in reply.message
    r = d.supctl("submit", "--kind", "exec", "--", "true")
    assert r.returncode != 0 and "queue_full" in r.stderr + r.stdout and "daemon.max_queued" in r.stderr + r.stdout
    assert [get(d, i).state for i in ids] == ["queued"] * 3
    assert d.info(ctl.Health())["queue"] == {"queued": 3, "running": 0, "max": 3}
    # Room again once one leaves the queue.
    assert d.request(ctl.Cancel(id=ids[0])) == ctl.Ok(message=f"cancelled {ids[0]}")
    assert len(d.submit(exec_spec("true"))) == 1


def test_output_cap_truncates_and_memory_stays_flat(supd_factory):
    cap = 65536
    d = supd_factory(children=1, config=toml(tasks={"output_cap_bytes": cap})).start()
    d.wait(d.submit(exec_spec("true")))  # warm up: the first task allocates what every task needs
    rss_before = psutil.Process(d.proc.pid).memory_info().rss
    child_pid = children(d)["w00"]["pid"]
    child_before = psutil.Process(child_pid).memory_info().rss
    (tid,) = d.submit(exec_spec(PY, "-c", "import sys; sys.stdout.write('x' * 5_000_000); sys.stdout.flush()"))
    (task,) = d.wait([tid], timeout_s=60)
    rss_after = psutil.Process(d.proc.pid).memory_info().rss
    child_after = psutil.Process(child_pid).memory_info().rss
    assert task.state == "succeeded", task.error
    assert task.truncated is True
    assert len(task.result.encode()) <= cap
    grew = (rss_after - rss_before) / 2**20
    figure("output_cap_rss_growth_mb", f"daemon={grew:.2f} child={(child_after - child_before) / 2**20:.2f}")
    assert grew < 50
    view = d.supctl("result", "--json", tid)
    assert view.returncode == 0 and len(view.stdout) < 2 * cap + 4096


# ---- 9. cancel ----------------------------------------------------------------------------


def test_supctl_cancel_running_and_queued(supd_factory):
    d = supd_factory(children=1).start()
    running, queued = d.submit(exec_spec("sleep", "30"), exec_spec("sleep", "30"))
    wait_for(lambda: tagged_processes({running}), 20, "sleep 30 to run")
    tree = [p.pid for p in tagged_processes({running})]
    assert get(d, queued).state == "queued"

    r = d.supctl("cancel", queued)
    assert r.returncode == 0, r.stderr
    q = get(d, queued)
    assert q.state == "cancelled" and q.error.kind == ErrorKind.CANCELLED and q.attempts == 0

    t0 = time.monotonic()
    r = d.supctl("cancel", running)
    assert r.returncode == 0, r.stderr
    (task,) = d.wait([running], timeout_s=30)
    figure("cancel_running_s", f"{time.monotonic() - t0:.3f}")
    assert task.state == "cancelled" and task.error.kind == ErrorKind.CANCELLED, task.error
    assert_no_leftovers(tree, {running, queued})
    assert_children_clean(d)
    r = d.supctl("cancel", running)
    assert r.returncode != 0 and "already finished" in r.stderr + r.stdout


def test_a_cancelled_task_whose_child_dies_meanwhile_is_cancelled_not_lost(supd_factory):
    """Cancel a task that ignores SIGTERM, then SIGKILL its child during the kill grace: the
    task ends `cancelled` (what was asked), not `worker_lost`, and its tree still dies."""
    d = supd_factory(children=1, config=toml(tasks={"kill_grace_s": 3.0})).start()
    ready = d.state_dir / "ignoring"
    script = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
              " pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")
    (tid,) = d.submit(exec_spec(PY, "-c", script, str(ready), retries=2))
    wait_for(ready.exists, 20, "the task ignoring SIGTERM")  # a SIGTERM before that would end it
    child = wait_for(lambda: child_running(d, tid), 10, "the child running it")
    tree = [p.pid for p in tagged_processes({tid})]
    assert isinstance(d.request(ctl.Cancel(id=tid)), ctl.Ok)
    time.sleep(0.3)  # inside the 3 s grace: the task ignored SIGTERM and is still alive
    assert tagged_processes({tid}), "still in its kill grace"
    os.kill(child["pid"], signal.SIGKILL)
    (task,) = d.wait([tid], timeout_s=30)
    assert task.state == "cancelled" and task.error.kind == "cancelled" and task.attempts == 1, task.error
    assert_no_leftovers(tree, {tid}, timeout_s=15)
