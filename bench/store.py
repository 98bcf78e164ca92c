"""The store's calls, timed: how long each one holds the hub's event loop. Writes
bench/results/store.json.

Every `Store` call runs on the loop, synchronously, so its wall time *is* the loop's stall;
the figures answer "can a store call make the hub miss a heartbeat (2 s)?". Measured on a
real SqliteStore in a temp dir on the state dir's kind of disk (`--dir`):

- accept: one batch (1 task, and 100 tasks), committed with synchronous=FULL (an fsync of
  the WAL each): p50/p99.
- group commit: 16 tasks finishing with 1 MiB results each (claim + record + `commit()`),
  synchronous=NORMAL: p50/p99/max, while the checkpoint thread copies the growing WAL; and
  the loop's worst lateness meanwhile (a 10 ms ticker on a real asyncio loop), which also
  shows what the checkpoint thread costs the loop through the GIL.
- list(limit=10000) over 10k tasks with 100 KiB results each, in a fresh process (its peak
  RSS is the list's): time, RSS before, peak RSS, rows returned, at the hub's reply budget
  (max_message_bytes / 2 = 8 MiB) and at 64 MiB.
- prune of those 10k tasks, in calls of `PRUNE_ROWS` rows: per call and in total.

Uses the store directly (not a daemon): this is the store's own cost, without the hub.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, pct, print_table, write_result

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core.task import Task
from supervisord.store.sqlite import PRUNE_ROWS, SqliteStore

WALL = 1_754_000_000.0


def _task(tid: str) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["echo", tid]), submitted_at=WALL)


def _ms(xs: list[float]) -> dict[str, float | None]:
    def q(p: float) -> float | None:
        v = pct(xs, p)
        return None if v is None else round(v * 1000, 3)

    return {"n": len(xs), "p50_ms": q(50), "p99_ms": q(99), "max_ms": round(max(xs) * 1000, 3)}


def bench_accept(dir_: Path, n: int) -> dict[str, Any]:
    store = SqliteStore(dir_ / "accept.db")
    try:
        out = {}
        for size in (1, 100):
            times = []
            for i in range(n):
                batch = [_task(f"a{size}-{i}-{k}") for k in range(size)]
                t0 = time.perf_counter()
                store.accept(batch)
                times.append(time.perf_counter() - t0)
            out[f"batch_{size}"] = _ms(times)
        return out
    finally:
        store.close()


async def _group_commits(store: SqliteStore, rounds: int, result: str) -> tuple[list[float], float]:
    lateness = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal lateness
        loop = asyncio.get_running_loop()
        while not stop:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            lateness = max(lateness, loop.time() - due)

    tick = asyncio.create_task(ticker())
    times = []
    for r in range(rounds):
        tasks = [_task(f"g{r}-{k}") for k in range(16)]
        store.accept(tasks)
        await asyncio.sleep(0.02)
        for t in tasks:  # started...
            t.state, t.attempts, t.epoch, t.child, t.started_at = TaskState.RUNNING, 1, 1, "w00.1", WALL
            store.claim(t)
        store.commit()
        await asyncio.sleep(0.02)
        for t in tasks:  # ... and all 16 finished in one batch of events
            t.state, t.finished_at = TaskState.SUCCEEDED, WALL + 1
            t.outcome = Outcome(exit_code=0, result=result)
            store.record(t)
        t0 = time.perf_counter()
        refused = store.commit()
        times.append(time.perf_counter() - t0)
        assert not refused and store.pending == 0
        await asyncio.sleep(0.05)
    stop = True
    await tick
    return times, lateness


def bench_group_commit(dir_: Path, rounds: int) -> dict[str, Any]:
    store = SqliteStore(dir_ / "group.db")
    try:
        times, lateness = asyncio.run(_group_commits(store, rounds, "r" * (1 << 20)))
        wal = dir_ / "group.db-wal"
        wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
        t0 = time.perf_counter()
        store.close()
        close_s = time.perf_counter() - t0
    finally:
        store.close()
    return {"tasks_per_group": 16, "result_bytes": 1 << 20, **_ms(times),
            "loop_max_lateness_ms": round(lateness * 1000, 3), "wal_mib_at_end": round(wal_mib, 1),
            "close_ms": round(close_s * 1000, 3)}


def populate(path: Path, n: int, result_bytes: int) -> None:
    store = SqliteStore(path)
    result = "r" * result_bytes
    try:
        for start in range(0, n, 500):
            batch = []
            for i in range(start, min(n, start + 500)):
                t = _task(f"l{i:05d}")
                t.state, t.attempts, t.started_at, t.finished_at = TaskState.SUCCEEDED, 1, WALL, WALL + i
                t.outcome = Outcome(exit_code=0, result=result)
                batch.append(t)
            store.accept(batch)
    finally:
        store.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def list_child(path: Path, limit: int, budget: int) -> None:
    """In a fresh process: open, list, report (ru_maxrss is this process's peak)."""
    store = SqliteStore(path)
    before = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    views = store.list(None, limit, budget)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store.close()
    print(json.dumps({"time_ms": round(elapsed * 1000, 3), "rows": len(views), "rss_before_mib": round(before / 1024, 1),
                      "peak_rss_before_mib": round(peak_before / 1024, 1), "peak_rss_mib": round(peak / 1024, 1)}))


def bench_list(dir_: Path, n: int, result_bytes: int) -> dict[str, Any]:
    path = dir_ / "list.db"
    t0 = time.perf_counter()
    populate(path, n, result_bytes)
    out: dict[str, Any] = {"tasks": n, "result_bytes": result_bytes, "populate_s": round(time.perf_counter() - t0, 1)}
    for budget in (8 << 20, 64 << 20):
        r = subprocess.run([sys.executable, __file__, "--list-child", str(path), "10000", str(budget)],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        out[f"budget_{budget >> 20}_mib"] = json.loads(r.stdout.strip().splitlines()[-1])
    store = SqliteStore(path)
    try:
        calls, pruned = [], 0
        while True:  # as the hub would: calls of at most PRUNE_ROWS rows, until none is left
            t0 = time.perf_counter()
            k = store.prune(WALL + n + 1)
            calls.append(time.perf_counter() - t0)
            pruned += k
            if k == 0:
                break
        out["prune"] = {"rows": pruned, "rows_per_call": PRUNE_ROWS, **_ms(calls),
                        "total_ms": round(sum(calls) * 1000, 3)}
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="where the databases go (default: a temp dir under /tmp)")
    p.add_argument("--accepts", type=int, default=300)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--list-tasks", type=int, default=10_000)
    p.add_argument("--list-child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.list_child:
        list_child(Path(a.list_child[0]), int(a.list_child[1]), int(a.list_child[2]))
        return 0
    dir_ = Path(tempfile.mkdtemp(prefix="supd-bench-store-", dir=a.dir or "/tmp"))
    try:
        accept = bench_accept(dir_, a.accepts)
        group = bench_group_commit(dir_, a.rounds)
        listing = bench_list(dir_, a.list_tasks, 100 << 10)
    finally:
        shutil.rmtree(dir_, ignore_errors=True)
    print_table("store calls (each one holds the hub's loop for its whole time)",
                ["call", "n", "p50 ms", "p99 ms", "max ms"],
                [["accept, 1 task (FULL)", *accept["batch_1"].values()],
                 ["accept, 100 tasks (FULL)", *accept["batch_100"].values()],
                 ["commit, 16 × 1 MiB results", group["n"], group["p50_ms"], group["p99_ms"], group["max_ms"]]])
    rows = [[f"list limit=10000, budget {k.removeprefix('budget_')}", v["rows"], v["time_ms"], v["rss_before_mib"],
             v["peak_rss_mib"]] for k, v in listing.items() if k.startswith("budget_")]
    print_table(f"list over {listing['tasks']} tasks with 100 KiB results", ["call", "rows", "ms", "RSS before MiB",
                                                                             "peak RSS MiB"], rows)
    print(f"loop max lateness during group commits: {group['loop_max_lateness_ms']} ms; "
          f"WAL at end {group['wal_mib_at_end']} MiB; close {group['close_ms']} ms; "
          f"prune of {listing['prune']['rows']} rows: max {listing['prune']['max_ms']} ms a call, "
          f"{listing['prune']['total_ms']} ms in all")
    worst_ms = max(accept["batch_100"]["max_ms"], group["max_ms"], listing["prune"]["max_ms"],
                   *(v["time_ms"] for k, v in listing.items() if k.startswith("budget_")))
    write_result("store", {"accept": accept, "group_commit": group, "list": listing,
                           "target": {"what": "no store call holds the loop past a heartbeat (2 s)",
                                      "value_ms": worst_ms, "limit_ms": 2000, "met": worst_ms < 2000}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
