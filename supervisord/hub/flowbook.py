"""The hub's piece for workflows: the live records, what is waiting to be fed to them, and
who waits for them.

Plain data, like `waiters` and `orphans`; `hub/flows.py` is what acts on it. A workflow is
live from its acceptance (or a restart that finds it unfinished) until its final state is
saved; the store has it for good. Imports the core only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisord.core.task import Task
from supervisord.core.workflow import Workflow
from supervisord.hub.waiters import Waiter, Waiters


@dataclass(slots=True)
class FlowBook:
    #: workflows not final, by id
    live: dict[str, Workflow] = field(default_factory=dict)
    #: tasks of workflows that reached a final state, fed to their workflow at the next turn
    #: (never from inside `tasks.settle`: a workflow's decisions may settle other tasks)
    ended: deque[Task] = field(default_factory=deque)
    #: `FlowWait` requests, by workflow id (the same bookkeeping as task waiters)
    waiters: Waiters = field(default_factory=Waiters)
    #: steps whose span is open, by workflow id
    open_steps: dict[str, set[str]] = field(default_factory=dict)
    #: in a fleet (set by `hub/fleetflows.py`): cancel a step's task that may run on any host,
    #: and answer a `FlowWait` from the shared journal
    cancel_remote: Callable[[str], None] | None = None
    answer_remote: Callable[[Waiter], None] | None = None
