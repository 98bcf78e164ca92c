"""Child verbs of the hub: spawn, hear, ping, stop and mourn a child.

Functions of a `Hub` (no state of their own). The pool's decisions are
`supervisord.core.pool`'s and a task's fate is `supervisord.core.fate`'s; this module
turns what children say and do into those decisions and carries them out.

Results are routed by task and epoch, not by slot: a child killed or replaced after it
sent its `Result` still delivers it, and a stale attempt's message is refused by the
fate (wrong epoch). A child that exits while running a task is mourned only after a
short wait for a `Result` already on its way (`Pending`): its messages and its exit
reach the hub by different paths.
"""

from __future__ import annotations

import logging
import os
import sys

from proto import PROTOCOL_VERSION
from proto import children as cp
from proto.task import TaskState
from supervisord.core import fate as core
from supervisord.core.pool import ChildState, Due, Slot
from supervisord.hub import agents, tasks
from supervisord.hub.state import Hub, Pending
from supervisord.logs import log

#: How long a child's exit waits for a Result that may still be in the socket.
RESULT_WAIT_S = 0.25


def apply(h: Hub, due: Due) -> None:
    if due.action == "spawn":
        if h.life.accepting:
            spawn(h, due.slot)
    elif due.action == "kill":
        tasks.kill_slot(h, due.slot, due.reason)
    else:
        stop(h, due.slot, due.reason)


def spawn(h: Hub, slot: Slot) -> None:
    now = h.clock.now()
    identity = h.pool.spawning(slot)
    cfg = h.config.daemon
    argv = [sys.executable, "-m", "children", "--endpoint", h.paths.children, "--identity", identity,
            "--daemon-pid", str(os.getpid()), "--heartbeat-s", str(cfg.heartbeat_s), "--liveness", str(cfg.liveness)]
    try:
        pid = h.spokes.procs.spawn_child(identity, argv, h.child_env)
    except OSError as e:
        h.pool.spawn_failed(slot, f"spawn failed: {e}", now)
        log("child_fatal", logging.ERROR, child=identity, reason=slot.fatal_reason)
        return
    h.pool.spawned(slot, pid, now)
    log("child_spawned", child=identity, pid=pid, state=slot.state.value)
    h.spokes.events.publish(f"child/{identity}/spawned", child=identity, pid=pid)
    h.spokes.tracer.child_event("spawn", identity, pid)


def stop(h: Hub, slot: Slot, reason: str) -> None:
    log("child_stop", child=slot.identity, pid=slot.pid, reason=reason)
    h.spokes.children.send(slot.identity, cp.Stop(reason=reason))
    grace = h.config.tasks.kill_grace_s + 2 * h.config.daemon.heartbeat_s
    h.pool.stopping(slot, h.clock.now() + grace, planned=True)


def ping(h: Hub) -> None:
    """The daemon's heartbeat: every ready child answers; it also carries the current
    liveness settings, so a reload reaches children already running."""
    d = h.config.daemon
    beat = cp.Heartbeat(heartbeat_s=d.heartbeat_s, liveness=d.liveness)
    for slot in h.pool.slots:
        if slot.state in (ChildState.IDLE, ChildState.BUSY):
            h.spokes.children.send(slot.identity, beat)


def on_message(h: Hub, identity: str, message: cp.ChildMessage) -> None:
    now = h.clock.now()
    slot = h.pool.find(identity)
    if isinstance(message, cp.Result):  # by task and epoch: the slot may be gone already
        on_result(h, slot, identity, message)
        return
    if slot is None or slot.pid is None:
        log("stranger_child", logging.WARNING, child=identity)
        h.spokes.children.send(identity, cp.Stop(reason="unknown child"))
        return
    match message:
        case cp.Heartbeat(task_id=task_id, epoch=epoch, rss_bytes=rss):
            h.pool.seen(slot, now, rss)
            _check_beat(h, slot, task_id, epoch, now)
        case cp.Hello(protocol=protocol, pid=pid):
            h.pool.seen(slot, now)
            if protocol != PROTOCOL_VERSION or pid != slot.pid:
                log("child_refused", logging.ERROR, child=identity, protocol=protocol, pid=pid)
                tasks.kill_slot(h, slot, "protocol mismatch")
            elif h.pool.hello(slot, now, h.clock.rand()):
                log("child_ready", child=identity, pid=pid, state=slot.state.value)
                h.spokes.events.publish(f"child/{identity}/ready", child=identity, pid=pid)
        case cp.Started(task_id=task_id, epoch=epoch, pid=pid, pgid=pgid):
            h.pool.seen(slot, now)
            _process_known(h, task_id, epoch, identity, pid, pgid)
        case cp.Output():
            h.pool.seen(slot, now)
            agents.on_output(h, message)
        case cp.Progress(task_id=task_id, event=kind, summary=summary):
            h.pool.seen(slot, now)
            h.spokes.events.publish(f"task/{task_id}/progress", task=task_id, event=kind, summary=summary)


def _process_known(h: Hub, task_id: str, epoch: int, identity: str, pid: int, pgid: int) -> None:
    """A task's process, from its Started or (a short task) its Result: kept for the current
    attempt (the tree's kill, the span's pid) and published either way."""
    task = h.sched.tasks.get(task_id)
    if task is not None and task.epoch == epoch:
        h.processes[task_id] = (pgid, pid)
    log("task_process", logging.DEBUG, task=task_id, child=identity, pid=pid, pgid=pgid)
    h.spokes.events.publish(f"task/{task_id}/process", task=task_id, child=identity, pid=pid, pgid=pgid)


def _check_beat(h: Hub, slot: Slot, task_id: str | None, epoch: int, now: float) -> None:
    """A heartbeat names the attempt the child runs. If it is not the one the hub gave it
    (a Dispatch or its Result was lost) for longer than a heartbeat after the assignment,
    the attempt is lost — at no cost to the task (the child is idle, so its tree is dead)."""
    if slot.state is not ChildState.BUSY or slot.task_id is None:
        return
    task = h.sched.tasks.get(slot.task_id)
    if task is None or (task_id == task.id and epoch in (0, task.epoch)):
        return
    if now - slot.assigned_at <= h.config.daemon.heartbeat_s:
        return  # the heartbeat may have been sent before the Dispatch arrived
    log("child_disagrees", logging.WARNING, child=slot.identity, expected=task.id, reported=task_id)
    tasks.decide(h, task, core.Lost(task.epoch, f"child {slot.identity} is not running it (lost message)",
                                    ours=True))
    if (due := h.pool.released(slot, now)) is not None:
        stop(h, due.slot, due.reason)


_STATES = {s.value: s for s in TaskState}


def on_result(h: Hub, slot: Slot | None, identity: str, msg: cp.Result) -> None:
    now = h.clock.now()
    if slot is not None:
        h.pool.seen(slot, now)
    task = h.sched.tasks.get(msg.task_id)
    if task is None:
        log("stale_result", logging.WARNING, task=msg.task_id, child=identity, reason="not a live task")
        return
    state = _STATES.get(msg.state, TaskState.FAILED)  # a child never sends another (a dict: no enum call)
    if msg.pid is not None and task.id not in h.processes:  # it ended before its Started was due
        _process_known(h, task.id, msg.epoch, identity, msg.pid, msg.pid)  # its own session: it led its group
    fate = tasks.decide(h, task, core.Ended(msg.epoch or task.epoch, state, msg.outcome, msg.started_at,
                                            msg.finished_at))
    if not fate.changed:
        log("stale_result", logging.WARNING, task=msg.task_id, child=identity, epoch=msg.epoch, reason=fate.reason)
        return
    if slot is not None and slot.task_id == msg.task_id and (due := h.pool.released(slot, now)) is not None:
        stop(h, due.slot, due.reason)


def on_exit(h: Hub, identity: str, pid: int, returncode: int | None) -> None:
    slot = h.pool.find(identity)
    if slot is None or slot.pid != pid:
        return
    now = h.clock.now()
    task_id = slot.task_id
    reason, ours = slot.kill_reason, slot.kill_ours
    slot.kill_reason, slot.kill_ours = None, False
    exit_ = h.pool.exited(slot, returncode, now, h.clock.rand())
    respawn_in_s = round(max(0.0, exit_.respawn_at - now), 3) if exit_.verdict == "respawn" else None
    log("child_exited", child=identity, slot=slot.name, pid=pid, returncode=returncode, verdict=exit_.verdict,
        reason=exit_.reason, respawn_in_s=respawn_in_s, state=slot.state.value, task=task_id)
    h.spokes.events.publish(f"child/{identity}/exited", child=identity, slot=slot.name, pid=pid, returncode=returncode,
                            verdict=exit_.verdict, reason=exit_.reason, respawn_in_s=respawn_in_s)
    h.spokes.tracer.child_event("exit", identity, pid, returncode=returncode, verdict=exit_.verdict)
    if exit_.verdict == "fatal":
        h.metrics.child_fatal += 1
        log("child_fatal", logging.ERROR, child=identity, reason=exit_.reason)
        h.spokes.events.publish(f"child/{identity}/fatal", child=identity, reason=exit_.reason)
    elif exit_.verdict in ("respawn", "took_spare") and exit_.reason != "planned":
        h.metrics.child_restarts += 1
    if exit_.verdict == "took_spare":  # the slot runs on at once, in a spare's process
        log("child_ready", child=slot.identity, slot=slot.name, pid=slot.pid, state=slot.state.value, spare=True)
        h.spokes.events.publish(f"child/{slot.identity}/ready", child=slot.identity, slot=slot.name, pid=slot.pid,
                                spare=True)
    task = h.sched.tasks.get(task_id) if task_id else None
    if task is not None and task.state is TaskState.RUNNING:
        why = f"child {identity} {'was killed: ' + reason if reason else f'exited ({returncode})'} mid-task"
        ours = ours or now < h.forgive_until
        h.pending_loss[task.id] = Pending(task.id, task.epoch, why, ours, now + RESULT_WAIT_S)


def mourn_due(h: Hub, now: float) -> None:
    """Children that exited mid-task and sent no Result in time: their attempts are lost."""
    for pending in [p for p in h.pending_loss.values() if p.deadline <= now]:
        del h.pending_loss[pending.task_id]
        task = h.sched.tasks.get(pending.task_id)
        if task is not None:
            tasks.decide(h, task, core.Lost(pending.epoch, pending.message, ours=pending.ours))


def restart_slot(h: Hub, name: str) -> str | None:
    """Give a FATAL slot another chance now; the problem, or None."""
    slot = next((s for s in h.pool.slots if s.name == name), None)
    if slot is None:
        return f"no slot named {name!r} (slots: {', '.join(s.name for s in h.pool.slots) or 'none'})"
    if not h.pool.revive(slot, h.clock.now()):
        return f"slot {name} is {slot.state.value}, not fatal"
    log("slot_revived", child=slot.name, reason="restart-slot")
    return None
