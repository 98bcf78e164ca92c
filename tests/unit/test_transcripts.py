"""Transcripts, pure and stored: the child's line splitter and cap, the store's chunks
(pending, committed, compressed, after a reopen) and their removal by prune."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from children.executors import Transcriber
from proto.task import Line, TaskSpec, TaskState
from supervisord.core.task import Task
from supervisord.store.sqlite import SqliteStore


def texts(lines: list[Line]) -> list[tuple[str, str]]:
    return [(x.stream, x.text) for x in lines]


def test_lines_are_split_per_stream_across_chunks() -> None:
    t = Transcriber(cap=1000, attempt=2)
    t.feed("stdout", b"one\ntw", 1.0)
    t.feed("stderr", b"oops\r\n", 1.5)
    t.feed("stdout", b"o\nthree", 2.0)
    assert texts(t.take(2.0)) == [("stdout", "one"), ("stderr", "oops"), ("stdout", "two")]
    assert texts(t.take(3.0, final=True)) == [("stdout", "three")]  # the last line without its newline
    assert t.take(4.0, final=True) == []


def test_the_cap_keeps_the_first_bytes_and_notes_the_rest() -> None:
    t = Transcriber(cap=10, attempt=1)
    t.feed("stdout", b"12345\n67890\nabc\n", 1.0)
    lines = t.take(2.0, final=True)
    assert texts(lines) == [("stdout", "12345"), ("stdout", "67890"),
                            ("supd", "transcript cap of 10 bytes reached: 1 lines (3 bytes) left out")]
    assert all(x.attempt == 1 for x in lines)


def test_a_line_longer_than_the_room_left_is_dropped_without_growing_memory() -> None:
    t = Transcriber(cap=8, attempt=1)
    for _ in range(100):
        t.feed("stdout", b"x" * 1000, 1.0)  # no newline, ever
    assert len(t.partial["stdout"]) <= 8
    assert texts(t.take(2.0, final=True))[-1][0] == "supd"


def test_a_claude_transcript_keeps_only_json_lines_from_stdout() -> None:
    t = Transcriber(cap=1000, attempt=1, json_stdout=True)
    t.feed("stdout", b'{"type":"system"}\n[log_1] sending request {\n  method: "POST",\n}\n{"type":"result"}\n', 1.0)
    t.feed("stderr", b"a warning\n", 1.0)
    assert texts(t.take(2.0, final=True)) == [("stdout", '{"type":"system"}'), ("stdout", '{"type":"result"}'),
                                              ("stderr", "a warning")]


def test_a_zero_cap_keeps_nothing() -> None:
    t = Transcriber(cap=0, attempt=1)
    t.feed("stdout", b"a\nb\n", 1.0)
    assert t.take(1.0, final=True) == []


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "tasks.db")


def lines(n: int, start: int = 0) -> list[Line]:
    return [Line(float(i), "stdout", 1, f"line {i}") for i in range(start, start + n)]


def test_pending_and_committed_chunks_read_as_one_transcript(store: SqliteStore, tmp_path: Path) -> None:
    store.append_output("t1", 0, lines(3), 18)
    store.commit()
    store.append_output("t1", 3, lines(2, 3), 12)
    store.append_output("t2", 0, lines(1), 6)
    got, nxt = store.transcript("t1", 0, 1 << 20)
    assert ([x.text for x in got], nxt) == ([f"line {i}" for i in range(5)], 5)
    got, nxt = store.transcript("t1", 4, 1 << 20)
    assert ([x.text for x in got], nxt) == (["line 4"], 5)
    assert store.transcript_extent("t1") == (5, 30)
    store.close()
    reopened = SqliteStore(tmp_path / "tasks.db")
    assert [x.text for x in reopened.transcript("t1", 2, 1 << 20)[0]] == ["line 2", "line 3", "line 4"]
    assert reopened.transcript_extent("t2") == (1, 6)
    with sqlite3.connect(tmp_path / "tasks.db") as db:  # compressed at rest
        blob = db.execute("SELECT data FROM transcripts WHERE task_id='t1' AND first=0").fetchone()[0]
    assert b"line 0" not in blob and b"line 0" in zlib.decompress(blob)
    reopened.close()


def test_a_reply_holds_about_its_budget(store: SqliteStore) -> None:
    for i in range(10):
        store.append_output("t", i * 100, lines(100, i * 100), 700)
    store.commit()
    got, nxt = store.transcript("t", 0, 5000)
    assert 100 <= len(got) < 1000 and nxt == len(got) and nxt % 100 == 0
    rest, end = store.transcript("t", nxt, 1 << 30)
    assert [x.text for x in got + rest] == [f"line {i}" for i in range(1000)] and end == 1000


def test_prune_removes_transcripts_and_hands_over_worktrees(store: SqliteStore) -> None:
    wt = Task(id="w", spec=TaskSpec(kind="exec", argv=["true"], worktree=True, repo="/repo"), submitted_at=1.0)
    plain = Task(id="p", spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=1.0)
    store.accept([wt, plain])
    for t in (wt, plain):
        t.state, t.finished_at = TaskState.SUCCEEDED, 5.0
        store.record(t)
        store.append_output(t.id, 0, lines(2), 12)
    store.commit()
    assert store.worktree_tasks() == {"w": ("/repo", "supd/w")}
    assert store.prune(10.0) == 2
    assert store.transcript("w", 0, 1 << 20) == ([], 0) and store.transcript_extent("p") == (0, 0)
    assert store.take_pruned_worktrees() == [("w", "/repo", "supd/w", None)]
    assert store.take_pruned_worktrees() == []


def test_the_cap_holds_however_the_output_is_split_into_reads() -> None:
    import random

    rand = random.Random(7)
    data = b"".join(b"x" * 20 + b"\n" for _ in range(500))
    for _ in range(300):
        t = Transcriber(cap=1000, attempt=1)
        i = 0
        while i < len(data):
            n = rand.randint(1, 3000)
            t.feed("stdout", data[i:i + n], 1.0)
            i += n
        got = t.take(2.0, final=True)
        assert [x.text for x in got[:-1]] == ["x" * 20] * 50
        assert got[-1].text == "transcript cap of 1000 bytes reached: 450 lines (9000 bytes) left out"
