"""`supctl logs`, `supctl diff` and `supctl retry`: agent work seen from the client.

Owns the readable form of a transcript (assistant text, tool calls with their arguments,
tool results, the result; an exec task's stdout and stderr lines), `logs --follow` (the
event stream says when to ask again; a re-check every second covers what it drops) and
`diff`. `diff` asks the daemon (the `Diff` verb; the daemon's git thread runs git, never
its loop) rather than running git here: then the diff, its errors (no such task, not a
worktree task, not final yet, the repository or branch gone) and its cut are the ones the
dashboard shows, git's command line is written once (`supervisord.spokes.git.diff_argv`),
and it works over the tcp control socket from a machine that does not have the
repository. Its price: a diff longer than one reply is cut, with a line saying how many
bytes were left out (`git diff BASE HEAD` in the repository prints the rest). Registers
its commands with supctl's parser.
Imports proto, zmq, msgspec and supctl's helpers only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from proto import control as ctl
from proto.task import Line
from supervisord.ctl.client import Client, expect
from supervisord.ctl.watch import events_endpoint

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
#: with --follow: ask again after this long without an event
RECHECK_S = 1.0
#: how long `diff` waits for the daemon's git thread (git itself gets 8 s; other jobs may be ahead)
DIFF_WAIT_S = 30.0
#: how much of a tool result `logs` shows (`--json` has all of it)
RESULT_CHARS = 400


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stamp(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _claude_line(obj: dict[str, Any]) -> list[str]:
    """The readable lines of one stream-json event."""
    kind = obj.get("type")
    if kind == "system":
        if obj.get("subtype") == "init":
            return [f"[init] model={obj.get('model')} cwd={obj.get('cwd')} session={obj.get('session_id')}"]
        return [f"[system/{obj.get('subtype')}]"]
    if kind in ("assistant", "user"):
        content = (obj.get("message") or {}).get("content")
        if isinstance(content, str):
            return [f"{kind}: {content}"]
        out = []
        for block in content or []:
            t = block.get("type")
            if t == "text":
                out.append(f"{kind}: {block.get('text', '')}")
            elif t == "tool_use":
                args = json.dumps(block.get("input") or {}, ensure_ascii=False)
                out.append(f"tool call {block.get('name')}: {args}")
            elif t == "tool_result":
                text = _block_text(block.get("content"))
                mark = " (error)" if block.get("is_error") else ""
                out.append(f"tool result{mark}: {_clip(text.strip(), RESULT_CHARS)}")
            elif t == "thinking":
                out.append(f"{kind} thinking: {_clip(block.get('thinking', ''), RESULT_CHARS)}")
        return out
    if kind == "result":
        cost = obj.get("total_cost_usd")
        head = f"[result {obj.get('subtype')}{' error' if obj.get('is_error') else ''}]"
        money = f" cost=${cost:.4f}" if isinstance(cost, int | float) else ""
        lines = [f"{head} turns={obj.get('num_turns')}{money}: {obj.get('result') or ''}"]
        if obj.get("structured_output") is not None:
            lines.append(f"structured output: {json.dumps(obj['structured_output'], ensure_ascii=False)}")
        return lines
    return [f"[{kind}]"] if kind else []


def readable(line: Line, kind: str) -> list[str]:
    """How `supctl logs` shows one transcript line."""
    prefix = f"{_stamp(line.at)} "
    if line.stream == "supd":
        return [f"{prefix}-- {line.text}"]
    if kind == "claude" and line.stream == "stdout" and line.text.startswith("{"):
        try:
            obj = json.loads(line.text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return [prefix + text for text in _claude_line(obj)]
    return [f"{prefix}{line.stream}: {line.text}"]


def _print(lines: list[Line], kind: str, as_json: bool) -> None:
    for line in lines:
        if as_json:
            print(json.dumps({"at": line.at, "stream": line.stream, "attempt": line.attempt, "line": line.text},
                             ensure_ascii=False))
        else:
            for text in readable(line, kind):
                print(text)
    sys.stdout.flush()


def _fetch(c: Client, task_id: str, after: int) -> ctl.Transcript:
    return expect(c.request(ctl.Logs(id=task_id, after=after)), ctl.Transcript)


def cmd_logs(c: Client, a: argparse.Namespace) -> int:
    """Print a task's transcript; with --follow, until the task is final."""
    task = expect(c.request(ctl.Get(id=a.id)), ctl.Tasks).tasks[0]
    sock = None
    if a.follow:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, f"task/{a.id}/".encode())
        sock.connect(events_endpoint(c.endpoint))
    deadline = time.monotonic() + a.timeout if a.timeout else None
    try:
        after = 0
        while True:
            got = _fetch(c, a.id, after)
            _print(got.lines, task.kind, a.json)
            if got.next > after:
                after = got.next
                continue  # more may be waiting past one reply
            if sock is None:
                return EXIT_OK
            if got.final:
                return EXIT_OK if got.state == "succeeded" else EXIT_FAILED
            if deadline is not None and time.monotonic() >= deadline:
                return EXIT_TIMEOUT
            if sock.poll(int(RECHECK_S * 1000)):
                while sock.poll(0):
                    sock.recv_multipart()
    finally:
        if sock is not None:
            sock.close(linger=0)


def cmd_diff(c: Client, a: argparse.Namespace) -> int:
    """The diff of a worktree task's branch against the commit it started from (the daemon's
    `git diff BASE HEAD`; exit 1 when it was cut to fit one reply)."""
    got = expect(c.request(ctl.Diff(id=a.id, stat=a.stat), timeout_s=max(c.timeout_s, DIFF_WAIT_S)), ctl.DiffText)
    if a.json:
        wt = expect(c.request(ctl.Get(id=a.id)), ctl.Tasks).tasks[0].worktree
        size = {"files_changed": wt.files_changed, "insertions": wt.insertions, "deletions": wt.deletions} if wt else {}
        print(json.dumps({"id": got.id, "repo": got.repo, "branch": got.branch, "base": got.base, "head": got.head,
                          **size, "diff": got.text, "left_out_bytes": got.left_out_bytes}))
    else:
        sys.stdout.write(got.text)
    return EXIT_FAILED if got.left_out_bytes else EXIT_OK


def cmd_retry(c: Client, a: argparse.Namespace) -> int:
    """Submit a failed, timed-out or cancelled task again from its stored spec."""
    reply = expect(c.request(ctl.Retry(id=a.id)), ctl.Accepted)
    if a.json:
        print(json.dumps({"ids": reply.ids, "trace_id": reply.trace_id, "retry_of": a.id}))
    else:
        for tid in reply.ids:
            print(tid)
    return EXIT_OK


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    lg = cmd("logs", "a task's transcript: assistant text, tool calls, results (--json: the raw lines)", cmd_logs)
    lg.add_argument("id", metavar="ID")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until the task is final")
    lg.add_argument("--timeout", type=float, metavar="S", help="with --follow: give up after S seconds (exit 3)")
    df = cmd("diff", "a worktree task's diff against the commit its branch started from", cmd_diff)
    df.add_argument("id", metavar="ID")
    df.add_argument("--stat", action="store_true", help="only the diffstat")
    rt = cmd("retry", "submit a failed, timed-out or cancelled task again (a new task)", cmd_retry)
    rt.add_argument("id", metavar="ID")
