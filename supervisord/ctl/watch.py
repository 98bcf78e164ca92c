"""`supctl watch`: follow the daemon's event stream (`events.sock`, see `eventbus`).

Owns the SUB side of the stream and its human formatting. Registers itself with
supctl's parser (`register`). Imports proto, zmq, msgspec and supctl's helpers only.

PUB/SUB drops what is published before the subscription reaches the daemon (the
"slow joiner"), and a slow subscriber loses events by design. So `--task ID` never
trusts the stream alone: after subscribing it asks for the task's state with `Get`,
and asks again whenever the stream has been quiet for a while, so a task that
finished before (or while) we joined still ends the watch.
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
from supervisord.ctl.client import Client, RequestFailed, expect

#: exit codes (as supctl's): the task succeeded / failed, --timeout passed, Ctrl-C
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 3, 130
#: with --task: re-check the task's state after this long without its events
RECHECK_S = 1.0


def events_endpoint(control: str) -> str:
    """`ipc://DIR/control.sock` -> `ipc://DIR/events.sock` (the event socket sits beside it)."""
    head, sep, _ = control.rpartition("/")
    if not sep or not control.startswith("ipc://"):
        raise ValueError(f"cannot derive the event socket from {control!r}")
    return f"{head}/events.sock"


def format_event(event: dict[str, Any]) -> str:
    """One line: `12:00:01.234 task t… progress assistant text: "…"`."""
    ts = event.get("ts") or time.time()
    clock = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    parts = str(event.get("topic", "?")).split("/")
    head = " ".join(parts)
    if parts[0] == "task" and parts[-1] == "progress":
        summary = str(event.get("summary") or event.get("event") or "").replace("\n", " ")
        return f"{clock} {head} {summary if len(summary) <= 120 else summary[:119] + '…'}"
    skip = {"topic", "ts", parts[0]}  # the id is in the topic already
    if parts[0] == "breaker":
        skip.add("state")
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip and v is not None)
    return f"{clock} {head} {rest}".rstrip()


class Watch:
    def __init__(self, client: Client, args: argparse.Namespace,
                 out: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.client, self.args, self.out = client, args, out
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        prefix = f"task/{args.task}/" if args.task else ""
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.endpoint = events_endpoint(client.endpoint)
        self.seen = 0

    def join(self, timeout_s: float = 2.0) -> bool:
        """Connect and wait (briefly) until the connection is up, so our subscription is
        on its way to the daemon before we look at the task's state."""
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED)
        try:
            self.sock.connect(self.endpoint)
            return bool(monitor.poll(int(timeout_s * 1000)))
        finally:
            self.sock.disable_monitor()
            monitor.close(linger=0)

    def show(self, event: dict[str, Any]) -> None:
        self.seen += 1
        self.out(json.dumps(event, ensure_ascii=False) if self.args.json else format_event(event))

    def final_state(self) -> str | None:
        """The task's state if it is final already (from `Get`), else None."""
        state = expect(self.client.request(ctl.Get(id=self.args.task)), ctl.Tasks).tasks[0].state
        return state if state not in ("queued", "running") else None

    def finished_from_get(self, state: str) -> int:
        """The stream missed the end (joined late): report it from the task's record."""
        self.show({"topic": f"task/{self.args.task}/finished", "ts": time.time(), "task": self.args.task,
                   "state": state, "source": "get"})
        return EXIT_OK if state == "succeeded" else EXIT_FAILED

    def run(self) -> int:
        a = self.args
        deadline = time.monotonic() + a.timeout if a.timeout else None
        self.join()
        what = f"task {a.task}" if a.task else "all events"
        print(f"supctl: watching {self.endpoint} ({what}); Ctrl-C to stop", file=sys.stderr, flush=True)
        if a.task:
            state = self.final_state()
            if state is not None:
                return self.finished_from_get(state)
        quiet_since = time.monotonic()
        while a.count is None or self.seen < a.count:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return EXIT_TIMEOUT
            wait_s = 1.0 if deadline is None else min(1.0, deadline - now)
            if not self.sock.poll(int(wait_s * 1000)):
                if a.task and time.monotonic() - quiet_since >= RECHECK_S:
                    quiet_since = time.monotonic()
                    state = self.final_state()
                    if state is not None:
                        return self.finished_from_get(state)
                continue
            quiet_since = time.monotonic()
            _topic, body = self.sock.recv_multipart()
            event = json.loads(body)
            self.show(event)
            if a.task and event.get("topic") == f"task/{a.task}/finished":
                return EXIT_OK if event.get("state") == "succeeded" else EXIT_FAILED
        return EXIT_OK

    def close(self) -> None:
        self.sock.close(linger=0)


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    """Follow events as they happen; with --task, until that task is final."""
    if args.count is not None and args.count < 1:
        print("supctl: --count must be >= 1", file=sys.stderr)
        return 2
    try:
        watch = Watch(client, args)
    except ValueError as e:
        print(f"supctl: {e}", file=sys.stderr)
        return 2
    try:
        return watch.run()
    except RequestFailed as e:
        print(f"supctl: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        watch.close()


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    p = cmd("watch", "follow the event stream (tasks, children, breaker); --json for JSON lines", cmd_watch)
    p.add_argument("--task", metavar="ID", help="only this task's events; exit when it is final (0 if succeeded)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N events")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 3)")
