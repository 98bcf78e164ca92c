"""How many file descriptors a pool needs, and whether a limit can carry it. Pure.

Measured (`ls /proc/PID/fd` of a running daemon, tests/integration/test_edges.py keeps the
numbers honest): 28 fds with no children (interpreter, uvloop, libzmq's context and
sockets, SQLite's db/wal/shm, the log), plus 2 per ready child (its ipc connection on
children.sock and its pidfd). We budget 3 per child (a respawn overlaps the exit of the
one it replaces), a base of 48 (Prometheus, OpenTelemetry exporters, a PostgreSQL
connection) and room for 64 clients connected at once (one fd each). libzmq aborts the
whole daemon when it cannot get an fd, so too few is refused up front, never found out.
"""

from __future__ import annotations

#: fds of the daemon with no children, with room for the optional exporters
BASE_FDS = 48
#: fds per child: its connection, its pidfd, and one spare for the overlap of a respawn
PER_CHILD_FDS = 3
#: clients (supctl, watchers, the web) connected at once
CLIENT_FDS = 64


def fds_needed(children: int) -> int:
    return BASE_FDS + PER_CHILD_FDS * children + CLIENT_FDS


def fd_budget_problem(children: int, limit: int, spares: int = 0) -> str | None:
    """Why `limit` open files (RLIMIT_NOFILE's soft limit) cannot carry `children` and
    `spares` (children too, booted ahead), or None."""
    need = fds_needed(children + spares)
    if limit >= need:
        return None
    most = max(0, (limit - BASE_FDS - CLIENT_FDS) // PER_CHILD_FDS - spares)
    who = f"{children} children" + (f" and {spares} spare{'s' if spares > 1 else ''}" if spares else "")
    return (f"{who} need {need} open files but the limit is {limit} (ulimit -n): "
            f"raise it (ulimit -n {need}, or LimitNOFILE= in the unit) or use at most {most} children")


def soft_limit_to_ask(children: int, soft: int, hard: int) -> int | None:
    """The soft limit to raise to, or None to keep `soft`: only when `soft` is too low for
    `children`, then to the need with room to scale (4096), never past `hard` (< 0: none)."""
    need = fds_needed(children)
    if soft >= need:
        return None
    target = max(need, 4096) if hard < 0 else min(max(need, 4096), hard)
    return target if target > soft else None
