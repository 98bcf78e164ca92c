"""`python -m children --endpoint E --identity ID --daemon-pid PID [--heartbeat-s S] [--liveness N]`

Boots one child worker: names the process, ties its life to the daemon (parent-death
signal, then a check that the parent is still the daemon), becomes a subreaper for its
task trees, connects a DEALER to the daemon's ROUTER and hands over to
`children.worker`. Anything that goes wrong before the loop runs exits with
`BOOT_FAILURE_EXIT`, so the daemon marks the slot fatal instead of restarting it in a loop.
Imports the stdlib, `children.log` and the pure `supervisord.pool` eagerly, the rest
(`supervisord.procs` and its psutil included) inside `main()` so that an import error is a
boot failure too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from children.log import bind, log
from supervisord.pool import BOOT_FAILURE_EXIT

if TYPE_CHECKING:
    import zmq

__all__ = ["BOOT_FAILURE_EXIT", "main"]


class BootError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would exit 2; a child with bad arguments must say "boot failure".
        raise BootError(f"bad arguments: {message}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m children", description="supd child worker")
    parser.add_argument("--endpoint", required=True, help="the daemon's ROUTER, e.g. ipc:///run/supd/children.sock")
    parser.add_argument("--identity", required=True, help="slot name, also the DEALER identity (w00.1)")
    parser.add_argument("--daemon-pid", type=int, required=True, help="exit unless this is our parent")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--liveness", type=int, default=5, help="heartbeats of daemon silence before leaving")
    args = parser.parse_args(argv)
    if args.heartbeat_s <= 0 or args.liveness < 1:
        raise BootError("--heartbeat-s must be > 0 and --liveness >= 1")
    return args


def boot_process(args: argparse.Namespace) -> None:
    """Process-level setup. Order matters: the death signal first, then the parent
    check, so a daemon dying in between is still noticed."""
    from setproctitle import setproctitle

    from supervisord import procs

    setproctitle(f"supd-child {args.identity} idle")
    procs.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != args.daemon_pid:
        raise BootError(f"parent is {os.getppid()}, not the daemon {args.daemon_pid}")
    procs.set_child_subreaper()


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
        boot_process(args)
        import zmq

        from children.worker import Worker, WorkerConfig

        ctx = zmq.Context()
        sock = connect(ctx, args.endpoint, args.identity)
        config = WorkerConfig(args.identity, args.daemon_pid, args.heartbeat_s, args.liveness)
        worker = Worker(sock, config)
        worker.install_signals()
    except (BootError, OSError, ImportError, ValueError) as exc:
        log("boot_failed", error=f"{type(exc).__name__}: {exc}", code=BOOT_FAILURE_EXIT)
        return BOOT_FAILURE_EXIT
    try:
        return worker.run()
    except BaseException:
        # A bug in the loop must not leave a task tree behind.
        from supervisord import procs

        procs.kill_tree_now(procs.descendants(os.getpid()))
        raise
    finally:
        worker.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
