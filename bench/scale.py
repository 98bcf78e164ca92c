"""Scale: 256 children (start-up time until all are idle, memory), and a 100,000-task queue
(submit throughput in batches of 10,000 with no children to run them, daemon RSS with the
queue full), then the drain of 10,000 `true` tasks on 8 children (draining 100,000 would take
minutes on 2 cores; the per-task cost is the same). Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psutil
from common import Daemon, print_table, write_result

from proto import control as ctl
from proto.task import TaskSpec

BIG_QUEUE = "[daemon]\nmax_queued = 200000\n"


def memory(pid: int) -> dict[str, float]:
    d = psutil.Process(pid)
    kids = d.children()
    rss = [k.memory_info().rss for k in kids]
    uss = [k.memory_full_info().uss for k in kids]
    return {"daemon_rss_mib": d.memory_info().rss / 2**20, "children_rss_total_mib": sum(rss) / 2**20,
            "children_uss_total_mib": sum(uss) / 2**20, "child_rss_mib": sum(rss) / len(rss) / 2**20 if rss else 0}


def children_startup(n: int, timeout_s: float) -> dict[str, Any]:
    """Time from `supd --children n` to all idle; if that never happens, say how far it got."""
    t0 = time.monotonic()
    d = Daemon(children=n)
    try:
        try:
            d.start(ready_timeout_s=timeout_s)
        except RuntimeError:
            log = d.log_path.read_text(errors="replace")
            pool = d.status()["pool"] if d.client else {}
            return {"children": n, "startup_s": None, "all_ready": False, "timeout_s": timeout_s,
                    "idle_at_timeout": pool.get("idle"), "spawns": log.count("event=child_spawned"),
                    "children_left_daemon_lost": log.count("daemon lost")}
        startup = time.monotonic() - t0
        assert d.proc is not None
        log = d.log_path.read_text(errors="replace")
        return {"children": n, "startup_s": startup, "all_ready": True, "spawns": log.count("event=child_spawned"),
                **memory(d.proc.pid)}
    finally:
        d.stop()


def submit_all(d: Daemon, total: int, batch: int) -> tuple[list[str], float]:
    ids: list[str] = []
    t0 = time.monotonic()
    for _ in range(0, total, batch):
        reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"]) for _ in range(batch)]),
                          timeout_s=120)
        assert isinstance(reply, ctl.Accepted), reply
        ids += reply.ids
    return ids, time.monotonic() - t0


def queue(total: int, batch: int) -> dict[str, float]:
    with Daemon(children=0, config=BIG_QUEUE) as d:
        assert d.proc is not None
        rss0 = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        ids, wall = submit_all(d, total, batch)
        rss1 = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        t = time.perf_counter()
        d.status()
        status_ms = 1000 * (time.perf_counter() - t)
    return {"tasks": len(ids), "batch": batch, "submit_wall_s": wall, "submit_per_s": len(ids) / wall,
            "daemon_rss_empty_mib": rss0, "daemon_rss_queued_mib": rss1, "status_ms_with_queue": status_ms}


def drain(total: int, batch: int, children: int) -> dict[str, float]:
    with Daemon(children=0, config=BIG_QUEUE) as d:
        ids, _ = submit_all(d, total, batch)
        t0 = time.monotonic()
        reply = d.request(ctl.Scale(children=children))
        assert isinstance(reply, ctl.Ok), reply
        pending = ids
        ok = 0
        while pending:
            r = d.request(ctl.Wait(ids=pending, timeout_s=30), timeout_s=120)
            assert isinstance(r, ctl.Tasks), r
            ok += sum(t.state == "succeeded" for t in r.tasks)
            pending = r.pending
        wall = time.monotonic() - t0
    return {"tasks": total, "children": children, "succeeded": ok, "drain_s": wall, "tasks_per_s": total / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--children", default="64,256", help="comma-separated pool sizes to start")
    p.add_argument("--ready-timeout", type=float, default=90.0)
    p.add_argument("--queue", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--drain", type=int, default=10_000)
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.children.split(",")]
    results: dict[str, Any] = {"children": [children_startup(n, a.ready_timeout) for n in sizes],
                               "queue": queue(a.queue, a.batch), "drain": drain(a.drain, a.batch, 8)}
    q, dr = results["queue"], results["drain"]
    print_table("children start-up", ["children", "all ready", "start-up s", "spawns", "daemon RSS MiB",
                                      "children RSS MiB", "children USS MiB", "RSS/child MiB"],
                [[c["children"], c["all_ready"], c["startup_s"], c["spawns"], c.get("daemon_rss_mib"),
                  c.get("children_rss_total_mib"), c.get("children_uss_total_mib"), c.get("child_rss_mib")]
                 for c in results["children"]])
    print_table(f"{q['tasks']:,} queued tasks (no children)", ["submit s", "submits/s", "RSS empty MiB",
                                                               "RSS queued MiB", "Status ms"],
                [[q["submit_wall_s"], q["submit_per_s"], q["daemon_rss_empty_mib"], q["daemon_rss_queued_mib"],
                  q["status_ms_with_queue"]]])
    print_table(f"drain {dr['tasks']:,} × true on {dr['children']} children",
                ["succeeded", "drain s", "tasks/s"], [[dr["succeeded"], dr["drain_s"], dr["tasks_per_s"]]])
    write_result("scale", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
