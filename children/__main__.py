"""`python -m children --endpoint E --identity ID --daemon-pid PID [--heartbeat-s S] [--liveness N] [--cgroup DIR]`

Boots one child worker: names the process, ties its life to the daemon (parent-death
signal, then a check that the parent is still the daemon, and a pidfd of the daemon that
tells the loop when it is gone), becomes a subreaper for its
task trees, connects a DEALER to the daemon's ROUTER and hands over to
`children.worker`. Anything that goes wrong before the loop runs exits with
`BOOT_FAILURE_EXIT`, so the daemon marks the slot fatal instead of restarting it in a loop.
Imports the stdlib, `children.log` and the pure `supervisord.core.pool` eagerly, the rest
(`supervisord.spokes.procs` and its psutil included) inside `main()` so that an import error is a
boot failure too.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, NamedTuple

# msgspec imports typing_extensions when it is installed (other libraries of the venv need it)
# for kinds of types no wire schema of ours has; that import (with inspect, ast, dis and
# tokenize) was ~10 ms of every child's boot. msgspec falls back to `typing` without it.
sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]

import proto
from children.log import bind, log
from proto.children import BOOT_FAILURE_EXIT

if TYPE_CHECKING:
    import zmq

__all__ = ["BOOT_FAILURE_EXIT", "main"]


class BootError(Exception):
    pass


class Args(NamedTuple):
    endpoint: str  #: the daemon's ROUTER, e.g. ipc:///run/supd/children.sock
    identity: str  #: slot name and generation, also the DEALER identity (w00.1)
    daemon_pid: int  #: exit unless this is our parent
    heartbeat_s: float = 1.0
    liveness: int = 5  #: heartbeats of daemon silence before it is logged as silent
    cgroup: str = ""  #: the daemon's cgroup v2 subtree for task attempts ("": none)


#: Flag -> (field, type). Six flags, written by the daemon, not people: argparse would
#: cost ~10 ms of the child's boot, which is a crashed child's restart latency.
_FLAGS: dict[str, tuple[str, type]] = {
    "--endpoint": ("endpoint", str), "--identity": ("identity", str), "--daemon-pid": ("daemon_pid", int),
    "--heartbeat-s": ("heartbeat_s", float), "--liveness": ("liveness", int), "--cgroup": ("cgroup", str),
}


def parse_args(argv: list[str] | None) -> Args:
    """`--flag value` or `--flag=value` for each of `_FLAGS`; anything wrong is a BootError."""
    words = iter(sys.argv[1:] if argv is None else argv)
    values: dict[str, object] = {}
    for word in words:
        flag, eq, inline = word.partition("=")
        if flag not in _FLAGS:
            raise BootError(f"bad arguments: unknown option {flag!r} (usage: {__doc__.splitlines()[0]})")
        raw = inline if eq else next(words, None)
        if raw is None:
            raise BootError(f"bad arguments: {flag} needs a value")
        name, kind = _FLAGS[flag]
        try:
            values[name] = kind(raw)
        except (TypeError, ValueError):
            raise BootError(f"bad arguments: {flag} needs a {kind.__name__}, got {raw!r}") from None
    missing = [flag for flag, (name, _) in _FLAGS.items() if name not in values and name not in Args._field_defaults]
    if missing:
        raise BootError(f"bad arguments: missing {', '.join(missing)}")
    args = Args(**values)  # type: ignore[arg-type]
    if args.heartbeat_s <= 0 or args.liveness < 1:
        raise BootError("--heartbeat-s must be > 0 and --liveness >= 1")
    return args


def boot_process(args: Args) -> int:
    """Process-level setup; returns a pidfd of the daemon. Order matters: the death signal
    first, then the parent check, then the pidfd and the check again (so the pidfd surely
    names the daemon, not a process that took its pid), so a daemon dying in between is
    still noticed."""
    from supervisord.spokes import procs

    procs.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != args.daemon_pid:
        raise BootError(f"parent is {os.getppid()}, not the daemon {args.daemon_pid}")
    daemon_pidfd = procs.pidfd_open(args.daemon_pid)
    if os.getppid() != args.daemon_pid:
        os.close(daemon_pidfd)
        raise BootError(f"the daemon {args.daemon_pid} exited during boot")
    procs.set_child_subreaper()
    procs.run_batch()  # the tasks it starts run as normal
    return daemon_pidfd


def connect(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: str) -> zmq.Socket[bytes]:
    """A DEALER named `identity`, connected to the daemon (LINGER 0: never hang on exit)."""
    import zmq

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise BootError(f"cannot connect to {endpoint}: {exc}") from exc
    return sock


def main(argv: list[str] | None = None) -> int:
    bind(slot="?", child_pid=os.getpid())
    try:
        args = parse_args(argv)
        bind(slot=args.identity)
        daemon_pidfd = boot_process(args)
        import zmq

        from children.worker import Worker, WorkerConfig

        ctx = zmq.Context()
        ctx.set(zmq.THREAD_SCHED_POLICY, proto.IO_THREAD_SCHED_POLICY)
        sock = connect(ctx, args.endpoint, args.identity)
        config = WorkerConfig(args.identity, args.daemon_pid, args.heartbeat_s, args.liveness, args.cgroup)
        worker = Worker(sock, config, daemon_pidfd)
        worker.install_signals()
    except (BootError, OSError, ImportError, ValueError) as exc:
        log("boot_failed", error=f"{type(exc).__name__}: {exc}", code=BOOT_FAILURE_EXIT)
        return BOOT_FAILURE_EXIT
    try:
        return worker.run()
    except BaseException:
        # A bug in the loop must not leave a task tree behind.
        from supervisord.spokes import procs

        procs.kill_tree_now(procs.descendants(os.getpid()))
        raise
    finally:
        worker.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
