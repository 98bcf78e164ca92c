"""Parallel speedup: 32 × `sleep 0.5` on 8 children (ideal 8) vs `xargs -P 8`, same run.

Speedup = the sequential time of the work (32 × 0.5 s = 16 s) / wall time.
Writes bench/results/speedup.json.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from common import Daemon, print_table, write_result

from proto import control as ctl
from proto.task import TaskSpec


def supd_wall(d: Daemon, n: int, sleep_s: float) -> tuple[float, list[float]]:
    start = time.monotonic()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["sleep", str(sleep_s)]) for _ in range(n)]))
    assert isinstance(reply, ctl.Accepted), reply
    r = d.request(ctl.Wait(ids=reply.ids, timeout_s=60), timeout_s=90)
    wall = time.monotonic() - start
    assert isinstance(r, ctl.Tasks) and not r.pending and all(t.state == "succeeded" for t in r.tasks), r
    return wall, [t.duration_s or 0.0 for t in r.tasks]


def xargs_wall(n: int, sleep_s: float) -> float:
    data = "".join(f"{sleep_s}\n" for _ in range(n)).encode()
    start = time.monotonic()
    subprocess.run(["xargs", "-P", "8", "-n", "1", "sleep"], input=data, check=True)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--sleep", type=float, default=0.5)
    p.add_argument("--children", type=int, default=8)
    a = p.parse_args(argv)
    work = a.tasks * a.sleep
    with Daemon(children=a.children) as d:
        supd_wall(d, a.children, 0.01)  # warm-up
        wall, durations = supd_wall(d, a.tasks, a.sleep)
    xwall = xargs_wall(a.tasks, a.sleep)
    results = {
        "supd": {"wall_s": wall, "speedup": work / wall, "efficiency": work / wall / a.children,
                 "mean_task_s": sum(durations) / len(durations)},
        "xargs -P 8": {"wall_s": xwall, "speedup": work / xwall, "efficiency": work / xwall / a.children},
    }
    print_table(f"speedup: {a.tasks} × sleep {a.sleep:g}, {a.children} in parallel (ideal {a.children})",
                ["runner", "wall s", "speedup", "efficiency"],
                [[k, v["wall_s"], v["speedup"], v["efficiency"]] for k, v in results.items()])
    s = results["supd"]["speedup"]
    write_result("speedup", {"tasks": a.tasks, "sleep_s": a.sleep, "children": a.children, "runners": results,
                             "target": {"what": "parallel speedup >= 7.6 of ideal 8", "value": s, "limit": 7.6,
                                        "met": s >= 7.6}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
