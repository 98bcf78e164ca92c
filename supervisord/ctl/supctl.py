"""`supctl`: the command-line client. Human output by default, `--json` for scripts.

Owns argument parsing and output formatting; talks to the daemon only through
`client.Client`. Exit codes: 0 success, 1 a task or request failed, 2 bad usage,
3 a wait timed out, 4 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from proto import control as ctl
from proto import readable_error
from proto import task as pt
from proto.task import TaskSpec, TaskView
from supervisord.core import traceids
from supervisord.ctl.client import Client, ClientError, RequestFailed, control_endpoint, expect
from supervisord.ctl.flowcmd import FlowUsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WAIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class UsageError(Exception):
    pass


# ---- arguments ----------------------------------------------------------------------


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else a usage error naming the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range: must be between {low} and {high}")
        return value

    parse.__name__ = "integer"
    return parse


def bounded_float(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (or (low, high] with `low_open`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            raise argparse.ArgumentTypeError(
                f"{text[:40]} is out of range: must be {'>' if low_open else '>='} {low:.15g} and <= {high:.15g}")
        return value

    parse.__name__ = "number"
    return parse


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d` (or plain seconds) as seconds; an argparse type."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text[:40]!r} (e.g. 90s, 30m, 12h, 7d)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > ctl.MAX_AGE_S:
        raise argparse.ArgumentTypeError(f"{text[:40]} is too long: at most {ctl.MAX_AGE_S / 86_400:.0f}d")
    return seconds


parse_duration.__name__ = "duration"


def undecodable_argument(argv: list[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps such bytes as surrogates)."""
    for arg in argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            return arg.encode(errors="surrogateescape").decode(errors="backslashreplace")
    return None


def check_request(req: ctl.Request) -> None:
    """What the daemon's decoder would refuse, refused here as a usage error naming the field."""
    try:
        msgspec.convert(msgspec.to_builtins(req), type(req))
    except (msgspec.ValidationError, OverflowError) as e:
        raise UsageError(readable_error(str(e))) from None


def trace_context() -> tuple[str | None, str | None]:
    """$TRACEPARENT / $TRACESTATE, or None for one that is not well-formed (W3C: ignore it)."""
    parent = os.environ.get("TRACEPARENT")
    if parent is None or traceids.parse_traceparent(parent) is None or len(parent) > ctl.MAX_TRACEPARENT_CHARS \
            or not re.fullmatch(ctl.TRACEPARENT_PATTERN[1:-1], parent):
        return None, None
    state = os.environ.get("TRACESTATE")
    if state is not None and (len(state) > ctl.MAX_TRACESTATE_CHARS or undecodable_argument([state])):
        state = None
    return parent, state


class CheckedClient(Client):
    """A `Client` that refuses, before sending, a request the daemon would refuse to decode."""

    def request(self, req: ctl.Request, timeout_s: float | None = None) -> ctl.Reply:
        check_request(req)
        return super().request(req, timeout_s)


# ---- output ------------------------------------------------------------------------


def emit_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def _short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def describe(t: TaskView) -> str:
    lines = [f"{t.id}  {t.kind}  {t.state}  attempts={t.attempts}  duration={_dur(t.duration_s)}  child={t.child or '-'}"]
    what = t.prompt if t.kind == "claude" else " ".join(t.argv or [])
    lines.append(f"  task:   {_short(what, 100)}")
    if t.workflow:
        lines.append(f"  flow:   {t.workflow}  step={t.step}")
    if t.exit_code is not None:
        lines.append(f"  exit:   {t.exit_code}")
    if t.error:
        lines.append(f"  error:  {t.error.kind}: {t.error.message}")
    if t.usage:
        cost = f"  cost=${t.cost_usd:.6f}" if t.cost_usd is not None else ""
        lines.append(f"  usage:  in={t.usage.input_tokens} out={t.usage.output_tokens}{cost}  turns={t.num_turns}"
                     f"  session={t.session_id}")
    lines.append(f"  trace:  {t.trace_id}  span={t.span_id}  parent={t.parent_span_id}")
    if t.worktree:
        w = t.worktree
        stat = (f"  {w.files_changed} files, +{w.insertions} -{w.deletions}  base={(w.base or '?')[:12]}"
                f" head={(w.head or '?')[:12]}") if w.head else ""
        lines.append(f"  branch: {w.branch} in {w.repo}{stat}" + (f"  (kept at {w.path})" if w.path else "")
                     + (f"  git: {w.error}" if w.error else ""))
    if t.pin:
        lines.append(f"  pin:    host {t.pin}" + (f"  ({t.waiting})" if t.waiting else ""))
    if t.resumed_from or t.retry_of:
        lines.append("  from:   " + (f"resumes {t.resumed_from}" if t.resumed_from else f"retry of {t.retry_of}"))
    if t.structured_output is not None:
        lines.append(f"  structured: {msgspec.json.encode(t.structured_output).decode()}")
    if t.stderr and t.state != "succeeded":
        tail = t.stderr.rstrip("\n").splitlines()[-STDERR_LINES:]
        lines.append(f"  stderr (last {len(tail)} lines):\n" + "\n".join(tail))
    if t.result:
        body = t.result if t.result.endswith("\n") else t.result + "\n"
        lines.append("  result" + (" (truncated)" if t.truncated else "") + ":\n" + body.rstrip("\n"))
    return "\n".join(lines)


#: How much of a failed task's stderr `describe` shows (`--json` has all of it).
STDERR_LINES = 20


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header, *rows])


# ---- task specs from the command line ------------------------------------------------


def spec_from_args(a: argparse.Namespace) -> TaskSpec:
    words: list[str] = list(a.words or [])
    env = {}
    for item in a.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    text_input = a.input
    if a.input_file:
        text_input = sys.stdin.read() if a.input_file == "-" else Path(a.input_file).read_text()
    cwd = a.cwd
    if (a.worktree or a.base) and cwd is None:
        cwd = os.getcwd()  # the repository the worktree is made from: where supctl runs
    if cwd is not None and a.worktree:
        cwd = os.path.abspath(cwd)
    common: dict[str, Any] = {
        "kind": a.kind, "input": text_input, "timeout_s": a.timeout, "stall_timeout_s": a.stall_timeout,
        "retries": a.retries, "priority": a.priority, "cwd": cwd, "env": env, "key": a.key,
        "worktree": a.worktree, "base": resolve_base(cwd, a.base) if a.worktree else a.base,
    }
    if a.kind == "exec":
        if not words:
            raise UsageError("exec task: give the command after --, e.g. supctl submit --kind exec -- echo hi")
        return TaskSpec(argv=words, retry_on_exit=a.retry_on_exit, **common)
    if not words:
        raise UsageError("claude task: give a PROMPT")
    if a.resume and (a.worktree or a.base or a.cwd):
        raise UsageError("--resume runs in the resumed task's directory or worktree: drop --worktree/--base/--cwd")
    return TaskSpec(
        prompt=" ".join(words), model=a.model, max_turns=a.max_turns,
        allowed_tools=a.allowed_tools.split(",") if a.allowed_tools else None,
        append_system_prompt=a.append_system_prompt, permission_mode=a.permission_mode,
        json_schema=read_schema(a.json_schema) if a.json_schema else None, resume=a.resume, **common,
    )


def resolve_base(cwd: str | None, ref: str | None) -> str | None:
    """`--base REF` (or HEAD) as a commit id, now: the worktree starts where the repository
    was at submit, whatever happens to it before the task runs. A ref git does not know is
    a usage error; without git here, the ref goes as given (the daemon resolves it)."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", cwd or ".", "rev-parse", "-q", "--verify", f"{ref or 'HEAD'}^{{commit}}"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ref
    if done.returncode != 0:
        if "not a git repository" in done.stderr.lower():
            raise UsageError(f"--worktree: {cwd} is not inside a git repository")
        raise UsageError(f"--base {ref or 'HEAD'}: not a commit in the repository at {cwd}")
    return done.stdout.strip()


def read_schema(path: str) -> dict[str, Any]:
    """`--json-schema FILE`: a JSON object (the schema the CLI validates its answer against)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        schema = msgspec.json.decode(text)
    except OSError as e:
        raise UsageError(f"--json-schema {path}: {e.strerror}") from None
    except msgspec.DecodeError as e:
        raise UsageError(f"--json-schema {path}: not JSON: {e}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema {path}: a JSON Schema is an object, got {type(schema).__name__}")
    return schema


def specs_from_file(path: str) -> list[TaskSpec]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    specs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            specs.append(msgspec.json.decode(line, type=TaskSpec))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise UsageError(f"{path}:{n}: {readable_error(str(e))}") from None
    if not specs:
        raise UsageError(f"{path}: no tasks")
    return specs


# ---- commands ----------------------------------------------------------------------


def wait_for(c: Client, ids: list[str], timeout_s: float | None) -> tuple[list[TaskView], list[str]]:
    """Long-poll until every id is final (or `timeout_s` passes; None waits for ever, 0 asks
    once and answers with what is final now); never hangs on a dead daemon. Asks about at
    most `ctl.MAX_WAIT_IDS` ids per request."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done: dict[str, TaskView] = {}
    pending = list(ids)
    while pending:
        left = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        still: list[str] = []
        for i in range(0, len(pending), ctl.MAX_WAIT_IDS):
            chunk = pending[i:i + ctl.MAX_WAIT_IDS]
            wait_s = left if i + ctl.MAX_WAIT_IDS >= len(pending) else 0.0  # long-poll on the last chunk only
            reply = expect(c.request(ctl.Wait(ids=chunk, timeout_s=wait_s), timeout_s=wait_s + c.timeout_s),
                           ctl.Tasks)
            for t in reply.tasks:
                done[t.id] = t
            still += reply.pending
        pending = still
        if deadline is not None and time.monotonic() >= deadline:
            break
    return [done[i] for i in ids if i in done], pending


def show_tasks(a: argparse.Namespace, tasks: list[TaskView], pending: list[str]) -> int:
    if a.json:
        if len(tasks) == 1 and not pending and not getattr(a, "many", False):
            emit_json(tasks[0])
        else:
            emit_json({"tasks": tasks, "pending": pending})
    else:
        for t in tasks:
            print(describe(t))
        for tid in pending:
            print(f"{tid}  still running")
    if pending:
        return EXIT_WAIT_TIMEOUT
    return EXIT_OK if all(t.state == "succeeded" for t in tasks) else EXIT_FAILED


def cmd_submit(c: Client, a: argparse.Namespace) -> int:
    specs = a.specs
    traceparent, tracestate = trace_context()
    reply = expect(c.request(ctl.Submit(tasks=specs, traceparent=traceparent, tracestate=tracestate,
                                        label=a.label, max_cost_usd=a.max_cost_usd)), ctl.Accepted)
    if not a.wait:
        if a.json:
            emit_json({"ids": reply.ids, "trace_id": reply.trace_id, "batch": reply.batch or reply.trace_id})
        else:
            for tid in reply.ids:
                print(tid)
        return EXIT_OK
    a.many = len(reply.ids) > 1
    tasks, pending = wait_for(c, reply.ids, a.wait_timeout)
    return show_tasks(a, tasks, pending)


def cmd_wait(c: Client, a: argparse.Namespace) -> int:
    a.many = len(a.ids) > 1
    tasks, pending = wait_for(c, a.ids, a.timeout)
    return show_tasks(a, tasks, pending)


def cmd_result(c: Client, a: argparse.Namespace) -> int:
    reply = expect(c.request(ctl.Get(id=a.id)), ctl.Tasks)
    task = reply.tasks[0]
    if a.json:
        emit_json(task)
    elif a.raw:
        sys.stdout.write(task.result or "")
    else:
        print(describe(task))
    return EXIT_OK if task.state == "succeeded" else EXIT_FAILED


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    reply = expect(c.request(ctl.List(state=a.state, limit=a.limit, batch=a.batch, label=a.label)), ctl.Tasks)
    if a.json:
        emit_json({"tasks": reply.tasks})
        return EXIT_OK
    rows = [[t.id, t.kind, t.state + (f" (waiting for host {t.pin})" if t.waiting else ""), str(t.attempts), _dur(t.duration_s), f"{t.workflow}:{t.step}" if t.workflow else "-",
             _short(t.prompt if t.kind == "claude" else " ".join(t.argv or []), 50)] for t in reply.tasks]
    print(table(rows, ["ID", "KIND", "STATE", "ATT", "DURATION", "FLOW:STEP", "TASK"]))
    return EXIT_OK


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    data = expect(c.request(ctl.Status()), ctl.Info).data
    if a.json:
        emit_json(data)
        return EXIT_OK
    print(f"supd pid {data['pid']}  {data['phase']}  up {data['uptime_s']:.0f}s  state dir {data['state_dir']}")
    claude = data["claude"]
    print(f"claude: {' '.join(claude['command'])} ({claude['source']})")
    tasks, breaker = data["tasks"], data["breaker"]
    print(f"tasks: {tasks['queued']} queued, {tasks['running']} running   breaker: {breaker['state']}")
    if fleet := data.get("fleet"):
        totals = fleet["tasks"]
        print(f"fleet: host {fleet['host']}, {fleet['hosts']} hosts, journal {fleet['journal']}; tasks "
              + ", ".join(f"{totals.get(s, 0)} {s}" for s in ("queued", "running", "succeeded", "failed")))
        for host, n in sorted((fleet.get("pinned_waiting") or {}).items()):
            print(f"pinned: {n} queued tasks wait for host {host}, which is not live (only it can run them)")
    gate = data.get("gate") or {}
    if gate.get("state") == "closed":
        print(f"rate-limit gate: closed until {time.strftime('%H:%M:%S', time.localtime(gate['resets_at']))}"
              f" ({gate['wait_s']:.1f}s): Claude tasks wait")
    for key, k in (data.get("keys") or {}).items():
        print(f"key {key}: {len(k['held_by'])}/{k['limit']} held ({', '.join(k['held_by']) or '-'}),"
              f" {k['waiting']} waiting")
    rows = [[ch["id"] or ch["slot"], str(ch["pid"] or "-"), ch["state"], ch["task"] or "-", str(ch["tasks_done"]),
             f"{ch['rss_bytes'] / 2**20:.0f}MiB" if ch["rss_bytes"] else "-", _child_note(ch, spare)]
            for spare, key in ((False, "children"), (True, "spares")) for ch in data.get(key, [])]
    print(table(rows, ["CHILD", "PID", "STATE", "TASK", "DONE", "RSS", "NOTE"]))
    return EXIT_OK


def _child_note(ch: dict[str, Any], spare: bool) -> str:
    """Why fatal; a spare says so; a slot running in a spare's process names itself."""
    notes = []
    if spare:
        notes.append("spare")
    elif not ch["id"].startswith(ch["slot"] + "."):
        notes.append(f"slot {ch['slot']}")
    if ch["fatal_reason"]:
        notes.append(ch["fatal_reason"])
    return ", ".join(notes)


def cmd_hosts(c: Client, a: argparse.Namespace) -> int:
    data = expect(c.request(ctl.Hosts()), ctl.Info).data
    if a.json:
        emit_json(data)
        return EXIT_OK
    if data["host"] is None:
        print("one host (no shared journal): no fleet")
        return EXIT_OK
    rows = [[("* " if r["host"] == data["host"] else "  ") + r["host"], str(r["pid"]), r["phase"],
             f"{r['heartbeat_age_s']:.1f}s", str(r["children"]), str(r["running"])] for r in data["hosts"]]
    print(table(rows, ["HOST", "PID", "PHASE", "HEARTBEAT", "CHILDREN", "RUNNING"]))
    return EXIT_OK


def cmd_info(request: ctl.Request, title: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(c: Client, a: argparse.Namespace) -> int:
        data = expect(c.request(request), ctl.Info).data
        if a.json:
            emit_json(data)
        else:
            print(title)
            _print_tree(data, "  ")
        if isinstance(request, ctl.Health):
            return EXIT_OK if data.get("status") == "ok" else EXIT_FAILED
        return EXIT_OK

    return run


def _print_tree(data: dict[str, Any], indent: str) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            print(f"{indent}{key}:")
            _print_tree(value, indent + "  ")
        else:
            print(f"{indent}{key}: {_human(value)}")


def _human(value: Any) -> str:
    """Floats to 4 significant digits (latencies, rates, cost); the rest as they are."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_simple(make: Callable[[argparse.Namespace], ctl.Request]) -> Callable[[Client, argparse.Namespace], int]:
    def run(c: Client, a: argparse.Namespace) -> int:
        reply = expect(c.request(make(a)), ctl.Ok)
        if a.json:
            emit_json({"ok": True, "message": reply.message})
        else:
            print(reply.message)
        return EXIT_OK

    return run


# ---- the parser --------------------------------------------------------------------


def _task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["claude", "exec"], default="claude")
    timeout = bounded_float(0, pt.MAX_TIMEOUT_S, low_open=True)
    p.add_argument("--timeout", type=timeout, help="wall-clock limit, seconds")
    p.add_argument("--stall-timeout", type=timeout, help="limit on silence (no output line), seconds")
    p.add_argument("--retries", type=bounded_int(0, pt.MAX_RETRIES), help="retries for retryable failures")
    p.add_argument("--retry-on-exit", action="store_true", help="exec: also retry a non-zero exit")
    p.add_argument("--priority", type=bounded_int(pt.MIN_PRIORITY, pt.MAX_PRIORITY), default=0,
                   help="higher runs first")
    p.add_argument("--cwd", help="working directory of the task")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--input", help="text written to the task's stdin")
    p.add_argument("--input-file", help="file (or -) whose text is written to the task's stdin")
    p.add_argument("--model")
    p.add_argument("--max-turns", type=bounded_int(1, pt.MAX_TURNS))
    p.add_argument("--allowed-tools", help="comma-separated, e.g. Bash,Read")
    p.add_argument("--append-system-prompt")
    p.add_argument("--permission-mode")
    p.add_argument("--worktree", action="store_true",
                   help="run in a fresh git worktree of the repository at --cwd (or here), on branch supd/<id>")
    p.add_argument("--base", metavar="REF", help="with --worktree: start the branch at REF (default HEAD)")
    p.add_argument("--resume", metavar="ID", help="continue task ID's Claude session (in its directory or worktree)")
    p.add_argument("--json-schema", metavar="FILE", help="JSON Schema for a structured answer (structured_output)")
    p.add_argument("--key", metavar="NAME", help="exclusive key: at most [keys] NAME (default 1) such tasks run at once")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="supctl", description="Control a running supd.")
    p.add_argument("--state-dir", help="the daemon's state dir (or $SUPD_STATE_DIR)")
    p.add_argument("--runtime-dir", help="the daemon's socket dir if not the state dir (or $SUPD_RUNTIME_DIR)")
    p.add_argument("--reply-timeout", type=bounded_float(0, 86_400, low_open=True), default=5.0,
                   help="seconds to wait for the daemon's answer")
    p.add_argument("--endpoint", help="connect here instead, e.g. tcp://host:port (CurveZMQ keys from --config)")
    p.add_argument("--config", help="TOML file whose [security] client_secret_key/server_public_key are used for tcp")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, fn: Callable[[Client, argparse.Namespace], int]) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    s = cmd("submit", "submit a task (PROMPT, or --kind exec -- CMD ARG...), or --file F of JSON lines", cmd_submit)
    _task_options(s)
    s.add_argument("--file", help="one JSON task per line, e.g. {\"kind\":\"exec\",\"argv\":[\"true\"]}; - for stdin")
    s.add_argument("--wait", action="store_true", help="wait for the result(s)")
    s.add_argument("--wait-timeout", type=bounded_float(0, 365 * 86_400),
                   help="give up waiting after S seconds (exit 3); 0: do not wait, show what is final")
    s.add_argument("--label", help="a name for the batch (supctl list --label)")
    s.add_argument("--max-cost-usd", type=bounded_float(0, ctl.MAX_BATCH_COST_USD, low_open=True), metavar="X",
                   help="once the batch's finished tasks cost X, its queued Claude tasks end cancelled (budget)")
    s.add_argument("words", nargs="*", metavar="PROMPT | -- CMD ARG")
    w = cmd("wait", "wait for tasks to finish", cmd_wait)
    w.add_argument("ids", nargs="+", metavar="ID")
    w.add_argument("--timeout", type=bounded_float(0, 365 * 86_400),
                   help="give up after S seconds (exit 3); 0: do not wait, show what is final now")
    r = cmd("result", "show one task (also finished ones, also after a restart)", cmd_result)
    r.add_argument("id", metavar="ID")
    r.add_argument("--raw", action="store_true", help="print only the result text")
    ls = cmd("list", "list recent tasks", cmd_list)
    ls.add_argument("--state", help="queued, running, succeeded, failed, timed_out or cancelled")
    ls.add_argument("--limit", type=bounded_int(1, ctl.MAX_LIST), default=50)
    ls.add_argument("--batch", metavar="ID", help="only this batch's tasks (its id is its trace id)")
    ls.add_argument("--label", help="only the tasks of batches with this label")
    cmd("status", "the daemon, its children and queue", cmd_status)
    cmd("hosts", "the daemons sharing this daemon's journal (a fleet): heartbeat age, children, running", cmd_hosts)
    cmd("health", "ok / degraded / failing (exit 0 only when ok)", cmd_info(ctl.Health(), "health"))
    cmd("stats", "counters, latency percentiles, tokens and cost", cmd_info(ctl.Stats(), "stats"))
    cn = cmd("cancel", "cancel a queued or running task", cmd_simple(lambda a: ctl.Cancel(id=a.id)))
    cn.add_argument("id", metavar="ID")
    sc = cmd("scale", "change the number of children live", cmd_simple(lambda a: ctl.Scale(children=a.children)))
    sc.add_argument("children", type=bounded_int(0, ctl.MAX_CHILDREN), metavar="N")
    cmd("reload", "re-read the config file and apply it", cmd_simple(lambda a: ctl.Reload()))
    cmd("shutdown", "drain running tasks and stop the daemon", cmd_simple(lambda a: ctl.Shutdown()))
    pr = cmd("prune", "delete finished tasks older than a duration (default: journal.retain_s) from the journal",
             cmd_simple(lambda a: ctl.Prune(older_than_s=a.older_than, force=a.force)))
    pr.add_argument("--older-than", type=parse_duration, metavar="DURATION", help="e.g. 90s, 30m, 12h, 7d")
    pr.add_argument("--force", action="store_true",
                    help="also delete worktree branches with commits not merged anywhere")
    rs = cmd("restart-slot", "give a child slot (e.g. w03) another chance after it went FATAL",
             cmd_simple(lambda a: ctl.RestartSlot(slot=a.slot)))
    rs.add_argument("slot", metavar="NAME")
    _extra_commands(sub, cmd)
    return p


def _extra_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """watch, bench, flow, batch, web and the agent commands (logs, diff, retry) live in their
    own modules and register their commands here."""
    from supervisord.ctl import agentcmds, batchcmd, benchcmd, flowcmd, watch, webcmd

    for module in (watch, benchcmd, flowcmd, batchcmd, webcmd, agentcmds):
        module.register(cmd)


def connection(a: argparse.Namespace) -> tuple[str, tuple[bytes, bytes, bytes] | None]:
    """Where to connect, and for a tcp:// endpoint the CurveZMQ keys from `--config`."""
    endpoint = a.endpoint or control_endpoint(a.state_dir, a.runtime_dir)
    if not endpoint.startswith("tcp://"):
        return endpoint, None
    from supervisord import config as config_mod
    from supervisord.spokes import curve

    if not a.config:
        raise UsageError(f"{endpoint} is tcp: give --config FILE with [security] client_secret_key and "
                         "server_public_key (supd only listens on tcp with CurveZMQ)")
    try:
        keys = curve.client_keys(config_mod.load(a.config).security)
    except (config_mod.ConfigError, curve.CurveError) as e:
        raise UsageError(str(e)) from None
    return endpoint, (keys.public, keys.secret, keys.server_public)


def main(argv: list[str] | None = None) -> int:
    bad = undecodable_argument(sys.argv[1:] if argv is None else argv)
    if bad is not None:
        print(f"supctl: an argument is not valid UTF-8: {bad[:80]}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        if a.command == "submit":  # bad input is a usage error whether or not a daemon runs
            a.specs = specs_from_file(a.file) if a.file else [spec_from_args(a)]
            check_request(ctl.Submit(tasks=a.specs, label=a.label, max_cost_usd=a.max_cost_usd))
        if a.command == "list":
            check_request(ctl.List(state=a.state, limit=a.limit, batch=a.batch, label=a.label))
        if (prepare := getattr(a, "prepare", None)) is not None:  # e.g. flow run checks its file first
            prepare(a)
        endpoint, keys = connection(a)
        with CheckedClient(endpoint, timeout_s=a.reply_timeout, curve=keys) as c:
            return int(a.fn(c, a))
    except UnicodeError as e:  # a --file or --input-file that is not UTF-8
        print(f"supctl: not valid UTF-8: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, FlowUsageError) as e:
        print(f"supctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as e:
        print(f"supctl: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RequestFailed as e:
        print(f"supctl: {e}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`supctl list | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        print(f"supctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
