"""Child verbs of the hub: spawn, watch, hear, stop, kill, and mourn a child.

Part of the hub (runs inside its loop, owns no state): functions that read and change
the `Daemon`'s state (its pool, scheduler, journal) and act through its spokes. The
pure decisions are `supervisord.core.pool`'s; this module applies them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proto import PROTOCOL_VERSION
from proto import children as cp
from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.config import Config
from supervisord.core.pool import Policy, Slot
from supervisord.events import ChildExited
from supervisord.logs import log
from supervisord.spokes import cgroups, procs

if TYPE_CHECKING:
    from supervisord.hub.daemon import Daemon


def policy_of(config: Config) -> Policy:
    """The pool's policy, from the config's [daemon], [restart] and [recycle] sections."""
    r, rc, d = config.restart, config.recycle, config.daemon
    return Policy(
        heartbeat_s=d.heartbeat_s, liveness=d.liveness, max_starting=d.max_starting, backoff_base_s=r.backoff_base_s,
        backoff_max_s=r.backoff_max_s, stable_after_s=r.stable_after_s, intensity=r.intensity,
        period_s=r.period_s, recycle_max_tasks=rc.max_tasks, recycle_max_age_s=rc.max_age_s,
        recycle_age_jitter_s=rc.max_age_jitter_s, recycle_max_rss_bytes=int(rc.max_rss_mb * 2**20),
    )


@dataclass(slots=True)
class Orphans:
    """A task tree whose child is gone: SIGTERMed, to be SIGKILLed at `deadline`."""

    task_id: str
    pgid: int | None
    deadline: float


def containment(d: Daemon) -> cgroups.Containment:
    """The daemon's containment: its mode, task cgroups, spawned children and adopted orphans.

    Made at the first spawn (the pool's start); it makes the daemon a subreaper, logs the
    mode, and kills every attempt group a previous daemon on this state dir left behind.
    (The hub may build it in its own start instead, as `d.containment`.)
    """
    found: cgroups.Containment | None = getattr(d, "containment", None)
    if found is None:
        found = cgroups.Containment(str(d.paths.state_dir), d.config.tasks.kill_grace_s)
        d.containment = found  # type: ignore[attr-defined]
        log("containment", mode=found.mode, detail=found.why, leftover_groups=found.kill_all() or None)
    return found


def spawn(d: Daemon, slot: Slot, now: float) -> None:
    identity = d.pool.spawning(slot)
    cfg = d.config.daemon
    c = containment(d)
    argv = [sys.executable, "-m", "children", "--endpoint", d.paths.children, "--identity", identity,
            "--daemon-pid", str(os.getpid()), "--heartbeat-s", str(cfg.heartbeat_s), "--liveness", str(cfg.liveness),
            *c.child_args()]
    try:
        # posix_spawn, no Popen: a dropped Popen is reaped by CPython's subprocess._cleanup()
        # and its exit status (a boot failure's 3) would read as None.
        proc = procs.spawn_child(argv, env=d.child_env)
    except OSError as e:
        d.pool.spawn_failed(slot, f"spawn failed: {e}")
        log("child_fatal", logging.ERROR, child=identity, reason=slot.fatal_reason)
        return
    assert proc.pidfd is not None
    c.spawned[proc.pid] = proc
    loop = asyncio.get_running_loop()
    loop.add_reader(proc.pidfd, _on_pidfd, d, identity, proc)
    d.pool.spawned(slot, proc.pid, now)
    log("child_spawned", child=identity, pid=proc.pid, state=slot.state.value)
    d.events.publish(f"child/{identity}/spawned", child=identity, pid=proc.pid)
    d.tracer.child_event("spawn", identity, proc.pid)


def _on_pidfd(d: Daemon, identity: str, proc: procs.Spawned) -> None:
    c = containment(d)
    if proc.pidfd is not None:
        asyncio.get_running_loop().remove_reader(proc.pidfd)
    returncode = proc.poll()  # reaped by pid; closes the pidfd
    proc.close_pidfd()
    c.spawned.pop(proc.pid, None)
    sweep_adopted(d)  # its orphans have just been re-parented to us
    d.inbox.put_nowait(ChildExited(identity, proc.pid, returncode))


def sweep_adopted(d: Daemon, kill_all: bool = False) -> None:
    """Kill and reap (by pid, through pidfds the loop watches) the orphans re-parented to
    the daemon: what is left of a dead child's task tree (`procs.Adopted`)."""
    c = containment(d)
    loop = asyncio.get_running_loop()
    for pid, pidfd in c.adopted.sweep(c.spawned.keys(), d.clock(), kill_all):
        loop.add_reader(pidfd, _on_adopted_exit, d, pid, pidfd)


def _on_adopted_exit(d: Daemon, pid: int, pidfd: int) -> None:
    asyncio.get_running_loop().remove_reader(pidfd)
    c = containment(d)
    c.adopted.reaped(pid)
    sweep_adopted(d)  # its own children come to us now
    c.remove_empty()


def on_message(d: Daemon, identity: str, message: cp.ChildMessage) -> None:
    slot = d.pool.find(identity)
    if slot is None or slot.pid is None:
        log("stranger_child", logging.WARNING, child=identity)
        d.transport.send(identity, cp.Stop(reason="unknown child"))
        return
    now = d.clock()
    match message:
        case cp.Heartbeat(rss_bytes=rss):
            d.pool.seen(slot, now, rss)
        case cp.Hello(protocol=protocol, pid=pid):
            d.pool.seen(slot, now)
            if protocol != PROTOCOL_VERSION or pid != slot.pid:
                log("child_refused", logging.ERROR, child=identity, protocol=protocol, pid=pid)
                kill(d, slot, now, "protocol mismatch")
            elif d.pool.hello(slot, now, d.rand()):
                log("child_ready", child=identity, pid=pid, state=slot.state.value)
                d.events.publish(f"child/{identity}/ready", child=identity, pid=pid)
        case cp.Started(task_id=task_id, pid=pid, pgid=pgid):
            d.pool.seen(slot, now)
            d.task_pgid[task_id] = pgid
            d.task_pid[task_id] = pid
            log("task_process", logging.DEBUG, task=task_id, child=identity, pid=pid, pgid=pgid)
            d.events.publish(f"task/{task_id}/process", task=task_id, child=identity, pid=pid, pgid=pgid)
        case cp.Progress(task_id=task_id, event=kind, summary=summary):
            d.pool.seen(slot, now)
            d.events.publish(f"task/{task_id}/progress", task=task_id, event=kind, summary=summary)
        case cp.Result():
            d.pool.seen(slot, now)
            on_result(d, slot, message, now)


def on_result(d: Daemon, slot: Slot, msg: cp.Result, now: float) -> None:
    task = d.sched.tasks.get(msg.task_id)
    if task is None or task.child != slot.identity or task.state is not TaskState.RUNNING:
        log("stale_result", logging.WARNING, task=msg.task_id, child=slot.identity)
        return
    d.task_pgid.pop(task.id, None)
    try:
        state = TaskState(msg.state)
    except ValueError:
        state = TaskState.FAILED
    d.finish(task, state, msg.outcome, now, started_at=msg.started_at, finished_at=msg.finished_at)
    due = d.pool.released(slot, now)
    if due is not None:
        stop(d, due.slot, now, due.reason)


def on_exit(d: Daemon, identity: str, pid: int, returncode: int | None) -> None:
    slot = d.pool.find(identity)
    if slot is None or slot.pid != pid:
        return
    now = d.clock()
    task_id = slot.task_id
    exit_ = d.pool.exited(slot, returncode, now, d.rand())
    respawn_in_s = round(max(0.0, exit_.respawn_at - now), 3) if exit_.verdict == "respawn" else None
    log("child_exited", child=identity, pid=pid, returncode=returncode, verdict=exit_.verdict,
        reason=exit_.reason, respawn_in_s=respawn_in_s, state=slot.state.value, task=task_id)
    d.events.publish(f"child/{identity}/exited", child=identity, pid=pid, returncode=returncode,
                     verdict=exit_.verdict, reason=exit_.reason, respawn_in_s=respawn_in_s)
    d.tracer.child_event("exit", identity, pid, returncode=returncode, verdict=exit_.verdict)
    if exit_.verdict == "fatal":
        d.metrics.child_fatal += 1
        log("child_fatal", logging.ERROR, child=identity, reason=exit_.reason)
        d.events.publish(f"child/{identity}/fatal", child=identity, reason=exit_.reason)
    elif exit_.verdict == "respawn" and exit_.reason != "planned":
        d.metrics.child_restarts += 1
    if task_id is not None:
        lost_task(d, task_id, identity, returncode, now)


def lost_task(d: Daemon, task_id: str, identity: str, returncode: int | None, now: float) -> None:
    """The child running `task_id` died: kill the task's tree, then retry or fail it."""
    pgid = d.task_pgid.pop(task_id, None)
    c = containment(d)
    if c.mode == "cgroup":
        c.terminate_task(task_id)  # every attempt group of the task: no scan
    else:  # a group signal only while its leader is still the task's (pids wrap)
        procs.terminate_task(pgid if procs.leads_task_group(pgid, task_id) else None,
                             [p.pid for p in procs.tagged(task_id)])
    sweep_adopted(d)
    d.orphans.append(Orphans(task_id, None, now + d.config.tasks.kill_grace_s))
    task = d.sched.tasks.get(task_id)
    if task is None or task.state is not TaskState.RUNNING:
        return
    state = TaskState.FAILED
    if task.cancel_requested:  # the user asked for it to end, and it has: cancelled, not lost
        state = TaskState.CANCELLED
        error = TaskError(kind=ErrorKind.CANCELLED, message=f"cancelled; child {identity} exited ({returncode})")
    elif d.winding_down:
        error = TaskError(kind=ErrorKind.SHUTDOWN, message=f"child {identity} stopped during shutdown")
    else:
        error = TaskError(kind=ErrorKind.WORKER_LOST, message=f"child {identity} exited ({returncode}) mid-task")
    d.finish(task, state, Outcome(error=error), now)


def orphaned(d: Daemon, task_id: str) -> list[int]:
    """Pids tagged `task_id` that no live child owns: what a lost attempt left behind.
    A retry of the same task carries the same tag but runs under a live child: spared."""
    c = containment(d)
    sweep_adopted(d)
    if c.mode == "cgroup":  # cgroup.kill of the lost attempts' groups; a running retry is spared
        task = d.sched.tasks.get(task_id)
        live = task.attempts if task is not None and task.state is TaskState.RUNNING else None
        c.kill_task(task_id, spare_attempt=live)
        return []
    owned = {p.pid for slot in d.pool.alive() if slot.pid for p in procs.descendants(slot.pid)}
    return [p.pid for p in procs.tagged(task_id) if p.pid not in owned]


def kill(d: Daemon, slot: Slot, now: float, reason: str) -> None:
    log("child_kill", logging.WARNING, child=slot.identity, pid=slot.pid, reason=reason)
    proc = containment(d).spawned.get(slot.pid) if slot.pid else None
    if proc is not None:
        proc.send_signal(signal.SIGKILL)  # through its pidfd: never a reused pid
    d.pool.stopping(slot, None, planned=False)


def stop(d: Daemon, slot: Slot, now: float, reason: str) -> None:
    log("child_stop", child=slot.identity, pid=slot.pid, reason=reason)
    d.transport.send(slot.identity, cp.Stop(reason=reason))
    grace = d.config.tasks.kill_grace_s + 2 * d.config.daemon.heartbeat_s
    d.pool.stopping(slot, now + grace, planned=True)


#: How long an abnormal exit waits for the children to kill their task trees (a child's
#: SIGTERM path kills its task with a grace capped at 1 s) before SIGKILLing what is left.
CLOSE_WAIT_S = 1.5


def close(d: Daemon) -> None:
    """The daemon is leaving without a drain (a crash of its loop, a second signal): SIGTERM
    each child (it kills its task tree and exits), wait up to CLOSE_WAIT_S, then SIGKILL
    what is left, every task cgroup and every adopted orphan, and reap them. Blocking: the
    loop has stopped."""
    c: cgroups.Containment | None = getattr(d, "containment", None)
    if c is None:
        return
    for proc in c.spawned.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CLOSE_WAIT_S
    while (waiting := [p for p in c.spawned.values() if p.poll() is None]) and (left := deadline - time.monotonic()) > 0:
        select.select([p.pidfd for p in waiting if p.pidfd is not None], [], [], left)
    for proc in c.spawned.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(1.0)
        proc.close_pidfd()
    c.spawned.clear()
    c.kill_all()
    c.adopted.sweep((), time.monotonic(), kill_all=True)
    deadline = time.monotonic() + CLOSE_WAIT_S
    while c.adopted.watched and (left := deadline - time.monotonic()) > 0:
        select.select([fd for fd, _ in c.adopted.watched.values()], [], [], left)
        for pid in list(c.adopted.watched):
            c.adopted.reaped(pid)
        c.adopted.sweep((), time.monotonic(), kill_all=True)
    c.adopted.close()
    c.remove_empty()
