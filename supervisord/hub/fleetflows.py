"""Workflows on a fleet: each workflow's engine runs on one host, its steps on any.

Functions of a `Hub` whose `fleet` is set; with SQLite none of this runs. The engine is
still `hub/flows.py` feeding `supervisord.core.workflow`; this module only decides *where*
it runs and how it hears of steps that end elsewhere (the rule, and the SQL, are in
`supervisord.store.pgflows`):

- `run`: the workflow is accepted into the journal (record and first tasks, one
  transaction) with this host as its engine, leased like an attempt; its step tasks are
  queued in the journal and any host claims them.
- A step task that ends on another host is heard of by `supd_finished` (its whole task then
  read from the journal and fed like a local end); every lease renewal also reads the
  ends of the steps still running, so a missed notification costs one renewal, not a step.
- `FlowLeases` (each renewal): a workflow taken over from this host is dropped here (its
  saves are refused by fencing anyway); one this host took over (its engine's lease ended)
  is `flows.resume`d: a finished step is never started again, a running one is adopted;
  a cancel request flagged by any host is fed.
- `flow status/list/wait/cancel` from any host: journal reads; a remote `flow wait` is
  woken by `supd_flow_finished`; a remote `flow cancel` flags the row (`supd_flow_cancel`
  and the renewal bring it to the engine).

Must not be imported by `flows` or `fleet` (they reach it through `h.flows`' hooks).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from proto import control as ctl
from supervisord.core.task import Task
from supervisord.core.workflow import CancelRequested, JobState, Workflow
from supervisord.events import FlowLeases, JournalNotified
from supervisord.hub import flows
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log
from supervisord.store.journal import Journal

Envelope = tuple[bytes, ...]

#: ids of workflows recently reported final by any engine (a `flow wait` registered late sees them)
RECENT_FINISHED = 10_000


def install(h: Hub) -> None:
    """Give the workflow engine its fleet hooks (at start, once the fleet is set)."""
    h.flows.cancel_remote = lambda task_id: _cancel_task(h, task_id)
    h.flows.answer_remote = lambda waiter: answer(h, waiter)


def _journal(h: Hub) -> Journal:
    assert h.fleet is not None
    return h.fleet.journal


def _finished_flows(h: Hub) -> OrderedDict[str, None]:
    assert h.fleet is not None
    return h.fleet.flows_finished


# ---- events ---------------------------------------------------------------------------------


def on_event(h: Hub, event: Any) -> None:
    match event:
        case FlowLeases(held, taken, lost):
            _leases(h, held, taken, lost)
        case JournalNotified("supd_finished", task_id):
            if _running_job(h, task_id):
                _journal(h).ask(lambda s: s.final_tasks([task_id]), lambda got, e: _ended(h, got, e))
        case JournalNotified("supd_flow_finished", wf_id):
            recent = _finished_flows(h)
            recent[wf_id] = None
            while len(recent) > RECENT_FINISHED:
                recent.popitem(last=False)
            for waiter in h.flows.waiters.task_final(wf_id):
                answer(h, waiter)
        case JournalNotified("supd_flow_cancel", wf_id):
            if (wf := h.flows.live.get(wf_id)) is not None:
                _cancel_requested(h, wf)


def _leases(h: Hub, held: dict[str, bool], taken: list[tuple[Workflow, dict[str, Task], bool]],
            lost: list[str]) -> None:
    for wf_id in lost:
        if h.flows.live.pop(wf_id, None) is not None:
            h.flows.open_steps.pop(wf_id, None)
            log("workflow_lost", logging.WARNING, workflow=wf_id, reason="taken over by another host (its lease ended)")
    for wf_id, cancel in held.items():
        if cancel and (wf := h.flows.live.get(wf_id)) is not None:
            _cancel_requested(h, wf)
    for wf, known, cancel in taken:
        if wf.id in h.flows.live:
            continue
        flows.resume(h, wf, known)
        if cancel and wf.id in h.flows.live:
            _cancel_requested(h, wf)
    # ends of steps that ran elsewhere whose notification this host missed
    ids = [job.task_id for wf in h.flows.live.values() for job in wf.jobs.values()
           if job.state is JobState.RUNNING and job.task_id is not None and job.task_id not in h.sched.tasks]
    if ids:
        _journal(h).ask(lambda s: s.final_tasks(ids), lambda got, e: _ended(h, got, e))


def _cancel_requested(h: Hub, wf: Workflow) -> None:
    if wf.ending is None and not wf.state.final:
        log("workflow_cancel_heard", workflow=wf.id)
        flows.feed(h, wf, [CancelRequested(reason="cancelled by request (flow cancel on another host)")])


def _running_job(h: Hub, task_id: str) -> bool:
    return any(job.task_id == task_id and job.state is JobState.RUNNING
               for wf in h.flows.live.values() for job in wf.jobs.values())


def _ended(h: Hub, got: list[Task] | None, error: str | None) -> None:
    """Final step tasks read from the journal: fed at the turn (a repeat changes nothing)."""
    if error:
        log("workflow_read_failed", logging.WARNING, error=error)
        return
    for task in got or []:
        if task.workflow in h.flows.live:
            h.flows.ended.append(task)


def _cancel_task(h: Hub, task_id: str) -> None:
    """Cancel a step's task wherever it is (its end comes back through `supd_finished`)."""
    h.store.commit()  # a task started earlier in this turn is in the journal before its cancel
    _journal(h).ask(lambda s: s.cancel(task_id),
                    lambda v, e: log("workflow_task_cancel_failed", logging.WARNING, task=task_id, error=e) if e
                    else None)


# ---- control verbs ------------------------------------------------------------------------------


def run(h: Hub, envelope: Envelope, req: ctl.FlowRun) -> ctl.Reply | None:
    """Accept a workflow into the shared journal (this host its engine), durably, before the reply."""
    if h.store_problem is not None:
        return ctl.Error(kind="journal", message=f"nothing was accepted: {h.store_problem}")
    ready = flows.prepare(h, req)
    if isinstance(ready, ctl.Error):
        return ready
    wf, first = ready.wf, list(ready.batch.tasks)

    def done(_: object, error: str | None) -> None:
        if error:
            h.spokes.control.reply(envelope, flows.refused(h, ready, error))
            return
        flows.accepted(h, ready)
        h.spokes.control.reply(envelope, ctl.FlowAccepted(id=wf.id, trace_id=wf.trace_id or ""))

    _journal(h).ask(lambda s: s.accept_workflow(wf, first), done)
    return None


def status(h: Hub, envelope: Envelope, req: ctl.FlowStatus) -> ctl.Reply | None:
    """One workflow, from its engine's memory here, else from the journal."""
    if (wf := h.flows.live.get(req.id)) is not None:
        return flows.reply(h, [wf])
    _read(h, envelope, lambda s: s.workflow(req.id),
          lambda wf: flows.reply(h, [wf]) if wf is not None
          else ctl.Error(kind="not_found", message=f"no workflow with id {req.id!r}"))
    return None


def list_(h: Hub, envelope: Envelope, req: ctl.FlowList) -> ctl.Reply | None:
    """The fleet's newest workflows (optionally in one state)."""
    if req.state is not None and req.state not in flows.FLOW_STATES:
        return ctl.Error(kind="bad_request",
                         message=f"unknown state {req.state!r} (one of {', '.join(flows.FLOW_STATES)})")
    h.store.commit()  # this engine's latest records first
    _read(h, envelope, lambda s: s.workflows(req.state, req.limit),
          lambda found: ctl.Flows(flows=[flows.summary(h.flows.live.get(wf.id, wf)) for wf in found]))
    return None


def cancel(h: Hub, envelope: Envelope, req: ctl.FlowCancel) -> ctl.Reply | None:
    """Cancel here if this host runs its engine; else flag it in the journal for its engine."""
    if req.id in h.flows.live:
        return flows.cancel(h, envelope, req)

    def make(wf: Workflow | None) -> ctl.Reply:
        if wf is None:
            return ctl.Error(kind="not_found", message=f"no workflow with id {req.id!r}")
        if wf.state.final:
            return ctl.Error(kind="bad_request",
                             message=f"workflow {req.id} already finished ({flows.public_state(wf)})")
        return ctl.Ok(message=f"cancelling workflow {req.id} (its engine runs on another host)")

    _read(h, envelope, lambda s: s.cancel_workflow(req.id), make)
    return None


def wait(h: Hub, envelope: Envelope, req: ctl.FlowWait) -> ctl.Reply | None:
    """Answer when every workflow is final (woken by `supd_flow_finished` from any engine)."""
    ids = list(dict.fromkeys(req.ids))
    deadline = h.clock.now() + max(0.0, min(req.timeout_s, flows.MAX_WAIT_S))
    h.store.commit()

    def found(records: dict[str, Workflow | None] | None, error: str | None) -> None:
        if error or records is None:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error or "no answer"))
            return
        for wf_id in ids:
            if records.get(wf_id) is None and wf_id not in h.flows.live:
                h.spokes.control.reply(envelope, ctl.Error(kind="not_found", message=f"no workflow with id {wf_id!r}"))
                return
        pending = set()
        for wf_id in ids:
            wf = h.flows.live.get(wf_id) or records[wf_id]
            if wf is not None and not wf.state.final and wf_id not in _finished_flows(h):
                pending.add(wf_id)
        waiter = Waiter(envelope, ids, pending, deadline)
        if pending and req.timeout_s > 0:
            h.flows.waiters.add(waiter)
        else:
            answer(h, waiter)

    _journal(h).ask(lambda s: {wf_id: s.workflow(wf_id) for wf_id in ids}, found)
    return None


def answer(h: Hub, waiter: Waiter) -> None:
    """Answer a `FlowWait` with the records read from the journal (after this host's saves)."""
    done = [wf_id for wf_id in waiter.ids if wf_id not in waiter.pending]
    envelope, pending = waiter.envelope, sorted(waiter.pending)
    h.store.commit()

    def reply(records: dict[str, Workflow | None] | None, error: str | None) -> None:
        if error or records is None:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error or "no answer"))
            return
        found = [wf for wf_id in done if (wf := records.get(wf_id)) is not None]
        h.spokes.control.reply(envelope, flows.reply(h, found, pending))

    _journal(h).ask(lambda s: {wf_id: s.workflow(wf_id) for wf_id in done}, reply)


def _read(h: Hub, envelope: Envelope, job: Any, make: Any) -> None:
    def done(result: Any, error: str | None) -> None:
        h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error) if error else make(result))

    _journal(h).ask(job, done)


HANDLERS: dict[type, Any] = {
    ctl.FlowRun: run, ctl.FlowStatus: status, ctl.FlowList: list_, ctl.FlowCancel: cancel, ctl.FlowWait: wait,
}
