"""The hub's state, in named pieces, and the spokes it acts through.

`Hub` is plain data: the pool, the scheduler, the breaker, the daemon's life, the
waiters, the orphan trees, the store and the spokes. The verb modules (`tasks`,
`childcare`, `commands`, `lifecycle`) are functions of a `Hub` that call the pieces'
methods; they never reach into each other. `Spokes` lists what the hub needs from the
outside world as protocols, so the loop can run in-process with fakes (tests/hub).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proto import children as cp
from proto import control as ctl
from supervisord.config import Config
from supervisord.core.batches import Batch
from supervisord.core.breaker import Breaker
from supervisord.core.gate import Gate
from supervisord.core.metrics import Metrics
from supervisord.core.phase import Life
from supervisord.core.pool import Pool, policy_of
from supervisord.core.scheduler import Scheduler
from supervisord.core.traceids import Ids
from supervisord.hub.flowbook import FlowBook
from supervisord.hub.orphans import Orphans
from supervisord.hub.waiters import Waiter, Waiters
from supervisord.spokes.claude_cli import ClaudeCommand
from supervisord.spokes.tracing import Tracer
from supervisord.store.base import Store

if TYPE_CHECKING:
    from supervisord.hub.fleet import FleetState


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path
    runtime_dir: Path

    @property
    def control(self) -> str:
        return f"ipc://{self.runtime_dir / 'control.sock'}"

    @property
    def children(self) -> str:
        return f"ipc://{self.runtime_dir / 'children.sock'}"

    @property
    def events(self) -> str:
        return f"ipc://{self.runtime_dir / 'events.sock'}"

    @property
    def journal(self) -> Path:
        return self.state_dir / "tasks.db"


class ChildLink(Protocol):
    """The children socket."""

    dropped: int

    def send(self, identity: str, message: cp.DaemonMessage) -> bool: ...
    def check_socket(self) -> bool: ...


class ControlLink(Protocol):
    """The control socket: answers go out through here."""

    bad_requests: int

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None: ...
    def check_socket(self) -> bool: ...


class Publisher(Protocol):
    """The event bus `supctl watch` subscribes to."""

    def publish(self, topic: str, **data: Any) -> None: ...
    def check_socket(self) -> bool: ...


class Processes(Protocol):
    """The hub's side of processes: children to spawn and watch, trees to end."""

    def spawn_child(self, identity: str, argv: list[str], env: dict[str, str]) -> int:
        """Start a child and watch it: its exit comes back as `ChildExited`. Raises OSError."""
        ...

    def kill_child(self, pid: int) -> None:
        """SIGKILL a child we spawned (through its pidfd)."""
        ...

    def terminate_tree(self, task_id: str, epoch: int, pgid: int | None) -> None:
        """SIGCONT + SIGTERM to a lost attempt's processes."""
        ...

    def check_trees(self, attempts: list[tuple[str, int]]) -> None:
        """SIGKILL what is left of these attempts' trees and look, off the loop, for
        survivors: the answer comes back as `TreesChecked`."""
        ...

    def leftovers(self, task_ids: list[str]) -> set[str]:
        """At start: which of these tasks still have processes (one scan)."""
        ...

    def run_hook(self, name: str, argv: list[str], data: bytes, timeout_s: float) -> None:
        """Run a hook command (no shell, its own session) with `data` on its stdin, off the
        loop; it is killed after `timeout_s`. Its end comes back as `HookFinished`."""
        ...


class Notify(Protocol):
    watchdog_interval_s: float | None

    @property
    def enabled(self) -> bool: ...

    def ready(self, status: str | None = None) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self, status: str | None = None) -> None: ...
    def extend_timeout(self, seconds: float) -> None: ...
    def reloading(self) -> None: ...


class GitJobs(Protocol):
    """Git off the loop (`supervisord.spokes.gitjanitor`): housekeeping, and questions
    answered back through the inbox (`GitAnswered`)."""

    def run(self, what: str, fn: Callable[..., str], *args: Any, **kwargs: Any) -> None: ...

    def ask(self, what: str, then: Callable[[Any, str | None], None], fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> None: ...


@dataclass(slots=True)
class Spokes:
    children: ChildLink
    control: ControlLink
    events: Publisher
    procs: Processes
    notifier: Notify
    tracer: Tracer
    #: ask to be woken (a `TimerFired`) at this monotonic time
    wake_at: Callable[[float], None]
    git: GitJobs | None = None


@dataclass(slots=True)
class Clock:
    """Time and chance, injected: the daemon's are real, the hub tests' are scripted."""

    now: Callable[[], float]  # monotonic seconds
    wall: Callable[[], float]  # time.time()
    wall_ns: Callable[[], int]  # time.time_ns(), for trace ids and span times
    rand: Callable[[], float]  # in [0, 1)


@dataclass(slots=True)
class Pending:
    """A child exited while it ran `task_id`: its `Result` may still be on the way (a child's
    messages and its exit reach the hub by different paths), so the loss is decided at
    `deadline` unless the Result comes first."""

    task_id: str
    epoch: int
    message: str
    ours: bool
    deadline: float


@dataclass(slots=True)
class Hub:
    config: Config
    paths: Paths
    clock: Clock
    ids: Ids
    store: Store
    spokes: Spokes
    claude: ClaudeCommand
    child_env: dict[str, str]
    environ: Mapping[str, str]
    config_path: Path | None = None
    life: Life = field(default_factory=Life)
    pool: Pool = field(init=False)
    sched: Scheduler = field(init=False)
    breaker: Breaker = field(init=False)
    gate: Gate = field(init=False)
    #: batches not yet done, by id (their trace id)
    batches: dict[str, Batch] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    waiters: Waiters = field(default_factory=Waiters)
    orphans: Orphans = field(default_factory=Orphans)
    flows: FlowBook = field(default_factory=FlowBook)
    #: lost attempts waiting for a Result that may still be in flight, by task id
    pending_loss: dict[str, Pending] = field(default_factory=dict)
    #: (pgid, pid) of each running attempt's process, by task id, from `Started`
    processes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: replies that promise durability, sent after the store's commit
    after_commit: list[tuple[tuple[bytes, ...], ctl.Reply]] = field(default_factory=list)
    #: Lost attempts until then are the daemon's own fault (it was paused): free re-runs
    forgive_until: float = 0.0
    started_at: float = 0.0
    #: finished tasks before this wall time are being pruned, a chunk per turn
    prune_before: float | None = None
    #: the store's last complaint about its file (deleted, replaced), for health and status
    store_problem: str | None = None
    #: (transcript lines, raw bytes) of tasks seen since start, by task id (`hub.agents`)
    extents: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the "attempt N started" line of each running attempt, written with its first output
    notes: dict[str, cp.Line] = field(default_factory=dict)
    #: set when the journal is a PostgreSQL database shared by a fleet (supervisord.hub.fleet)
    fleet: FleetState | None = None
    #: in a fleet, how a waiter is answered (`fleet.answer`: views read from the shared journal)
    answer_from_fleet: Callable[[Hub, Waiter], None] | None = None

    @property
    def reply_budget(self) -> int:
        """Half the message-size limit: what one reply may carry, with room for the envelope."""
        return self.config.limits.max_message_bytes // 2

    def __post_init__(self) -> None:
        self.pool = Pool(policy_of(self.config))
        d = self.config.daemon
        self.sched = Scheduler(max_queued=d.max_queued, max_queued_bytes=d.max_queued_bytes)
        self.breaker = Breaker(self.config.breaker.threshold, self.config.breaker.open_s)
        self.gate = Gate(max_s=self.config.gate.max_s)
        self.sched.keys.limits = self.config.keys
        self.started_at = self.clock.now()
