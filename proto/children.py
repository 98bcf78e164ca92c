"""The daemon <-> child protocol (ZeroMQ ROUTER in the daemon, DEALER in each child).

Vocabulary from the zguide's Paranoid Pirate: a child says `Hello` once (it is then
ready), a `Heartbeat` when it has nothing else to say, `Started`/`Progress` while it
runs a task and one `Result` at the end, after which it is ready again. Any message
from a child counts as a heartbeat. The daemon sends `Dispatch`, `Cancel`,
`Heartbeat` and `Stop`. Frames: the ROUTER sees [identity, payload]; payload is
msgpack of one of the tagged structs below.

Imports msgspec and the stdlib only.
"""

from __future__ import annotations

import msgspec

from proto.task import Line, Outcome, TaskSpec

#: A child exits with this when it cannot boot (bad arguments, an import error, no
#: daemon to talk to): the daemon marks its slot FATAL at once instead of feeding a
#: restart loop. Part of the protocol: both sides must agree on it.
BOOT_FAILURE_EXIT = 3


# ---- child -> daemon -------------------------------------------------------------


class Hello(msgspec.Struct, tag=True, kw_only=True):
    """First message of a child: it is booted and ready for a task."""

    protocol: int
    slot: str
    pid: int


class Heartbeat(msgspec.Struct, tag=True, kw_only=True):
    """Liveness, both directions. From a child: `task_id`/`epoch` is the attempt it is
    running, if any. From the daemon: `heartbeat_s`/`liveness`, when set, are the daemon's
    current settings (a reload changes them for running children too)."""

    task_id: str | None = None
    epoch: int = 0
    rss_bytes: int = 0
    heartbeat_s: float | None = None
    liveness: int | None = None


class Started(msgspec.Struct, tag=True, kw_only=True):
    """The task's process is running: its pid, and the session/pgid it leads. Sent once the
    process has run for `STARTED_AFTER_S`, or before its first Progress or Output; a task
    that ends sooner sends none, and its `Result` carries the pid."""

    task_id: str
    attempt: int
    #: the attempt's fencing token (the store's epoch for the task): echoed on every message
    epoch: int = 0
    pid: int
    pgid: int


class Progress(msgspec.Struct, tag=True, kw_only=True):
    """One event of a running task (for Claude, one stream-json line, summarised)."""

    task_id: str
    attempt: int
    #: the attempt's fencing token (the store's epoch for the task): echoed on every message
    epoch: int = 0
    event: str
    summary: str = ""


class Output(msgspec.Struct, tag=True, kw_only=True):
    """Transcript lines of a running task, as they arrived (batched). Never dropped under
    back-pressure: the child caps what it sends per attempt (`Limits.transcript_cap_bytes`)
    and says, in one last `supd` line, how much it left out."""

    task_id: str
    attempt: int
    epoch: int = 0
    lines: list[Line]


class Result(msgspec.Struct, tag=True, kw_only=True):
    """The end of one attempt. `state` is a final `TaskState` value."""

    task_id: str
    attempt: int
    #: the attempt's fencing token (the store's epoch for the task): echoed on every message
    epoch: int = 0
    state: str
    outcome: Outcome
    started_at: float
    finished_at: float
    #: the task's process (and session leader), when no `Started` said it (None: no process)
    pid: int | None = None


#: How long a task's process runs before its `Started` goes: most short tasks then send
#: one message, not two (a message is ~4 thread wake-ups across both processes).
STARTED_AFTER_S = 0.05

ChildMessage = Hello | Heartbeat | Started | Progress | Output | Result


# ---- daemon -> child -------------------------------------------------------------


class Limits(msgspec.Struct, kw_only=True, frozen=True):
    """Timeouts as data: the child enforces them and the daemon keeps a backstop."""

    timeout_s: float
    stall_timeout_s: float | None
    result_grace_s: float
    kill_grace_s: float
    output_cap_bytes: int
    #: the largest encoded `Result` the daemon accepts (0: no cap of its own); the child
    #: cuts result/stderr (and sets `truncated`) to fit. The daemon sends its
    #: `max_message_bytes` minus headroom.
    max_result_bytes: int = 0
    #: transcript bytes this attempt may still send (0: none)
    transcript_cap_bytes: int = 0


class WorktreePlan(msgspec.Struct, kw_only=True, frozen=True):
    """Run the task in a git worktree: `path` (under the state dir) on `branch`, created
    from `base` (None: HEAD) of the repository at `repo` if the branch is new, else from
    the branch; reused if `path` already is that worktree. At the end, leftovers are
    committed as `author` with `message`, and `keep` says what stays: the branch
    ("branch"), the directory too ("worktree"), or nothing ("none")."""

    repo: str
    path: str
    branch: str
    base: str | None = None
    keep: str = "branch"
    message: str = ""
    author: str = "supd <supd@localhost>"


class Dispatch(msgspec.Struct, tag=True, kw_only=True):
    """Run this task now. `env` is added to the task's environment (trace context etc.);
    `claude_command` is the argv prefix of the Claude CLI for claude tasks."""

    task_id: str
    attempt: int
    #: the attempt's fencing token (the store's epoch for the task): echoed on every message
    epoch: int = 0
    spec: TaskSpec
    limits: Limits
    env: dict[str, str] = {}
    claude_command: list[str] = []
    worktree: WorktreePlan | None = None


class Cancel(msgspec.Struct, tag=True, kw_only=True):
    """Stop the task: SIGTERM to its session, grace, SIGKILL to every descendant."""

    task_id: str
    reason: str = "cancelled"
    #: the attempt to cancel (0: whatever attempt of `task_id` runs)
    epoch: int = 0


class Stop(msgspec.Struct, tag=True, kw_only=True):
    """Kill any task tree and exit."""

    reason: str = "shutdown"


DaemonMessage = Dispatch | Cancel | Heartbeat | Stop
