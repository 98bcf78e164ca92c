"""`supctl bench`: sequential vs parallel throughput of a running daemon, from the client side.

Owns the bench verb only: it talks to the daemon through `client.Client` like any other
supctl command, and is registered by `supctl._extra_commands` through `register(cmd)`.
Must not import the daemon's hub or spokes.

How a run works, and why:
- Phase `sequential`: N tasks one at a time (submit, wait, next). Each is its own `Submit`,
  but every submit carries the same W3C `traceparent`, so the phase shares one trace.
- Phase `parallel`: the N tasks as ONE `Submit` (one batch, one master span); the daemon's
  pool size is the real parallelism. `--parallel P` is what speedup is divided by to give
  efficiency; bench does not change the pool for a plain run (P that differs from the pool
  size is reported as given, with a warning). `--sweep 1,2,4,8` is the exception: the user
  asked for a curve, so each point scales the pool to P (`Scale`) and the original size is
  restored at the end.
- Afterwards bench checks that every task of a phase shared the phase's trace (and, for the
  batch, the master span). Exit 0 only if every task succeeded and the checks hold.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from proto import control as ctl
from proto.task import TaskSpec, TaskView
from supervisord.ctl.client import Client, RequestFailed, expect

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
POLL_S = 0.25  # how often the progress bar refreshes (a Wait returns early when all are done)


class BenchError(Exception):
    """The bench could not run (bad arguments, daemon refused, pool never ready)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- measuring ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def phase_summary(tasks: list[TaskView], wall_s: float) -> dict[str, Any]:
    durations = [t.duration_s for t in tasks if t.duration_s is not None]
    latencies = [t.finished_at - t.submitted_at for t in tasks if t.finished_at is not None]
    ok = sum(t.state == "succeeded" for t in tasks)
    usage_in = sum(t.usage.input_tokens for t in tasks if t.usage)
    usage_out = sum(t.usage.output_tokens for t in tasks if t.usage)
    costs = [t.cost_usd for t in tasks if t.cost_usd is not None]
    return {
        "tasks": len(tasks),
        "wall_s": round(wall_s, 4),
        "tasks_per_s": round(len(tasks) / wall_s, 3) if wall_s > 0 else None,
        "succeeded": ok,
        "p50_s": _r(percentile(durations, 50)),
        "p95_s": _r(percentile(durations, 95)),
        "latency_p50_s": _r(percentile(latencies, 50)),
        "latency_p95_s": _r(percentile(latencies, 95)),
        "input_tokens": usage_in,
        "output_tokens": usage_out,
        "cost_usd": round(sum(costs), 6) if costs else None,
        "failures": sorted({f"{t.state}:{t.error.kind}" for t in tasks if t.error}),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def traceparent() -> str:
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"


def trace_problems(name: str, tasks: list[TaskView], one_batch: bool) -> list[str]:
    """Every task of a phase shares the phase's trace; a batch also shares its master span."""
    problems = []
    traces = {t.trace_id for t in tasks}
    if len(traces) != 1 or None in traces:
        problems.append(f"{name}: tasks are in {len(traces)} traces, expected one ({sorted(map(str, traces))[:3]})")
    if one_batch:
        masters = {t.parent_span_id for t in tasks}
        if len(masters) != 1 or None in masters:
            problems.append(f"{name}: tasks have {len(masters)} master spans, expected one")
    return problems


# ---- talking to the daemon ---------------------------------------------------------


def status(c: Client) -> dict[str, Any]:
    return dict(expect(c.request(ctl.Status()), ctl.Info).data)


def wait_pool_ready(c: Client, size: int, timeout_s: float = 60.0) -> None:
    """Until `size` children are idle (and no more slots than that exist)."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = status(c)
        pool = data["pool"]
        if pool["size"] == size and pool["idle"] >= size and len(data["children"]) == size:
            return
        if pool.get("fatal"):
            raise BenchError(f"{pool['fatal']} children are fatal; see the daemon's log")
        if time.monotonic() > deadline:
            raise BenchError(f"the pool did not reach {size} idle children in {timeout_s:g}s: {pool}")
        time.sleep(0.02)


def wait_all(c: Client, ids: list[str], on_done: Callable[[int], None], timeout_s: float | None) -> list[TaskView]:
    """Long-poll until every id is final; `on_done(n)` after each batch of n newly finished."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done: dict[str, TaskView] = {}
    pending = list(ids)
    while pending:
        if deadline is not None and time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} tasks still unfinished after {timeout_s:g}s")
        reply = expect(c.request(ctl.Wait(ids=pending, timeout_s=POLL_S), timeout_s=POLL_S + c.timeout_s),
                        ctl.Tasks)
        fresh = [t for t in reply.tasks if t.id not in done]
        done.update((t.id, t) for t in fresh)
        pending = list(reply.pending)
        if fresh:
            on_done(len(fresh))
    return [done[i] for i in ids]


def submit(c: Client, specs: list[TaskSpec], parent: str) -> list[str]:
    return list(expect(c.request(ctl.Submit(tasks=specs, traceparent=parent)), ctl.Accepted).ids)


def run_sequential(c: Client, make: Callable[[int], TaskSpec], n: int, advance: Callable[[int], None],
                   timeout_s: float | None = None) -> tuple[dict[str, Any], list[TaskView]]:
    parent = traceparent()
    tasks: list[TaskView] = []
    start = time.monotonic()
    for i in range(n):
        ids = submit(c, [make(i)], parent)
        tasks += wait_all(c, ids, advance, timeout_s)
    wall = time.monotonic() - start
    summary = phase_summary(tasks, wall)
    summary["trace_problems"] = trace_problems("sequential", tasks, one_batch=False)
    return summary, tasks


def run_parallel(c: Client, make: Callable[[int], TaskSpec], n: int, advance: Callable[[int], None],
                 timeout_s: float | None = None) -> tuple[dict[str, Any], list[TaskView]]:
    start = time.monotonic()
    ids = submit(c, [make(i) for i in range(n)], traceparent())
    tasks = wait_all(c, ids, advance, timeout_s)
    wall = time.monotonic() - start
    summary = phase_summary(tasks, wall)
    summary["trace_problems"] = trace_problems("parallel", tasks, one_batch=True)
    return summary, tasks


def compare(seq: dict[str, Any], par: dict[str, Any], parallelism: int) -> tuple[float | None, float | None]:
    if not seq["wall_s"] or not par["wall_s"] or not seq["tasks"] or not par["tasks"]:
        return None, None
    # Per-task wall times, so phases of different sizes still compare.
    speedup = (seq["wall_s"] / seq["tasks"]) / (par["wall_s"] / par["tasks"])
    return round(speedup, 3), round(speedup / parallelism, 3) if parallelism else None


# ---- the command -------------------------------------------------------------------


def make_factory(a: argparse.Namespace) -> Callable[[int], TaskSpec]:
    words = list(a.words or [])
    if a.kind == "exec":
        if not words:
            raise BenchError("exec bench: give the command after --, e.g. supctl bench --kind exec -- sleep 0.5",
                             EXIT_USAGE)
        return lambda i: TaskSpec(kind="exec", argv=words, timeout_s=a.timeout)
    if not words:
        raise BenchError("claude bench: give a PROMPT", EXIT_USAGE)
    prompt = " ".join(words)
    return lambda i: TaskSpec(kind="claude", prompt=f"{prompt} (bench task {i + 1})", model=a.model,
                              timeout_s=a.timeout, max_turns=a.max_turns)


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich progress bar on stderr; `new(title, total)` returns an `advance(n)` callback."""
    if not enabled:
        yield lambda title, total: (lambda n: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as progress:
        def new(title: str, total: int) -> Callable[[int], None]:
            tid = progress.add_task(title, total=total)
            return lambda n: progress.advance(tid, n)

        yield new


def parse_sweep(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        points = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--sweep expects comma-separated integers, got {text!r}", EXIT_USAGE) from None
    if not points or any(p < 1 for p in points):
        raise BenchError(f"--sweep points must be >= 1, got {text!r}", EXIT_USAGE)
    return points


def bench(c: Client, a: argparse.Namespace) -> dict[str, Any]:
    """Run the phases and return the report object (`--json` prints exactly this)."""
    make = make_factory(a)
    sweep = parse_sweep(a.sweep)
    if a.tasks < 1:
        raise BenchError(f"--tasks must be >= 1, got {a.tasks}", EXIT_USAGE)
    if a.plot:
        if not sweep:
            raise BenchError("--plot draws the --sweep curve: give --sweep too", EXIT_USAGE)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchError("--plot needs matplotlib: pip install 'supd[bench]' (or pip install matplotlib)",
                             EXIT_USAGE) from None
    original = int(status(c)["pool"]["size"])
    parallelism = a.parallel or (max(sweep) if sweep else original)
    warnings: list[str] = []
    if not sweep and parallelism != original:
        warnings.append(f"--parallel {parallelism} but the daemon has {original} children: the pool size is the "
                        f"real parallelism (bench does not scale it; use supctl scale {parallelism} or --sweep)")
    if original == 0 and not sweep:
        raise BenchError("the daemon has 0 children: nothing would run (supctl scale N first)")
    for w in warnings:
        if not a.json:
            print(f"supctl bench: warning: {w}", file=sys.stderr)
    report: dict[str, Any] = {"kind": a.kind, "parallelism": parallelism, "pool_size": original,
                              "warnings": warnings}
    samples: list[TaskView] = []
    with progress_bar(not a.json and not a.quiet) as new:
        if original:
            wait_pool_ready(c, original)
        elif sweep:
            expect(c.request(ctl.Scale(children=1)), ctl.Ok)
            wait_pool_ready(c, 1)
        seq, seq_tasks = run_sequential(c, make, a.tasks, new("sequential", a.tasks), a.wait_timeout)
        report["sequential"] = seq
        samples += seq_tasks
        if not sweep:
            par, par_tasks = run_parallel(c, make, a.tasks, new(f"parallel ({original} children)", a.tasks),
                                          a.wait_timeout)
            samples += par_tasks
        else:
            points = []
            try:
                for p in sweep:
                    expect(c.request(ctl.Scale(children=p)), ctl.Ok)
                    wait_pool_ready(c, p)
                    par, par_tasks = run_parallel(c, make, a.tasks, new(f"parallel P={p}", a.tasks), a.wait_timeout)
                    samples += par_tasks
                    speedup, efficiency = compare(seq, par, p)
                    points.append({"parallelism": p, **par, "speedup": speedup, "efficiency": efficiency})
            finally:
                expect(c.request(ctl.Scale(children=original)), ctl.Ok)
                if original:
                    wait_pool_ready(c, original)
            report["sweep"] = points
            par = max(points, key=lambda pt: pt["parallelism"])
            par = {k: v for k, v in par.items() if k not in ("parallelism", "speedup", "efficiency")}
        report["parallel"] = par
    report["speedup"], report["efficiency"] = compare(report["sequential"], par, parallelism)
    total = len(samples)
    ok = sum(t.state == "succeeded" for t in samples)
    report["success_rate"] = round(ok / total, 4) if total else None
    sample = next((t for t in samples if t.state == "succeeded" and t.result), None)
    report["sample_result"] = (sample.result or "")[:500] if sample else None
    report["ok"] = ok == total and not all_trace_problems(report)
    return report


def all_trace_problems(report: dict[str, Any]) -> list[str]:
    phases = [report["sequential"], report["parallel"], *report.get("sweep", [])]
    return [p for phase in phases for p in phase.get("trace_problems", [])]


# ---- output ------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"supctl bench — {report['kind']} tasks, parallelism {report['parallelism']}")
    for col in ("phase", "tasks", "succeeded", "wall s", "tasks/s", "p50 s", "p95 s"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for name in ("sequential", "parallel"):
        ph = report[name]
        t.add_row(name, str(ph["tasks"]), str(ph["succeeded"]), _f(ph["wall_s"]), _f(ph["tasks_per_s"]),
                  _f(ph["p50_s"]), _f(ph["p95_s"]))
    console.print(t)
    console.print(f"speedup {_f(report['speedup'], '{:.2f}')}x   efficiency {_f(report['efficiency'], '{:.2f}')}"
                  f"   success rate {_f(report['success_rate'], '{:.1%}')}")
    if report.get("sweep"):
        s = Table(title="parallel sweep (pool scaled to P for each point)")
        for col in ("P", "tasks", "succeeded", "wall s", "tasks/s", "speedup", "efficiency"):
            s.add_column(col, justify="right")
        for pt in report["sweep"]:
            s.add_row(str(pt["parallelism"]), str(pt["tasks"]), str(pt["succeeded"]), _f(pt["wall_s"]),
                      _f(pt["tasks_per_s"]), _f(pt["speedup"], "{:.2f}"), _f(pt["efficiency"], "{:.2f}"))
        console.print(s)
    for problem in all_trace_problems(report):
        console.print(f"[red]trace check failed:[/red] {problem}")
    for phase in ("sequential", "parallel"):
        for failure in report[phase]["failures"]:
            console.print(f"[red]{phase}: failed task[/red] {failure}")


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["sweep"]
    ps = [pt["parallelism"] for pt in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ps, [pt["speedup"] for pt in points], marker="o", label="measured speedup")
    ax.plot(ps, ps, linestyle="--", color="grey", label="ideal")
    ax.set_xlabel("children (P)")
    ax.set_ylabel("speedup over sequential")
    ax.set_title(f"supd {report['kind']} tasks: speedup vs parallelism")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_bench(c: Client, a: argparse.Namespace) -> int:
    try:
        report = bench(c, a)
    except BenchError as e:
        print(f"supctl bench: {e}", file=sys.stderr)
        return e.exit_code
    except RequestFailed as e:
        print(f"supctl bench: {e}", file=sys.stderr)
        return EXIT_FAILED
    if a.plot:
        plot(report, a.plot)
    if a.json:
        from supervisord.ctl.supctl import emit_json

        emit_json(report)
    else:
        print_report(report)
        if a.plot:
            print(f"curve saved to {a.plot}")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    b = cmd("bench", "run N tasks one at a time, then as one parallel batch; report speedup", cmd_bench)
    b.add_argument("--kind", choices=["claude", "exec"], default="claude")
    b.add_argument("--tasks", type=int, default=8, help="tasks per phase (default 8)")
    b.add_argument("--parallel", type=int, help="parallelism to divide speedup by (default: the pool size)")
    b.add_argument("--sweep", help="comma-separated pool sizes, e.g. 1,2,4,8: scale to each, run the parallel phase")
    b.add_argument("--plot", metavar="FILE.png", help="save the --sweep curve (needs matplotlib: supd[bench])")
    b.add_argument("--timeout", type=float, help="per-task wall-clock limit, seconds")
    b.add_argument("--wait-timeout", type=float, default=3600.0, help="give up on a phase after S seconds")
    b.add_argument("--model", help="claude: model name")
    b.add_argument("--max-turns", type=int, help="claude: max turns")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("words", nargs="*", metavar="PROMPT | -- CMD ARG")


