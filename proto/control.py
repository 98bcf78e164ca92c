"""The supctl <-> daemon protocol (ZeroMQ ROUTER in the daemon, DEALER/REQ in supctl).

One request, one reply. Requests are imperative (`Submit`, `Cancel`); every reply is
one of `Accepted`, `Tasks`, `Info`, `Ok` or `Error`. A request that fails to decode
is answered with an `Error` naming the problem; it never reaches the daemon's core.

Imports msgspec and the stdlib only.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from proto.task import Line, TaskSpec, TaskView

# ---- bounds (the decoder refuses a request past them with an `Error` naming the field) ----

#: ids one `Wait` may ask about: beyond this, ask in several requests
MAX_WAIT_IDS = 10_000
#: the longest one `Wait` may be asked to wait (the daemon may answer sooner; ask again)
MAX_WAIT_S = 3600.0
#: tasks one `List` may ask for
MAX_LIST = 10_000
#: the largest pool `Scale` may ask for
MAX_CHILDREN = 1024
#: W3C trace context: a traceparent is 55 characters for version 00 (later versions may
#: append fields); a tracestate at most 512
MAX_TRACEPARENT_CHARS, MAX_TRACESTATE_CHARS = 256, 512
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[0-9a-zA-Z_.-]*)?$"
#: task ids are 22 characters; slot names a few
MAX_ID_CHARS = 64
#: the oldest age `Prune` takes: ten years
MAX_AGE_S = 3650 * 86_400.0

#: a batch label; a batch's cost cap
MAX_LABEL_CHARS, MAX_BATCH_COST_USD = 256, 1_000_000.0

TaskId = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]

# ---- requests --------------------------------------------------------------------


class Submit(msgspec.Struct, tag=True, kw_only=True):
    """Accept these tasks as one batch (one master trace). Journaled before `Accepted`."""

    tasks: list[TaskSpec]
    #: a name for the batch (`supctl list --label`)
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_CHARS)] | None = None
    #: once the batch's finished tasks have cost this much, its queued Claude tasks end
    #: `cancelled` with error kind `budget` (running ones finish)
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0, le=MAX_BATCH_COST_USD)] | None = None
    traceparent: Annotated[str, msgspec.Meta(max_length=MAX_TRACEPARENT_CHARS, pattern=TRACEPARENT_PATTERN)] | None = None
    tracestate: Annotated[str, msgspec.Meta(max_length=MAX_TRACESTATE_CHARS)] | None = None


class Wait(msgspec.Struct, tag=True, kw_only=True):
    """Answer when every id is final, or after `timeout_s` with the ones still pending."""

    ids: Annotated[list[TaskId], msgspec.Meta(max_length=MAX_WAIT_IDS)]
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)] = 5.0


class Get(msgspec.Struct, tag=True, kw_only=True):
    """One task, from memory or the journal."""

    id: TaskId


class List(msgspec.Struct, tag=True, kw_only=True):
    state: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST)] = 100
    #: only the tasks of this batch (its id is its trace id)
    batch: TaskId | None = None
    #: only the tasks of batches with this label
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_CHARS)] | None = None


class Batch(msgspec.Struct, tag=True, kw_only=True):
    """One batch: its summary (`Info.data["batch"]`) and its tasks (`Info.data["tasks"]`)."""

    id: TaskId
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST)] = 1000


class Cancel(msgspec.Struct, tag=True, kw_only=True):
    id: TaskId


class Status(msgspec.Struct, tag=True, kw_only=True):
    pass


class Stats(msgspec.Struct, tag=True, kw_only=True):
    pass


class Health(msgspec.Struct, tag=True, kw_only=True):
    pass


class Scale(msgspec.Struct, tag=True, kw_only=True):
    children: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHILDREN)]


class Reload(msgspec.Struct, tag=True, kw_only=True):
    pass


class Shutdown(msgspec.Struct, tag=True, kw_only=True):
    pass


class Prune(msgspec.Struct, tag=True, kw_only=True):
    """Delete finished tasks older than `older_than_s` from the journal (None: the
    configured `journal.retain_s`); answered with `Ok` saying how many went."""

    older_than_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_AGE_S)] | None = None
    #: also delete worktree branches with commits not merged into any other branch
    force: bool = False


class RestartSlot(msgspec.Struct, tag=True, kw_only=True):
    """Give a child slot (e.g. `w03`) another chance: a FATAL slot is spawned again, its
    crash history forgotten."""

    slot: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


class Hosts(msgspec.Struct, tag=True, kw_only=True):
    """The daemons sharing this daemon's journal (a fleet); empty on a single host."""


#: workflows one `FlowWait` may ask about; `FlowList` may return
MAX_FLOW_IDS = 1000
#: `--set KEY=VALUE` inputs of one workflow, and the size of each value
MAX_INPUTS, MAX_INPUT_BYTES = 256, 1 << 20


class FlowRun(msgspec.Struct, tag=True, kw_only=True):
    """Check a workflow file (its TOML or JSON decoded to plain data) with these inputs and
    accept it atomically: the record and its first tasks are journaled before `FlowAccepted`."""

    doc: dict[str, Any]
    inputs: Annotated[dict[Annotated[str, msgspec.Meta(max_length=256)],
                           Annotated[str, msgspec.Meta(max_length=MAX_INPUT_BYTES)]],
                      msgspec.Meta(max_length=MAX_INPUTS)] = {}
    traceparent: Annotated[str, msgspec.Meta(max_length=MAX_TRACEPARENT_CHARS, pattern=TRACEPARENT_PATTERN)] | None = None
    tracestate: Annotated[str, msgspec.Meta(max_length=MAX_TRACESTATE_CHARS)] | None = None


class FlowStatus(msgspec.Struct, tag=True, kw_only=True):
    id: TaskId


class FlowList(msgspec.Struct, tag=True, kw_only=True):
    state: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_FLOW_IDS)] = 100


class FlowCancel(msgspec.Struct, tag=True, kw_only=True):
    """Stop the running steps, skip the rest, run the undos."""

    id: TaskId


class FlowWait(msgspec.Struct, tag=True, kw_only=True):
    """Answer when every workflow is final, or after `timeout_s` with those still running."""

    ids: Annotated[list[TaskId], msgspec.Meta(min_length=1, max_length=MAX_FLOW_IDS)]
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)] = 5.0


class Retry(msgspec.Struct, tag=True, kw_only=True):
    """Submit a failed, timed-out or cancelled task again, from its stored spec: a new
    task (its `retry_of` names the old one), answered with `Accepted`."""

    id: TaskId


class Logs(msgspec.Struct, tag=True, kw_only=True):
    """A task's transcript from line `after` on, as much as one reply carries
    (answered with `Transcript`; ask again from its `next`)."""

    id: TaskId
    after: Annotated[int, msgspec.Meta(ge=0)] = 0


class Diff(msgspec.Struct, tag=True, kw_only=True):
    """A final worktree task's diff: what `git diff BASE HEAD` prints for the commit its
    branch started from and the commit it ended on (`stat`: `git diff --stat`), answered
    with `DiffText`. The daemon's git thread runs it, never its loop."""

    id: TaskId
    stat: bool = False


Request = (Submit | Wait | Get | List | Cancel | Status | Stats | Health | Scale | Reload | Shutdown | Prune
           | RestartSlot | FlowRun | FlowStatus | FlowList | FlowCancel | FlowWait | Batch | Hosts | Retry | Logs
           | Diff)


# ---- replies ---------------------------------------------------------------------


class Accepted(msgspec.Struct, tag=True, kw_only=True):
    ids: list[str]
    trace_id: str
    #: the batch's id (its trace id)
    batch: str | None = None


class Tasks(msgspec.Struct, tag=True, kw_only=True):
    """Tasks, at most half of `limits.max_message_bytes` of them. For a `Wait`, `pending` is
    every id not in `tasks`: not final yet, or final but past this reply's size (ask again)."""

    tasks: list[TaskView]
    pending: list[str] = []


class Info(msgspec.Struct, tag=True, kw_only=True):
    """A structured answer (status, stats, health) as a plain mapping."""

    data: dict[str, Any]


class Ok(msgspec.Struct, tag=True, kw_only=True):
    message: str = "ok"


class Error(msgspec.Struct, tag=True, kw_only=True):
    """`kind` is machine-readable (bad_request, not_found, queue_full, limit, ...)."""

    kind: str
    message: str


class FlowAccepted(msgspec.Struct, tag=True, kw_only=True):
    id: str
    trace_id: str


class Flows(msgspec.Struct, tag=True, kw_only=True):
    """Workflows as `flow status --json` shows them; for a `FlowWait`, `pending` is every id
    not final yet."""

    flows: list[dict[str, Any]]
    pending: list[str] = []


class Transcript(msgspec.Struct, tag=True, kw_only=True):
    """Lines `first` .. `next - 1` of a task's transcript, and the task's state now (a
    follower stops once it is final and `next` is the end)."""

    id: str
    lines: list[Line]
    first: int
    next: int
    state: str
    final: bool


class DiffText(msgspec.Struct, tag=True, kw_only=True):
    """A worktree task's diff from `base` to `head` (its branch `branch` in `repo`). `text`
    is git's output, at most what one reply carries: a longer diff is cut at a line's end,
    `left_out_bytes` says how much is missing and `text` ends with a line saying so. Bytes
    that are not UTF-8 (a file in another encoding) are shown as U+FFFD."""

    id: str
    repo: str
    branch: str
    base: str
    head: str
    stat: bool
    text: str
    left_out_bytes: int = 0


Reply = Accepted | Tasks | Info | Ok | Error | FlowAccepted | Flows | Transcript | DiffText
