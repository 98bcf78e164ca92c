"""Git, for tasks that run in a worktree of their own: the commands and nothing else.

Owns every git command supd runs: creating or reusing a task's worktree (`prepare`),
committing what a task left and measuring its diff (`finish`), printing that diff
(`diff`, for the `Diff` verb: its command line is `diff_argv`, here only), and removing
worktrees and branches (`remove`, `sweep`). Each is a blocking `git` process with a timeout, so
none of it runs on the daemon's loop: a child worker calls `prepare`/`finish` around its
task (it is a blocking process runner already), and the daemon's `Janitor` thread
(`supervisord.spokes.gitjanitor`) does the housekeeping. `repo_root` is the exception:
a few `stat` calls, cheap enough for a submit.

The main checkout is never touched: no command here checks out, resets or writes its
index; they only add worktrees, refs and commits on `supd/…` branches.
Imports the stdlib and `proto` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from proto.children import WorktreePlan
from proto.task import WorktreeInfo

#: git commands get this long (a child's liveness window is 10 s by default)
GIT_TIMEOUT_S = 8.0
#: where the commit a task's branch started from is kept (one ref per branch: no shared lock)
BASE_REF_PREFIX = "refs/supd-base/"
#: a command that hit another git's lock (parallel tasks on one repository) is tried again
LOCK_TRIES, LOCK_PAUSE_S = 5, 0.05
#: git must not ask anyone anything, nor read the operator's hooks and signing setup
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
_CONFIG = ["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", "-c", "user.name=supd",
           "-c", "user.email=supd@localhost"]


class GitError(Exception):
    """A git command failed; the message names the command and git's own words."""


def repo_root(path: str | os.PathLike[str]) -> Path | None:
    """The top of the git checkout that holds `path` (a `.git` directory or file), or None."""
    here = Path(path).resolve()
    for d in (here, *here.parents):
        if (d / ".git").exists():
            return d
    return None


def git(*args: str, cwd: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_ENV}
    for _ in range(LOCK_TRIES):
        try:
            done = subprocess.run(["git", *_CONFIG, *args], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {' '.join(args)}: no answer in {GIT_TIMEOUT_S:g}s") from None
        except OSError as e:
            raise GitError(f"cannot run git: {e.strerror}") from None
        if done.returncode == 0 or not check:
            return done
        if ".lock" not in done.stderr:
            break
        time.sleep(LOCK_PAUSE_S)  # another git holds a lock for a moment: a short, bounded wait
    raise GitError(f"git {' '.join(args)} (in {cwd}): {done.stderr.strip() or f'exit {done.returncode}'}")


@contextlib.contextmanager
def repo_lock(repo: str, worktrees_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock on `repo`'s worktree list (a `flock` on a file in `worktrees_dir`,
    shared by every child and the daemon): two `git worktree add` on one repository at once
    can read each other's half-made entries ("failed to read .git/worktrees/…/commondir").
    Each holder runs a few git commands, each with its timeout, so the wait is bounded."""
    Path(worktrees_dir).mkdir(parents=True, exist_ok=True)
    name = ".lock-" + hashlib.sha1(str(Path(repo).resolve()).encode()).hexdigest()[:16]
    fd = os.open(Path(worktrees_dir) / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_worktree_on(path: Path, branch: str) -> bool:
    if not (path / ".git").exists():
        return False
    done = git("symbolic-ref", "-q", "HEAD", cwd=path, check=False)
    return done.returncode == 0 and done.stdout.strip() == f"refs/heads/{branch}"


def _rev(repo: str, ref: str) -> str | None:
    done = git("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", cwd=repo, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def prepare(plan: WorktreePlan, cwd: str | None) -> tuple[str, str]:
    """Make `plan.path` a worktree on `plan.branch` (reused if it is one already, re-added
    from the branch if the branch exists, else a new branch at `plan.base` or HEAD); returns
    (the directory to run in: `cwd`'s place inside the worktree, the base commit)."""
    path = Path(plan.path)
    with repo_lock(plan.repo, path.parent):
        base = _prepare_locked(plan, path)
    inside = path
    if cwd:
        rel = os.path.relpath(Path(cwd).resolve(), Path(plan.repo).resolve())
        if not rel.startswith(".."):
            inside = path / rel
            inside.mkdir(parents=True, exist_ok=True)
    return str(inside), base


def _prepare_locked(plan: WorktreePlan, path: Path) -> str:
    ref = f"refs/heads/{plan.branch}"
    if not _is_worktree_on(path, plan.branch):
        if path.exists():
            shutil.rmtree(path)  # a stale directory git no longer knows as this branch's worktree
        git("worktree", "prune", cwd=plan.repo)  # safe under the lock: no other add is half-way
        if _rev(plan.repo, ref):
            git("worktree", "add", str(path), plan.branch, cwd=plan.repo)
        else:
            start = _rev(plan.repo, plan.base or "HEAD")
            if start is None:
                raise GitError(f"{plan.base or 'HEAD'} is not a commit in {plan.repo}")
            git("worktree", "add", "-b", plan.branch, str(path), start, cwd=plan.repo)
            git("update-ref", BASE_REF_PREFIX + plan.branch, start, cwd=plan.repo)
    base = _rev(plan.repo, BASE_REF_PREFIX + plan.branch) or _rev(plan.repo, ref) or ""
    if not base:  # a branch made outside supd: it starts where it is
        git("update-ref", BASE_REF_PREFIX + plan.branch, ref, cwd=plan.repo)
        base = _rev(plan.repo, ref) or ""
    return base


def commit_leftovers(path: str, author: str, message: str) -> bool:
    """Commit whatever is uncommitted in the worktree at `path`; True if there was any."""
    git("add", "-A", cwd=path)
    if git("diff", "--cached", "--quiet", cwd=path, check=False).returncode == 0:
        return False
    git("commit", "-q", "--no-verify", f"--author={author}", "-m", message or "supd", cwd=path)
    return True


def diff_stat(repo: str, base: str, head: str) -> tuple[int, int, int]:
    """(files changed, insertions, deletions) from `base` to `head` (binary files count as files)."""
    out = git("diff", "--numstat", base, head, cwd=repo).stdout
    files = ins = dels = 0
    for row in out.splitlines():
        added, removed, _ = (row.split("\t", 2) + ["", ""])[:3]
        files += 1
        ins += int(added) if added.isdigit() else 0
        dels += int(removed) if removed.isdigit() else 0
    return files, ins, dels


def diff_argv(base: str, head: str, stat: bool) -> list[str]:
    """git's arguments for a task's diff: exactly `git diff BASE HEAD` (or `--stat`), without
    the operator's colours or external diff drivers, so it reads the same everywhere."""
    return ["diff", "--no-color", "--no-ext-diff", *(["--stat"] if stat else []), base, head]


#: `diff` reads git's output in pieces this large, keeping only what fits the budget
READ_BYTES = 64 << 10


def diff(repo: str, branch: str, base: str, head: str, stat: bool, budget_bytes: int) -> tuple[str, int]:
    """A task's diff from `base` to `head` (commits of `branch` in `repo`): its first
    `budget_bytes` at most, cut at a line's end, and how many bytes were left out. Memory
    stays within the budget however large the diff. Raises GitError naming what is gone."""
    if not Path(repo, ".git").exists():
        raise GitError(f"the repository {repo} is gone (no .git there)")
    for name, commit in (("base", base), ("head", head)):
        if _rev(repo, commit) is None:
            gone = _rev(repo, f"refs/heads/{branch}") is None
            raise GitError(f"the {name} commit {commit} is no longer in {repo}"
                           + (f": branch {branch} is gone (deleted or pruned)" if gone else ""))
    kept, total = _bounded(diff_argv(base, head, stat), repo, budget_bytes)
    if total <= budget_bytes:
        return kept.decode(errors="replace"), 0
    cut = kept.rfind(b"\n", 0, budget_bytes) + 1 or budget_bytes
    return kept[:cut].decode(errors="replace"), total - cut


def _bounded(args: list[str], cwd: str, budget_bytes: int) -> tuple[bytes, int]:
    """Run git, keep the first `budget_bytes` of its stdout (and count the rest), within
    GIT_TIMEOUT_S; its stderr goes to a file, so neither pipe can fill and stall it."""
    deadline = time.monotonic() + GIT_TIMEOUT_S
    kept, total = bytearray(), 0
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["git", *_CONFIG, *args], cwd=cwd, env={**os.environ, **_ENV},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise GitError(f"cannot run git: {e.strerror}") from None
        assert proc.stdout is not None
        with proc, selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), READ_BYTES)
                if not chunk:
                    break
                total += len(chunk)
                if len(kept) <= budget_bytes:
                    kept += chunk[: budget_bytes + 1 - len(kept)]  # one byte past: a cut is seen
            else:
                proc.kill()
                raise GitError(f"git {' '.join(args)}: no answer in {GIT_TIMEOUT_S:g}s")
            try:
                returncode = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise GitError(f"git {' '.join(args)}: did not exit in {GIT_TIMEOUT_S:g}s") from None
        if returncode != 0:
            err.seek(0)
            said = err.read(4096).decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args)} (in {cwd}): {said or f'exit {returncode}'}")
    return bytes(kept), total


def finish(plan: WorktreePlan, base: str) -> WorktreeInfo:
    """The task is over (its whole tree is dead): commit its leftovers, measure the branch
    against `base`, and keep what `plan.keep` says. Never raises: a git failure is the
    info's `error` (the task's own outcome stands)."""
    info = WorktreeInfo(repo=plan.repo, branch=plan.branch, base=base or None)
    try:
        if Path(plan.path, ".git").exists():
            commit_leftovers(plan.path, plan.author, plan.message)
        info.head = _rev(plan.repo, f"refs/heads/{plan.branch}")
        if base and info.head:
            info.files_changed, info.insertions, info.deletions = diff_stat(plan.repo, base, info.head)
        if plan.keep == "worktree":
            info.path = plan.path
        else:
            remove(plan.repo, plan.path, plan.branch if plan.keep == "none" else None, force=True)
    except GitError as e:
        info.error = str(e)
    return info


def merged_elsewhere(repo: str, branch: str) -> bool:
    """True if the branch has no commit of its own: its head is its base, or another branch
    (not a `supd/` one) contains it."""
    head = _rev(repo, f"refs/heads/{branch}")
    if head is None:
        return True
    if head == _rev(repo, BASE_REF_PREFIX + branch):
        return True
    out = git("for-each-ref", "--contains", head, "--format=%(refname)", "refs/heads/", "refs/remotes/",
              "refs/tags/", cwd=repo).stdout.split()
    return any(not r.startswith("refs/heads/supd/") for r in out)


def remove(repo: str, path: str, branch: str | None, *, force: bool) -> str:
    """Remove the worktree at `path` (if any) and, given `branch`, the branch and its base
    ref — unless the branch has commits not merged anywhere and not `force`. Says what it did."""
    with repo_lock(repo, Path(path).parent):
        return _remove_locked(repo, path, branch, force)


def _remove_locked(repo: str, path: str, branch: str | None, force: bool) -> str:
    did = []
    if Path(path).exists():
        if git("worktree", "remove", "--force", path, cwd=repo, check=False).returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune", cwd=repo)
        did.append(f"removed {path}")
    if branch is not None and _rev(repo, f"refs/heads/{branch}"):
        if force or merged_elsewhere(repo, branch):
            git("branch", "-D", branch, cwd=repo)
            git("update-ref", "-d", BASE_REF_PREFIX + branch, cwd=repo, check=False)
            did.append(f"deleted {branch}")
        else:
            did.append(f"kept {branch} (commits not merged anywhere; prune --force deletes it)")
    return "; ".join(did) or "nothing to do"


def common_repo(path: str) -> str | None:
    """The main checkout of the worktree at `path` (its common git dir's parent), or None."""
    done = git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return str(Path(done.stdout.strip()).parent)
