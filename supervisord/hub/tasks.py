"""Task verbs of the hub: accept, start, and carry out each fate the core decides.

Functions of a `Hub` (no state of their own). `settle` is the one place a decision
about a task is carried out — recorded in the store, its tree killed, its child asked
to cancel, the task put back in the queue or forgotten, its waiters answered — whatever
event led to it (a Result, a lost child, a cancel, a shutdown, a restart).
"""

from __future__ import annotations

import logging

import msgspec

from proto import children as cp
from proto import control as ctl
from proto.task import Outcome, TaskState, TaskView
from supervisord.core import fate as core
from supervisord.core import taskenv, traceids
from supervisord.core.breaker import BreakerState
from supervisord.core.fate import Fate, Verdict
from supervisord.core.pool import Slot
from supervisord.core.task import Task, view
from supervisord.hub import agents, batches, ratelimit
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log


def context(h: Hub) -> core.Context:
    t = h.config.tasks
    return core.Context(now=h.clock.now(), wall=h.clock.wall(), rand=h.clock.rand(), retry_base_s=t.retry_base_s,
                        retry_max_s=t.retry_max_s, winding_down=h.life.winding_down)


def decide(h: Hub, task: Task, event: core.Event) -> Fate:
    """Decide `event` for `task` in the core, then carry the decision out."""
    fate = core.decide(task, event, context(h))
    settle(h, task, fate, event)
    return fate


def settle(h: Hub, task: Task, fate: Fate, event: core.Event | None = None) -> None:
    if not fate.changed:
        log("task_event_ignored", logging.DEBUG, task=task.id, state=task.state.value, reason=fate.reason)
        return
    now = h.clock.now()
    if fate.left is not None:  # one line per transition (a final one also says how the task ended)
        o = task.outcome if task.state.final else None
        log("task_state", task=task.id, old=fate.left.value, new=task.state.value, reason=fate.reason,
            attempts=task.attempts, epoch=task.epoch, error=task.error.kind if task.error else None,
            exit_code=o.exit_code if o else None, child=task.child if task.state.final else None,
            trace=task.trace_id)
    if fate.kill_tree:
        pgid = h.processes.get(task.id, (None, None))[0]
        h.spokes.procs.terminate_tree(task.id, task.epoch, pgid)
        h.orphans.add(task.id, task.epoch, pgid, now + h.config.tasks.kill_grace_s)
    if fate.cancel_child:
        h.store.request_cancel(task.id)
        send_cancel(h, task, "cancelled")
        log("task_cancelling", task=task.id, child=task.child)
    if fate.left is TaskState.RUNNING:
        _attempt_over(h, task, event)
    h.store.record(task)
    if fate.hold_key:
        h.sched.hold_key(task)
        log("key_held", task=task.id, key=task.spec.key, reason=fate.reason)
    if fate.release_key:
        release_key(h, task.id)
    if fate.retry:
        h.metrics.retries += 1
        h.spokes.events.publish(f"task/{task.id}/retry", task=task.id, attempts=task.attempts,
                                error=task.error.kind if task.error else None)
    if fate.verdict is Verdict.QUEUED:
        if h.fleet is not None:  # written back to the shared queue by `record`: any host runs it next
            h.sched.forget(task)
        else:
            h.sched.enqueue(task, now)
        if batches.over_budget(h, task):  # a retry of a batch that has spent its cap
            decide(h, task, core.BudgetSpent(f"batch {task.trace_id} has spent its --max-cost-usd: not retried"))
    elif fate.verdict is Verdict.FINAL:
        _final(h, task)


def release_key(h: Hub, task_id: str) -> None:
    """The attempt's tree is dead: its exclusive key (if any) is free (at most once)."""
    if (key := h.sched.release_key(task_id)) is not None:
        log("key_released", task=task_id, key=key, holders=len(h.sched.keys.held.get(key, ())))
        if h.fleet is not None:  # the fleet-wide hold is freed with the next group commit
            h.fleet.release_key(task_id)


def tree_dead(h: Hub, task_id: str) -> None:
    """Every process of a lost attempt of `task_id` is gone."""
    task = h.sched.tasks.get(task_id)
    if task is not None:
        decide(h, task, core.TreeDead())
    else:  # the task became final while its tree was still being killed: only its key was held
        release_key(h, task_id)


def _attempt_over(h: Hub, task: Task, event: core.Event | None) -> None:
    """The running attempt ended one way or another: breaker, trace span, bookkeeping."""
    kind = task.error.kind if task.error else None
    pid = h.processes.pop(task.id, (None, None))[1]
    h.pending_loss.pop(task.id, None)
    if task.spec.kind == "claude":
        changed = h.breaker.record(None if task.state is TaskState.SUCCEEDED else kind, h.clock.now())
        if changed:
            breaker_changed(h, changed)
        ratelimit.attempt_ended(h, task)
    h.spokes.tracer.attempt_finished(task, task.state.value, task.outcome or Outcome(), h.clock.wall_ns(), pid)


def _final(h: Hub, task: Task) -> None:
    h.sched.forget(task)
    agents.on_final(h, task)
    error = task.error
    o = task.outcome
    usage = o.usage if o else None
    duration = (task.finished_at - task.started_at) if task.finished_at and task.started_at else None
    h.metrics.finish(task.spec.kind, task.state.value, error.kind if error else None, duration,
                     usage.input_tokens if usage else 0, usage.output_tokens if usage else 0,
                     (o.cost_usd if o else None) or 0.0)
    h.spokes.tracer.task_final(task, h.clock.wall_ns())
    h.spokes.events.publish(f"task/{task.id}/finished", task=task.id, state=task.state.value,
                            error=error.kind if error else None, attempts=task.attempts, kind=task.spec.kind,
                            duration_s=duration, tokens=(usage.input_tokens + usage.output_tokens) if usage else None,
                            cost_usd=o.cost_usd if o else None)
    held: TaskView | None = None
    if h.answer_from_fleet is None and h.waiters.waits_for(task.id):
        held = view(task)  # now, from memory: the answer then reads no row back
    for waiter in h.waiters.task_final(task.id, held, reply_cost(held) if held else 0):
        answer(h, waiter)
    if task.workflow is not None:  # its workflow hears of it at the turn (hub/flows.py)
        h.flows.ended.append(task)
    for other, event in batches.task_final(h, task):  # its batch just spent its cost cap
        decide(h, other, event)


def breaker_changed(h: Hub, state: BreakerState, **fields: object) -> None:
    log("breaker", state=state.value, failures=h.breaker.failures, **fields)
    h.spokes.events.publish(f"breaker/{state.value}", state=state.value, failures=h.breaker.failures)


def send_cancel(h: Hub, task: Task, reason: str) -> None:
    """Ask the child running `task` to end it; a child we cannot reach is killed (its exit
    then ends the attempt)."""
    if task.child and not h.spokes.children.send(task.child, cp.Cancel(task_id=task.id, reason=reason,
                                                                          epoch=task.epoch)):
        slot = h.pool.find(task.child)
        if slot is not None:
            kill_slot(h, slot, f"cannot send Cancel for {task.id}", ours=True)


def kill_slot(h: Hub, slot: Slot, reason: str, *, ours: bool = False) -> None:
    """SIGKILL a child; its exit comes back as `ChildExited` and ends its attempt."""
    log("child_kill", logging.WARNING, child=slot.identity, pid=slot.pid, reason=reason)
    slot.kill_reason, slot.kill_ours = reason, ours
    if slot.pid:
        h.spokes.procs.kill_child(slot.pid)
    h.pool.stopping(slot, None, planned=False)


# ---- waiters -----------------------------------------------------------------------------


def task_view(h: Hub, task_id: str) -> TaskView | None:
    live = h.sched.tasks.get(task_id)
    return view(live) if live else h.store.get(task_id)


def reply_cost(v: TaskView) -> int:
    """What a view costs in a reply, without encoding it (its big strings, and the rest)."""
    return len(v.result or "") + len(v.stderr or "") + len(v.prompt or "") + 1024


def within_budget(views: list[TaskView], budget_bytes: int) -> tuple[list[TaskView], list[str]]:
    """The views that fit in one reply (at least one), and the ids of those that do not:
    thousands of tasks with megabytes of output each must not become one giant message."""
    fitting: list[TaskView] = []
    size = 0
    for i, v in enumerate(views):
        cost = reply_cost(v)
        if fitting and size + cost > budget_bytes:
            return fitting, [rest.id for rest in views[i:]]
        fitting.append(v)
        size += cost
    return fitting, []


def answer(h: Hub, waiter: Waiter) -> None:
    """Answer a `Wait` with the tasks that are final (after the commit that recorded them);
    those past the reply's byte budget come back as pending, and the client asks again."""
    if h.answer_from_fleet is not None:  # a fleet reads the views from the shared journal
        h.answer_from_fleet(h, waiter)
        return
    wanted = [tid for tid in waiter.ids if tid not in waiter.pending]
    held: dict[str, TaskView] = waiter.held  # the views kept as their tasks became final
    live = {tid: view(task) for tid in wanted if tid not in held and (task := h.sched.tasks.get(tid)) is not None}
    stored = h.store.views([tid for tid in wanted if tid not in held and tid not in live])  # one query
    done = [v for tid in wanted if (v := held.get(tid) or live.get(tid) or stored.get(tid)) is not None]
    views, later = within_budget(done, h.reply_budget)
    h.after_commit.append((waiter.envelope, ctl.Tasks(tasks=views, pending=sorted(waiter.pending) + later)))


# ---- starting attempts -------------------------------------------------------------------


def pump(h: Hub) -> None:
    """The ready-pump: give each idle child the next runnable task (one host; a fleet's is
    `fleet.pump`, which claims from the shared queue)."""
    if not h.life.accepting:
        return
    now = h.clock.now()
    for slot in h.pool.idle():
        task = h.sched.take(now, h.breaker.allows(now) and h.gate.allows(now))
        if task is None:
            return
        dispatch(h, slot, task, now)


def dispatch(h: Hub, slot: Slot, task: Task, now: float) -> None:
    spec, t, d = task.spec, h.config.tasks, h.config.daemon
    child = slot.identity
    core.start(task, child, h.clock.wall())  # QUEUED -> RUNNING, attempt + 1, epoch + 1
    task.span_id = h.ids.span_id()
    log("task_state", task=task.id, old="queued", new="running", reason="dispatched", child=child,
        attempts=task.attempts, epoch=task.epoch, trace=task.trace_id, span=task.span_id)
    if spec.kind == "claude" and (changed := h.breaker.started(now)):
        breaker_changed(h, changed, probe=task.id)
    if spec.kind == "claude" and spec.model is None and h.config.claude.model:
        spec = msgspec.structs.replace(spec, model=h.config.claude.model)
    timeout_s = spec.timeout_s or t.timeout_s
    backstop = timeout_s + t.result_grace_s + 2 * t.kill_grace_s + d.heartbeat_s * (d.liveness + 1)
    h.pool.assign(slot, task.id, now + backstop, now)
    span = traceids.SpanRef(task.trace_id or "", task.span_id)
    env = taskenv.task_env(span, task.tracestate, spec.kind, h.config.claude.env, h.config.claude.max_retries,
                           read_retry_after=h.config.gate.retry_after == "log")
    if spec.kind == "claude":
        env.update(h.spokes.tracer.claude_env())
    worktree, transcript_room = agents.dispatch_extras(h, task, env)
    room = result_room(h)
    limits = cp.Limits(
        timeout_s=timeout_s, stall_timeout_s=spec.stall_timeout_s or t.stall_timeout_s,
        result_grace_s=t.result_grace_s, kill_grace_s=t.kill_grace_s,
        output_cap_bytes=min(t.output_cap_bytes, room), max_result_bytes=room, transcript_cap_bytes=transcript_room,
    )
    h.spokes.tracer.attempt_started(task, child, h.clock.wall_ns())
    h.store.claim(task)
    sent = h.spokes.children.send(child, cp.Dispatch(
        task_id=task.id, attempt=task.attempts, epoch=task.epoch, spec=spec, limits=limits, env=env,
        claude_command=h.claude.argv if spec.kind == "claude" else [], worktree=worktree,
    ))
    h.spokes.events.publish(f"task/{task.id}/started", task=task.id, child=child, attempt=task.attempts,
                            trace_id=task.trace_id, span_id=task.span_id)
    if not sent:  # the child is not connected: it never got the task (a free re-run)
        kill_slot(h, slot, f"cannot send Dispatch for {task.id}", ours=True)


def result_room(h: Hub) -> int:
    """The most output one Result may carry and still fit in a message (with room for the
    rest of it: usage, error text, the envelope)."""
    return max(1024, h.config.limits.max_message_bytes // 2 - 64 * 1024)


# ---- recovery ----------------------------------------------------------------------------


def recover(h: Hub) -> None:
    """Carry on with what a previous daemon accepted and did not finish (one host; a fleet's
    is `fleet.recover`)."""
    tasks = h.store.unfinished()
    live = [t.id for t in tasks if t.state in (TaskState.RUNNING, TaskState.BLOCKED)]
    leftovers = h.spokes.procs.leftovers(live) if live else set()
    now = h.clock.now()
    for task in tasks:
        h.sched.add(task, now)
        old = task.state
        fate = core.decide(task, core.Recovered(tree_alive=task.id in leftovers), context(h))
        log("task_recovered", task=task.id, state=old.value, verdict=fate.verdict.value, attempts=task.attempts,
            leftovers=task.id in leftovers or None, trace=task.trace_id)
        if fate.verdict is Verdict.QUEUED and old is TaskState.QUEUED:
            continue  # already queued by `add`
        settle(h, task, fate)
    batches.recover(h)
    if tasks:
        log("journal_recovered", tasks=len(tasks))
    agents.sweep(h)
