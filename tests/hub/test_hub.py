"""The hub with fakes: scripted sequences of what children say and do, what clients ask,
and time passing; checked against the decisions, the replies and the store.

Each test names the defect or promise it holds to. Expected outcomes are written out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from proto import children as cp
from proto import control as ctl
from proto.task import ErrorKind, Outcome, TaskError, TaskView
from supervisord.events import RequestReceived
from supervisord.store.sqlite import SqliteStore
from tests.hub.rig import Rig, exec_spec

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\n").boot()


def test_a_task_runs_once_and_its_waiter_hears_after_the_commit(rig: Rig) -> None:
    (tid,) = rig.submit(exec_spec("echo", "hi"))
    who, d = rig.dispatched(tid)
    assert (d.attempt, d.epoch) == (1, 1)
    assert rig.stored(tid).state == "running"
    waiter = (b"w",)
    rig.step(*[])
    from supervisord.events import RequestReceived

    rig.step(RequestReceived(waiter, ctl.Wait(ids=[tid], timeout_s=30)))
    assert not [r for e, r in rig.control.replies if e == waiter]  # not final yet: no answer
    rig.result(tid, outcome=Outcome(exit_code=0, result="hi\n"))
    (answer,) = [r for e, r in rig.control.replies if e == waiter]
    assert isinstance(answer, ctl.Tasks) and answer.tasks[0].state == "succeeded" and answer.pending == []
    assert rig.stored(tid).state == "succeeded" and rig.stored(tid).result == "hi\n"
    assert rig.slot(who).state.value == "idle"


def test_result_then_exit_and_exit_then_result_both_keep_the_result(rig: Rig) -> None:
    a, b = rig.submit(exec_spec(), exec_spec())
    wa, _ = rig.dispatched(a)
    wb, _ = rig.dispatched(b)
    rig.result(a)  # Result first, then the child dies
    rig.exit(wa)
    rig.exit(wb)  # the child dies first; its Result was still in the socket
    rig.result(b, identity=wb)
    rig.advance(1.0)
    assert (rig.view(a).state, rig.view(b).state) == ("succeeded", "succeeded")
    assert (rig.view(a).attempts, rig.view(b).attempts) == (1, 1)


def test_a_child_that_dies_without_a_result_loses_its_attempt_after_a_short_wait(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\nretries = 1\n").boot()
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.exit(who)
    assert rig.view(tid).state == "running"  # the Result may still be on its way
    rig.advance(0.3)
    assert rig.view(tid).state == "blocked"  # lost; retried only once its tree is dead
    assert rig.procs.terminated == [(tid, 1)]


def test_a_retry_starts_only_once_the_lost_attempts_tree_is_dead(tmp_path: Path) -> None:
    """Defect 9: two attempts of one task never run at once."""
    rig = Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\nretries = 2\nretry_base_s = 0.01\n").boot()
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.exit(who)
    rig.advance(5.0)  # grace over, the other child idle, the backoff long past
    assert rig.view(tid).state == "blocked"
    assert [d.epoch for d in rig.children.of(cp.Dispatch)] == [1]  # no second attempt yet
    assert rig.procs.checks == [[(tid, 1)]]  # SIGKILL and a look, off the loop, at the grace's end
    rig.trees_dead()
    rig.advance(0.1)
    assert [d.epoch for d in rig.children.of(cp.Dispatch)] == [1, 2]
    assert rig.view(tid).state == "running" and rig.view(tid).attempts == 2


def test_a_tree_still_alive_is_killed_and_looked_at_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\nretries = 2\n").boot()
    (tid,) = rig.submit(exec_spec())
    rig.exit(rig.dispatched(tid)[0])
    rig.advance(2.0)
    from supervisord.events import TreesChecked

    rig.step(TreesChecked(frozenset({(tid, 1)}), frozenset({(tid, 1)})))
    rig.procs.checks.clear()
    rig.advance(0.5)
    assert rig.procs.checks == [[(tid, 1)]]
    assert rig.view(tid).state == "blocked"


def test_a_result_from_a_child_being_killed_ends_the_task_and_does_not_crash_the_hub(rig: Rig) -> None:
    """Defect 2: a Result queued from a child the hub is killing (stopping -> idle)."""
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.hub.pool.stopping(rig.slot(who), None, planned=False)  # the hub killed it ("silent")
    rig.result(tid)
    assert rig.view(tid).state == "succeeded"
    assert rig.slot(who).state.value == "stopping"


def test_a_long_hub_stall_kills_no_child_and_costs_no_task(rig: Rig) -> None:
    """Defect 10: a paused daemon (SIGSTOP 20 s, SIGCONT) is not its children's fault."""
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    armed = rig.turn.armed_at
    assert armed is not None
    rig.t = armed + 20.0  # woken 20 s late
    from supervisord.events import TimerFired

    rig.step(TimerFired())
    assert rig.procs.killed == []
    assert rig.slot(who).state.value == "busy"
    rig.result(tid)
    assert rig.view(tid).state == "succeeded"


def test_an_attempt_lost_right_after_a_stall_is_a_free_rerun(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\nretries = 0\nkill_grace_s = 1.0\n").boot()
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.t = rig.turn.armed_at + 30.0
    from supervisord.events import TimerFired

    rig.step(TimerFired())
    rig.exit(who)  # the child left during the pause
    rig.advance(2.0)
    rig.trees_dead()
    rig.advance(0.1)
    v = rig.view(tid)
    assert v.state == "running" and v.attempts == 2  # retries = 0, yet it runs again


def test_a_dispatch_that_cannot_be_sent_is_a_free_rerun_elsewhere(tmp_path: Path) -> None:
    """Defect 11: a failed Dispatch send is not ignored."""
    rig = Rig(tmp_path, config="[tasks]\nretries = 0\nkill_grace_s = 1.0\n", children=2).boot()
    first = rig.idle()[0]
    rig.children.unreachable.add(first)
    (tid,) = rig.submit(exec_spec())
    assert rig.procs.killed == [rig.procs.spawned[first]]
    rig.exit(first)
    rig.advance(2.0)
    rig.trees_dead()
    rig.advance(0.1)
    who, d = rig.dispatched(tid)
    assert who != first and d.epoch == 2
    rig.result(tid)
    assert rig.view(tid).state == "succeeded"


def test_a_heartbeat_that_says_idle_ends_an_attempt_whose_dispatch_was_lost(rig: Rig) -> None:
    """Defect 11: `Heartbeat.task_id` is compared with what the hub thinks the child runs."""
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.say(who, cp.Heartbeat(task_id=None))  # too soon to tell: the Dispatch may be in flight
    assert rig.view(tid).state == "running"
    rig.t += 3.0
    rig.say(who, cp.Heartbeat(task_id=None))
    assert rig.view(tid).state == "blocked" and rig.slot(who).state.value == "idle"
    rig.advance(2.0)
    rig.trees_dead()
    rig.advance(0.1)
    assert rig.view(tid).attempts == 2


def test_a_stale_epochs_result_is_refused(rig: Rig) -> None:
    (tid,) = rig.submit(exec_spec())
    rig.result(tid, epoch=7, outcome=Outcome(exit_code=1, error=TaskError(kind=ErrorKind.EXIT, message="x")))
    assert rig.view(tid).state == "running"
    rig.result(tid)
    assert rig.view(tid).state == "succeeded"


def test_cancel_a_queued_task_and_a_running_one_whose_child_then_dies(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\nretries = 3\nkill_grace_s = 1.0\n", children=1).boot()
    running, queued = rig.submit(exec_spec(), exec_spec())
    assert isinstance(rig.request(ctl.Cancel(id=queued)), ctl.Ok)
    assert rig.stored(queued).state == "cancelled"
    assert isinstance(rig.request(ctl.Cancel(id=running)), ctl.Ok)
    who, _ = rig.dispatched(running)
    (sent,) = rig.children.of(cp.Cancel, who)
    assert (sent.task_id, sent.epoch) == (running, 1)
    rig.exit(who)  # it died during its kill grace
    rig.advance(1.0)
    v = rig.view(running)
    assert v.state == "cancelled" and v.error.kind == ErrorKind.CANCELLED and v.attempts == 1
    again = rig.request(ctl.Cancel(id=running))
    assert isinstance(again, ctl.Error) and "already finished" in again.message


def test_a_journaled_cancel_survives_a_restart(tmp_path: Path) -> None:
    """Defect 13: cancel requests are journaled."""
    rig = Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\n").boot()
    (tid,) = rig.submit(exec_spec())
    rig.request(ctl.Cancel(id=tid))
    rig.store.close()  # the daemon dies before the child answers
    again = Rig(tmp_path, config="[tasks]\nkill_grace_s = 1.0\n").boot()
    assert again.view(tid).state == "cancelled"


@pytest.mark.parametrize(("retries", "runs"), [(0, 2), (1, 2), (2, 3)])
def test_a_poison_task_ends_failed_instead_of_crash_looping_the_daemon(tmp_path: Path, retries: int,
                                                                       runs: int) -> None:
    """Defect 7: recovered attempts count against the retry budget (one re-run at least: a
    single daemon crash is not the task's fault)."""
    config = f"[tasks]\nretries = {retries}\n"
    rig = Rig(tmp_path, config=config).boot()
    (tid,) = rig.submit(exec_spec())
    for attempt in range(1, runs):
        rig.store.close()  # the daemon dies while the attempt runs
        rig = Rig(tmp_path, config=config).boot()
        assert rig.view(tid).state == "running" and rig.view(tid).attempts == attempt + 1
    rig.store.close()
    last = Rig(tmp_path, config=config).boot()
    v = last.view(tid)
    assert (v.state, v.attempts, v.error.kind) == ("failed", runs, ErrorKind.WORKER_LOST)
    assert last.children.of(cp.Dispatch) == []


def test_a_recovered_task_with_a_live_tree_waits_for_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\nretries = 2\nkill_grace_s = 1.0\n").boot()
    (tid,) = rig.submit(exec_spec())
    rig.store.close()
    again = Rig(tmp_path, config="[tasks]\nretries = 2\nkill_grace_s = 1.0\n")
    again.procs.alive_at_start = {tid}
    again.boot()
    assert again.view(tid).state == "blocked" and again.procs.terminated == [(tid, 1)]
    again.advance(1.5)
    again.trees_dead()
    again.advance(0.1)
    assert again.view(tid).state == "running" and again.dispatched(tid)[1].epoch == 2


def test_shutdown_requeues_what_it_stops_for_free(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[daemon]\ndrain_s = 1.0\n[tasks]\nretries = 0\n", children=1).boot()
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    assert isinstance(rig.request(ctl.Shutdown()), ctl.Ok)
    refused = rig.request(ctl.Submit(tasks=[exec_spec()]))
    assert isinstance(refused, ctl.Error) and refused.kind == "shutting_down"
    rig.advance(1.1)
    (stop,) = rig.children.of(cp.Cancel, who)
    assert stop.reason == "shutdown"
    rig.result(tid, state="cancelled", outcome=Outcome(error=TaskError(kind=ErrorKind.SHUTDOWN, message="stop")))
    assert rig.stored(tid).state == "queued"
    assert rig.hub.life.phase.value == "stopping" and rig.children.of(cp.Stop, who)
    rig.exit(who, 0)
    assert rig.hub.life.phase.value == "stopped"


def test_a_request_that_raises_is_answered_and_the_hub_goes_on(rig: Rig) -> None:
    """Defect 1: no exception from one request may take the daemon down."""
    def boom(*_: object) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    rig.hub.store.accept = boom  # type: ignore[method-assign]
    reply = rig.request(ctl.Submit(tasks=[exec_spec()]))
    assert isinstance(reply, ctl.Error) and reply.kind == "internal" and "OverflowError" in reply.message
    assert isinstance(rig.request(ctl.Status()), ctl.Info)


def test_a_fatal_slot_gets_another_chance_after_the_period(tmp_path: Path) -> None:
    """Defect 21: a FATAL slot does not stay dead until `scale 0` / `scale N`."""
    rig = Rig(tmp_path, config="[restart]\nintensity = 1\nperiod_s = 10.0\nbackoff_base_s = 0.01\n", children=1)
    rig.boot()
    (first,) = list(rig.procs.spawned)
    rig.exit(first, 1)
    rig.advance(0.1)
    second = list(rig.procs.spawned)[-1]
    rig.hello(second)
    rig.exit(second, 1)
    assert rig.states() == ["fatal"]
    rig.advance(10.5)
    assert rig.states() == ["starting"] and len(rig.procs.spawned) == 3


def test_replies_that_promise_durability_follow_the_commit(rig: Rig) -> None:
    (tid,) = rig.submit(exec_spec())
    assert rig.stored(tid).state in ("queued", "running")  # Accepted went out after the commit


def test_a_task_overrunning_its_deadline_is_killed_and_lost(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[tasks]\ntimeout_s = 1.0\nkill_grace_s = 0.5\nresult_grace_s = 0.5\n"
                               "[daemon]\nheartbeat_s = 0.5\nliveness = 3\n").boot()
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    other = next(i for i in rig.procs.spawned if i != who)
    for _ in range(24):  # the child keeps beating but never reports a result (backstop: 4.5 s)
        rig.advance(0.25)
        rig.say(other, cp.Heartbeat())
        if rig.slot(who).state.value == "busy":
            rig.say(who, cp.Heartbeat(task_id=tid, epoch=1))
    assert rig.procs.killed == [rig.procs.spawned[who]]
    rig.exit(who)
    rig.advance(0.5)
    v = rig.view(tid)
    assert v.state == "failed" and v.error.kind == ErrorKind.WORKER_LOST and "killed" in v.error.message


def test_reload_reaches_running_children_and_refuses_what_needs_a_restart(tmp_path: Path) -> None:
    """Defect 20: a reload's heartbeat settings reach children already running; keys a reload
    cannot apply are refused, naming them, and nothing of that file is applied."""
    rig = Rig(tmp_path, config="[daemon]\nheartbeat_s = 2.0\nliveness = 5\n").boot()
    rig.config_path.write_text("[daemon]\nheartbeat_s = 0.5\nliveness = 8\n")
    assert isinstance(rig.request(ctl.Reload()), ctl.Ok)
    beats = [m for m in rig.children.of(cp.Heartbeat) if m.heartbeat_s is not None]
    assert {(m.heartbeat_s, m.liveness) for m in beats[-2:]} == {(0.5, 8)}
    assert rig.hub.pool.policy.heartbeat_s == 0.5
    rig.config_path.write_text("[daemon]\nheartbeat_s = 1.0\n[limits]\nmax_message_bytes = 1048576\n")
    refused = rig.request(ctl.Reload())
    assert isinstance(refused, ctl.Error) and refused.kind == "config"
    assert refused.message == "limits.max_message_bytes changed: applied only by a restart (nothing was reloaded)"
    assert rig.hub.config.daemon.heartbeat_s == 0.5  # the old config stands


def test_a_submit_past_the_queues_byte_limit_is_refused_whole(tmp_path: Path) -> None:
    """Defect 22: `max_queued` counts bytes too."""
    rig = Rig(tmp_path, config="[daemon]\nmax_queued_bytes = 4096\n", children=0).boot()
    (first,) = rig.submit(exec_spec("echo", "x" * 2000))
    reply = rig.request(ctl.Submit(tasks=[exec_spec("echo", "y" * 2000)]))
    assert isinstance(reply, ctl.Error) and reply.kind == "queue_full" and "max_queued_bytes=4096" in reply.message
    assert rig.view(first).state == "queued"


def test_a_cancel_that_cannot_be_sent_kills_the_child_and_still_ends_cancelled(rig: Rig) -> None:
    """Defect 11: a failed `Cancel` send is not ignored (the task would run until the backstop)."""
    (tid,) = rig.submit(exec_spec())
    who, _ = rig.dispatched(tid)
    rig.children.unreachable.add(who)
    assert isinstance(rig.request(ctl.Cancel(id=tid)), ctl.Ok)
    assert rig.procs.killed == [rig.procs.spawned[who]]
    rig.exit(who)
    rig.advance(0.5)
    assert rig.view(tid).state == "cancelled"


def test_finished_tasks_past_retain_s_are_pruned_a_chunk_at_a_time(tmp_path: Path) -> None:
    """Defect 13: the journal no longer grows until `max_mb` refuses every submit."""
    from supervisord.hub import commands

    rig = Rig(tmp_path, config="[journal]\nretain_s = 60.0\n", children=1).boot()
    ids = rig.submit(*[exec_spec() for _ in range(commands.PRUNE_CHUNK + 10)])
    for tid in ids:
        rig.request(ctl.Cancel(id=tid))  # final at once: queued (or running: then by its Result)
    running = [t for t in ids if rig.view(t).state == "running"]
    for tid in running:
        rig.result(tid)
    assert rig.request(ctl.Get(id=ids[-1])).tasks[0].state == "cancelled"
    rig.t += 3600.0 + 61.0  # past the hourly prune and past retain_s
    rig.step()
    rig.step()
    for tid in ids:
        assert isinstance(rig.request(ctl.Get(id=tid)), ctl.Error)


class _CountingStore(SqliteStore):
    """The real store, noting which ids each `views` read asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[list[str]] = []

    def views(self, ids: Sequence[str]) -> dict[str, TaskView]:
        self.asked.append(list(ids))
        return super().views(ids)


def test_a_waiters_answer_is_kept_as_its_tasks_end_and_only_what_did_not_fit_is_read_back(tmp_path: Path) -> None:
    # reply budget 32 KiB; each 10 KiB result costs 11,264 bytes (+1 KiB for the rest of the view)
    store = _CountingStore(tmp_path / "tasks.db")
    rig = Rig(tmp_path, config="[limits]\nmax_message_bytes = 65536\n", children=3, store=store).boot()
    a, b, c = rig.submit(exec_spec(), exec_spec(), exec_spec())
    waiter = (b"w",)
    rig.step(RequestReceived(waiter, ctl.Wait(ids=[a, b, c], timeout_s=30)))
    for tid in (a, b, c):
        rig.result(tid, outcome=Outcome(exit_code=0, result=tid[-1] * 10240))
    (answer,) = [r for e, r in rig.control.replies if e == waiter]
    assert isinstance(answer, ctl.Tasks)
    assert [t.id for t in answer.tasks] == [a, b] and answer.pending == [c]  # c did not fit this reply
    assert answer.tasks == [rig.stored(a), rig.stored(b)]  # what a reader of the journal sees
    assert store.asked == [[c]]  # a and b were kept as they ended; only c was read back
    again = rig.request(ctl.Wait(ids=[c], timeout_s=30))
    assert isinstance(again, ctl.Tasks) and again.tasks == [rig.stored(c)] and again.pending == []


def test_a_crashed_child_is_replaced_by_the_ready_spare_and_the_next_task_runs_there(tmp_path: Path) -> None:
    rig = Rig(tmp_path, children=1, spares=1).boot()
    assert list(rig.procs.spawned) == ["w00.1", "spare0.1"]
    spare_pid = rig.procs.spawned["spare0.1"]
    rig.exit("w00.1")
    # at once, with no boot: the slot runs in the spare's process, and a new spare boots
    assert rig.hub.pool.workers()[0].pid == spare_pid and rig.states() == ["idle", "starting"]
    assert rig.bus.topics[-3:] == ["child/w00.1/exited", "child/spare0.1/ready", "child/spare0.2/spawned"]
    assert list(rig.procs.spawned) == ["w00.1", "spare0.1", "spare0.2"]
    (tid,) = rig.submit(exec_spec("true"))
    assert rig.dispatched(tid)[0] == "spare0.1"
    rig.result(tid)
    assert rig.view(tid).state == "succeeded"
    status = rig.request(ctl.Status())
    assert isinstance(status, ctl.Info)
    assert [(c["slot"], c["id"], c["pid"]) for c in status.data["children"]] == [("w00", "spare0.1", spare_pid)]
    assert [(c["slot"], c["state"]) for c in status.data["spares"]] == [("spare0", "starting")]


def test_a_reload_that_sets_no_spares_stops_the_spare_and_a_crash_then_waits_for_a_boot(tmp_path: Path) -> None:
    rig = Rig(tmp_path, children=1, spares=1).boot()
    rig.config_path.write_text("[daemon]\nchildren = 1\nspares = 0\n")
    assert isinstance(rig.request(ctl.Reload()), ctl.Ok)
    assert [(who, m.reason) for who, m in rig.children.sent if isinstance(m, cp.Stop)] == [("spare0.1", "scaled down")]
    rig.exit("spare0.1", 0)
    assert [s.name for s in rig.hub.pool.slots] == ["w00"]
    rig.exit("w00.1")
    assert rig.states() == ["starting"] and list(rig.procs.spawned)[-1] == "w00.2"
