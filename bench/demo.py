"""`make demo`: real Claude Code CLI tasks through supd, one at a time and then in parallel.

Starts the project's stand-in Messages API (`bench/fakeapi.py`, with a per-request latency
so that parallelism matters), a supd with 4 children in a temp state dir, runs the same
work as `supctl bench --kind claude --tasks 8 --parallel 4`, then one small workflow (a map
of Claude reviews over three files, then a Claude summary of the reviews) whose tree it
prints, then four `--worktree` tasks that each rewrite the same file of a scratch repository
(each on its own branch `supd/<id>`; it prints their diff stats and checks that the main
checkout is untouched), prints a report, shuts the daemon down (drain) and exits 0 only if
every task and the workflow succeeded. No network, no API key.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib

import fakeapi
import psutil
from common import Daemon, short_tmpdir, toml_table

from proto import control as ctl
from proto.task import TaskSpec
from supervisord.ctl import benchcmd, flowcmd
from supervisord.ctl.client import Client, expect

#: the demo's workflow: list files, review each with Claude in parallel, summarise the reviews
DEMO_FLOW = """
name = "demo-review"
[steps.files]
kind = "exec"
argv = ["printf", "supervisord/core/fate.py\\nsupervisord/core/workflow.py\\nsupervisord/hub/flows.py\\n"]
[steps.review]
after = ["files"]
map = "files"
prompt = "Review {{item}} for bugs. One line."
model = "claude-sonnet-4-5"
[steps.summary]
after = ["review"]
input = "{{steps.review.result}}"
prompt = "Summarise these reviews."
model = "claude-sonnet-4-5"
"""


def run_workflow(c: Client) -> dict[str, object]:
    """Run the demo workflow to its end and print its tree; returns `flow status --json`."""
    reply = expect(c.request(ctl.FlowRun(doc=tomllib.loads(DEMO_FLOW))), ctl.FlowAccepted)
    (flow,), _ = flowcmd.wait_for(c, [reply.id], 300.0)
    print("\n== a workflow: a map of Claude reviews, then a summary ==")
    print(flowcmd.tree(flow))
    return flow


def task_cpu_s(supd_pid: int) -> float:
    """CPU seconds the task processes (the CLI runs) have used so far: what each child
    worker has reaped from its tasks."""
    total = 0.0
    for child in psutil.Process(supd_pid).children():
        times = child.cpu_times()
        total += times.children_user + times.children_system
    return total


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout


def worktree_phase(c: Client, state_dir: str, n: int) -> bool:
    """`n` Claude tasks at once, each in its own worktree of one scratch repository, each
    rewriting the same file (the stand-in answers `[[bash:…]]` with a Bash tool call)."""
    repo = os.path.join(state_dir, "demo-repo")
    os.makedirs(repo)
    _git(repo, "init", "-q", "-b", "main")
    with open(os.path.join(repo, "NOTES.md"), "w") as f:
        f.write("# notes\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=demo", "-c", "user.email=demo@localhost", "commit", "-qm", "start")
    print(f"\nrunning {n} Claude tasks at once, each in its own git worktree of {repo}, all editing NOTES.md…")
    specs = [TaskSpec(prompt=f"[[bash:printf '# notes\\nagent {i} was here\\n' > NOTES.md && touch agent{i}.txt]] "
                             f"agent {i}: leave a note", allowed_tools=["Bash"], worktree=True, cwd=repo,
                      timeout_s=120)
             for i in range(n)]
    ids = expect(c.request(ctl.Submit(tasks=specs)), ctl.Accepted).ids
    done: dict[str, ctl.TaskView] = {}
    deadline = time.monotonic() + 300
    while len(done) < n and time.monotonic() < deadline:
        reply = expect(c.request(ctl.Wait(ids=[i for i in ids if i not in done], timeout_s=5.0), timeout_s=15),
                       ctl.Tasks)
        done.update({t.id: t for t in reply.tasks})
    ok = len(done) == n
    for tid in ids:
        t = done.get(tid)
        w = t.worktree if t else None
        if t is None or w is None:
            print(f"  {tid}  not finished")
            ok = False
            continue
        print(f"  {t.state:<9}  {w.branch}  {w.files_changed} files changed, +{w.insertions} -{w.deletions}"
              f"  ({(w.base or '?')[:8]}..{(w.head or '?')[:8]})")
        ok = ok and t.state == "succeeded" and w.files_changed == 2
    clean = _git(repo, "status", "--porcelain") == ""
    left = [e for e in os.scandir(os.path.join(state_dir, "worktrees")) if e.is_dir()]
    print(f"  main checkout clean: {clean}; worktree directories left: {len(left)}; "
          f"branches: {len(_git(repo, 'branch', '--list', 'supd/*').split())}")
    return ok and clean and not left


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=1.0, help="stand-in API latency per request, seconds (1.0)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per phase (8)")
    p.add_argument("--children", type=int, default=4, help="supd children = parallelism (4)")
    p.add_argument("--prompt", default="Say hello to the supd demo")
    a = p.parse_args(argv)

    t0 = time.monotonic()
    print(f"starting the stand-in Messages API (latency {a.latency:g}s per request)…")
    with fakeapi.FakeAPI(latency_s=a.latency) as api:
        home = short_tmpdir("supd-demo-home-")
        config = "[claude]\nenv = " + toml_table(fakeapi.claude_env(api.url, str(home))) + "\n"
        print(f"starting supd with {a.children} children…")
        daemon = Daemon(children=a.children, config=config, prefix="supd-demo-")
        try:
            daemon.start()
            status = daemon.status()
            print(f"supd pid {status['pid']} ready in {time.monotonic() - t0:.1f}s; "
                  f"claude CLI: {status['claude']['source']} ({status['claude']['command'][0]})")
            print(f"running {a.tasks} Claude tasks one at a time, then {a.tasks} as one batch on "
                  f"{a.children} children…\n")
            args = argparse.Namespace(kind="claude", tasks=a.tasks, parallel=a.children, sweep=None, plot=None,
                                      timeout=120.0, wait_timeout=300.0, model="claude-sonnet-4-5", max_turns=None,
                                      quiet=False, json=False, words=[a.prompt])
            cpu_before = task_cpu_s(status["pid"])
            with Client(f"ipc://{daemon.state_dir / 'control.sock'}", timeout_s=30.0) as c:
                report = benchcmd.bench(c, args)
            cli_cpu_s = (task_cpu_s(status["pid"]) - cpu_before) / (2 * a.tasks)
            benchcmd.print_report(report)
            with Client(f"ipc://{daemon.state_dir / 'control.sock'}", timeout_s=30.0) as c:
                flow = run_workflow(c)
                worktrees_ok = worktree_phase(c, str(daemon.state_dir), a.children)
        finally:
            code = daemon.stop()
            print(f"\nsupd shut down (exit {code})")
        requests = api.stats()["requests"]

    seq, par = report["sequential"], report["parallel"]
    tasks = seq["tasks"] + par["tasks"]
    ok = seq["succeeded"] + par["succeeded"]
    cost = (seq["cost_usd"] or 0) + (par["cost_usd"] or 0)
    print("\n== supd demo report ==")
    print(f"tasks            {tasks} ({seq['tasks']} sequential + {par['tasks']} parallel), "
          f"{ok} succeeded = {ok / tasks:.0%}; {requests} API requests")
    print(f"sequential       {seq['wall_s']:.2f}s wall, {seq['tasks_per_s']:.2f} tasks/s")
    print(f"parallel ({a.children})     {par['wall_s']:.2f}s wall, {par['tasks_per_s']:.2f} tasks/s")
    print(f"speedup          {report['speedup']:.2f}x of ideal {a.children} (efficiency {report['efficiency']:.0%})")
    cores = os.cpu_count() or 1
    if a.children > cores:
        print(f"{f'why not {a.children}x':<17}each CLI run used {cli_cpu_s:.2f} CPU-s; {a.children} at once on {cores} cores "
              f"wait on the CPU, not on supd (the API answers in {a.latency:g}s)")
    print(f"tokens           {seq['input_tokens'] + par['input_tokens']:,} in, "
          f"{seq['output_tokens'] + par['output_tokens']:,} out")
    print(f"cost             ${cost:.4f} (as the CLI reports it; the stand-in API charges nothing)")
    print(f"sample result    {report['sample_result']!r}")
    problems = benchcmd.all_trace_problems(report)
    print(f"trace check      {problems or 'ok: each phase shared one trace'}")
    print(f"total            {time.monotonic() - t0:.1f}s")
    if code != 0:
        print(f"demo: supd exited {code}", file=sys.stderr)
    print(f"workflow         {flow['state']} ({len(flow['steps'])} steps, "  # type: ignore[arg-type]
          f"cost ${flow['cost_usd']:.4f})")
    print(f"worktrees        {'ok: each task on its own branch, the main checkout untouched' if worktrees_ok else 'FAILED'}")
    good = report["ok"] and code == 0 and flow["state"] == "succeeded" and worktrees_ok
    print("demo: OK" if good else "demo: FAILED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
