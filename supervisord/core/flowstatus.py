"""The `supctl flow status --json` object, built from a workflow's record. Pure: no I/O.

The field names are a stable interface (DESIGN.md). `steps` are in file order; each step's
`task_ids` are its own tasks (one, or one per map item in item order) and then its
compensate's; `undo` is in the order the undos ran, each with its last attempt's task.
"""

from __future__ import annotations

from proto.task import TaskError
from supervisord.core.workflow import FlowState, Workflow

__all__ = ["fit_results", "public_state", "status"]


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


def fit_results(views: list[dict[str, object]], budget_bytes: int) -> None:
    """Cut the steps' results of `views` (in place) so that together they take at most
    `budget_bytes` of UTF-8: the small ones stay whole and the big ones share what is left
    equally. A cut step says how many bytes it left out (`result_cut_bytes`); its tasks keep
    the whole result (`supctl get ID`)."""
    steps = [step for v in views for step in v["steps"] if step["result"]]  # type: ignore[attr-defined]
    data = [str(step["result"]).encode() for step in steps]
    if sum(map(len, data)) <= budget_bytes:
        return
    left = budget_bytes
    order = sorted(range(len(steps)), key=lambda i: len(data[i]))
    for done, i in enumerate(order):
        share = left // (len(order) - done)
        if len(data[i]) > share:
            kept = data[i][:share].decode(errors="ignore")  # never half a character
            steps[i]["result"], steps[i]["result_cut_bytes"] = kept, len(data[i]) - len(kept.encode())
        left -= len(str(steps[i]["result"]).encode())
