"""The hub in-process: its real loop body (`handle` + `turn`) and a real SQLite store,
with fakes of our own spokes — a scripted clock, a child link that records what the hub
sends, a process spoke that hands out pids and records kills, a control link that
records replies. No event loop, no sockets, no processes: fast and deterministic.

A test scripts what children say and do (`hello`, `result`, `exit`, `beat`) and what
clients ask (`request`), advances the clock, and checks decisions, replies and the store.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from proto import PROTOCOL_VERSION
from proto import children as cp
from proto import control as ctl
from proto.task import Outcome, TaskSpec, TaskView
from supervisord import config as config_mod
from supervisord.core.pool import ChildState, Slot
from supervisord.core.traceids import Ids
from supervisord.events import (ChildExited, ChildSaid, Event, GitAnswered, RequestReceived, TimerFired,
                                TreesChecked)
from supervisord.hub import daemon
from supervisord.hub.state import Clock, Hub, Paths, Spokes
from supervisord.spokes.claude_cli import ClaudeCommand
from supervisord.spokes.git import GitError
from supervisord.spokes.tracing import Tracer
from supervisord.store.sqlite import SqliteStore


@dataclass
class FakeChildren:
    sent: list[tuple[str, cp.DaemonMessage]] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    dropped: int = 0

    def send(self, identity: str, message: cp.DaemonMessage) -> bool:
        if identity in self.unreachable:
            return False
        self.sent.append((identity, message))
        return True

    def of(self, kind: type, identity: str | None = None) -> list[Any]:
        return [m for i, m in self.sent if isinstance(m, kind) and (identity is None or i == identity)]


    def check_socket(self) -> bool:
        return True

@dataclass
class FakeControl:
    replies: list[tuple[tuple[bytes, ...], ctl.Reply]] = field(default_factory=list)
    bad_requests: int = 0

    def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
        self.replies.append((envelope, reply))


    def check_socket(self) -> bool:
        return True

@dataclass
class FakeBus:
    topics: list[str] = field(default_factory=list)

    def publish(self, topic: str, **data: Any) -> None:
        self.topics.append(topic)


    def check_socket(self) -> bool:
        return True

@dataclass
class FakeProcs:
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    spawned: dict[str, int] = field(default_factory=dict)  # identity -> pid
    killed: list[int] = field(default_factory=list)
    terminated: list[tuple[str, int]] = field(default_factory=list)
    checks: list[list[tuple[str, int]]] = field(default_factory=list)
    alive_at_start: set[str] = field(default_factory=set)
    fail_spawn: bool = False

    def spawn_child(self, identity: str, argv: list[str], env: dict[str, str]) -> int:
        if self.fail_spawn:
            raise OSError(24, "Too many open files")
        pid = next(self.pids)
        self.spawned[identity] = pid
        return pid

    def kill_child(self, pid: int) -> None:
        self.killed.append(pid)

    def terminate_tree(self, task_id: str, epoch: int, pgid: int | None) -> None:
        self.terminated.append((task_id, epoch))

    def check_trees(self, attempts: list[tuple[str, int]]) -> None:
        self.checks.append(list(attempts))

    def leftovers(self, task_ids: list[str]) -> set[str]:
        return {t for t in task_ids if t in self.alive_at_start}

    hooks: list[tuple[str, list[str], bytes, float]] = field(default_factory=list)

    def run_hook(self, name: str, argv: list[str], data: bytes, timeout_s: float) -> None:
        self.hooks.append((name, argv, data, timeout_s))


@dataclass
class FakeGit:
    """The git thread: housekeeping jobs are recorded, questions wait until the test answers
    them (`Rig.answer_git`, scripted, or `Rig.run_git`, the job's own function run here)."""

    jobs: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    questions: list[tuple[str, Any, Any, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def run(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        self.jobs.append((what, fn, args, kwargs))

    def ask(self, what: str, then: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
        self.questions.append((what, then, fn, args, kwargs))


@dataclass
class FakeNotifier:
    watchdog_interval_s: float | None = None
    said: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return True

    def ready(self, status: str | None = None) -> None:
        self.said.append("READY")

    def status(self, text: str) -> None:
        self.said.append(f"STATUS={text}")

    def watchdog(self) -> None:
        self.said.append("WATCHDOG")

    def stopping(self, status: str | None = None) -> None:
        self.said.append("STOPPING")

    def extend_timeout(self, seconds: float) -> None:
        pass

    def reloading(self) -> None:
        self.said.append("RELOADING")


class Rig:
    """One hub and its fakes. `t` is the fake monotonic clock (seconds)."""

    def __init__(self, tmp: Path, config: str = "", children: int = 2, store: SqliteStore | None = None,
                 spares: int = 0) -> None:
        self.tmp = tmp
        self.t = 100.0
        self.config_path = tmp / "supd.toml"
        self.config_path.write_text(config)
        cfg = config_mod.load(self.config_path)
        cfg = msgspec.structs.replace(cfg, daemon=msgspec.structs.replace(cfg.daemon, children=children,
                                                                                    spares=spares))
        self.children, self.control, self.bus = FakeChildren(), FakeControl(), FakeBus()
        self.procs, self.notifier, self.git = FakeProcs(), FakeNotifier(), FakeGit()
        self.wakes: list[float] = []
        self.store = store or SqliteStore(tmp / "tasks.db")
        rng = random.Random(7)
        clock = Clock(now=lambda: self.t, wall=lambda: 1_700_000_000.0 + self.t,
                      wall_ns=lambda: int((1_700_000_000.0 + self.t) * 1e9), rand=lambda: 0.5)
        spokes = Spokes(children=self.children, control=self.control, events=self.bus, procs=self.procs,
                        notifier=self.notifier, tracer=Tracer(), wake_at=self.wakes.append, git=self.git)
        self.hub = Hub(config=cfg, paths=Paths(tmp, tmp), clock=clock, ids=Ids(rng.getrandbits), store=self.store,
                       spokes=spokes, claude=ClaudeCommand(["claude"], "test"), child_env={}, environ={},
                       config_path=self.config_path)
        self.turn = daemon.Turn()
        self._envelopes = itertools.count(1)

    # ---- driving ---------------------------------------------------------------------

    def boot(self) -> Rig:
        """Recover, size the pool, and let every spawned child say Hello."""
        daemon.tasks.recover(self.hub)
        daemon.flows.recover(self.hub)
        self.hub.pool.resize(self.hub.config.daemon.children, self.t)
        self.step()
        for identity in list(self.procs.spawned):
            self.hello(identity)
        return self

    def step(self, *events: Event) -> None:
        for event in events:
            daemon.handle(self.hub, event)
        daemon.turn(self.hub, self.turn)

    def advance(self, seconds: float) -> None:
        """Time passes; the hub's timer fires at each wake-up it asked for on the way."""
        end = self.t + seconds
        while True:
            at = self.turn.armed_at
            if at is None or at > end:
                break
            self.t = max(self.t, at)
            self.step(TimerFired())
        self.t = end
        self.step(TimerFired())

    def request(self, request: ctl.Request) -> ctl.Reply:
        envelope = (str(next(self._envelopes)).encode(),)
        self.step(RequestReceived(envelope, request))
        got = [r for e, r in self.control.replies if e == envelope]
        assert len(got) <= 1, got
        return got[0] if got else None  # type: ignore[return-value]

    def submit(self, *specs: TaskSpec) -> list[str]:
        reply = self.request(ctl.Submit(tasks=list(specs)))
        assert isinstance(reply, ctl.Accepted), reply
        return reply.ids

    def say(self, identity: str, message: cp.ChildMessage) -> None:
        self.step(ChildSaid(identity, message))

    def hello(self, identity: str) -> None:
        self.say(identity, cp.Hello(protocol=PROTOCOL_VERSION, slot=identity.split(".")[0],
                                    pid=self.procs.spawned[identity]))

    def dispatched(self, task_id: str) -> tuple[str, cp.Dispatch]:
        """The child the latest attempt of `task_id` went to, and its Dispatch."""
        for identity, m in reversed(self.children.sent):
            if isinstance(m, cp.Dispatch) and m.task_id == task_id:
                return identity, m
        raise AssertionError(f"{task_id} was never dispatched")

    def result(self, task_id: str, state: str = "succeeded", outcome: Outcome | None = None,
               epoch: int | None = None, identity: str | None = None) -> None:
        who, d = self.dispatched(task_id)
        self.say(identity or who, cp.Result(task_id=task_id, attempt=d.attempt, epoch=d.epoch if epoch is None else epoch,
                                            state=state, outcome=outcome or Outcome(exit_code=0, result="ok"),
                                            started_at=1.0, finished_at=2.0))

    def exit(self, identity: str, returncode: int | None = -9) -> None:
        self.step(ChildExited(identity, self.procs.spawned[identity], returncode))

    def trees_dead(self) -> None:
        """The process spoke reports every tree it was asked about as gone."""
        pending = [a for batch in self.procs.checks for a in batch]
        self.procs.checks.clear()
        self.step(TreesChecked(frozenset(pending), frozenset()))

    def answer_git(self, result: Any = None, error: str | None = None) -> None:
        """The git thread answers its oldest question with this."""
        _what, then, _fn, _args, _kwargs = self.git.questions.pop(0)
        self.step(GitAnswered(then, result, error))

    def run_git(self) -> None:
        """The git thread runs its oldest question's job (here, in the test) and answers."""
        _what, then, fn, args, kwargs = self.git.questions.pop(0)
        try:
            result, error = fn(*args, **kwargs), None
        except GitError as e:
            result, error = None, str(e)
        self.step(GitAnswered(then, result, error))

    def replied(self, n: int = 1) -> list[ctl.Reply]:
        """The last `n` replies sent, whichever request they answer."""
        return [r for _e, r in self.control.replies[-n:]]

    # ---- looking ----------------------------------------------------------------------

    def slot(self, identity: str) -> Slot:
        slot = self.hub.pool.find(identity)
        assert slot is not None, identity
        return slot

    def states(self) -> list[str]:
        return [s.state.value for s in self.hub.pool.slots]

    def stored(self, task_id: str) -> TaskView:
        """The task as a fresh reader of the database sees it (what a restart would find)."""
        reader = SqliteStore(self.tmp / "tasks.db")
        try:
            got = reader.get(task_id)
        finally:
            reader.close()
        assert got is not None, task_id
        return got

    def view(self, task_id: str) -> TaskView:
        reply = self.request(ctl.Get(id=task_id))
        assert isinstance(reply, ctl.Tasks), reply
        return reply.tasks[0]

    def idle(self) -> list[str]:
        return [s.identity for s in self.hub.pool.slots if s.state is ChildState.IDLE]


def exec_spec(*argv: str, **kw: Any) -> TaskSpec:
    return TaskSpec(kind="exec", argv=list(argv or ["true"]), **kw)
