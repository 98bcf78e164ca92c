"""The `Store` protocol: what the hub asks of the authority on every accepted task.

Backends (SQLite today, PostgreSQL for a fleet) implement it; the hub knows only this
module. Two kinds of write, with two promises:

- `accept` — a submitted batch, all or nothing, durable (power cut included) when it
  returns, so the hub may send `Accepted`; refused with `StoreError`, nothing stored.
- `claim` / `record` / `request_cancel` — an attempt's progress, kept in memory and
  written by the next `commit()` in one transaction (group commit). Each is fenced by the
  task's epoch: a write about an attempt that is no longer the task's is refused and
  reported by `commit()`. A commit that fails keeps its whole group for the next one.
- Workflows: `accept_workflow` (a new workflow's record and its first tasks, like `accept`)
  and `save_workflow` (the record after an event, with the tasks it started, noted and
  written by the next `commit()` in the same transaction as the group: a record and the
  tasks it names never disagree after a crash).

Imports the stdlib, proto and the core only.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Protocol

from proto.task import Line, TaskView
from supervisord.core.batches import Batch
from supervisord.core.task import Task
from supervisord.core.workflow import Workflow


class StoreError(Exception):
    """The store cannot do what was asked; the message names the cause and what to do."""


class Store(Protocol):
    #: failed commits since open (each one logged; its group stayed pending)
    write_errors: int

    @property
    def pending(self) -> int:
        """Tasks (and cancel requests) written by `claim`/`record`/`request_cancel`, not yet committed."""
        ...

    def accept(self, tasks: Sequence[Task], batch: Batch | None = None) -> None:
        """Store a submitted batch (its tasks and its `Batch` record), all or nothing, durable
        on return. Raises `StoreError` (nothing of the batch stored; pending writes unaffected)."""
        ...

    def record_batch(self, batch: Batch) -> None:
        """A batch's tally (and `done_at`), written by the next commit with its tasks' states."""
        ...

    def get_batch(self, batch_id: str) -> Batch | None:
        """One batch: its pending tally if any, else the stored one."""
        ...

    def open_batches(self) -> list[Batch]:
        """Batches not yet done (recovery)."""
        ...

    def batch_ids(self, label: str, limit: int = 10_000) -> list[str]:
        """The ids of the batches with this label, the newest first."""
        ...

    def claim(self, task: Task) -> None:
        """An attempt started: `task` is RUNNING with `task.epoch` bumped; the write is
        fenced on `task.epoch - 1`."""
        ...

    def record(self, task: Task) -> None:
        """The task's current state (re-queued, blocked, retry, final, cancel flag), fenced
        on `task.epoch`."""
        ...

    def request_cancel(self, task_id: str) -> None:
        """A cancel request, durable at the next commit (`unfinished()` returns the flag)."""
        ...

    def append_output(self, task_id: str, first: int, lines: list[Line], raw_bytes: int) -> None:
        """Transcript lines `first`.. of a task, written (compressed) by the next `commit`."""
        ...

    def transcript(self, task_id: str, after: int, budget_bytes: int) -> tuple[list[Line], int]:
        """Transcript lines from `after` on (pending ones too), about `budget_bytes` of them;
        and the number of the line after the last one returned."""
        ...

    def transcript_extent(self, task_id: str) -> tuple[int, int]:
        """(lines, raw bytes) of a task's transcript so far."""
        ...

    def task(self, task_id: str) -> Task | None:
        """One task's whole record, spec included (for `retry` and `--resume`)."""
        ...

    def worktree_tasks(self) -> dict[str, tuple[str, str]]:
        """task id -> (repo, branch) of every stored worktree task."""
        ...

    def take_pruned_worktrees(self) -> list[tuple[str, str, str, str | None]]:
        """(task id, repo, branch, path) of worktree tasks pruned since the last call (their
        worktrees and branches are the hub's to remove)."""
        ...

    def commit(self) -> list[tuple[str, int]]:
        """Write every claim/record/cancel since the last commit in one transaction; returns
        the (task_id, epoch) writes refused by fencing. Never raises: on failure the group
        stays pending for the next commit."""
        ...

    def unfinished(self) -> list[Task]:
        """Queued, blocked and running tasks in arrival order (recovery)."""
        ...

    def get(self, task_id: str) -> TaskView | None:
        """One task: its pending state if any, else the stored one."""
        ...

    def views(self, ids: Sequence[str]) -> dict[str, TaskView]:
        """The tasks of `ids` that exist, by id, as `get` sees each (one query)."""
        ...

    def list(self, state: str | None, limit: int, budget_bytes: int,
             batches: Sequence[str] | None = None) -> list[TaskView]:
        """The newest tasks first (optionally in one state, of these batches), at most `limit`,
        stopping before the row that would pass `budget_bytes` (at least one row)."""
        ...

    def known(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` exist (pending or stored)."""
        ...

    def prune(self, finished_before: float, limit: int = 500) -> int:
        """Delete final tasks that finished (wall clock) before `finished_before`, the oldest
        first and at most `limit` (so a call stays short), with their transcripts; how many.
        Call again while it returns `limit`."""
        ...

    def check(self) -> str | None:
        """None while the store is the one opened; else what is wrong (file deleted, replaced)."""
        ...

    def accept_workflow(self, wf: Workflow, tasks: Sequence[Task]) -> None:
        """A new workflow's record and its first tasks, all or nothing, durable on return.
        Raises `StoreError` (nothing stored)."""
        ...

    def save_workflow(self, wf: Workflow, tasks: Sequence[Task] = ()) -> None:
        """The record as it is now, and the new tasks it started (each tagged with the
        workflow and its job): written by the next `commit()`, in its transaction."""
        ...

    def workflow(self, wf_id: str) -> Workflow | None:
        """One workflow's record (its noted state if any)."""
        ...

    def workflows(self, state: str | None, limit: int) -> builtins.list[Workflow]:
        """The newest first, optionally in one public state (running includes stopping)."""
        ...

    def unfinished_workflows(self) -> builtins.list[Workflow]:
        """Workflows not final, oldest first (recovery)."""
        ...

    def workflow_tasks(self, wf_id: str) -> dict[str, Task]:
        """A workflow's tasks by job key: what a restart looks up before it submits a job."""
        ...

    def counts(self) -> dict[str, int]:
        """Stored tasks per state."""
        ...

    def close(self) -> None:
        """Commit what is pending (best effort) and release everything."""
        ...
