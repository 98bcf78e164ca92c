"""A fleet host that restarts holds its previous life's attempts (and their keys) until their
trees are dead, on real daemons and a real PostgreSQL: `kill -9` of host a while its keyed
task's tree survives (checked with psutil), a restarted, and host b — idle, with the key's
next task queued — must not start anything of that key before the old tree is gone."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import Supd, assert_no_leftovers, child_env, short_tmpdir
from tests.integration.test_fleet import FLEET_TOML, Fleet, wait_final

pytestmark = pytest.mark.timeout(180)

#: A keyed task. Its first run (no marker yet) leaves a tree that ignores SIGTERM — a
#: setsid'd grandchild writing its pid to `pids` — and sleeps. Every run first notes, in
#: `log`, whether any pid in `pids` is still alive: an `overlap` means two attempts of the key
#: ran at once. A later run sleeps a moment and succeeds.
KEYED = r"""
import os, signal, subprocess, sys, time
log, pids, marker, name = sys.argv[1:5]
def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split(") ")[1][0] not in "ZX"
    except OSError:
        return False
old = [int(p) for p in open(pids).read().split()] if os.path.exists(pids) else []
with open(log, "a") as f:
    f.write(f"{time.time()} start {name} {'overlap' if any(map(alive, old)) else 'alone'}\n")
if marker and not os.path.exists(marker):
    open(marker, "w").close()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; os.setsid(); open(sys.argv[1], 'a').write(f'{os.getpid()} '); time.sleep(300)", pids])
    open(pids, "a").write(f"{os.getpid()} ")
    time.sleep(300)
time.sleep(0.3)
print("ok")
"""


@pytest.fixture
def fleet(pg_url: str) -> Iterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    f.stop()


def start(fleet: Fleet, name: str, cgroups: str, children: int = 1) -> Supd:
    d = short_tmpdir(f"supd-{name}-")
    fleet.dirs.append(d)
    env = child_env(SUPD_JOURNAL_URL=fleet.url, SUPD_CGROUPS=cgroups)
    # a long kill grace, so the old tree outlives the restart by a clear margin
    daemon = Supd(d, FLEET_TOML.format(host=name, lease_s=20.0, kill_grace_s=2.0), children=children, env=env)
    daemon.start()
    fleet.daemons.append(daemon)
    return daemon


def keyed(tmp: Path, name: str, first_leaves_a_tree: bool) -> TaskSpec:
    marker = str(tmp / f"{name}.marker") if first_leaves_a_tree else ""
    return TaskSpec(kind="exec", key="repo",
                    argv=[sys.executable, "-c", KEYED, str(tmp / "key.log"), str(tmp / "pids"), marker, name])


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


#: the fallback (subreaper + tags: a restart finds the tree by its tag and kills it) and, where
#: the machine delegates a cgroup, cgroups (the new daemon kills the old groups and waits for
#: them to be empty)
@pytest.mark.parametrize("cgroups", ["0", "1"], ids=["subreaper", "cgroup-if-any"])
def test_a_restarted_host_holds_its_old_attempts_keys_until_their_trees_are_dead(fleet: Fleet, tmp_path: Path,
                                                                                   cgroups: str) -> None:
    a = start(fleet, "a", cgroups)
    first, second = a.submit(keyed(tmp_path, "k1", True), keyed(tmp_path, "k2", False))
    pids_file = tmp_path / "pids"
    deadline = time.monotonic() + 20
    while len(pids_file.read_text().split() if pids_file.exists() else []) < 2:
        assert time.monotonic() < deadline, a.log()[-3000:]
        time.sleep(0.05)
    tree = [int(p) for p in pids_file.read_text().split()]
    b = start(fleet, "b", cgroups)  # idle, and k2 waits for the key k1 holds
    time.sleep(0.5)
    assert fleet.rows()[second][0] == "queued", "the key is held fleet-wide"

    # kill -9 of a (stopped first, so its children die without killing their task trees): the tree survives
    assert a.proc is not None
    children = [c["pid"] for c in a.info(ctl.Status())["children"] if c["pid"]]
    os.kill(a.proc.pid, signal.SIGSTOP)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    a.proc.kill()
    a.proc.wait()
    assert alive(tree) == tree, "the old attempt's tree outlives its daemon and child"
    assert fleet.rows()[first][:2] == ("running", 1)

    a.start()  # the same host again: its previous life's attempt is its own until the tree is dead
    starts_while_alive: list[str] = []
    while alive(tree) and not starts_while_alive:
        starts_while_alive = (tmp_path / "key.log").read_text().splitlines()[1:]  # beyond k1's first start
        time.sleep(0.02)
    done = wait_final(b, [first, second])
    assert starts_while_alive == [], "nothing of the key started before the old tree was dead"
    assert {v.state for v in done.values()} == {"succeeded"}, [v.error for v in done.values()]
    assert done[first].attempts == 2 and done[second].attempts == 1
    lines = (tmp_path / "key.log").read_text().splitlines()
    assert len(lines) == 3 and all(line.endswith("alone") for line in lines), lines  # nothing ran twice at once
    if "mode=subreaper" in a.log():  # found by its tag and waited for (a cgroup's may be gone already: cgroup.kill)
        assert "leftovers=True" in a.log() and "tree_dead" in a.log()
    assert_no_leftovers(tree + children, {first, second})
