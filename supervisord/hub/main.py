"""`supd`: parse the command line, load the config, prepare the state dir, run the hub.

Owns the daemon's process-level setup: directories (0700), the state-dir lock (one
daemon per state dir), logging and the uvloop event loop. Exit codes are named below.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

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
#: another supd holds this state dir
EXIT_LOCKED = 4


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
    if args.children is not None and args.children < 0:
        p.error(f"--children must be >= 0, got {args.children}")
    return args


def prepare_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # sockets inside are for this user only
    return path.resolve()


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
    lock = open(state_dir / "supd.lock", "a+")  # noqa: SIM115 (held, and locked, for the daemon's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"supd: another supd is running on {state_dir}", file=sys.stderr)
        return EXIT_LOCKED
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()

    from supervisord.hub.daemon import Daemon, Paths

    from supervisord.store.base import StoreError
    from supervisord.store.sqlite import SqliteStore

    paths = Paths(state_dir, runtime_dir)
    try:
        store = SqliteStore(paths.journal, max_bytes=int(config.journal.max_mb * 2**20))
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
