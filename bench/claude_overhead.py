"""Claude overhead: one real Claude Code CLI task through supd (submit → result) vs the same
CLI run directly (subprocess, same argv and environment), against the stand-in API at
latency 0 and 1 s, N runs each, interleaved; plus Claude tasks/s with 2 and 4 children.

Two figures of what supd adds: per task, the client's wall time minus the CLI process's own
lifetime (from its spawn to its tree's end, as the child saw it) — submit, journal, dispatch,
spawn, result, commit and the reply, paired within one task, so the CLI's own run-to-run
noise (stdev 60-250 ms here) cancels out; and, as a cross-check, the median of supd's walls
minus the median of the direct runs' (which carries that noise). The direct runs get the
environment the daemon gives the CLI (`taskenv`, incl. the debug log the rate-limit gate
reads), so both run the same CLI. The target is the first, median over the runs.
Writes bench/results/claude_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid

import fakeapi
from common import Daemon, clean_env, print_table, short_tmpdir, toml_table, write_result

from proto import control as ctl
from proto.task import TaskSpec
from supervisord.core import taskenv
from supervisord.spokes import claude_cli

MODEL = "claude-sonnet-4-5"


def through_supd(d: Daemon, prompt: str) -> tuple[float, float]:
    """(the client's wall time, the CLI process's lifetime as the child measured it)."""
    t0 = time.perf_counter()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="claude", prompt=prompt, model=MODEL)]))
    assert isinstance(reply, ctl.Accepted), reply
    r = d.request(ctl.Wait(ids=reply.ids, timeout_s=60), timeout_s=90)
    elapsed = time.perf_counter() - t0
    assert isinstance(r, ctl.Tasks) and r.tasks and r.tasks[0].state == "succeeded", (r, d.tail())
    t = r.tasks[0]
    assert t.started_at is not None and t.finished_at is not None, t
    return elapsed, t.finished_at - t.started_at


def direct(cli: list[str], env: dict[str, str], prompt: str) -> float:
    argv = [*cli, "-p", "--output-format=stream-json", "--verbose", f"--model={MODEL}", "--", prompt]
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                         check=False)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0 and '"is_error":false' in out.stdout, out.stdout[-500:] + out.stderr[-500:]
    return elapsed


def throughput(api_url: str, children: int, tasks: int) -> dict[str, float]:
    home = short_tmpdir("supd-bench-home-")
    config = "[claude]\nenv = " + toml_table(fakeapi.claude_env(api_url, str(home))) + "\n"
    with Daemon(children=children, config=config) as d:
        t0 = time.perf_counter()
        reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="claude", prompt=f"tput {i}", model=MODEL)
                                            for i in range(tasks)]))
        assert isinstance(reply, ctl.Accepted), reply
        pending, done = reply.ids, []
        while pending:
            r = d.request(ctl.Wait(ids=pending, timeout_s=30), timeout_s=60)
            assert isinstance(r, ctl.Tasks)
            done += r.tasks
            pending = r.pending
        wall = time.perf_counter() - t0
    ok = sum(t.state == "succeeded" for t in done)
    return {"children": children, "tasks": tasks, "succeeded": ok, "wall_s": wall, "tasks_per_s": tasks / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--latencies", default="0,1")
    p.add_argument("--tput-tasks", type=int, default=8)
    a = p.parse_args(argv)
    cli = claude_cli.resolve([], os.environ.get("PATH")).argv
    overhead: dict[str, dict[str, float]] = {}
    tput = []
    for latency in [float(x) for x in a.latencies.split(",")]:
        with fakeapi.FakeAPI(latency_s=latency) as api:
            home = short_tmpdir("supd-bench-home-")
            cenv = fakeapi.claude_env(api.url, str(home))
            env = {**clean_env(), **cenv, **taskenv.RETRY_AFTER_LOG}  # as the daemon runs it (gate: "log")
            config = "[claude]\nenv = " + toml_table(cenv) + "\n"
            via, raw, added = [], [], []
            with Daemon(children=1, config=config) as d:
                through_supd(d, "warm-up")
                direct(cli, env, "warm-up")
                for i in range(a.runs):
                    tag = uuid.uuid4().hex[:6]
                    raw.append(direct(cli, env, f"direct {i} {tag}"))
                    wall, cli_s = through_supd(d, f"supd {i} {tag}")
                    via.append(wall)
                    added.append(wall - cli_s)
            overhead[f"latency {latency:g}s"] = {
                "runs": a.runs, "direct_median_s": statistics.median(raw), "supd_median_s": statistics.median(via),
                "overhead_ms": 1000 * statistics.median(added),
                "overhead_max_ms": 1000 * max(added),
                "median_difference_ms": 1000 * (statistics.median(via) - statistics.median(raw)),
                "direct_stdev_s": statistics.stdev(raw) if len(raw) > 1 else 0.0,
                "supd_stdev_s": statistics.stdev(via) if len(via) > 1 else 0.0,
            }
            if latency == max(float(x) for x in a.latencies.split(",")):
                tput = [throughput(api.url, n, a.tput_tasks) for n in (2, 4)]
                tput_latency = latency
    print_table(f"Claude task: through supd vs the CLI directly (median of {a.runs})",
                ["stand-in API", "direct s", "supd s", "added per task ms", "max ms", "medians' difference ms",
                 "stdev direct s", "stdev supd s"],
                [[k, v["direct_median_s"], v["supd_median_s"], v["overhead_ms"], v["overhead_max_ms"],
                  v["median_difference_ms"], v["direct_stdev_s"], v["supd_stdev_s"]] for k, v in overhead.items()])
    print_table(f"Claude tasks/s ({a.tput_tasks} tasks, stand-in latency {tput_latency:g}s)",
                ["children", "tasks", "succeeded", "wall s", "tasks/s"],
                [[t["children"], t["tasks"], t["succeeded"], t["wall_s"], t["tasks_per_s"]] for t in tput])
    worst = max(v["overhead_ms"] for v in overhead.values())
    write_result("claude_overhead", {"overhead": overhead, "throughput": tput, "throughput_latency_s": tput_latency,
                                     "target": {"what": "Claude overhead < 50 ms per task (median of wall minus the CLI's lifetime)", "value": worst,
                                                "limit": 50.0, "met": worst < 50.0}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
