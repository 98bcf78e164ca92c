"""`supctl flow run|status|list|wait|cancel`: workflows from the command line.

Owns the flow commands' arguments and output (a tree for people, the `flow status` object
as JSON). `flow run` checks the whole file here first (the same checks as the daemon's:
a bad file is exit 2 and nothing is sent), then sends it decoded, with its `--set` inputs.
Exit codes as for tasks: 0 only if the workflow succeeded, 1 if it did not (or is still
running), 2 bad usage, 3 a wait timed out, 4 no daemon. Imports proto, the core's file
checks and the client only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from proto import control as ctl
from supervisord.core import flowspec
from supervisord.ctl.client import Client, expect

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WAIT_TIMEOUT = 0, 1, 2, 3


class FlowUsageError(Exception):
    """Bad usage of a flow command (supctl: exit 2)."""


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    from supervisord.ctl.supctl import bounded_float, bounded_int

    flow = cmd("flow", "workflows: run a DAG of steps from a TOML/JSON file, follow it, cancel it", _dispatch)
    sub = flow.add_subparsers(dest="flow_command", required=True, metavar="SUBCOMMAND")

    def sc(name: str, help_: str, fn: Callable[[Client, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(flow_fn=fn)
        return p

    r = sc("run", "check a workflow file and run it (prints its id)", cmd_run)
    r.add_argument("file", metavar="FILE", help="TOML (or .json) workflow file; - for TOML on stdin")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="inputs",
                   help="an input for {{inputs.KEY}} (repeatable)")
    r.add_argument("--wait", action="store_true", help="wait for the workflow to end and show it")
    r.add_argument("--wait-timeout", type=bounded_float(0, 365 * 86_400), help="give up waiting after S seconds (exit 3)")
    r.set_defaults(prepare=prepare_run)
    s = sc("status", "one workflow: its steps as a tree, their tasks, results and undo", cmd_status)
    s.add_argument("id", metavar="ID")
    ls = sc("list", "recent workflows", cmd_list)
    ls.add_argument("--state", choices=["running", "succeeded", "failed", "cancelled"])
    ls.add_argument("--limit", type=bounded_int(1, ctl.MAX_FLOW_IDS), default=50)
    w = sc("wait", "wait for workflows to end", cmd_wait)
    w.add_argument("ids", nargs="+", metavar="ID")
    w.add_argument("--timeout", type=bounded_float(0, 365 * 86_400),
                   help="give up after S seconds (exit 3); 0: show what is final now")
    c = sc("cancel", "stop a workflow's running steps, skip the rest, run its undos", cmd_cancel)
    c.add_argument("id", metavar="ID")


def _dispatch(c: Client, a: argparse.Namespace) -> int:
    return int(a.flow_fn(c, a))


# ---- flow run -------------------------------------------------------------------------


def prepare_run(a: argparse.Namespace) -> None:
    """Read and check the file before any connection: a bad file is exit 2, naming each problem."""
    inputs: dict[str, str] = {}
    for item in a.inputs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlowUsageError(f"--set expects KEY=VALUE, got {item!r}")
        inputs[key] = value
    if len(inputs) > ctl.MAX_INPUTS:
        raise FlowUsageError(f"--set: {len(inputs)} inputs exceeds the limit of {ctl.MAX_INPUTS}")
    text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
    fmt: Literal["toml", "json"] = "json" if a.file.endswith(".json") else "toml"
    try:
        doc = flowspec.load(text, fmt)
        flowspec.check(doc, inputs)
    except flowspec.FlowSpecError as e:
        raise FlowUsageError("\n".join(f"{a.file}: {p}" for p in e.problems)) from None
    a.doc, a.input_values = doc, inputs


def cmd_run(c: Client, a: argparse.Namespace) -> int:
    from supervisord.ctl.supctl import trace_context

    traceparent, tracestate = trace_context()
    reply = expect(c.request(ctl.FlowRun(doc=_plain(a.doc), inputs=a.input_values, traceparent=traceparent,
                                         tracestate=tracestate)), ctl.FlowAccepted)
    if not a.wait:
        if a.json:
            _emit({"id": reply.id, "trace_id": reply.trace_id})
        else:
            print(reply.id)
        return EXIT_OK
    flows, pending = wait_for(c, [reply.id], a.wait_timeout)
    return _show(a, flows, pending, many=False)


def _plain(doc: Any) -> Any:
    """TOML dates and times as strings (the wire carries plain data; the daemon names the key)."""
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc if isinstance(doc, (str, int, float, bool)) or doc is None else str(doc)


# ---- status, list, wait, cancel -----------------------------------------------------------


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    (flow,) = expect(c.request(ctl.FlowStatus(id=a.id)), ctl.Flows).flows
    if a.json:
        _emit(flow)
    else:
        print(tree(flow))
    return EXIT_OK if flow["state"] == "succeeded" else EXIT_FAILED


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    flows = expect(c.request(ctl.FlowList(state=a.state, limit=a.limit)), ctl.Flows).flows
    if a.json:
        _emit({"flows": flows})
        return EXIT_OK
    from supervisord.ctl.supctl import table

    rows = [[f["id"], _clip(f["name"], 24), f["state"], f"{f['steps_succeeded']}/{f['steps']}",
             f"${f['cost_usd']:.4f}", _dur(f["started_at"], f["finished_at"])] for f in flows]
    print(table(rows, ["ID", "NAME", "STATE", "STEPS OK", "COST", "DURATION"]))
    return EXIT_OK


def cmd_wait(c: Client, a: argparse.Namespace) -> int:
    ids = list(dict.fromkeys(a.ids))
    flows, pending = wait_for(c, ids, a.timeout)
    return _show(a, flows, pending, many=len(ids) > 1)


def cmd_cancel(c: Client, a: argparse.Namespace) -> int:
    reply = expect(c.request(ctl.FlowCancel(id=a.id)), ctl.Ok)
    if a.json:
        _emit({"ok": True, "message": reply.message})
    else:
        print(reply.message)
    return EXIT_OK


def wait_for(c: Client, ids: list[str], timeout_s: float | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Long-poll until every workflow is final (or `timeout_s` passes; None: for ever)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    while pending:
        left = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        reply = expect(c.request(ctl.FlowWait(ids=pending, timeout_s=left), timeout_s=left + c.timeout_s), ctl.Flows)
        done.update({f["id"]: f for f in reply.flows})
        pending = reply.pending
        if deadline is not None and time.monotonic() >= deadline:
            break
    return [done[i] for i in ids if i in done], pending


def _show(a: argparse.Namespace, flows: list[dict[str, Any]], pending: list[str], *, many: bool) -> int:
    if a.json:
        _emit(flows[0] if len(flows) == 1 and not pending and not many else {"flows": flows, "pending": pending})
    else:
        for flow in flows:
            print(tree(flow))
        for wid in pending:
            print(f"{wid}  still running")
    if pending:
        return EXIT_WAIT_TIMEOUT
    return EXIT_OK if all(f["state"] == "succeeded" for f in flows) else EXIT_FAILED


# ---- output -----------------------------------------------------------------------------


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def _clip(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _dur(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    s = end - start
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.2f}s"


def tree(flow: dict[str, Any]) -> str:
    """The workflow for people: its steps as a tree (each under the last step it comes after;
    the others it waits for are named), then the undos in the order they ran."""
    head = f"{flow['id']}  {flow['name']}  {flow['state']}  cost=${flow['cost_usd']:.4f}  " \
           f"{_dur(flow['started_at'], flow['finished_at'])}"
    lines = [head, f"  trace: {flow['trace_id']}"]
    if flow["error"]:
        lines.append(f"  error: {flow['error']['kind']}: {flow['error']['message']}")
    steps = {s["name"]: s for s in flow["steps"]}
    children: dict[str | None, list[str]] = {}
    for s in flow["steps"]:
        after = [a for a in s.get("after", []) if a in steps]
        children.setdefault(after[-1] if after else None, []).append(s["name"])
    name_w = 2 + 3 * (_depth(steps) + 1) + max(len(n) for n in steps)

    def walk(parent: str | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, name in enumerate(kids):
            last = i == len(kids) - 1
            s = steps[name]
            label = f"{prefix}{'└─ ' if last else '├─ '}{name}"
            notes = []
            extra = [a for a in s.get("after", [])[:-1]]
            if extra:
                notes.append(f"also after {', '.join(extra)}")
            if s.get("map"):
                notes.append(f"map over {s['map']}: {len(s['task_ids'])} tasks")
            elif s["task_ids"]:
                notes.append(" ".join(s["task_ids"]))
            if s["error"]:
                notes.append(f"{s['error']['kind']}: {_clip(s['error']['message'], 80)}")
            elif s["result"]:
                notes.append(f"→ {_clip(s['result'], 50)}")
            lines.append(f"{label:<{name_w}}  {s['state']:<12} {_dur(s['started_at'], s['finished_at']):>7}  "
                         + "  ".join(notes))
            walk(name, prefix + ("   " if last else "│  "))

    walk(None, "  ")
    if flow["undo"]:
        lines.append("  undo (in the order run):")
        for u in flow["undo"]:
            lines.append(f"    {u['step']}  {u['state']}  attempts={u['attempts']}  {u['task_id'] or '-'}")
    return "\n".join(lines)


def _depth(steps: dict[str, dict[str, Any]]) -> int:
    memo: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in memo:
            memo[name] = 0
            after = [a for a in steps[name].get("after", []) if a in steps]
            memo[name] = 1 + depth(after[-1]) if after else 0
        return memo[name]

    return max((depth(n) for n in steps), default=0)
