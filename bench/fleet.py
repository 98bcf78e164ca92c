"""Fleet benchmark: 1, 2 and 3 supd daemons on one PostgreSQL (pgserver) draining the same
2,000 short exec tasks (`true`), against one SQLite daemon in the same run.

Reports tasks/s per setup, the hubs' claim latency (ask -> claimed tasks back on the hub,
p50/p99, over every claim of every daemon), and the single-host dispatch ratio Postgres /
SQLite. The children are split so that every setup has the same total (`--children`), to
measure the journal, not more CPUs. Writes bench/results/fleet.json.

    .venv/bin/python bench/fleet.py [--tasks 2000] [--children 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import Daemon, pct, print_table, short_tmpdir, write_result

from proto import control as ctl
from proto.task import TaskSpec


def drain(daemons: list[Daemon], n: int) -> float:
    start = time.monotonic()
    ids: list[str] = []
    for i in range(0, n, 500):  # submitted through the first host; all of them claim
        reply = daemons[0].request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"])
                                                     for _ in range(min(500, n - i))]))
        assert isinstance(reply, ctl.Accepted), reply
        ids += reply.ids
    pending = ids
    while pending:
        r = daemons[-1].request(ctl.Wait(ids=pending[:1000], timeout_s=30), timeout_s=60)
        assert isinstance(r, ctl.Tasks), r
        bad = [t for t in r.tasks if t.state != "succeeded"]
        assert not bad, bad[:3]
        done = {t.id for t in r.tasks}
        pending = [t for t in pending if t not in done]
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--children", type=int, default=4, help="children in total, split over the hosts")
    a = p.parse_args(argv)
    import pgserver

    pgdir = short_tmpdir("supd-pgbench-")
    server = pgserver.get_server(str(pgdir), cleanup_mode="stop")
    results: dict[str, object] = {"tasks": a.tasks, "children_total": a.children}
    rows = []
    try:
        with Daemon(children=a.children) as d:
            drain([d], 200)  # warm up
            wall = drain([d], a.tasks)
        results["sqlite_1"] = {"wall_s": round(wall, 3), "tasks_per_s": round(a.tasks / wall, 1)}
        rows.append(["sqlite, 1 host", a.tasks / wall, None, None])
        for hosts in (1, 2, 3):
            dbname = f"bench{hosts}"
            server.psql(f"CREATE DATABASE {dbname};")
            url = server.get_uri(dbname)
            per = max(1, a.children // hosts)
            daemons = []
            try:
                for i in range(hosts):
                    cfg = f'[journal]\nurl = "{url}"\nhost = "h{i}"\n'
                    daemons.append(Daemon(children=per, config=cfg).start())
                drain(daemons, 200)
                claims_before = sum(d.status()["fleet"]["claims"] for d in daemons)
                wall = drain(daemons, a.tasks)
                fleets = [d.status()["fleet"] for d in daemons]
            finally:
                for d in daemons:
                    d.stop()
            p50 = max(f["claim_ms_p50"] or 0 for f in fleets)
            p99 = max(f["claim_ms_p99"] or 0 for f in fleets)
            results[f"postgres_{hosts}"] = {"wall_s": round(wall, 3), "tasks_per_s": round(a.tasks / wall, 1),
                                            "children_per_host": per, "claim_ms_p50_worst_host": p50,
                                            "claim_ms_p99_worst_host": p99,
                                            "claims": sum(f["claims"] for f in fleets) - claims_before}
            rows.append([f"postgres, {hosts} host{'s' if hosts > 1 else ''}", a.tasks / wall, p50, p99])
    finally:
        server.cleanup()
    sq, pg1 = results["sqlite_1"], results["postgres_1"]
    assert isinstance(sq, dict) and isinstance(pg1, dict)
    results["postgres_1_over_sqlite_dispatch_ratio"] = round(pg1["tasks_per_s"] / sq["tasks_per_s"], 3)
    print_table(f"{a.tasks} x `true`, {a.children} children in total", ["setup", "tasks/s", "claim p50 ms",
                                                                          "claim p99 ms"], rows)
    print(f"Postgres single host / SQLite dispatch: {results['postgres_1_over_sqlite_dispatch_ratio']}")
    write_result("fleet", results)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
