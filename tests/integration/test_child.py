"""A real child (`python -m children`) driven by a ROUTER in the test.

Every test ends by checking, with psutil, that no process tagged with its task ids is
left anywhere, that the child has no child of its own (no zombie), and that the child
exits (and is reaped).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from proto.children import STARTED_AFTER_S, Cancel, Dispatch, Progress, Result, Started, Stop
from proto.task import TaskSpec
from supervisord.spokes import procs
from tests.childharness import REPO, ChildHarness, exec_dispatch, limits, tid
from tests.conftest import tagged_processes

pytestmark = pytest.mark.timeout(30)

PY = sys.executable

#: A tree that fights back: the task ignores SIGTERM and forks a grandchild that moves to
#: its own session (setsid), also ignores SIGTERM, and keeps the stdout pipe open. Its
#: middle parent exits, so the grandchild is an orphan (re-parented to the subreaper).
#: argv[1] == "stay": the task itself keeps running; "exit": it exits 0 at once.
TREE = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, b"x")
        time.sleep(60)
    os._exit(0)
os.read(r, 1)
print("tree ready", flush=True)
if sys.argv[1] == "stay":
    time.sleep(60)
"""


def _no_zombies_or_children(h: ChildHarness) -> None:
    left = h.child_children()
    assert left == [], f"child still has children: {[(p.pid, p.status()) for p in left]}"


@pytest.fixture
def child() -> Iterator[ChildHarness]:
    h = ChildHarness()
    try:
        h.hello()
        yield h
        if h.proc.poll() is None:
            _no_zombies_or_children(h)
            h.send(Stop())
            assert h.wait_exit(5) == 0
        assert h.proc.returncode is not None
        assert not psutil.pid_exists(h.proc.pid) or psutil.Process(h.proc.pid).status() != psutil.STATUS_ZOMBIE
        assert h.leftovers() == []
    finally:
        h.close()


def _wait_tree(h: ChildHarness, task_id: str, count: int = 2) -> list[psutil.Process]:
    assert h.wait_for(lambda: len(procs.tagged(task_id)) >= count, 5), "tree did not come up"
    return procs.tagged(task_id)


# ---- plain exec tasks ------------------------------------------------------------------


def test_echo_succeeds_and_its_result_names_the_process_it_ended_too_soon_to_announce(child: ChildHarness) -> None:
    result, seen = child.run(exec_dispatch(tid("t-echo"), ["echo", "hi"]))
    assert not [m for m in seen if isinstance(m, Started)], "no Started: it ended within STARTED_AFTER_S"
    assert result.pid is not None and result.pid > 1
    assert result.state == "succeeded"
    assert result.outcome.result == "hi\n" and result.outcome.exit_code == 0
    assert result.outcome.error is None and not result.outcome.truncated
    assert result.started_at <= result.finished_at <= time.time()


def test_a_task_that_runs_on_is_announced_before_anything_else(child: ChildHarness) -> None:
    argv = [sys.executable, "-c", f"import time; time.sleep({STARTED_AFTER_S * 4}); print('late')"]
    result, seen = child.run(exec_dispatch(tid("t-slow"), argv))
    assert [type(m) for m in seen] == [Started], seen
    started = seen[0]
    assert isinstance(started, Started) and started.pid == started.pgid
    assert result.state == "succeeded" and result.pid is None, "announced already"



def test_exit_1_is_failed_exit(child: ChildHarness) -> None:
    script = "import sys; print('oops', file=sys.stderr); sys.exit(1)"
    result, _ = child.run(exec_dispatch(tid("t-exit"), [PY, "-c", script]))
    assert result.state == "failed"
    assert result.outcome.error is not None and result.outcome.error.kind == "exit"
    assert result.outcome.error.message == "exited with 1"
    assert result.outcome.exit_code == 1 and result.outcome.stderr == "oops\n"


def test_missing_binary_is_failed_spawn(child: ChildHarness) -> None:
    result, seen = child.run(exec_dispatch(tid("t-missing"), ["/nonexistent/supd-nope", "x"]))
    assert seen == []  # never started
    assert result.state == "failed"
    assert result.outcome.error is not None and result.outcome.error.kind == "spawn"
    assert "/nonexistent/supd-nope" in result.outcome.error.message


def test_input_goes_to_stdin(child: ChildHarness) -> None:
    result, _ = child.run(exec_dispatch(tid("t-cat"), ["cat"], input="hello\nworld\n"))
    assert result.state == "succeeded" and result.outcome.result == "hello\nworld\n"
    # Far larger than a pipe: writing and reading must interleave in the poll loop.
    big = "".join(f"{i:07d}\n" for i in range(400_000))  # 3.2 MB
    result, _ = child.run(exec_dispatch(tid("t-cat-big"), ["cat"], input=big, output_cap_bytes=8 << 20))
    assert result.state == "succeeded" and result.outcome.result == big


def test_output_cap_truncates_and_keeps_draining(child: ChildHarness) -> None:
    flood = [PY, "-c", "import sys; sys.stdout.write('x' * 5_000_000); sys.stderr.write('e' * 300_000)"]
    result, _ = child.run(exec_dispatch(tid("t-flood"), flood, output_cap_bytes=100_000))
    assert result.state == "succeeded"  # it never blocked on a full pipe
    assert result.outcome.truncated
    assert result.outcome.result == "x" * 100_000
    assert result.outcome.stderr == "e" * 100_000


def test_env_and_cwd(child: ChildHarness, tmp_path: Path) -> None:
    script = "import os; print(os.getcwd(), os.environ['SUPD_TASK_ID'], os.environ['FOO'], os.environ['BAR'])"
    d = exec_dispatch(tid("t-env"), [PY, "-c", script], cwd=str(tmp_path), env={"FOO": "spec"})
    d = Dispatch(task_id=d.task_id, attempt=1, spec=d.spec, limits=d.limits, env={"FOO": "dispatch", "BAR": "b"})
    result, _ = child.run(d)
    assert result.outcome.result == f"{tmp_path} {d.task_id} spec b\n"


# ---- timeouts --------------------------------------------------------------------------


def test_wall_timeout(child: ChildHarness) -> None:
    t0 = time.monotonic()
    result, _ = child.run(exec_dispatch(tid("t-wall"), ["sleep", "30"], timeout_s=0.5, kill_grace_s=0.5))
    elapsed = time.monotonic() - t0
    assert result.state == "timed_out"
    assert result.outcome.error is not None and result.outcome.error.kind == "timeout"
    assert result.outcome.error.message == "wall-clock timeout of 0.5s"
    assert result.outcome.signal == signal.SIGTERM
    assert elapsed < 15, "the limit fired; the task did not run its 30 s"  # a bound on behaviour, not speed


def test_stall_timeout(child: ChildHarness) -> None:
    script = "import time; print('one line', flush=True); time.sleep(30)"
    t0 = time.monotonic()
    result, _ = child.run(exec_dispatch(tid("t-stall"), [PY, "-c", script], stall_timeout_s=0.5))
    assert result.state == "timed_out"
    assert result.outcome.error is not None and result.outcome.error.kind == "stall"
    assert result.outcome.error.message == "no output for 0.5s"
    assert result.outcome.result == "one line\n"
    assert time.monotonic() - t0 < 15, "the stall limit fired; the task did not run its 30 s"


def test_output_keeps_stall_away(child: ChildHarness) -> None:
    """Runs 2 s in all, twice the stall limit, but never 1 s without a line (lines every
    0.1 s leave ~0.9 s of slack for a loaded machine)."""
    script = "import time\nfor i in range(20):\n    print(i, flush=True); time.sleep(0.1)"
    result, _ = child.run(exec_dispatch(tid("t-busy"), [PY, "-c", script], stall_timeout_s=1.0))
    assert result.state == "succeeded" and result.outcome.result == "".join(f"{i}\n" for i in range(20))


# ---- process trees ---------------------------------------------------------------------


def test_cancel_kills_a_tree_that_ignores_sigterm_and_escaped(child: ChildHarness) -> None:
    child.send(exec_dispatch(tid("t-tree"), [PY, "-c", TREE, "stay"], kill_grace_s=0.5))
    started, _ = child.until(Started)
    tree = _wait_tree(child, tid("t-tree"))
    assert any(p.pid != started.pid and _sid(p) != started.pgid for p in tree), "grandchild did not escape"
    t0 = time.monotonic()
    child.send(Cancel(task_id=tid("t-tree"), reason="user"))
    result, _ = child.until(Result)
    elapsed = time.monotonic() - t0
    assert result.state == "cancelled"
    assert result.outcome.error is not None and result.outcome.error.kind == "cancelled"
    assert result.outcome.signal == signal.SIGKILL  # SIGTERM was ignored
    assert result.outcome.result == "tree ready\n"
    assert 0.5 <= elapsed < 15, "SIGKILL waited for the grace, and the 60 s tree did not run out"
    assert procs.tagged(tid("t-tree")) == [] and not any(p.is_running() for p in tree)
    _no_zombies_or_children(child)


def test_leftovers_of_a_finished_task_are_killed(child: ChildHarness) -> None:
    t0 = time.monotonic()
    result, _ = child.run(exec_dispatch(tid("t-left"), [PY, "-c", TREE, "exit"], kill_grace_s=60.0), timeout_s=30)
    # The task succeeded; the escaped grandchild holding its stdout was killed at once,
    # not after the (long) kill grace.
    assert result.state == "succeeded" and result.outcome.result == "tree ready\n"
    assert time.monotonic() - t0 < 15, "the leftover was killed at once, not after the 60 s grace"
    assert procs.tagged(tid("t-left")) == []
    _no_zombies_or_children(child)


#: The task forks a grandchild that double-forks: the middle process exits at once and the
#: grandchild (an orphan, re-parented to the child) exits a moment later; the task reaps
#: its own child and runs on (until it is cancelled).
ORPHAN = r"""
import os, time
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.2)
        os._exit(0)
    os._exit(0)
os.wait()
print("forked", flush=True)
time.sleep(30)
"""


def test_an_orphan_that_dies_while_the_task_runs_is_reaped_before_the_task_ends(child: ChildHarness) -> None:
    child.send(exec_dispatch(tid("t-orphan"), [PY, "-c", ORPHAN], timeout_s=20.0))
    started, _ = child.until(Started)
    main_pid = started.pid

    def only_the_task_is_left() -> bool:
        return [p.pid for p in child.child_children()] == [main_pid]

    # the orphan came back to the child (subreaper) and died: reaped while the task still runs
    assert child.wait_for(only_the_task_is_left, 5), [(p.pid, p.status()) for p in child.child_children()]
    assert psutil.Process(main_pid).status() != psutil.STATUS_ZOMBIE
    child.send(Cancel(task_id=tid("t-orphan"), reason="done"))
    result, _ = child.until(Result)
    assert result.state == "cancelled"
    _no_zombies_or_children(child)


@pytest.mark.parametrize("in_cwd", [False, True], ids=["posix_spawn", "popen"])
def test_the_worker_runs_batch_and_its_task_runs_as_normal(child: ChildHarness, tmp_path: Path,
                                                          in_cwd: bool) -> None:
    assert os.sched_getscheduler(child.proc.pid) == os.SCHED_BATCH
    extra = {"cwd": str(tmp_path)} if in_cwd else {}
    result, _ = child.run(exec_dispatch(tid("t-sched"), [PY, "-c", "import os; print(os.sched_getscheduler(0))"],
                                        **extra))
    assert result.state == "succeeded" and result.outcome.result == f"{os.SCHED_OTHER}\n"
    assert os.sched_getscheduler(child.proc.pid) == os.SCHED_BATCH  # put back after a Popen


@pytest.mark.parametrize("in_cwd", [False, True], ids=["posix_spawn", "popen"])
def test_a_task_starts_with_no_signal_ignored(child: ChildHarness, tmp_path: Path, in_cwd: bool) -> None:
    """The worker (Python) ignores SIGPIPE and SIGXFSZ; its task must not inherit that,
    however it is started (a pipeline's writer then dies of SIGPIPE as it should)."""
    extra = {"cwd": str(tmp_path)} if in_cwd else {}
    result, _ = child.run(exec_dispatch(tid("t-sigign"), ["grep", "SigIgn", "/proc/self/status"], **extra))
    assert result.state == "succeeded", result.outcome
    ignored = int(result.outcome.result.split()[1], 16)  # bit n-1 for signal n
    assert [s for s in (signal.SIGPIPE, signal.SIGXFSZ) if ignored & 1 << (s - 1)] == []


def test_the_process_title_names_an_announced_task_and_goes_back_to_idle(child: ChildHarness) -> None:
    def title() -> str:
        return " ".join(" ".join(psutil.Process(child.proc.pid).cmdline()).split())  # setproctitle pads

    assert child.wait_for(lambda: title() == "supd-child w00.1 idle", 5), title()
    child.send(exec_dispatch(tid("t-title"), ["sleep", "30"]))
    child.until(Started)
    assert child.wait_for(lambda: title() == f"supd-child w00.1 busy {tid('t-title')}", 5), title()
    child.send(Cancel(task_id=tid("t-title"), reason="done"))
    child.until(Result)
    assert child.wait_for(lambda: title() == "supd-child w00.1 idle", 5), title()


def test_dispatch_while_busy_and_foreign_cancel(child: ChildHarness) -> None:
    child.send(exec_dispatch(tid("t-long"), ["sleep", "30"]))
    child.until(Started)
    child.send(exec_dispatch(tid("t-other"), ["echo", "no"]))
    busy, _ = child.until(Result)
    assert busy.task_id == tid("t-other") and busy.state == "failed"
    assert busy.outcome.error is not None and busy.outcome.error.kind == "worker_busy"
    child.send(Cancel(task_id=tid("t-other")))  # not the running task: ignored
    child.pump(1.0)
    assert not any(isinstance(m, Result) and m.task_id == tid("t-long") for m in child.messages)
    assert tagged_processes({tid("t-long")}), "the running task is untouched by a foreign Cancel"
    child.send(Cancel(task_id=tid("t-long")))
    result, _ = child.until(Result)
    assert result.task_id == tid("t-long") and result.state == "cancelled"


def test_garbage_frame_is_ignored(child: ChildHarness) -> None:
    child.send_raw(b"\xc1\xffnot msgpack")
    child.send_raw(b"\x81\xa4type\xa6Bogus!")  # valid msgpack, unknown tag
    result, _ = child.run(exec_dispatch(tid("t-after-garbage"), ["echo", "still here"]))
    assert result.state == "succeeded" and result.outcome.result == "still here\n"


# ---- the child's own life --------------------------------------------------------------


def test_stop_when_idle_exits_0(child: ChildHarness) -> None:
    child.send(Stop())
    assert child.wait_exit(5) == 0


def test_stop_when_busy_reports_shutdown_then_exits_0(child: ChildHarness) -> None:
    child.send(exec_dispatch(tid("t-stop"), [PY, "-c", TREE, "stay"]))
    child.until(Started)
    _wait_tree(child, tid("t-stop"))
    child.send(Stop())
    result, _ = child.until(Result)
    assert result.state == "cancelled"
    assert result.outcome.error is not None and result.outcome.error.kind == "shutdown"
    assert child.wait_exit(5) == 0
    assert procs.tagged(tid("t-stop")) == []


def test_sigterm_kills_the_tree_and_exits_0(child: ChildHarness) -> None:
    child.send(exec_dispatch(tid("t-sigterm"), [PY, "-c", TREE, "stay"]))
    child.until(Started)
    _wait_tree(child, tid("t-sigterm"))
    child.proc.send_signal(signal.SIGTERM)
    result, _ = child.until(Result)
    assert result.outcome.error is not None and result.outcome.error.kind == "shutdown"
    assert child.wait_exit(5) == 0
    assert procs.tagged(tid("t-sigterm")) == []


def test_a_silent_daemon_that_is_alive_keeps_its_child_and_task() -> None:
    """A daemon stopped or slow (silent for far longer than liveness, its process still
    there) finds its child and the task's tree alive when it speaks again."""
    h = ChildHarness(heartbeat_s=0.2, liveness=3)
    try:
        h.hello()
        h.send(exec_dispatch(tid("t-quiet"), [PY, "-c", TREE, "stay"], kill_grace_s=0.5))
        h.until(Started)
        tree = _wait_tree(h, tid("t-quiet"))
        h.silent = True
        h.pump(2.0)  # > 3 x 0.2 s of silence
        assert h.proc.poll() is None, "the child left a live daemon"
        assert all(p.is_running() for p in tree)
        h.silent = False
        h.send(Cancel(task_id=tid("t-quiet")))
        result, _ = h.until(Result)
        assert result.state == "cancelled"
        h.send(Stop())
        assert h.wait_exit(5) == 0
        assert h.leftovers() == []
    finally:
        h.close()


#: A stand-in daemon that can die: it spawns the child with itself as --daemon-pid.
LAUNCHER = r"""
import os, sys, time
argv = sys.argv[1:]
argv[argv.index("--daemon-pid") + 1] = str(os.getpid())
os.posix_spawn(argv[0], argv, os.environ)
time.sleep(600)
"""


def test_daemon_death_kills_the_tree_and_the_child_leaves_fast() -> None:
    h = ChildHarness(heartbeat_s=0.2, liveness=50, launcher=LAUNCHER)
    try:
        hello = h.hello()
        h.send(exec_dispatch(tid("t-lost"), [PY, "-c", TREE, "stay"], kill_grace_s=5.0))
        h.until(Started)
        tree = _wait_tree(h, tid("t-lost"))
        child = psutil.Process(hello.pid)
        t0 = time.monotonic()
        h.proc.send_signal(signal.SIGKILL)  # the "daemon"
        gone = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        assert h.wait_for(lambda: gone(child) and all(gone(p) for p in tree), 5)
        elapsed = time.monotonic() - t0
        print(f"FIGURE child_and_tree_gone_after_daemon_death_s={elapsed:.3f}")
        assert elapsed < 3, "left on daemon death (pidfd / PDEATHSIG), not on a later timer"
        assert h.leftovers() == []
    finally:
        h.close()


def test_boot_failure_when_parent_is_not_the_daemon() -> None:
    h = ChildHarness(daemon_pid=1)
    try:
        assert h.wait_exit(10) == 3
    finally:
        h.close()


def _sid(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except ProcessLookupError:
        return None


def _name(p: psutil.Process) -> str:
    try:
        return str(p.name())
    except psutil.NoSuchProcess:
        return ""


def _names(task_id: str) -> list[str]:
    return [_name(p) for p in procs.tagged(task_id)]


# ---- claude tasks against the stand-in API ---------------------------------------------


def _claude_binary() -> str | None:
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "_bundled" / "claude"
        if bundled.exists():
            return str(bundled)
    return shutil.which("claude")


CLAUDE = _claude_binary()
needs_claude = pytest.mark.skipif(
    CLAUDE is None or not (REPO / "bench" / "fakeapi.py").exists(), reason="needs the Claude CLI and bench/fakeapi.py"
)


@pytest.fixture(scope="module")
def fakeapi_url() -> Iterator[str]:
    from bench.fakeapi import FakeAPI

    api = FakeAPI()
    yield api.start()
    api.stop()


def claude_dispatch(task_id: str, prompt: str, url: str, home: Path, **spec_fields: object) -> Dispatch:
    from bench.fakeapi import claude_env

    assert CLAUDE is not None
    env = {**claude_env(url, str(home)), "CLAUDE_CODE_MAX_RETRIES": "0"}
    spec = TaskSpec(kind="claude", prompt=prompt, **spec_fields)  # type: ignore[arg-type]
    return Dispatch(task_id=task_id, attempt=1, spec=spec, limits=limits(timeout_s=25.0), env=env,
                    claude_command=[CLAUDE])


@needs_claude
def test_claude_success(child: ChildHarness, fakeapi_url: str, tmp_path: Path) -> None:
    result, seen = child.run(claude_dispatch(tid("c-ok"), "hello child", fakeapi_url, tmp_path), timeout_s=25)
    assert result.state == "succeeded", result
    o = result.outcome
    assert o.result == "ECHO: hello child" and o.is_error is False and o.exit_code == 0
    assert o.usage is not None and o.usage.input_tokens > 0 and o.usage.output_tokens > 0
    assert o.cost_usd is not None and o.cost_usd > 0 and o.num_turns == 1 and o.session_id
    events = [m.event for m in seen if isinstance(m, Progress)]
    assert events[0] == "system/init" and events[-1] == "result/success" and "assistant" in events
    summaries = [m.summary for m in seen if isinstance(m, Progress)]
    assert 'assistant text: "ECHO: hello child"' in summaries


@needs_claude
def test_claude_auth_failure_is_quick(child: ChildHarness, fakeapi_url: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    result, _ = child.run(claude_dispatch(tid("c-401"), "[[status:401]]", fakeapi_url, tmp_path), timeout_s=25)
    assert result.state == "failed"
    assert result.outcome.error is not None and result.outcome.error.kind == "auth"
    assert result.outcome.api_error_status == 401 and result.outcome.is_error is True
    assert time.monotonic() - t0 < 10


@needs_claude
def test_claude_cancel_reaches_the_bash_tool(child: ChildHarness, fakeapi_url: str, tmp_path: Path) -> None:
    prompt = "[[bash:echo tool started; sleep 45; echo tool done]]"
    d = claude_dispatch(tid("c-bash"), prompt, fakeapi_url, tmp_path, allowed_tools=["Bash"])
    child.send(d)
    started, _ = child.until(Started, 25)
    assert child.wait_for(lambda: "sleep" in _names(tid("c-bash")), 15), "the Bash tool never ran"
    sleeper = next(p for p in procs.tagged(tid("c-bash")) if _name(p) == "sleep")
    assert _sid(sleeper) != started.pgid  # the CLI ran it in a session of its own
    child.send(Cancel(task_id=tid("c-bash")))
    result, _ = child.until(Result, 10)
    assert result.state == "cancelled"
    assert procs.tagged(tid("c-bash")) == []


def lingering(d: Dispatch, marker: Path, **limit_overrides: object) -> Dispatch:
    """The real CLI, kept alive after its result line by a slow SessionEnd hook (it waits ~2 s
    for hooks, then cancels them): the field report "the process sometimes does not exit after
    its result line", made reproducible. Left alone, the hook touches `marker` after 1 s."""
    hook = {"type": "command", "command": f"sleep 1.0 && touch {marker}"}
    settings = json.dumps({"hooks": {"SessionEnd": [{"hooks": [hook]}]}})
    return Dispatch(task_id=d.task_id, attempt=1, spec=d.spec, limits=limits(timeout_s=25.0, **limit_overrides),
                    env=d.env, claude_command=[*d.claude_command, "--settings", settings])


@needs_claude
def test_result_line_is_completion_when_the_real_cli_lingers(child: ChildHarness, fakeapi_url: str,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "hook-finished"
    d = lingering(claude_dispatch(tid("c-linger"), "linger", fakeapi_url, tmp_path), marker,
                  result_grace_s=0.1, kill_grace_s=0.1)
    result, seen = child.run(d, timeout_s=25)
    assert result.state == "succeeded" and result.outcome.result == "ECHO: linger"
    assert any(isinstance(m, Progress) and m.event == "result/success" for m in seen)
    # Ended by the result grace, not by its own exit: the hook never got to finish, and with
    # no tagged process left, nothing can finish it later.
    assert procs.tagged(tid("c-linger")) == []
    assert not marker.exists()


@needs_claude
def test_left_alone_the_lingering_cli_finishes_its_hook(child: ChildHarness, fakeapi_url: str,
                                                       tmp_path: Path) -> None:
    """The control for the two tests around it: with a long result grace the real CLI runs its
    SessionEnd hook to the end, so a missing marker there means the grace cut it short."""
    marker = tmp_path / "hook-finished"
    d = lingering(claude_dispatch(tid("c-alone"), "alone", fakeapi_url, tmp_path), marker, result_grace_s=20.0)
    result, _ = child.run(d, timeout_s=25)
    assert result.state == "succeeded" and result.outcome.result == "ECHO: alone"
    assert marker.exists()


@needs_claude
def test_cancel_after_the_result_line_keeps_the_result(child: ChildHarness, fakeapi_url: str,
                                                       tmp_path: Path) -> None:
    marker = tmp_path / "hook-finished"
    d = lingering(claude_dispatch(tid("c-late"), "late", fakeapi_url, tmp_path), marker, result_grace_s=20.0,
                  kill_grace_s=0.3)
    child.send(d)
    assert child.wait_for(lambda: any(isinstance(m, Progress) and m.event == "result/success"
                                      for m in child.messages), 20)
    child.send(Cancel(task_id=tid("c-late")))
    result, _ = child.until(Result, 10)
    assert result.state == "succeeded" and result.outcome.result == "ECHO: late"
    assert procs.tagged(tid("c-late")) == [] and not marker.exists()


@needs_claude
def test_claude_without_result_line_fails_with_its_stderr(child: ChildHarness, fakeapi_url: str, tmp_path: Path) -> None:
    """The real CLI refusing its arguments prints no result line: the task fails as `claude`
    with the CLI's exit code and its last stderr line (never as a success by exit code)."""
    d = claude_dispatch(tid("c-nores"), "hello", fakeapi_url, tmp_path)
    d = Dispatch(task_id=d.task_id, attempt=1, spec=msgspec.structs.replace(d.spec, permission_mode="not-a-mode"),
                 limits=d.limits, env=d.env, claude_command=d.claude_command)
    result, _ = child.run(d, timeout_s=25)
    assert result.state == "failed" and result.outcome.exit_code not in (None, 0)
    assert result.outcome.error is not None and result.outcome.error.kind == "claude"
    assert "without a result line" in result.outcome.error.message


def test_claude_without_command_is_a_spawn_failure(child: ChildHarness) -> None:
    spec = TaskSpec(kind="claude", prompt="x")
    result, _ = child.run(Dispatch(task_id=tid("s-nocmd"), attempt=1, spec=spec, limits=limits(), claude_command=[]))
    assert result.state == "failed"
    assert result.outcome.error is not None and result.outcome.error.kind == "spawn"
