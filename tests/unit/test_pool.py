"""The child half of the pure core as tables: slot state + event (+ now, rand) -> decision.

A "hub" here is a few lines that apply what the pool asks for, the way the daemon does:
spawn -> spawning + spawned, kill -> stopping(None, planned=False), stop -> stopping(deadline, planned=True).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from supervisord.core.pool import (
    BOOT_FAILURE_EXIT,
    TRANSITIONS,
    ChildState,
    Due,
    Exit,
    Policy,
    Pool,
    PoolTransitionError,
    Slot,
    restart_delay_s,
)

pytestmark = pytest.mark.timeout(10)

C = ChildState
POLICY = Policy(heartbeat_s=1.0, liveness=5, boot_timeout_s=30.0, backoff_base_s=0.1, backoff_max_s=30.0,
                stable_after_s=10.0, intensity=5, period_s=60.0)
STOP_GRACE_S = 7.0
_pids = itertools.count(1000)


def make_pool(n: int = 1, now: float = 0.0, **policy: object) -> Pool:
    pool = Pool(replace(POLICY, **policy))  # type: ignore[arg-type]
    assert pool.resize(n, now) == []
    return pool


def spawn(pool: Pool, slot: Slot, now: float) -> str:
    identity = pool.spawning(slot)
    pool.spawned(slot, next(_pids), now)
    return identity


def boot(pool: Pool, slot: Slot, now: float, rand: float = 0.0) -> Slot:
    spawn(pool, slot, now)
    assert pool.hello(slot, now, rand)
    return slot


def apply(pool: Pool, due: Due, now: float) -> None:
    """What the daemon's `_apply` does to the pool."""
    if due.action == "spawn":
        spawn(pool, due.slot, now)
    elif due.action == "kill":
        pool.stopping(due.slot, None, planned=False)
    else:
        pool.stopping(due.slot, now + STOP_GRACE_S, planned=True)


def in_state(pool: Pool, slot: Slot, state: ChildState, now: float = 0.0) -> Slot:
    """Drive `slot` through the real transitions into `state`."""
    if state is C.BACKOFF:
        return slot
    if state is C.FATAL:
        pool.spawning(slot)
        pool.spawn_failed(slot, "spawn failed: test", 0.0)
        return slot
    spawn(pool, slot, now)
    if state is C.STARTING:
        return slot
    if state is C.STOPPING:
        pool.stopping(slot, now + STOP_GRACE_S, planned=True)
        return slot
    pool.hello(slot, now, 0.0)
    if state is C.BUSY:
        pool.assign(slot, "task-1", now + 100.0, 0.0)
    return slot


# ---- the transition table ---------------------------------------------------------------

ALLOWED = [(a, b) for a, bs in TRANSITIONS.items() for b in bs]
FORBIDDEN = [(a, b) for a, b in itertools.product(C, C) if (a, b) not in ALLOWED]


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=lambda s: s.value)
def test_allowed_move(old: ChildState, new: ChildState) -> None:
    slot = Slot(index=0, state=old)
    assert slot.move(new) is old
    assert slot.state is new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_move(old: ChildState, new: ChildState) -> None:
    slot = Slot(index=0, state=old)
    with pytest.raises(PoolTransitionError, match=f"w00.0: {old.value} -> {new.value}"):
        slot.move(new)
    assert slot.state is old


# ---- size -------------------------------------------------------------------------------

def test_resize_up_adds_backoff_slots_due_now() -> None:
    pool = make_pool(0)
    assert pool.resize(3, now=5.0) == []
    assert [(s.name, s.state, s.respawn_at) for s in pool.slots] == [
        ("w00", C.BACKOFF, 5.0), ("w01", C.BACKOFF, 5.0), ("w02", C.BACKOFF, 5.0)]
    assert pool.size == 3
    assert pool.due(4.9) == []
    assert [(d.action, d.slot.name) for d in pool.due(5.0)] == [("spawn", "w00"), ("spawn", "w01"),
                                                               ("spawn", "w02")]


def test_resize_to_the_same_size_does_nothing() -> None:
    pool = make_pool(2)
    assert pool.resize(2, now=1.0) == []
    assert pool.size == 2 and len(pool.slots) == 2


def test_resize_down_retires_the_highest_slots_by_state() -> None:
    pool = make_pool(6)
    states = [C.IDLE, C.IDLE, C.BUSY, C.STARTING, C.BACKOFF, C.FATAL]
    for slot, state in zip(list(pool.slots), states):
        in_state(pool, slot, state)
    dues = pool.resize(1, now=1.0)
    assert [(d.action, d.slot.name, d.reason) for d in dues] == [
        ("stop", "w01", "scaled down"), ("stop", "w03", "scaled down")]
    assert [s.name for s in pool.slots] == ["w00", "w01", "w02", "w03"]  # BACKOFF and FATAL are gone
    assert [s.retire for s in pool.slots] == [False, True, True, True]
    assert pool.size == 1
    assert [s.name for s in pool.idle()] == ["w00"]  # a retiring idle child gets no work


def test_a_busy_slot_retires_after_its_task() -> None:
    pool = make_pool(2)
    w0, w1 = pool.slots
    boot(pool, w0, 0.0)
    boot(pool, w1, 0.0)
    pool.assign(w1, "t", 100.0, 0.0)
    assert pool.resize(1, now=1.0) == []
    assert w1.retire and w1.state is C.BUSY
    due = pool.released(w1, now=2.0)
    assert due is not None and (due.action, due.slot, due.reason) == ("stop", w1, "scaled down")
    apply(pool, due, 2.0)
    identity = w1.identity
    exit_ = pool.exited(w1, 0, now=3.0, rand=0.5)
    assert (exit_.verdict, exit_.reason) == ("removed", "scaled down")
    assert w1 not in pool.slots and pool.find(identity) is None
    assert pool.size == 1


def test_a_retired_slot_that_crashes_is_removed_too() -> None:
    pool = make_pool(2)
    w1 = boot(pool, pool.slots[1], 0.0)
    pool.assign(w1, "t", 100.0, 0.0)
    pool.resize(1, now=1.0)
    assert pool.exited(w1, -9, now=2.0, rand=0.0).verdict == "removed"
    assert [s.name for s in pool.slots] == ["w00"]


def test_growing_reuses_the_lowest_free_index() -> None:
    pool = make_pool(4)
    for slot in pool.slots:
        boot(pool, slot, 0.0)
    pool.assign(pool.slots[3], "t", 100.0, 0.0)
    pool.resize(2, now=1.0)  # w02 stops, w03 retires after its task
    pool.exited(pool.slots[2], 0, 2.0, 0.0)
    assert [s.name for s in pool.slots] == ["w00", "w01", "w03"]
    pool.resize(4, now=3.0)
    assert [(s.name, s.retire) for s in pool.slots] == [
        ("w00", False), ("w01", False), ("w02", False), ("w03", True), ("w04", False)]
    assert pool.size == 4


# ---- lifecycle ---------------------------------------------------------------------------

def test_a_regrown_slot_never_reuses_an_identity() -> None:
    """Identities route messages and name the child in the journal: one per process, ever."""
    pool = make_pool(2)
    w1 = boot(pool, pool.slots[1], 0.0)
    assert w1.identity == "w01.1"
    (d,) = pool.resize(1, now=1.0)
    apply(pool, d, 1.0)
    pool.exited(w1, 0, now=2.0, rand=0.0)
    pool.resize(2, now=3.0)
    fresh = pool.slots[1]
    assert fresh is not w1 and fresh.name == "w01"
    assert spawn(pool, fresh, 3.0) == "w01.2"
    assert pool.find("w01.1") is None


def test_spawning_bumps_generation_and_identity() -> None:
    pool = make_pool(1)
    slot = pool.slots[0]
    assert slot.identity == "w00.0"
    assert pool.spawning(slot) == "w00.1"
    assert pool.find("w00.1") is slot
    pool.spawned(slot, 4242, now=1.0)
    assert (slot.state, slot.pid, slot.spawned_at, slot.last_seen) == (C.STARTING, 4242, 1.0, 1.0)
    pool.exited(slot, 1, now=2.0, rand=0.0)
    assert pool.spawning(slot) == "w00.2"
    assert pool.find("w00.1") is None  # a late message from the old child is a stranger's
    assert pool.find("w00.2") is slot


def test_spawned_resets_per_child_counters() -> None:
    pool = make_pool(1, recycle_max_age_s=100.0)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.seen(slot, 1.0, rss_bytes=123)
    pool.assign(slot, "t", 10.0, 0.0)
    pool.released(slot, 2.0)
    assert (slot.tasks_done, slot.rss_bytes, slot.recycle_at) == (1, 123, 100.0)
    pool.stopping(slot, 10.0, planned=True)
    pool.exited(slot, 0, 3.0, 0.0)
    spawn(pool, slot, 4.0)
    assert (slot.tasks_done, slot.rss_bytes, slot.recycle_at) == (0, 0, None)


def test_spawn_failed_is_fatal_until_its_period_is_over() -> None:
    pool = make_pool(1)
    slot = pool.slots[0]
    pool.spawning(slot)
    pool.spawn_failed(slot, "spawn failed: ENOENT", 0.0)
    assert (slot.state, slot.fatal_reason) == (C.FATAL, "spawn failed: ENOENT")
    assert pool.due(59.9) == [] and pool.next_deadline() == 60.0  # another chance after period_s


@pytest.mark.parametrize("state", list(C), ids=lambda s: s.value)
def test_hello_only_from_starting(state: ChildState) -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], state)
    accepted = pool.hello(slot, now=1.0, rand=0.0)
    assert accepted is (state is C.STARTING)
    assert slot.state is (C.IDLE if state is C.STARTING else state)


@pytest.mark.parametrize(
    ("max_age_s", "jitter_s", "rand", "recycle_at"),
    [(0.0, 0.0, 0.5, None), (0.0, 50.0, 0.5, None), (100.0, 0.0, 0.9, 110.0), (100.0, 50.0, 0.0, 110.0),
     (100.0, 50.0, 0.5, 135.0), (100.0, 50.0, 0.999, 159.95)],
)
def test_hello_sets_recycle_at_with_jitter(max_age_s: float, jitter_s: float, rand: float,
                                           recycle_at: float | None) -> None:
    pool = make_pool(1, recycle_max_age_s=max_age_s, recycle_age_jitter_s=jitter_s)
    slot = pool.slots[0]
    spawn(pool, slot, 0.0)
    assert pool.hello(slot, now=10.0, rand=rand)
    assert slot.last_seen == 10.0
    assert slot.recycle_at == (pytest.approx(recycle_at) if recycle_at is not None else None)


def test_assign_and_release() -> None:
    pool = make_pool(1)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.assign(slot, "t1", deadline=50.0, now=0.0)
    assert (slot.state, slot.task_id, slot.task_deadline) == (C.BUSY, "t1", 50.0)
    assert pool.idle() == []
    with pytest.raises(PoolTransitionError):
        pool.assign(slot, "t2", deadline=50.0, now=0.0)
    assert pool.released(slot, now=5.0) is None
    assert (slot.state, slot.task_id, slot.task_deadline, slot.tasks_done) == (C.IDLE, None, None, 1)
    assert pool.idle() == [slot]
    assert pool.released(slot, now=6.0) is None  # a second Result changes nothing
    assert (slot.state, slot.tasks_done) == (C.IDLE, 1)


@pytest.mark.parametrize(("state", "ok"), [(C.BACKOFF, False), (C.STARTING, False), (C.IDLE, True),
                                           (C.BUSY, False), (C.STOPPING, False), (C.FATAL, False)])
def test_assign_only_to_idle(state: ChildState, ok: bool) -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], state)
    if ok:
        pool.assign(slot, "t", 1.0, 0.0)
    else:
        with pytest.raises(PoolTransitionError):
            pool.assign(slot, "t", 1.0, 0.0)


@pytest.mark.parametrize(("rss", "kept"), [(None, 500), (0, 500), (700, 700)])
def test_seen_keeps_the_last_rss(rss: int | None, kept: int) -> None:
    pool = make_pool(1)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.seen(slot, 1.0, 500)
    pool.seen(slot, 2.0, rss)
    assert (slot.last_seen, slot.rss_bytes) == (2.0, kept)


# ---- recycling ---------------------------------------------------------------------------

@pytest.mark.parametrize(("max_tasks", "stop_after"), [(0, None), (1, 1), (3, 3)])
def test_recycle_by_max_tasks(max_tasks: int, stop_after: int | None) -> None:
    pool = make_pool(1, recycle_max_tasks=max_tasks)
    slot = boot(pool, pool.slots[0], 0.0)
    for n in range(1, 5):
        pool.assign(slot, f"t{n}", 100.0, 0.0)
        due = pool.released(slot, now=float(n))
        if n == stop_after:
            assert due is not None and (due.action, due.reason) == ("stop", f"recycle: {n} tasks")
            return
        assert due is None
    assert stop_after is None


@pytest.mark.parametrize(("release_at", "stops"), [(149.9, False), (150.0, True), (200.0, True)])
def test_recycle_by_age_on_release(release_at: float, stops: bool) -> None:
    pool = make_pool(1, recycle_max_age_s=100.0, recycle_age_jitter_s=100.0)
    slot = pool.slots[0]
    spawn(pool, slot, 0.0)
    pool.hello(slot, 0.0, rand=0.5)  # recycle_at = 0 + 100 + 0.5 * 100
    pool.assign(slot, "t", 1000.0, 0.0)
    pool.seen(slot, release_at)
    due = pool.released(slot, release_at)
    assert (due is not None and due.reason == "recycle: max age") is stops


def test_recycle_by_age_while_idle_is_a_due_stop() -> None:
    pool = make_pool(1, recycle_max_age_s=100.0)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.seen(slot, 99.0)
    assert pool.due(99.0) == []
    assert pool.next_deadline() == 100.0
    pool.seen(slot, 100.0)
    assert [(d.action, d.reason) for d in pool.due(100.0)] == [("stop", "recycle: max age")]


def test_busy_slots_are_not_recycled_by_age_until_released() -> None:
    pool = make_pool(1, recycle_max_age_s=100.0)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.assign(slot, "t", 1000.0, 0.0)
    pool.seen(slot, 150.0)
    assert pool.due(150.0) == []


@pytest.mark.parametrize(("rss", "stops"), [(999, False), (1000, False), (1001, True)])
def test_recycle_by_rss(rss: int, stops: bool) -> None:
    pool = make_pool(1, recycle_max_rss_bytes=1000)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.assign(slot, "t", 100.0, 0.0)
    pool.seen(slot, 1.0, rss)
    due = pool.released(slot, 1.0)
    assert (due is not None and due.reason == f"recycle: rss {rss} bytes") is stops
    assert [d.reason for d in pool.due(1.0)] == ([f"recycle: rss {rss} bytes"] if stops else [])


def test_rss_limit_zero_means_never() -> None:
    pool = make_pool(1)
    slot = boot(pool, pool.slots[0], 0.0)
    pool.seen(slot, 1.0, 10**12)
    assert pool.due(1.0) == []


# ---- exits and restarts ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("failures_in_row", "base_s", "max_s", "rand", "delay_s"),
    [
        (0, 0.1, 30.0, 0.9, 0.0),
        (-1, 0.1, 30.0, 0.9, 0.0),
        (1, 0.1, 30.0, 0.0, 0.05),
        (1, 0.1, 30.0, 1.0, 0.1),
        (2, 0.1, 30.0, 0.5, 0.15),
        (3, 0.1, 30.0, 1.0, 0.4),
        (10, 0.1, 30.0, 1.0, 30.0),  # 51.2 capped at 30
        (10, 0.1, 30.0, 0.0, 15.0),
        (50, 0.1, 30.0, 0.5, 22.5),
    ],
)
def test_restart_delay_table(failures_in_row: int, base_s: float, max_s: float, rand: float,
                             delay_s: float) -> None:
    assert restart_delay_s(failures_in_row, base_s, max_s, rand) == pytest.approx(delay_s)


@pytest.mark.parametrize("state", [C.STARTING, C.IDLE, C.BUSY], ids=lambda s: s.value)
def test_isolated_crash_respawns_at_once(state: ChildState) -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], state, now=0.0)
    exit_ = pool.exited(slot, 1, now=100.0, rand=0.9)
    assert (exit_.verdict, exit_.reason, exit_.respawn_at) == ("respawn", "exit 1", 100.0)
    assert (slot.state, slot.respawn_at, slot.failures_in_row) == (C.BACKOFF, 100.0, 1)
    assert (slot.pid, slot.task_id, slot.task_deadline) == (None, None, None)
    assert [d.action for d in pool.due(100.0)] == ["spawn"]


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_repeated_crashes_back_off_exponentially_up_to_max(rand: float) -> None:
    pool = make_pool(1, intensity=1000, backoff_base_s=0.1, backoff_max_s=30.0)
    slot, now = pool.slots[0], 0.0
    delays = []
    for k in range(14):
        spawn(pool, slot, now)
        now += 1.0  # up for 1 s: not stable
        exit_ = pool.exited(slot, 1, now, rand)
        delays.append(exit_.respawn_at - now)
        ceiling = min(30.0, 0.1 * 2 ** (k - 1)) if k else 0.0
        assert ceiling / 2 - 1e-9 <= delays[-1] <= ceiling + 1e-9
        assert delays[-1] == pytest.approx(restart_delay_s(k, 0.1, 30.0, rand))
        now = exit_.respawn_at
    assert delays[0] == 0.0
    assert all(b >= a - 1e-9 for a, b in zip(delays, delays[1:]))
    assert delays[-1] == pytest.approx(30.0 * (0.5 + rand / 2))


def test_a_stable_child_resets_the_backoff() -> None:
    pool = make_pool(1, intensity=1000)
    slot, now = pool.slots[0], 0.0
    for _ in range(4):
        spawn(pool, slot, now)
        now = pool.exited(slot, 1, now + 1.0, rand=1.0).respawn_at
    assert slot.failures_in_row == 4
    spawn(pool, slot, now)
    exit_ = pool.exited(slot, 1, now + 9.999, rand=1.0)  # not quite stable
    assert exit_.respawn_at > now + 9.999
    now = exit_.respawn_at
    spawn(pool, slot, now)
    exit_ = pool.exited(slot, 1, now + 10.0, rand=1.0)  # up for stable_after_s
    assert exit_.respawn_at == now + 10.0
    assert slot.failures_in_row == 1


@pytest.mark.parametrize(
    ("intensity", "period_s", "gap_s", "fatal_at"),
    [
        (5, 60.0, 1.0, 6),  # the 6th exit within 60 s is one too many
        (5, 60.0, 11.0, 6),  # 6 exits 11 s apart: 55 s, still within the period
        (5, 60.0, 12.5, None),  # the oldest has left the window by the 6th
        (1, 60.0, 1.0, 2),
        (3, 10.0, 3.0, 4),
        (3, 10.0, 5.0, None),
    ],
)
def test_more_than_intensity_exits_in_period_is_fatal(intensity: int, period_s: float, gap_s: float,
                                                      fatal_at: int | None) -> None:
    pool = make_pool(1, intensity=intensity, period_s=period_s, backoff_base_s=0.0)
    slot, now = pool.slots[0], 0.0
    for n in range(1, 13):
        spawn(pool, slot, now)
        now += gap_s
        exit_ = pool.exited(slot, 1, now, rand=0.0)
        if n == fatal_at:
            assert exit_.verdict == "fatal"
            assert exit_.reason == f"{intensity + 1} restarts in {period_s:g}s (intensity {intensity})"
            assert (slot.state, slot.fatal_reason) == (C.FATAL, exit_.reason)
            assert pool.due(now + period_s - 0.01) == [] and pool.next_deadline() == now + period_s
            return
        assert exit_.verdict == "respawn"
    assert fatal_at is None


@pytest.mark.parametrize("state", [C.STARTING, C.IDLE, C.BUSY], ids=lambda s: s.value)
def test_boot_failure_exit_is_fatal_at_once(state: ChildState) -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], state)
    exit_ = pool.exited(slot, BOOT_FAILURE_EXIT, now=100.0, rand=0.0)
    assert (exit_.verdict, exit_.reason) == ("fatal", f"boot failure (exit {BOOT_FAILURE_EXIT})")
    assert slot.state is C.FATAL


@pytest.mark.parametrize("code", [0, 1, -15, BOOT_FAILURE_EXIT, None])
def test_planned_stop_respawns_now_without_counting(code: int | None) -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], C.IDLE)
    slot.failures_in_row, slot.exits = 2, [0.5]
    pool.stopping(slot, 10.0, planned=True)
    assert (slot.state, slot.stop_deadline, slot.planned_stop) == (C.STOPPING, 10.0, True)
    exit_ = pool.exited(slot, code, now=3.0, rand=0.9)
    assert (exit_.verdict, exit_.reason, exit_.respawn_at) == ("respawn", "planned", 3.0)
    assert (slot.state, slot.failures_in_row, slot.exits) == (C.BACKOFF, 2, [0.5])
    assert (slot.planned_stop, slot.stop_deadline) == (False, None)


def test_a_planned_stop_that_had_to_be_killed_is_still_planned() -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], C.IDLE)
    pool.stopping(slot, 10.0, planned=True)
    pool.stopping(slot, None, planned=False)  # stop deadline passed: SIGKILL
    assert (slot.planned_stop, slot.stop_deadline) == (True, None)
    assert pool.exited(slot, -9, 11.0, 0.0).reason == "planned"


def test_a_kill_counts_as_a_crash() -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], C.IDLE)
    pool.stopping(slot, None, planned=False)
    exit_ = pool.exited(slot, -9, now=1.0, rand=0.0)
    assert (exit_.verdict, exit_.reason) == ("respawn", "exit -9")
    assert (slot.failures_in_row, slot.exits) == (1, [1.0])


# ---- timers -----------------------------------------------------------------------------

def _slot_for(case: str, pool: Pool) -> Slot:
    """One slot set up for a due()/next_deadline() case; all times are around 100."""
    slot = pool.slots[0]
    if case == "respawn":
        spawn(pool, slot, 0.0)
        pool.exited(slot, 1, 90.0, 0.0)
        slot.respawn_at = 100.0
    elif case == "boot timeout":
        spawn(pool, slot, 70.0)  # boot_timeout_s = 30
    elif case in ("idle silent", "busy silent"):
        boot(pool, slot, 0.0)
        pool.seen(slot, 95.0)  # heartbeat 1 s * liveness 5
        if case == "busy silent":
            pool.assign(slot, "t", 1000.0, 0.0)
    elif case == "busy deadline":
        boot(pool, slot, 0.0)
        pool.assign(slot, "t", 100.0, 0.0)
        pool.seen(slot, 99.0)
    elif case == "idle recycle":
        spawn(pool, slot, 0.0)
        pool.hello(slot, 0.0, rand=0.0)
        slot.recycle_at = 100.0
        pool.seen(slot, 98.0)
    elif case == "stop deadline":
        boot(pool, slot, 0.0)
        pool.stopping(slot, 100.0, planned=True)
    return slot


DUE_CASES = [
    # case, due at or after 100 (strictly after for the `>` checks), action, reason, strict
    ("respawn", "spawn", "respawn", False),
    ("boot timeout", "kill", "no hello in 30s", True),
    ("idle silent", "kill", "silent for 5.0s", True),
    ("busy silent", "kill", "silent for 5.0s", True),
    ("busy deadline", "kill", "task overran its deadline and grace", True),
    ("idle recycle", "stop", "recycle: max age", False),
    ("stop deadline", "kill", "did not stop in time", True),
]


@pytest.mark.parametrize(("case", "action", "reason", "strict"), DUE_CASES, ids=[c[0] for c in DUE_CASES])
def test_due_table(case: str, action: str, reason: str, strict: bool) -> None:
    pool = make_pool(1)
    slot = _slot_for(case, pool)
    assert pool.next_deadline() == pytest.approx(100.0)
    assert pool.due(99.99) == []
    at_deadline = pool.due(100.0)
    if strict:
        assert at_deadline == []
    after = pool.due(100.01)
    assert len(after) == 1
    assert (after[0].action, after[0].slot, after[0].reason[:8]) == (action, slot, reason[:8])
    if not strict:
        assert at_deadline == after
    assert after[0].reason.startswith(reason.split(" for ")[0])


@pytest.mark.parametrize("case", [c[0] for c in DUE_CASES])
def test_due_applied_is_never_due_again_at_the_same_time(case: str) -> None:
    pool = make_pool(1)
    _slot_for(case, pool)
    now = 100.01
    (due,) = pool.due(now)
    apply(pool, due, now)
    assert pool.due(now) == []


def test_nothing_due_for_a_killed_slot() -> None:
    pool = make_pool(1)
    slot = in_state(pool, pool.slots[0], C.STOPPING)
    pool.stopping(slot, None, planned=False)
    assert pool.due(1e9) == [] and pool.next_deadline() is None


def test_a_fatal_slot_is_revived_after_period_s_and_by_hand() -> None:
    """Defect 21: a FATAL slot gets a way back."""
    pool = make_pool(1, period_s=60.0)
    slot = pool.slots[0]
    pool.spawning(slot)
    pool.spawn_failed(slot, "spawn failed: EMFILE", 10.0)
    assert pool.due(69.0) == []
    (due,) = pool.due(70.0)
    assert (due.action, slot.state, slot.exits, slot.failures_in_row) == ("spawn", C.BACKOFF, [], 0)
    pool.spawn_failed(slot, "spawn failed: EMFILE", 70.0)
    assert pool.revive(slot, 71.0) and slot.state is C.BACKOFF and slot.respawn_at == 71.0
    assert not pool.revive(slot, 72.0)  # only a FATAL slot


def test_idle_retiring_slot_is_a_due_stop_until_applied() -> None:
    pool = make_pool(2)
    for slot in pool.slots:
        boot(pool, slot, 0.0)
    (d,) = pool.resize(1, now=1.0)
    assert [(x.action, x.slot, x.reason) for x in pool.due(1.0)] == [("stop", d.slot, "scaled down")]
    apply(pool, d, 1.0)
    assert pool.due(1.0) == []


def test_next_deadline_is_the_minimum_over_slots() -> None:
    pool = make_pool(5, recycle_max_age_s=500.0)
    w0, w1, w2, w3, w4 = pool.slots
    boot(pool, w0, 0.0)  # idle: liveness at 5, recycle at 500
    boot(pool, w1, 0.0)
    pool.assign(w1, "t", 3.0, 0.0)  # busy: deadline 3, liveness 5
    spawn(pool, w2, 0.0)  # starting: boot timeout at 30
    boot(pool, w3, 0.0)
    pool.stopping(w3, 2.0, planned=True)  # stopping: deadline 2
    spawn(pool, w4, 0.0)
    pool.exited(w4, 1, 1.0, 0.0)
    w4.respawn_at = 4.0  # backoff: respawn at 4
    assert pool.next_deadline() == 2.0
    pool.stopping(w3, None, planned=False)
    assert pool.next_deadline() == 3.0
    pool.released(w1, 1.0)
    assert pool.next_deadline() == 4.0
    spawn(pool, w4, 4.0)
    assert pool.next_deadline() == 5.0
    pool.seen(w0, 40.0)
    pool.seen(w1, 40.0)
    pool.hello(w2, 20.0, 0.0)
    pool.seen(w2, 40.0)
    assert pool.next_deadline() == 34.0  # w4's boot timeout


def test_next_deadline_none_when_nothing_waits() -> None:
    assert make_pool(0).next_deadline() is None


@pytest.mark.parametrize("seed", range(25))
def test_simulated_hub_never_applies_the_same_action_twice(seed: int) -> None:
    """Random child behaviour against the pool, applied the way the hub does. After applying
    what due(now) returned, due(now) is empty; a generation is killed at most once and stopped
    at most once; next_deadline() is never in the past."""
    rng = random.Random(seed)
    pool = make_pool(4, recycle_max_tasks=3, recycle_max_age_s=40.0, recycle_age_jitter_s=10.0,
                     recycle_max_rss_bytes=10_000, intensity=8, period_s=30.0)
    applied: set[tuple[str, str]] = set()
    exiting: dict[int, float] = {}  # id(slot) -> when its process exits
    now = 0.0
    for _ in range(600):
        now += rng.choice((0.1, 0.5, 1.0, 3.0, 7.0))
        # the world: children talk, crash, finish tasks, exit when told
        for slot in list(pool.slots):
            r = rng.random()
            if slot.pid is None:
                continue
            if id(slot) in exiting and exiting[id(slot)] <= now:
                del exiting[id(slot)]
                pool.exited(slot, rng.choice((0, 1, -9)), now, rng.random())
            elif r < 0.01:
                exiting.pop(id(slot), None)
                pool.exited(slot, rng.choice((1, -11, BOOT_FAILURE_EXIT)), now, rng.random())
            elif slot.state is C.STARTING and r < 0.5:
                pool.hello(slot, now, rng.random())
            elif slot.state in (C.IDLE, C.BUSY) and r < 0.85:
                pool.seen(slot, now, rng.randrange(1, 12_000))
                if slot.state is C.IDLE and rng.random() < 0.4:
                    pool.assign(slot, "t", now + rng.uniform(1.0, 30.0), now)
                elif slot.state is C.BUSY and rng.random() < 0.3 and (d := pool.released(slot, now)):
                    key = (d.slot.identity, "stop")
                    assert key not in applied
                    applied.add(key)
                    apply(pool, d, now)
        if rng.random() < 0.02:
            for d in pool.resize(rng.randrange(0, 6), now):
                applied.add((d.slot.identity, "stop"))
                apply(pool, d, now)
        # the hub's tick
        dues = pool.due(now)
        assert len({(id(d.slot), d.action) for d in dues}) == len(dues)
        for d in dues:
            key = (d.slot.identity, d.action)
            if d.action != "spawn":
                assert key not in applied, f"{key} applied twice at {now}"
                applied.add(key)
            apply(pool, d, now)
            if d.action == "kill":
                exiting[id(d.slot)] = now + 0.1  # SIGKILL: gone promptly
            elif d.action == "stop" and rng.random() < 0.7:
                exiting[id(d.slot)] = now + rng.uniform(0.0, 2 * STOP_GRACE_S)
        assert pool.due(now) == []
        nd = pool.next_deadline()
        assert nd is None or nd >= now, (nd, now)  # a past deadline would be something due
        assert all(s.state is not C.BACKOFF or s.respawn_at > now or s.retire for s in pool.slots)


def test_a_big_pool_boots_in_waves_of_max_starting() -> None:
    pool = Pool(Policy(max_starting=3))
    pool.resize(10, 0.0)
    spawns = [d for d in pool.due(0.0) if d.action == "spawn"]
    assert len(spawns) == 3
    for i, due in enumerate(spawns):
        pool.spawning(due.slot)
        pool.spawned(due.slot, 100 + i, 0.0)
    assert [d for d in pool.due(0.1) if d.action == "spawn"] == []  # all places taken
    pool.hello(spawns[0].slot, 0.2, 0.0)
    (more,) = [d for d in pool.due(0.2) if d.action == "spawn"]
    assert more.slot.state is ChildState.BACKOFF and more.slot not in [d.slot for d in spawns]


# ---- spares: children booted ahead, taken over by a slot whose child exits ----------------


def spare_pool(n: int = 2, spares: int = 1, now: float = 0.0) -> tuple[Pool, list[Slot], Slot]:
    """A pool of `n` slots and `spares` spares, every one booted and idle."""
    pool = make_pool(n, now, spares=spares)
    for slot in pool.slots:
        boot(pool, slot, now)
    return pool, pool.workers(), pool.spares()[0]


def test_spares_are_slots_of_their_own_that_run_no_task() -> None:
    pool, workers, spare = spare_pool(2, 1)
    assert [s.name for s in pool.slots] == ["w00", "w01", "spare0"]
    assert [s.identity for s in pool.slots] == ["w00.1", "w01.1", "spare0.1"]
    assert pool.size == 2
    assert pool.idle() == workers  # a spare is never given a task
    assert pool.counts()["idle"] == 2  # nor counted as ready
    assert spare.state is C.IDLE
    assert pool.spare_counts() == {"ready": 1, "fatal": 0, "total": 1}
    assert pool.exited(spare, BOOT_FAILURE_EXIT, 1.0, 0.0).verdict == "fatal"
    assert pool.spare_counts() == {"ready": 0, "fatal": 1, "total": 1}


def test_an_isolated_crash_takes_over_the_ready_spare_at_once() -> None:
    pool, (w0, _w1), spare = spare_pool()
    spare_pid = spare.pid
    exit_ = pool.exited(w0, -9, 2.0, 0.0)
    assert exit_.verdict == "took_spare" and exit_.reason == "exit -9" and exit_.respawn_at == 2.0
    # the slot runs on in the spare's process, under the spare's identity
    assert (w0.state, w0.pid, w0.identity, w0.spawned_at) == (C.IDLE, spare_pid, "spare0.1", 2.0)
    assert pool.find("spare0.1") is w0
    assert pool.find("w00.1") is None  # the dead process's late messages find no slot
    assert pool.idle()[0] is w0
    # the spare boots another at once
    assert (spare.state, spare.pid, spare.identity) == (C.BACKOFF, None, "")
    assert [(d.action, d.slot.name) for d in pool.due(2.0)] == [("spawn", "spare0")]
    assert spawn(pool, spare, 2.0) == "spare0.2"
    assert pool.find("spare0.2") is spare and pool.find("spare0.1") is w0


def test_a_crash_loop_still_backs_off_instead_of_using_up_spares() -> None:
    pool, (w0, _w1), spare = spare_pool()
    assert pool.exited(w0, -9, 2.0, 0.0).verdict == "took_spare"
    boot(pool, spare, 2.0)
    # the slot's process dies again 1 s after it took over: a crash in a row, so a backoff
    exit_ = pool.exited(w0, -9, 3.0, 0.0)
    assert exit_.verdict == "respawn" and exit_.respawn_at == pytest.approx(3.05)
    assert w0.state is C.BACKOFF and spare.state is C.IDLE and spare.identity == "spare0.2"


@pytest.mark.parametrize("spare_state", [C.BACKOFF, C.STARTING, C.STOPPING, C.FATAL])
def test_without_a_ready_spare_a_crash_waits_for_a_boot(spare_state: ChildState) -> None:
    pool = make_pool(1, spares=1)
    w0 = boot(pool, pool.workers()[0], 0.0)
    spare = in_state(pool, pool.spares()[0], spare_state)
    exit_ = pool.exited(w0, -9, 20.0, 0.0)
    assert exit_ == Exit("respawn", "exit -9", 20.0)
    assert w0.state is C.BACKOFF and spare.state is spare_state


def test_a_spare_that_dies_is_booted_again_and_takes_nothing() -> None:
    pool, workers, spare = spare_pool()
    exit_ = pool.exited(spare, -9, 20.0, 0.0)
    assert exit_ == Exit("respawn", "exit -9", 20.0)
    assert [s.state for s in workers] == [C.IDLE, C.IDLE] and spare.state is C.BACKOFF


def test_a_recycled_child_is_replaced_by_the_spare() -> None:
    pool, (w0, _w1), spare = spare_pool()
    spare_pid = spare.pid
    pool.stopping(w0, 20.0 + STOP_GRACE_S, planned=True)
    exit_ = pool.exited(w0, 0, 20.5, 0.0)
    assert exit_ == Exit("took_spare", "planned", 20.5)
    assert (w0.state, w0.pid) == (C.IDLE, spare_pid)


def test_a_boot_failure_and_a_scale_down_take_no_spare() -> None:
    pool, (w0, w1), spare = spare_pool()
    assert pool.exited(w0, BOOT_FAILURE_EXIT, 20.0, 0.0).verdict == "fatal"
    pool.resize(1, 20.0)  # w01 retires
    assert pool.exited(w1, 0, 20.0, 0.0).verdict == "removed"
    assert spare.state is C.IDLE


def test_the_spares_follow_the_policy_and_an_empty_pool_has_none() -> None:
    pool, _workers, spare = spare_pool(2, 1)
    dues = pool.resize(0, 10.0)
    assert sorted((d.action, d.slot.name) for d in dues) == [("stop", "spare0"), ("stop", "w00"), ("stop", "w01")]
    pool.policy = replace(pool.policy, spares=2)
    pool.resize(1, 20.0)
    # the retiring keep their names until they exit
    assert [(s.name, s.retire) for s in pool.slots] == [("w00", True), ("w01", True), ("w02", False),
                                                         ("spare0", True), ("spare1", False), ("spare2", False)]
