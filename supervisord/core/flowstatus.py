"""The `supctl flow status --json` object, built from a workflow's record. Pure: no I/O.

The field names are a stable interface (DESIGN.md). `steps` are in file order; each step's
`task_ids` are its own tasks (one, or one per map item in item order) and then its
compensate's; `undo` is in the order the undos ran, each with its last attempt's task.
"""

from __future__ import annotations

from proto.task import TaskError
from supervisord.core.workflow import FlowState, Workflow

__all__ = ["public_state", "status"]


def _error(error: TaskError | None) -> dict[str, str] | None:
    return None if error is None else {"kind": error.kind, "message": error.message}


def public_state(wf: Workflow) -> str:
    """running, succeeded, failed or cancelled: a stopping workflow (cancelling what runs,
    then undoing) is still running."""
    return FlowState.RUNNING.value if wf.state is FlowState.STOPPING else wf.state.value


def status(wf: Workflow) -> dict[str, object]:
    steps: list[dict[str, object]] = []
    for name, step in wf.steps.items():
        keys = [*step.jobs, *([step.compensate_job] if step.compensate_job else [])]
        task_ids = [tid for k in keys if k in wf.jobs and (tid := wf.jobs[k].task_id) is not None]
        steps.append({
            "name": name, "state": step.state.value, "task_ids": task_ids, "result": step.result,
            "error": _error(step.error), "started_at": step.started_at, "finished_at": step.finished_at,
        })
    undo = [{"step": u.step, "state": u.state.value, "attempts": u.attempts,
             "task_id": wf.jobs[u.jobs[-1]].task_id if u.jobs else None} for u in wf.undo or ()]
    return {
        "id": wf.id, "name": wf.spec.name, "state": public_state(wf), "trace_id": wf.trace_id,
        "started_at": wf.started_at, "finished_at": wf.finished_at, "cost_usd": wf.cost_usd,
        "error": _error(wf.error), "steps": steps, "undo": undo,
    }
