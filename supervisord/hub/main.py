"""`supd`: parse the command line, load the config, prepare the state dir, run the hub.

Owns the daemon's process-level setup: directories (0700), the locks (one daemon per
state dir and per runtime dir), the sockets' files before they are bound, the open-files
limit, logging and the uvloop event loop. Exit codes are named below.

The locks are `flock`s on the directories themselves (opened O_RDONLY|O_DIRECTORY): a
lock file can be deleted from under a running daemon, a directory cannot be replaced
while we hold it open without the second daemon seeing a different directory. Before
binding, a socket file that a live process answers on is refused ("another supd (pid N)
serves …"); one nobody answers on is stale and removed (libzmq would silently unlink and
steal it otherwise).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from supervisord import config as config_mod
from supervisord import logs

#: clean stop (drain finished)
EXIT_OK = 0
#: unexpected failure while running
EXIT_FAILURE = 1
#: bad command line or config: nothing was started
EXIT_USAGE = 2
#: another supd holds this state dir or runtime dir, or serves its sockets
EXIT_LOCKED = 4

#: the sockets a daemon binds in its runtime dir
SOCKETS = ("control.sock", "children.sock", "events.sock")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="supd", description="Run the supd supervisor in the foreground.")
    p.add_argument("--state-dir", default=os.environ.get("SUPD_STATE_DIR"),
                   help="journal, logs and (by default) sockets live here; or $SUPD_STATE_DIR")
    p.add_argument("--runtime-dir", default=os.environ.get("SUPD_RUNTIME_DIR"),
                   help="where the sockets go (default: the state dir); or $SUPD_RUNTIME_DIR")
    p.add_argument("--config", help="TOML config file (see config/supd.toml)")
    p.add_argument("--children", type=int, help="number of child workers (overrides daemon.children)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    if not args.state_dir:
        p.error("--state-dir is required (or set SUPD_STATE_DIR)")
    low, high = config_mod.RANGES["daemon.children"]
    if args.children is not None and not low <= args.children <= high:
        p.error(f"--children must be between {low} and {high}, got {args.children}")
    return args


def prepare_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # sockets inside are for this user only
    return path.resolve()


def lock_dir(path: Path) -> int | None:
    """An fd holding an exclusive flock on the directory `path`, or None if another has it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _pid_note(state_dir: Path) -> str:
    try:
        pid = int((state_dir / "supd.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ""
    return f" (pid {pid})"


def serving_pid(path: Path) -> int | None:
    """None when no one serves the ipc socket file `path` (a stale file is removed); else the
    pid of the process listening on it (0 if the kernel will not say)."""
    if not os.path.lexists(path):
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        ucred = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", ucred)[0]
    except OSError as e:
        if e.errno == errno.EAGAIN:  # its backlog is full: someone is there
            return 0
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            raise
    finally:
        probe.close()
    logs.log("socket_stale", socket=path, action="removed")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return None


#: the directory locks, held for the daemon's life (closing the fds would release them)
_held: list[int] = []


def claim(state_dir: Path, runtime_dir: Path) -> str | None:
    """Lock the state dir (and the runtime dir when it differs) and clear stale socket
    files; the reason another daemon has them, or None when they are ours now."""
    for path in dict.fromkeys([state_dir, runtime_dir]):
        fd = lock_dir(path)
        if fd is None:
            return f"another supd{_pid_note(path)} is running on {path}"
        _held.append(fd)
    for name in SOCKETS:
        owner = serving_pid(runtime_dir / name)
        if owner is not None:
            return f"another supd (pid {owner or '?'}) serves {runtime_dir / name}"
    for path in dict.fromkeys([state_dir, runtime_dir]):  # for people: who holds it
        (path / "supd.lock").write_text(f"{os.getpid()}\n")
    return None


def open_store(config: config_mod.Config, paths: Any) -> Any:
    """SQLite in the state dir, or — with `[journal] url` — the fleet's PostgreSQL (connected,
    its schema checked and migrated, before anything starts). Raises `StoreError`."""
    j = config.journal
    if j.url is None:
        from supervisord.store.sqlite import SqliteStore

        return SqliteStore(paths.journal, max_bytes=int(j.max_mb * 2**20), group_sync=j.synchronous)
    import time

    from supervisord.store.journal import FleetStore, Journal

    host = j.host or f"{socket.gethostname()}:{paths.state_dir}"
    journal = Journal(j.url, host, j.lease_s, pid=os.getpid(), started_at=time.time())
    journal.open()
    logs.log("journal_opened", url=journal.store.where if journal.store else "", host=host, lease_s=j.lease_s)
    return FleetStore(journal)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"supd: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from supervisord.spokes import curve

    try:
        curve.server_keys(config.security)  # never listen on tcp without CurveZMQ
    except curve.CurveError as e:
        print(f"supd: refusing to start: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.children is not None:
        config = msgspec.structs.replace(config, daemon=msgspec.structs.replace(config.daemon, children=args.children))
    logs.setup(args.log_level or config.daemon.log_level)
    try:
        state_dir = prepare_dir(Path(args.state_dir))
        runtime_dir = prepare_dir(Path(args.runtime_dir or config.daemon.runtime_dir or state_dir))
    except OSError as e:
        print(f"supd: cannot use {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if len(str(runtime_dir / "children.sock")) > 100:
        print(f"supd: socket path too long for ipc (max ~107 bytes): {runtime_dir}", file=sys.stderr)
        return EXIT_USAGE
    from supervisord.spokes import rlimit

    problem = rlimit.ensure(config.daemon.children, config.daemon.spares)
    if problem:
        print(f"supd: refusing to start: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        refused = claim(state_dir, runtime_dir)
    except OSError as e:  # a directory or a socket file we cannot even look at
        print(f"supd: cannot use {e.filename or runtime_dir}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if refused:
        print(f"supd: {refused}", file=sys.stderr)
        return EXIT_LOCKED

    from supervisord.hub.daemon import Daemon, Paths
    from supervisord.store.base import StoreError

    try:
        config = config_mod.with_env(config, os.environ)
    except config_mod.ConfigError as e:
        print(f"supd: config error: {e}", file=sys.stderr)
        return EXIT_USAGE

    paths = Paths(state_dir, runtime_dir)
    try:
        store = open_store(config, paths)
    except StoreError as e:  # the journal cannot be opened (corrupt, newer schema): nothing was started
        print(f"supd: cannot open the journal: {e}", file=sys.stderr)
        return EXIT_FAILURE

    async def run() -> int:
        daemon = Daemon(config, paths, Path(args.config) if args.config else None)
        return await daemon.run(store)

    try:
        return uvloop.run(run())
    except Exception:
        logs.log("daemon_crashed", level=40, error=repr(sys.exc_info()[1]))
        logs.flush()
        raise


if __name__ == "__main__":
    sys.exit(main())
