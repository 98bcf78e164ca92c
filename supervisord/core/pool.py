"""The child half of the pure core: slots, their state machine, restart and recycle policy.

No I/O and no clock: `now` (monotonic seconds) and `rand` in [0, 1) are arguments.
The hub asks `due(now)` what to do and applies it through the spokes. Must not import
asyncio, zmq, os-level modules or any spoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from proto.children import BOOT_FAILURE_EXIT
from supervisord.config import Config  # re-exported: the pool's decisions use it

__all__ = ["BOOT_FAILURE_EXIT", "ChildState", "Due", "Exit", "Policy", "Pool", "Slot", "policy_of", "restart_delay_s"]


class ChildState(enum.Enum):
    BACKOFF = "backoff"  # waiting to be (re)spawned at `respawn_at`
    STARTING = "starting"  # spawned, no Hello yet
    IDLE = "idle"  # ready for a task
    BUSY = "busy"  # running `task_id`
    STOPPING = "stopping"  # told to stop or killed; waiting for the exit
    FATAL = "fatal"  # restarts exhausted or boot failure; left down


TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    # BACKOFF -> IDLE: the slot took over a ready spare's process
    ChildState.BACKOFF: frozenset({ChildState.STARTING, ChildState.IDLE, ChildState.FATAL}),
    ChildState.STARTING: frozenset({ChildState.IDLE, ChildState.STOPPING, ChildState.BACKOFF, ChildState.FATAL}),
    ChildState.IDLE: frozenset({ChildState.BUSY, ChildState.STOPPING, ChildState.BACKOFF, ChildState.FATAL}),
    ChildState.BUSY: frozenset({ChildState.IDLE, ChildState.STOPPING, ChildState.BACKOFF, ChildState.FATAL}),
    ChildState.STOPPING: frozenset({ChildState.BACKOFF, ChildState.FATAL}),
    ChildState.FATAL: frozenset({ChildState.BACKOFF}),
}


class PoolTransitionError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Policy:
    heartbeat_s: float = 1.0
    liveness: int = 5
    boot_timeout_s: float = 30.0
    #: children booting at once: a larger pool starts in waves, so boots on a small machine
    #: do not starve each other (and the hub) past their timeouts
    max_starting: int = 8
    backoff_base_s: float = 0.1
    backoff_max_s: float = 30.0
    stable_after_s: float = 10.0
    intensity: int = 5
    period_s: float = 60.0
    recycle_max_tasks: int = 0
    recycle_max_age_s: float = 0.0
    recycle_age_jitter_s: float = 0.0
    recycle_max_rss_bytes: int = 0
    #: children booted ahead and kept idle, not given tasks: a slot whose child exits takes
    #: one over at once instead of waiting for a new child's boot (~50-130 ms of CPython)
    spares: int = 0


@dataclass(slots=True)
class Slot:
    index: int
    generation: int = 0
    state: ChildState = ChildState.BACKOFF
    pid: int | None = None
    task_id: str | None = None
    task_deadline: float | None = None
    spawned_at: float = 0.0
    last_seen: float = 0.0
    respawn_at: float = 0.0
    tasks_done: int = 0
    rss_bytes: int = 0
    failures_in_row: int = 0
    exits: list[float] = field(default_factory=list)
    retire: bool = False
    planned_stop: bool = False
    stop_deadline: float | None = None
    recycle_at: float | None = None
    fatal_reason: str | None = None
    #: when it went FATAL: it gets another chance `period_s` later (or by `restart-slot`)
    fatal_at: float = 0.0
    #: when its current task was assigned (a heartbeat saying "idle" long after is a lost Dispatch)
    assigned_at: float = 0.0
    #: why the hub killed it, and whether the cause was the daemon's own (a failed send)
    kill_reason: str | None = None
    kill_ours: bool = False
    #: a spare: booted and kept ready, never given a task; its process is taken over by a
    #: slot whose child exits, and it boots another
    spare: bool = False
    #: the current process's name on the children socket, `<name>.<generation>` of the
    #: slot that spawned it (a slot that took over a spare carries the spare's; a spare
    #: whose process was taken has none until it spawns again)
    identity: str = ""

    def __post_init__(self) -> None:
        self.identity = self.identity or f"{self.name}.{self.generation}"

    @property
    def name(self) -> str:
        return f"spare{self.index}" if self.spare else f"w{self.index:02d}"

    def move(self, to: ChildState) -> ChildState:
        if to not in TRANSITIONS[self.state]:
            raise PoolTransitionError(f"{self.identity}: {self.state.value} -> {to.value} is not allowed")
        old, self.state = self.state, to
        return old


Action = Literal["spawn", "kill", "stop"]


@dataclass(frozen=True, slots=True)
class Due:
    """Something the hub must do now to a slot, and why."""

    action: Action
    slot: Slot
    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    """What a child's exit means: respawn at `respawn_at`, FATAL, the slot is gone, or the slot
    took over a ready spare's process (`took_spare`: it is IDLE now, and the spare boots anew)."""

    verdict: Literal["respawn", "fatal", "removed", "took_spare"]
    reason: str
    respawn_at: float = 0.0


def restart_delay_s(failures_in_row: int, base_s: float, max_s: float, rand: float) -> float:
    """0 for an isolated crash; then exponential with jitter in [ceiling/2, ceiling]."""
    if failures_in_row <= 0:
        return 0.0
    ceiling = min(max_s, base_s * 2.0 ** (failures_in_row - 1))
    return ceiling * (0.5 + rand / 2)


@dataclass(slots=True)
class Pool:
    policy: Policy
    slots: list[Slot] = field(default_factory=list)
    _by_identity: dict[str, Slot] = field(default_factory=dict)
    #: last generation of each removed slot index, so a regrown slot never reuses an identity
    _generations: dict[tuple[bool, int], int] = field(default_factory=dict)

    # ---- size -------------------------------------------------------------------

    def resize(self, n: int, now: float) -> list[Due]:
        """Grow with new BACKOFF slots due now; shrink by retiring the highest slots. The
        spares follow `policy.spares` (none for an empty pool)."""
        out = self._fit(False, n, now)
        out += self._fit(True, self.policy.spares if n > 0 else 0, now)
        self.slots.sort(key=lambda s: (s.spare, s.index))
        return out

    def _fit(self, spare: bool, n: int, now: float) -> list[Due]:
        out: list[Due] = []
        live = [s for s in self.slots if not s.retire and s.spare is spare]
        for slot in live[n:]:
            slot.retire = True
            if slot.state in (ChildState.IDLE, ChildState.STARTING):
                out.append(Due("stop", slot, "scaled down"))
            elif slot.state in (ChildState.BACKOFF, ChildState.FATAL):
                self._remove(slot)
        used = {s.index for s in self.slots if s.spare is spare}
        for _ in range(max(0, n - len(live))):
            index = next(i for i in range(len(used) + 1) if i not in used)
            used.add(index)
            self.slots.append(Slot(index=index, respawn_at=now, spare=spare,
                                   generation=self._generations.get((spare, index), 0)))
        return out

    @property
    def size(self) -> int:
        return sum(1 for s in self.slots if not s.retire and not s.spare)

    def workers(self) -> list[Slot]:
        """The slots that run tasks (every slot but the spares)."""
        return [s for s in self.slots if not s.spare]

    def spares(self) -> list[Slot]:
        return [s for s in self.slots if s.spare]

    def spare_counts(self) -> dict[str, int]:
        """The spares: ready (booted, idle), fatal (the next boot will fail too) and in all."""
        spares = self.spares()
        return {"ready": sum(s.state is ChildState.IDLE for s in spares),
                "fatal": sum(s.state is ChildState.FATAL for s in spares), "total": len(spares)}

    def _remove(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self._by_identity.pop(slot.identity, None)
        self._generations[(slot.spare, slot.index)] = slot.generation

    # ---- lifecycle --------------------------------------------------------------

    def spawning(self, slot: Slot) -> str:
        """A new generation is about to be spawned; returns its identity."""
        self._by_identity.pop(slot.identity, None)
        slot.generation += 1
        slot.identity = f"{slot.name}.{slot.generation}"
        self._by_identity[slot.identity] = slot
        return slot.identity

    def spawned(self, slot: Slot, pid: int, now: float) -> None:
        slot.move(ChildState.STARTING)  # BACKOFF -> STARTING
        slot.pid, slot.spawned_at, slot.last_seen = pid, now, now
        slot.tasks_done, slot.rss_bytes = 0, 0
        slot.recycle_at = None

    def spawn_failed(self, slot: Slot, reason: str, now: float) -> None:
        slot.move(ChildState.FATAL)  # BACKOFF -> FATAL
        slot.fatal_reason, slot.fatal_at = reason, now

    def find(self, identity: str) -> Slot | None:
        return self._by_identity.get(identity)

    def seen(self, slot: Slot, now: float, rss_bytes: int | None = None) -> None:
        slot.last_seen = now
        if rss_bytes:
            slot.rss_bytes = rss_bytes

    def hello(self, slot: Slot, now: float, rand: float) -> bool:
        """A child booted. False if the slot was not expecting it (stale generation)."""
        if slot.state is not ChildState.STARTING:
            return False
        slot.move(ChildState.IDLE)  # STARTING -> IDLE
        slot.last_seen = now
        if self.policy.recycle_max_age_s > 0:
            slot.recycle_at = now + self.policy.recycle_max_age_s + rand * self.policy.recycle_age_jitter_s
        return True

    def alive(self) -> list[Slot]:
        return [s for s in self.slots if s.pid is not None]

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.state is ChildState.IDLE and not s.retire and not s.spare]

    def assign(self, slot: Slot, task_id: str, deadline: float, now: float) -> None:
        slot.move(ChildState.BUSY)  # IDLE -> BUSY
        slot.task_id, slot.task_deadline, slot.assigned_at = task_id, deadline, now

    def released(self, slot: Slot, now: float) -> Due | None:
        """The child finished its task. Returns a stop if it must be recycled now. A child
        being stopped or killed stays so: its last Result does not make it idle again."""
        if slot.state is not ChildState.BUSY:
            return None
        slot.move(ChildState.IDLE)  # BUSY -> IDLE
        slot.task_id, slot.task_deadline = None, None
        slot.tasks_done += 1
        reason = self._recycle_reason(slot, now)
        return Due("stop", slot, reason) if reason else None

    def _recycle_reason(self, slot: Slot, now: float) -> str | None:
        p = self.policy
        if slot.retire:
            return "scaled down"
        if p.recycle_max_tasks and slot.tasks_done >= p.recycle_max_tasks:
            return f"recycle: {slot.tasks_done} tasks"
        if slot.recycle_at is not None and now >= slot.recycle_at:
            return "recycle: max age"
        if p.recycle_max_rss_bytes and slot.rss_bytes > p.recycle_max_rss_bytes:
            return f"recycle: rss {slot.rss_bytes} bytes"
        return None

    def stopping(self, slot: Slot, deadline: float | None, planned: bool) -> None:
        """The hub told the child to stop (planned) or killed it; `deadline` is when to
        SIGKILL it if it has not exited (None: already killed)."""
        if slot.state is not ChildState.STOPPING:
            slot.move(ChildState.STOPPING)  # * -> STOPPING
            slot.planned_stop = planned
        slot.stop_deadline = deadline

    def exited(self, slot: Slot, code: int | None, now: float, rand: float) -> Exit:
        """The child process is gone (and reaped). Decide its slot's future."""
        planned = slot.state is ChildState.STOPPING and slot.planned_stop
        slot.pid, slot.task_id, slot.task_deadline = None, None, None
        slot.planned_stop, slot.stop_deadline = False, None
        if slot.retire:
            self._remove(slot)
            return Exit("removed", "scaled down")
        if not planned and code == BOOT_FAILURE_EXIT:
            return self._fatal(slot, f"boot failure (exit {code})", now)
        if planned:
            slot.move(ChildState.BACKOFF)  # STOPPING -> BACKOFF (recycle: at once)
            slot.respawn_at = now
            return self._take_spare(slot, "planned", now) or Exit("respawn", "planned", now)
        if now - slot.spawned_at >= self.policy.stable_after_s:
            slot.failures_in_row = 0
        slot.exits = [t for t in slot.exits if t > now - self.policy.period_s] + [now]
        if len(slot.exits) > self.policy.intensity:
            return self._fatal(
                slot, f"{len(slot.exits)} restarts in {self.policy.period_s:g}s (intensity {self.policy.intensity})",
                now)
        delay = restart_delay_s(slot.failures_in_row, self.policy.backoff_base_s, self.policy.backoff_max_s, rand)
        slot.failures_in_row += 1
        slot.move(ChildState.BACKOFF)  # * -> BACKOFF
        slot.respawn_at = now + delay
        took = self._take_spare(slot, f"exit {code}", now) if delay == 0 else None
        return took or Exit("respawn", f"exit {code}", slot.respawn_at)

    def _take_spare(self, slot: Slot, reason: str, now: float) -> Exit | None:
        """A slot due to respawn now takes over a ready spare's process, if there is one (a
        spare's own exit, or a crash loop's backoff, waits for a boot as before). The spare
        is due to boot another at once."""
        spare = next((s for s in self.slots if s.spare and s.state is ChildState.IDLE and not s.retire), None)
        if slot.spare or spare is None:
            return None
        slot.move(ChildState.IDLE)  # BACKOFF -> IDLE
        self._by_identity.pop(slot.identity, None)  # the dead process's late messages find no slot
        slot.identity, slot.pid, slot.last_seen, slot.rss_bytes = spare.identity, spare.pid, spare.last_seen, spare.rss_bytes
        slot.spawned_at, slot.tasks_done, slot.recycle_at = now, 0, spare.recycle_at  # stable from now on
        self._by_identity[slot.identity] = slot
        spare.move(ChildState.BACKOFF)  # IDLE -> BACKOFF
        spare.identity, spare.pid, spare.respawn_at, spare.recycle_at = "", None, now, None
        return Exit("took_spare", reason, now)

    def _fatal(self, slot: Slot, reason: str, now: float) -> Exit:
        slot.move(ChildState.FATAL)  # * -> FATAL
        slot.fatal_reason, slot.fatal_at = reason, now
        return Exit("fatal", reason)

    def revive(self, slot: Slot, now: float) -> bool:
        """Give a FATAL slot another chance: it is respawned now, with a clean restart record."""
        if slot.state is not ChildState.FATAL or slot.retire:
            return False
        slot.move(ChildState.BACKOFF)  # FATAL -> BACKOFF
        slot.respawn_at, slot.exits, slot.failures_in_row = now, [], 0
        return True

    def forgive(self, now: float, gap_s: float) -> None:
        """The hub itself was stalled for `gap_s` (paused, starved): the silence was ours, so
        every child's liveness and task deadline start over from now."""
        for slot in self.slots:
            if slot.state in (ChildState.IDLE, ChildState.BUSY):
                slot.last_seen = now
                if slot.task_deadline is not None:
                    slot.task_deadline += gap_s
            elif slot.state is ChildState.STARTING:
                slot.spawned_at = now

    # ---- timers -----------------------------------------------------------------

    def due(self, now: float) -> list[Due]:
        out: list[Due] = []
        p = self.policy
        starting = sum(1 for s in self.slots if s.state is ChildState.STARTING)
        for slot in self.slots:
            if slot.state is ChildState.FATAL and now >= slot.fatal_at + p.period_s:
                self.revive(slot, now)  # FATAL -> BACKOFF: another chance after a quiet period
            if slot.state is ChildState.BACKOFF and not slot.retire and slot.respawn_at <= now:
                if starting < p.max_starting:  # the rest wait for a Hello (an event) to free a place
                    starting += 1
                    out.append(Due("spawn", slot, "respawn"))
            elif slot.state is ChildState.STARTING and now - slot.spawned_at > p.boot_timeout_s:
                out.append(Due("kill", slot, f"no hello in {p.boot_timeout_s:g}s"))
            elif slot.state in (ChildState.IDLE, ChildState.BUSY) and now - slot.last_seen > p.heartbeat_s * p.liveness:
                out.append(Due("kill", slot, f"silent for {now - slot.last_seen:.1f}s"))
            elif slot.state is ChildState.BUSY and slot.task_deadline is not None and now > slot.task_deadline:
                out.append(Due("kill", slot, "task overran its deadline and grace"))
            elif slot.state is ChildState.IDLE and (reason := self._recycle_reason(slot, now)):
                out.append(Due("stop", slot, reason))
            elif slot.state is ChildState.STOPPING and slot.stop_deadline is not None and now > slot.stop_deadline:
                out.append(Due("kill", slot, "did not stop in time"))
        return out

    def next_deadline(self) -> float | None:
        p = self.policy
        times: list[float] = []
        for slot in self.slots:
            if slot.state is ChildState.BACKOFF and not slot.retire:
                times.append(slot.respawn_at)
            elif slot.state is ChildState.STARTING:
                times.append(slot.spawned_at + p.boot_timeout_s)
            elif slot.state in (ChildState.IDLE, ChildState.BUSY):
                times.append(slot.last_seen + p.heartbeat_s * p.liveness)
                if slot.task_deadline is not None:
                    times.append(slot.task_deadline)
                if slot.state is ChildState.IDLE and slot.recycle_at is not None:
                    times.append(slot.recycle_at)
            elif slot.state is ChildState.STOPPING and slot.stop_deadline is not None:
                times.append(slot.stop_deadline)
            elif slot.state is ChildState.FATAL and not slot.retire:
                times.append(slot.fatal_at + p.period_s)
        return min(times) if times else None

    def counts(self) -> dict[str, int]:
        """Slots by state, the spares left out (they run no task)."""
        out = {s.value: 0 for s in ChildState}
        for slot in self.slots:
            if not slot.spare:
                out[slot.state.value] += 1
        return out


def policy_of(config: Config) -> Policy:
    """The pool's policy, from the config's [daemon], [restart] and [recycle] sections."""
    r, rc, d = config.restart, config.recycle, config.daemon
    return Policy(
        heartbeat_s=d.heartbeat_s, liveness=d.liveness, max_starting=d.max_starting, backoff_base_s=r.backoff_base_s,
        backoff_max_s=r.backoff_max_s, stable_after_s=r.stable_after_s, intensity=r.intensity,
        period_s=r.period_s, recycle_max_tasks=rc.max_tasks, recycle_max_age_s=rc.max_age_s,
        recycle_age_jitter_s=rc.max_age_jitter_s, recycle_max_rss_bytes=int(rc.max_rss_mb * 2**20),
        spares=d.spares,
    )
