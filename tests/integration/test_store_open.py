"""supd refuses a journal it cannot trust, at start, in one line: a corrupt file or one from
a newer supd (real files, a real supd process)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Supd

pytestmark = pytest.mark.timeout(60)


def _garbage_header(db: Path) -> None:
    db.write_bytes(b"this is no sqlite file!" * 200)


def _newer_schema(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")


#: damage -> what the one line says
CASES = [(_garbage_header, "not a database"), (_newer_schema, "newer supd")]


@pytest.mark.parametrize(("damage", "says"), CASES)
def test_a_journal_that_cannot_be_opened_stops_supd_with_one_line_and_status_1(
        state_dir: Path, damage: object, says: str) -> None:
    db = state_dir / "tasks.db"
    damage(db)  # type: ignore[operator]
    d = Supd(state_dir)
    r = subprocess.run(d.argv, env=d.env, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("supd:")]
    assert line.startswith(f"supd: cannot open the journal: {db}") and says in line and "move" in line
    assert not (state_dir / "control.sock").exists(), "nothing was started"
