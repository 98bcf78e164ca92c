"""Workflow scheduling overhead: a 200-step fan-out of `true` tasks as a workflow, against
the same 200 tasks submitted as one plain batch, in the same run, on the same daemon.

Three shapes, alternated for `--rounds` rounds (the median is reported):
- batch:   `Submit` of N `true` tasks, then `Wait` until all are final (the baseline);
- fan-out: a workflow of one root step and N `true` steps after it (N steps, one trace);
- map:     a workflow whose `map` step runs `true` once per line of a root step's result.
Overhead per step = (workflow wall - batch wall) / N: what deciding, saving the record after
every event and the spans cost per step, on top of running the same tasks. Writes
bench/results/flow.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib

from common import Daemon, print_table, write_result

from proto import control as ctl
from proto.task import TaskSpec


def batch_run(d: Daemon, n: int) -> float:
    start = time.monotonic()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"]) for _ in range(n)]))
    assert isinstance(reply, ctl.Accepted), reply
    pending = reply.ids
    while pending:
        r = d.request(ctl.Wait(ids=pending, timeout_s=30), timeout_s=60)
        assert isinstance(r, ctl.Tasks), r
        assert all(t.state == "succeeded" for t in r.tasks), [t for t in r.tasks if t.state != "succeeded"][:2]
        pending = r.pending
    return time.monotonic() - start


def fan_out(n: int) -> str:
    steps = "".join(f'[steps.s{i}]\nafter = ["root"]\nkind = "exec"\nargv = ["true"]\n' for i in range(n))
    return f'name = "fan-out"\n[steps.root]\nkind = "exec"\nargv = ["true"]\n{steps}'


def mapped(n: int) -> str:
    return (f'name = "map"\n[steps.root]\nkind = "exec"\nargv = ["seq", "{n}"]\n'
            '[steps.each]\nafter = ["root"]\nmap = "root"\nkind = "exec"\nargv = ["true", "{{item}}"]\n')


def flow_run(d: Daemon, text: str) -> float:
    doc = tomllib.loads(text)
    start = time.monotonic()
    reply = d.request(ctl.FlowRun(doc=doc), timeout_s=60)
    assert isinstance(reply, ctl.FlowAccepted), reply
    while True:
        r = d.request(ctl.FlowWait(ids=[reply.id], timeout_s=30), timeout_s=60)
        assert isinstance(r, ctl.Flows), r
        if not r.pending:
            break
    wall = time.monotonic() - start
    assert r.flows[0]["state"] == "succeeded", r.flows[0]["error"]
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    walls: dict[str, list[float]] = {"batch": [], "fan_out": [], "map": []}
    with Daemon(children=a.children, prefix="supd-bench-flow-") as d:
        batch_run(d, a.children)  # warm: every child has run a task
        for _ in range(a.rounds):
            walls["batch"].append(batch_run(d, a.steps))
            walls["fan_out"].append(flow_run(d, fan_out(a.steps)))  # + 1 root step
            walls["map"].append(flow_run(d, mapped(a.steps)))  # + 1 root step
    med = {k: statistics.median(v) for k, v in walls.items()}
    results: dict[str, object] = {"steps": a.steps, "children": a.children, "rounds": a.rounds,
                                  "wall_s": {k: [round(x, 4) for x in v] for k, v in walls.items()}}
    rows = []
    for shape in ("batch", "fan_out", "map"):
        per_step_ms = (med[shape] - med["batch"]) / a.steps * 1000
        results[shape] = {"median_wall_s": round(med[shape], 4), "tasks_per_s": round((a.steps + 1) / med[shape], 1),
                          "overhead_per_step_ms": None if shape == "batch" else round(per_step_ms, 3)}
        rows.append([shape, med[shape], (a.steps + (shape != "batch")) / med[shape],
                     None if shape == "batch" else per_step_ms])
    print_table(f"{a.steps} `true` tasks on {a.children} children: a plain batch vs a workflow (median of "
                f"{a.rounds})", ["shape", "wall s", "tasks/s", "overhead per step ms"], rows)
    write_result("flow", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
