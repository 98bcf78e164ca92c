"""Task shapes shared by client, daemon and child: what a task asks for and what it produced.

Imports msgspec and the stdlib only.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

Kind = Literal["claude", "exec"]

# ---- bounds on what a client may ask for (the decoder refuses the rest, naming the field) ----

#: retries per task, as in the config's tasks.retries
MAX_RETRIES = 100
#: priorities fit 32 bits: any order a client wants, and nothing that overflows a store
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
#: a timeout (wall clock or stall) of at most 30 days
MAX_TIMEOUT_S = 30 * 86_400.0
MAX_TURNS = 10_000
MAX_BUDGET_USD = 1_000_000.0
#: a path, a model name, a tool name
MAX_PATH_CHARS, MAX_NAME_CHARS = 4096, 256
MAX_TOOLS = 1024

Retries = Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)]
Priority = Annotated[int, msgspec.Meta(ge=MIN_PRIORITY, le=MAX_PRIORITY)]
TimeoutS = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)]
Turns = Annotated[int, msgspec.Meta(ge=1, le=MAX_TURNS)]
BudgetUSD = Annotated[float, msgspec.Meta(gt=0, le=MAX_BUDGET_USD)]
PathStr = Annotated[str, msgspec.Meta(max_length=MAX_PATH_CHARS)]
NameStr = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
Tools = Annotated[list[NameStr], msgspec.Meta(max_length=MAX_TOOLS)]
#: a task id given as a reference (`resume`, `retry_of`)
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
#: a git ref for `base` (a branch, tag or commit)
GitRef = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
#: an exclusive key (`--key`): letters, digits and `_.:/@+-`, at most 128 characters
KEY_PATTERN = r"^[A-Za-z0-9_.:/@+-]{1,128}$"
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=KEY_PATTERN)]


class TaskState(enum.Enum):
    """The life of a task; transitions are checked in `supervisord.core.scheduler`."""

    QUEUED = "queued"
    #: accepted, waiting for something other than a free child (the old attempt's tree to
    #: die; later: a dependency, a key, a budget, a gate)
    BLOCKED = "blocked"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.BLOCKED, TaskState.RUNNING)


class TaskSpec(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a client asks to run. Every field but `kind` and `prompt`/`argv` is optional.

    Numbers are bounded here (the decoder refuses a value out of range, naming the field);
    sizes of prompt, argv, env and input are checked against `[limits]` by the daemon."""

    kind: Kind = "claude"
    prompt: str | None = None
    argv: list[str] | None = None
    input: str | None = None
    timeout_s: TimeoutS | None = None
    stall_timeout_s: TimeoutS | None = None
    retries: Retries | None = None
    retry_on_exit: bool = False
    priority: Priority = 0
    cwd: PathStr | None = None
    env: dict[str, str] = {}
    #: an exclusive key: at most `[keys] NAME` (default 1) tasks with this key run at once
    key: KeyName | None = None
    # Claude-only options.
    model: NameStr | None = None
    max_turns: Turns | None = None
    allowed_tools: Tools | None = None
    disallowed_tools: Tools | None = None
    append_system_prompt: str | None = None
    permission_mode: NameStr | None = None
    max_budget_usd: BudgetUSD | None = None
    #: a JSON Schema (an object) the CLI validates its answer against (`--json-schema`);
    #: the answer comes back as the task's `structured_output`
    json_schema: dict[str, Any] | None = None
    # Agent work.
    #: run in a fresh git worktree of `cwd`'s repository, on the branch `supd/<task id>`
    worktree: bool = False
    #: the worktree starts at this ref (default: the repository's HEAD at the first attempt)
    base: GitRef | None = None
    #: continue this earlier Claude task's session (in its directory or worktree)
    resume: RefId | None = None
    # Filled in by supd at submit (a client may not set them): the session to resume, the
    # worktree's branch when it is not this task's own (a resumed worktree task), the main
    # checkout's root, the task this one is a `retry` of, and, in a fleet, the host that
    # must run it (its worktree or session is on that host's disk: `supervisord.core.pin`).
    resume_session: NameStr | None = None
    worktree_branch: NameStr | None = None
    repo: PathStr | None = None
    retry_of: RefId | None = None
    pin: NameStr | None = None


class Line(msgspec.Struct, array_like=True, frozen=True):
    """One line of a task's transcript: wall time, stream (`stdout`, `stderr`, or `supd`
    for supd's own notes), the attempt that wrote it, and the text (no newline)."""

    at: float
    stream: str
    attempt: int
    text: str


class WorktreeInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a worktree task left: its branch, the commit it started from (`base`) and the
    branch's last commit (`head`), with the diff's size; `path` while the directory is kept."""

    repo: str
    branch: str
    base: str | None = None
    head: str | None = None
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    path: str | None = None
    #: what went wrong with git, when something did (the task's own outcome is unaffected)
    error: str | None = None


class Usage(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Token usage as the Claude CLI reports it in its `result` line."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TaskError(msgspec.Struct, kw_only=True):
    """Why a task did not succeed. `kind` is a failure class (see `ErrorKind`)."""

    kind: str
    message: str


class ErrorKind:
    """Failure classes. Retryable ones are listed in `RETRYABLE`."""

    #: exec task exited non-zero
    EXIT = "exit"
    #: the process could not be started (no such file, permission)
    SPAWN = "spawn"
    #: wall-clock timeout
    TIMEOUT = "timeout"
    #: no output line for stall_timeout_s
    STALL = "stall"
    #: the child process running the task died
    WORKER_LOST = "worker_lost"
    #: a Dispatch reached a child that was already running a task (retryable)
    WORKER_BUSY = "worker_busy"
    #: cancelled by a client or by shutdown
    CANCELLED = "cancelled"
    #: the daemon stopped before the task could finish (drain limit)
    SHUTDOWN = "shutdown"
    #: Claude API: 401/403
    AUTH = "auth"
    #: Claude API: 400/404/413/422
    INVALID_REQUEST = "invalid_request"
    #: Claude API: 429
    RATE_LIMITED = "rate_limited"
    #: Claude API: 529
    OVERLOADED = "overloaded"
    #: Claude API: 5xx
    API_ERROR = "api_error"
    #: Claude API: no HTTP status (connection refused, reset, DNS)
    NETWORK = "network"
    #: Claude: error_max_turns
    MAX_TURNS = "max_turns"
    #: Claude: budget exhausted
    BUDGET = "budget"
    #: Claude: exited without a result line, or an unclassified error result
    CLAUDE = "claude"
    #: the task's git worktree could not be made (not a repository, a bad --base)
    WORKTREE = "worktree"

    RETRYABLE = frozenset({WORKER_LOST, WORKER_BUSY, STALL, OVERLOADED, RATE_LIMITED, API_ERROR, NETWORK})
    #: failures that say the Claude backend is unhealthy (feed the circuit breaker)
    INFRASTRUCTURE = frozenset({OVERLOADED, RATE_LIMITED, API_ERROR, NETWORK, STALL})


class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one attempt produced, as the child reports it."""

    exit_code: int | None = None
    signal: int | None = None
    result: str | None = None
    stderr: str | None = None
    truncated: bool = False
    error: TaskError | None = None
    # Claude-only.
    usage: Usage | None = None
    cost_usd: float | None = None
    session_id: str | None = None
    num_turns: int | None = None
    is_error: bool | None = None
    api_error_status: int | None = None
    #: the parsed answer of a task with `json_schema`
    structured_output: Any = None
    worktree: WorktreeInfo | None = None
    #: when the API said to come back (wall clock, epoch seconds): a `rate_limit_event`'s
    #: `resetsAt`, or a 429's `retry-after` as the CLI's debug log shows it
    resets_at: float | None = None
    #: a 429's `retry-after` (seconds from the attempt's end), as the CLI's debug log shows it
    retry_after_s: float | None = None


class TaskView(msgspec.Struct, kw_only=True):
    """A task as clients see it (`result --json`, `wait --json`). Field names are a stable interface."""

    id: str
    kind: Kind
    state: str
    attempts: int
    exit_code: int | None
    result: str | None
    error: TaskError | None
    child: str | None
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    priority: int = 0
    stderr: str | None = None
    truncated: bool = False
    usage: Usage | None = None
    cost_usd: float | None = None
    session_id: str | None = None
    num_turns: int | None = None
    prompt: str | None = None
    argv: list[str] | None = None
    structured_output: Any = None
    worktree: WorktreeInfo | None = None
    #: the task whose Claude session this one continues (`submit --resume`)
    resumed_from: str | None = None
    #: the task this one submits again (`supctl retry`)
    retry_of: str | None = None
    cwd: str | None = None
    #: the host that runs (or last ran) it, in a fleet; null on a single host
    host: str | None = None
    #: the workflow this task is a step of, and its job there (`NAME`, `NAME[i]`,
    #: `NAME:compensate`, `NAME:undo:N`); None for a plain task
    workflow: str | None = None
    step: str | None = None
    key: str | None = None
    #: the batch (its submit) the task came in: the batch id is the trace id
    batch: str | None = None
    #: in a fleet, the only host that may run it (a worktree or a resumed session is on its
    #: disk); null when any host may
    pin: str | None = None
    #: why a queued task is not started, when it is something other than a free child (its
    #: pinned host is not live); null otherwise
    waiting: str | None = None
