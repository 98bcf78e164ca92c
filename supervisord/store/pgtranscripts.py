"""Transcripts in the shared PostgreSQL journal, so `supctl logs` works from any host.

Chunks of lines (zlib-compressed msgpack, as SQLite keeps them) keyed by (task, first line),
written by the owning host's group commit. Line numbers go on across attempts and hosts:
the host that claims a retry or a rescued attempt reads the transcript's extent with its
claim (`extents`) and numbers on from there. A chunk already there is kept (the first
writer wins: a stale owner's late chunk cannot replace the current attempt's lines).

Imports the stdlib, psycopg, msgspec and proto only; called by `PgStore`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from proto.task import Line
from supervisord.store import group

#: 3 -> 4: transcripts (appended to `pgschema.MIGRATIONS`).
MIGRATION = (
    """CREATE TABLE transcripts (
        task_id TEXT NOT NULL,
        first INTEGER NOT NULL,
        count INTEGER NOT NULL,
        raw_bytes INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (task_id, first)
    )""",
)
#: zlib level for chunks (the same as SQLite's)
ZLIB_LEVEL = 6

Chunk = tuple[str, int, list[Line], int]  # task id, first line, lines, raw bytes

_enc = msgspec.msgpack.Encoder()
_lines_dec = msgspec.msgpack.Decoder(list[Line])


def write(cur: psycopg.Cursor[Any], chunks: Sequence[Chunk]) -> None:
    if chunks:
        cur.executemany(
            "INSERT INTO transcripts (task_id, first, count, raw_bytes, data) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id, first) DO NOTHING",
            [(tid, first, len(lines), raw, zlib.compress(_enc.encode(lines), ZLIB_LEVEL))
             for tid, first, lines, raw in chunks])


def read(db: psycopg.Connection[Any], task_id: str, after: int, budget_bytes: int,
         pending: Sequence[Chunk]) -> tuple[list[Line], int]:
    """Lines `after`.. (pending ones too), stopping past `budget_bytes` of text (at least one
    chunk); and the number of the line after the last one returned."""
    rows = db.execute("SELECT first, data FROM transcripts WHERE task_id=%s AND first + count > %s ORDER BY first",
                      (task_id, after)).fetchall()
    chunks = [(int(f), _lines_dec.decode(zlib.decompress(d))) for f, d in rows]
    chunks += [(f, ls) for tid, f, ls, _ in pending if tid == task_id and f + len(ls) > after]
    return group.transcript_page(chunks, after, budget_bytes)


def extents(db: psycopg.Connection[Any], ids: Sequence[str], pending: Sequence[Chunk]) -> dict[str, tuple[int, int]]:
    """(lines, raw bytes) of each task's transcript so far, by id (tasks with none: absent)."""
    out: dict[str, tuple[int, int]] = {}
    if ids:
        for tid, n, b in db.execute("SELECT task_id, MAX(first + count), SUM(raw_bytes) FROM transcripts"
                                    " WHERE task_id = ANY(%s) GROUP BY task_id", (list(ids),)):
            out[str(tid)] = (int(n), int(b))
    for tid, first, lines, raw in pending:
        if tid in ids:
            n, b = out.get(tid, (0, 0))
            out[tid] = (max(n, first + len(lines)), b + raw)
    return out


def forget(cur: psycopg.Cursor[Any], ids: Sequence[str]) -> None:
    if ids:
        cur.execute("DELETE FROM transcripts WHERE task_id = ANY(%s)", (list(ids),))
