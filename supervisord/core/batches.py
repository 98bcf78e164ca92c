"""Batches: every submit is one, named by its trace id, with a label, a cost cap and a tally.

`Batch` is a batch's record: what it was submitted with and, as its tasks end, how many
ended how, its tokens, its cost and its wall time. `Batch.task_ended` tallies one final
task and says what follows: the cost cap just reached (its queued Claude tasks must end
`cancelled`/`budget`, which `fate.BudgetSpent` decides), and whether the batch is done
(every task final: the `on_batch_done` hook runs). `summary` is the JSON clients and the
hook see.

Pure: no I/O, no clock. Must not import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.task import Outcome, TaskState
from supervisord.core.task import Task


@dataclass(slots=True)
class Batch:
    id: str
    size: int
    submitted_at: float  # wall clock
    label: str | None = None
    max_cost_usd: float | None = None
    succeeded: int = 0
    failed: int = 0  # failed or timed out
    cancelled: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    first_started_at: float | None = None
    last_finished_at: float | None = None
    #: the cost cap was reached (its queued Claude tasks were stopped)
    budget_spent: bool = False
    #: wall time every task was final
    done_at: float | None = None

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    def task_ended(self, task: Task, wall: float) -> tuple[bool, bool]:
        """Tally a task that just became final: (the cost cap was just reached, the batch is
        now done)."""
        self.count(task.state, task.outcome, task.started_at, task.finished_at or wall)
        spent = (not self.budget_spent and self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd)
        if spent:
            self.budget_spent = True
        done = self.done_at is None and self.finished >= self.size
        if done:
            self.done_at = wall
        return spent, done

    def count(self, state: TaskState, o: Outcome | None, started_at: float | None, finished_at: float) -> None:
        """Add one final task to the tally (also how a store rebuilds it from the tasks' rows)."""
        if state is TaskState.SUCCEEDED:
            self.succeeded += 1
        elif state is TaskState.CANCELLED:
            self.cancelled += 1
        else:
            self.failed += 1
        if o is not None:
            self.cost_usd += o.cost_usd or 0.0
            if o.usage is not None:
                self.input_tokens += o.usage.input_tokens
                self.output_tokens += o.usage.output_tokens
        if started_at is not None:
            self.first_started_at = min(self.first_started_at or started_at, started_at)
        self.last_finished_at = max(self.last_finished_at or finished_at, finished_at)

    def wall_s(self, wall: float) -> float:
        """From the submit to the last task's end (or to now while it runs)."""
        end = self.done_at if self.done_at is not None else wall
        if self.done_at is not None and self.last_finished_at is not None:
            end = self.last_finished_at
        return max(0.0, end - self.submitted_at)

    def summary(self, wall: float, live: dict[str, int] | None = None) -> dict[str, object]:
        """The batch as JSON: counts, wall time, tokens, cost. `live`: running/queued counts
        of its tasks not yet final (from the scheduler), if known."""
        live = live or {}
        return {
            "id": self.id, "label": self.label, "tasks": self.size,
            "state": "done" if self.done_at is not None else "running",
            "succeeded": self.succeeded, "failed": self.failed, "cancelled": self.cancelled,
            "running": live.get("running", 0),
            "queued": live.get("queued", 0) + live.get("blocked", 0),
            "wall_s": round(self.wall_s(wall), 3),
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6), "max_cost_usd": self.max_cost_usd,
            "budget_spent": self.budget_spent,
            "submitted_at": self.submitted_at, "done_at": self.done_at,
        }


def budget_message(batch: Batch) -> str:
    return (f"batch {batch.id} spent ${batch.cost_usd:.4f} of its --max-cost-usd ${batch.max_cost_usd:g}: "
            "not started")
