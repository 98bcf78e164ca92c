"""The core, end to end with real processes: supd, its children, tasks, the journal, supctl."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import psutil
import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import assert_no_leftovers, descendants_of

pytestmark = pytest.mark.timeout(90)


def test_exec_tasks_run_in_parallel_and_record_output(supd_factory):
    d = supd_factory(children=4).start()
    ids = d.submit(*[TaskSpec(kind="exec", argv=[sys.executable, "-c", f"print({i} * 2)"]) for i in range(8)])
    tasks = d.wait(ids)
    assert [t.state for t in tasks] == ["succeeded"] * 8
    assert [t.result for t in tasks] == [f"{i * 2}\n" for i in range(8)]
    assert all(t.exit_code == 0 and t.attempts == 1 and t.child for t in tasks)
    assert len({t.child for t in tasks}) > 1, "eight tasks on four children should spread"
    assert all(t.started_at and t.finished_at and t.duration_s is not None for t in tasks)
    # Four one-second tasks on four children run at the same time: each starts before any ends.
    sleepers = d.wait(d.submit(*[TaskSpec(kind="exec", argv=["sleep", "1"]) for _ in range(4)]))
    assert max(t.started_at for t in sleepers) < min(t.finished_at for t in sleepers)


def test_exec_failure_and_missing_binary_are_recorded(supd_factory):
    d = supd_factory(children=2).start()
    fail, missing = d.wait(d.submit(
        TaskSpec(kind="exec", argv=[sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]),
        TaskSpec(kind="exec", argv=["/nonexistent/program"]),
    ))
    assert fail.state == "failed" and fail.exit_code == 3 and fail.error.kind == "exit"
    assert "boom" in (fail.stderr or "")
    assert missing.state == "failed" and missing.error.kind == "spawn"
    assert "/nonexistent/program" in missing.error.message


def test_input_goes_to_stdin(supd_factory):
    d = supd_factory(children=1).start()
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["cat"], input="data on stdin")))
    assert task.result == "data on stdin"


@pytest.mark.parametrize("bad, words", [
    (TaskSpec(kind="exec"), "argv"),
    (TaskSpec(kind="claude"), "prompt"),
    (TaskSpec(kind="exec", argv=["true"], timeout_s=0), "timeout_s"),
    (TaskSpec(kind="exec", argv=["true"], timeout_s=-1), "timeout_s"),
    (TaskSpec(kind="exec", argv=["true"], retries=-2), "retries"),
])
def test_bad_submissions_are_refused_and_change_nothing(supd_factory, bad, words):
    d = supd_factory(children=1).start()
    reply = d.request(ctl.Submit(tasks=[bad]))
    assert isinstance(reply, ctl.Error) and reply.kind == "bad_request" and words in reply.message
    assert d.request(ctl.List()).tasks == []


def test_garbage_and_unknown_kinds_get_errors_and_the_daemon_keeps_serving(supd_factory):
    import zmq

    d = supd_factory(children=1).start()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{d.state_dir / 'control.sock'}")
    for frame in [b"\x00garbage", b"", json.dumps({"type": "Submit", "tasks": [{"kind": "shell"}]}).encode(),
                  b"\x82\xa4type\xa6Submit\xa5tasks\x91\x81\xa4kind\xa5shell"]:
        sock.send(frame)
        assert sock.poll(5000), "no answer to a bad frame"
        reply = ctl_decode(sock.recv())
        assert isinstance(reply, ctl.Error) and reply.kind == "bad_request"
    sock.close()
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"


def ctl_decode(payload: bytes) -> ctl.Reply:
    import msgspec

    return msgspec.msgpack.decode(payload, type=ctl.Reply)


def test_unknown_ids_are_not_found(supd_factory):
    d = supd_factory(children=1).start()
    for req in (ctl.Get(id="nope"), ctl.Wait(ids=["nope"]), ctl.Cancel(id="nope")):
        reply = d.request(req)
        assert isinstance(reply, ctl.Error) and reply.kind == "not_found" and "nope" in reply.message


def test_sigkilled_child_is_replaced(supd_factory):
    d = supd_factory(children=2).start()
    before = d.info(ctl.Status())["children"]
    victim = before[0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = {c["slot"]: c for c in d.info(ctl.Status())["children"]}
        if now[victim["slot"]]["state"] == "idle" and now[victim["slot"]]["pid"] != victim["pid"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"not replaced: {now}")
    assert not psutil.pid_exists(victim["pid"]), "the dead child must be reaped, not a zombie"
    assert d.info(ctl.Stats())["child_restarts"] == 1
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"


def _until(d, what, ok, timeout_s: float = 10.0):
    """The daemon's status once `ok(status)` holds (or an error naming `what`)."""
    deadline = time.monotonic() + timeout_s
    while not ok(status := d.info(ctl.Status())):
        assert time.monotonic() < deadline, f"{what}: {status['children']} {status['spares']}"
        time.sleep(0.02)
    return status


def test_a_crashed_child_is_replaced_at_once_by_the_ready_spare_which_is_booted_again(supd_factory):
    d = supd_factory(children=2).start()  # `daemon.spares` is 1 by default
    status = _until(d, "spare ready", lambda s: [c["state"] for c in s["spares"]] == ["idle"])
    victim, spare = status["children"][0], status["spares"][0]
    assert psutil.Process(spare["pid"]).ppid() == d.proc.pid
    os.kill(victim["pid"], signal.SIGKILL)
    status = _until(d, "slot took the spare", lambda s: s["children"][0]["pid"] == spare["pid"])
    assert (status["children"][0]["slot"], status["children"][0]["id"]) == (victim["slot"], spare["id"])
    status = _until(d, "new spare ready", lambda s: s["spares"][0]["state"] == "idle")
    new_spare = status["spares"][0]["pid"]
    assert new_spare not in (victim["pid"], spare["pid"]) and psutil.Process(new_spare).ppid() == d.proc.pid
    assert not psutil.pid_exists(victim["pid"]), "the dead child must be reaped, not a zombie"
    assert d.info(ctl.Stats())["child_restarts"] == 1
    tasks = d.wait(d.submit(*[TaskSpec(kind="exec", argv=["true"]) for _ in range(4)]))
    assert [t.state for t in tasks] == ["succeeded"] * 4
    assert {t.child for t in tasks} <= {spare["id"], status["children"][1]["id"]}  # never the new spare


def test_shutdown_drains_running_tasks_and_leaves_nothing(supd_factory):
    d = supd_factory(children=2).start()
    ids = d.submit(*[TaskSpec(kind="exec", argv=["sleep", "1.5"]) for _ in range(2)])
    deadline = time.monotonic() + 10
    while len(pids := [d.proc.pid] + [p.pid for p in descendants_of(d.proc.pid)]) < 5:
        assert time.monotonic() < deadline, "daemon, two children, two sleeps never all ran"
        time.sleep(0.02)
    assert d.request(ctl.Shutdown()) == ctl.Ok(message="shutting down")
    assert d.proc.wait(20) == 0
    assert_no_leftovers(pids, set(ids))
    # The journal kept them: a new daemon on the same state dir answers for them.
    d.start()
    for tid in ids:
        (task,) = d.request(ctl.Get(id=tid)).tasks
        assert task.state == "succeeded"


def test_sigterm_stops_cleanly_and_queued_tasks_survive_a_restart(supd_factory):
    d = supd_factory(children=1).start()
    ids = d.submit(*[TaskSpec(kind="exec", argv=["sleep", "0.3"]) for _ in range(4)])
    time.sleep(0.1)
    pids = [d.proc.pid] + [p.pid for p in descendants_of(d.proc.pid)]
    assert d.stop() == 0
    assert_no_leftovers(pids, set(ids))
    d.start()
    tasks = d.wait(ids)
    assert [t.state for t in tasks] == ["succeeded"] * 4


def test_config_errors_stop_supd_at_start_naming_the_key(supd_factory):
    d = supd_factory(config="[tasks]\ntimeout_s = \"soon\"\n")
    d.start(wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "tasks.timeout_s" in d.log()
    d2 = supd_factory(config="[daemon]\nchildern = 3\n")
    d2.start(wait_ready=False)
    assert d2.proc.wait(10) == 2
    assert "daemon.childern: unknown key" in d2.log()


def test_second_daemon_on_the_same_state_dir_is_refused(supd_factory):
    d = supd_factory(children=1).start()
    other = supd_factory(children=1)
    other.start(wait_ready=False)
    assert other.proc.wait(10) == 4
    assert d.info(ctl.Health())["status"] == "ok"


def test_supctl_end_to_end(supd_factory):
    d = supd_factory(children=2).start()
    r = d.supctl("submit", "--kind", "exec", "--wait", "--json", "--", "echo", "hello world")
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    for field in ("id", "kind", "state", "attempts", "exit_code", "result", "error", "child", "trace_id",
                  "span_id", "parent_span_id", "submitted_at", "started_at", "finished_at", "duration_s"):
        assert field in task, field
    assert task["result"] == "hello world\n" and task["state"] == "succeeded"

    r = d.supctl("result", task["id"])
    assert r.returncode == 0 and "hello world" in r.stdout and "succeeded" in r.stdout
    r = d.supctl("list", "--json")
    assert [t["id"] for t in json.loads(r.stdout)["tasks"]] == [task["id"]]
    r = d.supctl("status", "--json")
    children = json.loads(r.stdout)["children"]
    assert len(children) == 2 and all({"slot", "pid", "state", "task"} <= c.keys() for c in children)
    r = d.supctl("submit", "--kind", "exec", "--wait", "--", "false")
    assert r.returncode == 1
    r = d.supctl("submit", "--kind", "exec", "--timeout", "0", "--", "true")
    assert r.returncode == 2 and "--timeout: 0 is out of range: must be > 0" in r.stderr
    r = d.supctl("submit", "--kind", "exec")
    assert r.returncode == 2 and "exec task" in r.stderr
    r = d.supctl("result", "t-missing")
    assert r.returncode == 1 and "not_found" in r.stderr


def test_submit_file_of_json_lines(supd_factory, tmp_path):
    d = supd_factory(children=2).start()
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"kind":"exec","argv":["echo","a"]}\n\n{"kind":"exec","argv":["echo","b"],"priority":5}\n')
    r = d.supctl("submit", "--file", str(batch), "--wait", "--json")
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)["tasks"]
    assert [t["result"] for t in tasks] == ["a\n", "b\n"]
    assert len({t["trace_id"] for t in tasks}) == 1, "one batch, one master trace"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"exec","argv":["true"]}\n{"kind":"exec","argv":"true"}\n')
    r = d.supctl("submit", "--file", str(bad))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "argv" in r.stderr


def test_supctl_never_hangs_without_a_daemon(state_dir):
    import subprocess

    from tests.conftest import ROOT, child_env

    r = subprocess.run([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(state_dir), "status"],
                       capture_output=True, text=True, timeout=20, env=child_env(), cwd=ROOT)
    assert r.returncode == 4 and "supd is not running" in r.stderr
    # A socket file with nobody behind it: the reply deadline fires.
    import zmq

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    s.bind(f"ipc://{state_dir / 'control.sock'}")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(state_dir),
                        "--reply-timeout", "1", "status"], capture_output=True, text=True, timeout=20,
                       env=child_env(), cwd=ROOT)
    s.close(linger=0)
    assert r.returncode == 4 and "did not answer" in r.stderr
    assert time.monotonic() - t0 < 15


def test_control_socket_is_owner_only(supd_factory):
    d = supd_factory(children=1).start()
    mode = (d.state_dir / "control.sock").stat().st_mode & 0o777
    assert mode == 0o600
    assert (d.state_dir.stat().st_mode & 0o777) == 0o700


def test_supctl_output_for_people(supd_factory):
    """A failed task shows its stderr; a reader that goes away early (`| head`) is no error."""
    import subprocess

    from tests.conftest import ROOT

    d = supd_factory(children=2).start()
    r = d.supctl("submit", "--kind", "exec", "--wait", "--", "sh", "-c", "echo out; echo oops >&2; exit 3")
    assert r.returncode == 1 and "stderr (last 1 lines):\noops" in r.stdout and "exit: exited with 3" in r.stdout
    d.wait(d.submit(*[TaskSpec(kind="exec", argv=["true"]) for _ in range(1500)]))
    reader = subprocess.Popen(
        [sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(d.state_dir), "list", "--limit", "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env, cwd=ROOT)
    assert reader.stdout is not None and reader.stdout.readline().startswith(b"ID")
    reader.stdout.close()  # like `head -1`
    _, err = reader.communicate(timeout=20)
    assert reader.returncode == 0 and b"Broken pipe" not in err


def test_bad_command_lines_are_named_before_anything_starts(state_dir):
    import subprocess

    from tests.conftest import ROOT, child_env

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=30,
                              env=child_env(), cwd=ROOT)

    r = run("supervisord.hub.main", "--state-dir", "/proc/no-such-dir")
    assert r.returncode == 2 and "cannot use /proc/no-such-dir" in r.stderr and "Traceback" not in r.stderr
    r = run("supervisord.hub.main", "--state-dir", str(state_dir), "--children", "-1")
    assert r.returncode == 2 and "--children must be between 0 and 1024, got -1" in r.stderr
    # supctl names bad input as such even when no daemon runs (no "no daemon" instead)
    r = run("supervisord.ctl.supctl", "--state-dir", str(state_dir), "submit", "--kind", "exec", "--env", "BAD", "--", "true")
    assert r.returncode == 2 and "--env expects KEY=VALUE, got 'BAD'" in r.stderr
    r = run("supervisord.ctl.supctl", "--state-dir", str(state_dir), "submit", "--kind", "exec")
    assert r.returncode == 2 and "give the command after --" in r.stderr


def test_big_outputs_come_back_a_reply_at_a_time(supd_factory):
    """Three tasks with 1 MiB of output each and replies limited to 1.5 MiB: one Wait answers
    one of them and names the others pending; waiting on returns them all, whole."""
    mib = 1 << 20
    config = f"[limits]\nmax_message_bytes = {3 * mib}\n[tasks]\noutput_cap_bytes = {mib}\n"
    d = supd_factory(children=3, config=config).start()
    script = f"import sys; sys.stdout.write('x' * {mib})"
    ids = d.submit(*[TaskSpec(kind="exec", argv=[sys.executable, "-c", script]) for _ in range(3)])
    tasks = d.wait(ids)  # loops on Wait until nothing is pending
    assert [len(t.result or "") for t in tasks] == [mib] * 3 and not any(t.truncated for t in tasks)
    reply = d.request(ctl.Wait(ids=ids, timeout_s=1))
    assert isinstance(reply, ctl.Tasks) and len(reply.tasks) == 1 and len(reply.pending) == 2
    assert {reply.tasks[0].id, *reply.pending} == set(ids)
    listed = d.request(ctl.List(limit=3))
    assert isinstance(listed, ctl.Tasks) and len(listed.tasks) == 1, "the newest that fit"
    r = d.supctl("wait", "--json", *ids)
    assert r.returncode == 0 and len(json.loads(r.stdout)["tasks"]) == 3


def test_a_full_journal_refuses_submits_by_name_and_keeps_serving(supd_factory):
    d = supd_factory(children=1, config="[journal]\nmax_mb = 0.25\n").start()
    big = "x" * (32 << 10)  # each task's input is journaled with it
    accepted, refused = [], None
    for _ in range(40):
        reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], input=big)]))
        if isinstance(reply, ctl.Error):
            refused = reply
            break
        accepted += reply.ids
    assert refused is not None and refused.kind == "journal", "the cap was never reached"
    assert "journal.max_mb" in refused.message and "nothing was accepted" in refused.message
    assert accepted and all(t.state == "succeeded" for t in d.wait(accepted)), "what was accepted runs"
    assert d.info(ctl.Health())["phase"] == "running"
    assert d.request(ctl.List(limit=100)).tasks[0].id == accepted[-1], "the refused one left no trace"
