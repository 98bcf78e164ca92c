"""Agent work in the hub: worktree tasks, resumed sessions, retries and transcripts.

Functions of a `Hub` (their only state is `Hub.extents`, the transcript size of each task
seen since start, and `Hub.notes`, the note that heads an attempt's lines). What they own:

- at submit, `prepare`: a `--worktree` task's `cwd` must be inside a git repository (a few
  `stat` calls, no git); a `--resume` task takes its predecessor's session, directory and
  worktree branch (so the CLI finds the session: it keeps them per directory);
- for a workflow, the same: `prepare_flow` at `flow run` (each worktree task's repository),
  `session_of` when a `resume_step` step starts (its earlier step's session, via `continued`);
- at dispatch, `dispatch_extras`: the worktree plan the child carries out (git runs in the
  child, around the task: it is a blocking process runner already, the daemon's loop must
  never wait on git, and the commit of a task's leftovers must come after its whole tree
  is dead, which only the child knows), the transcript room left, and the CLI's home
  (`CLAUDE_CONFIG_DIR`, under the state dir unless `[claude] env` names one);
- transcripts: `on_output` numbers a child's lines and hands them to the store's group
  commit; `logs` answers `supctl logs`;
- `diff` answers `Diff` (`supctl diff`, the dashboard's task page): the checks are here,
  the git work is a question to the git spoke's thread, answered when it is done;
- `retry_spec`: a failed task's stored spec, to submit again;
- housekeeping through the git spoke's thread: worktrees of tasks that ended without their
  child finishing them (`on_final`), of final tasks at a restart (`sweep`), and the
  worktrees and branches of pruned tasks (`after_prune`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from proto import children as cp
from proto import control as ctl
from proto.task import TaskSpec, TaskState
from supervisord.core import flowspec, pin
from supervisord.core.flowspec import INTERNAL_FIELDS
from supervisord.core.task import Task
from supervisord.core.workflow import Workflow
from supervisord.hub.state import Hub
from supervisord.logs import log
from supervisord.spokes import git
from supervisord.store.base import StoreError

BRANCH_PREFIX = "supd/"


def worktrees_dir(h: Hub) -> Path:
    return h.paths.state_dir / "worktrees"


def claude_home(h: Hub) -> Path:
    return h.paths.state_dir / "claude"


def branch_of(task_id: str, spec: TaskSpec) -> str:
    return spec.worktree_branch or f"{BRANCH_PREFIX}{task_id}"


def path_of(h: Hub, branch: str) -> Path:
    return worktrees_dir(h) / branch.removeprefix(BRANCH_PREFIX).replace("/", "_")


# ---- submit --------------------------------------------------------------------------------


def prepare(h: Hub, specs: list[TaskSpec], found: Mapping[str, Task | None] | None = None) -> list[TaskSpec] | str:
    """The specs with what supd fills in, or the first problem (naming the task and field).
    `found`: the tasks `--resume` specs name, as the journal has them (a fleet reads them
    first, off the loop); without it they are looked up here. In a fleet each spec gets its
    pin (`supervisord.core.pin`)."""
    out = []
    for i, spec in enumerate(specs):
        got = _prepare_one(h, spec, found)
        if isinstance(got, str):
            return got if len(specs) == 1 else f"task {i + 1}: {got}"
        out.append(got)
    return out


def prepare_flow(h: Hub, spec: flowspec.FlowSpec) -> flowspec.FlowSpec | str:
    """At `flow run`, the file with each worktree task's repository (the top of the git checkout its cwd is
    in), as a submit's worktree task gets it; or the problem, naming the key (a fleet takes no
    worktree and no `resume_step`: each is on one host's disk). Each task of a
    worktree step (a map's items, a compensate, an undo) then runs in a worktree of its own, on
    its own branch, made and cleaned up in the child as for any worktree task."""
    steps: dict[str, flowspec.Step] = {}
    for name, step in spec.steps.items():
        if step.resume_step is not None and h.fleet is not None:
            return (f"steps.{name}.resume_step: a fleet runs a workflow's steps on any host, and a session"
                    " is on one host's disk: not supported in a fleet yet")
        parts: dict[str, flowspec.TaskTemplate] = {}
        for role in ("task", "compensate", "undo"):
            tpl: flowspec.TaskTemplate | None = getattr(step, role)
            if tpl is None or not tpl.spec.worktree:
                continue
            where = f"steps.{name}" + ("" if role == "task" else f".{role}")
            if h.fleet is not None:
                return (f"{where}.worktree: a fleet runs a workflow's steps on any host, and a worktree is on"
                        " one host's disk: not supported in a fleet yet (submit it as a task of its own)")
            root = git.repo_root(tpl.spec.cwd or "")
            if root is None:
                return f"{where}.cwd: {tpl.spec.cwd} is not inside a git repository"
            parts[role] = msgspec.structs.replace(tpl, spec=msgspec.structs.replace(tpl.spec, repo=str(root)))
        steps[name] = msgspec.structs.replace(step, **parts) if parts else step
    changed = any(steps[name] is not step for name, step in spec.steps.items())
    return msgspec.structs.replace(spec, steps=steps) if changed else spec


def session_of(h: Hub, wf: Workflow, ref: str, spec: TaskSpec) -> TaskSpec | str:
    """`spec` continuing the Claude session of step `ref`'s task (it has succeeded: the file
    puts it before), or why not."""
    step = wf.steps[ref]
    task_ids = [tid for k in step.jobs if k in wf.jobs and (tid := wf.jobs[k].task_id) is not None]
    if not task_ids:
        return f'step "{ref}" ran no task'
    try:
        old = h.sched.tasks.get(task_ids[-1]) or h.store.task(task_ids[-1])
    except StoreError as e:
        return str(e)
    if old is None:
        return f'the task of step "{ref}" is gone from the journal'
    return continued(spec, old)


def resumed_ids(specs: list[TaskSpec]) -> list[str]:
    """The tasks these specs resume (a fleet reads them from the journal before `prepare`)."""
    return [s.resume for s in specs if s.resume is not None]


def _prepare_one(h: Hub, spec: TaskSpec, found: Mapping[str, Task | None] | None) -> TaskSpec | str:
    for name in INTERNAL_FIELDS:
        if getattr(spec, name) is not None:
            return f"{name}: set by supd, not by a client"
    if spec.base is not None and not spec.worktree and spec.resume is None:
        return "base: only for worktree tasks (give worktree = true)"
    if spec.json_schema is not None:
        if spec.kind != "claude":
            return "json_schema: only for claude tasks"
        if len(msgspec.json.encode(spec.json_schema)) > h.config.limits.max_prompt_bytes:
            return f"json_schema: exceeds limits.max_prompt_bytes={h.config.limits.max_prompt_bytes}"
    host = h.fleet.host if h.fleet is not None else None
    if spec.resume is not None:
        return _resumed(h, spec, found, host)
    if spec.worktree:
        if not spec.cwd:
            return "worktree: give cwd, a directory inside a git repository"
        root = git.repo_root(spec.cwd)
        if root is None:
            return f"worktree: cwd {spec.cwd} is not inside a git repository"
        return msgspec.structs.replace(spec, repo=str(root), pin=pin.at_submit(spec, host))
    return spec


def _resumed(h: Hub, spec: TaskSpec, found: Mapping[str, Task | None] | None, host: str | None) -> TaskSpec | str:
    assert spec.resume is not None
    if spec.kind != "claude":
        return "resume: only claude tasks have a session to resume"
    if found is not None:
        old = found.get(spec.resume)
    else:
        try:
            old = h.sched.tasks.get(spec.resume) or h.store.task(spec.resume)
        except StoreError as e:
            return f"resume: {e}"
    if old is None:
        return f"resume: no task with id {spec.resume!r}"
    if not old.state.final:
        return f"resume: task {old.id} is {old.state.value}; resume it once it has finished"
    got = continued(spec, old)
    return got if isinstance(got, str) else msgspec.structs.replace(got, pin=pin.at_submit(spec, host, old))


def continued(spec: TaskSpec, old: Task) -> TaskSpec | str:
    """`spec` continuing `old`'s Claude session where it ran (its cwd, its worktree's branch),
    or why it cannot: a `--resume` submit's and a workflow's `resume_step`."""
    session = old.outcome.session_id if old.outcome else None
    if old.spec.kind != "claude" or not session:
        return f"resume: task {old.id} has no Claude session to resume"
    return msgspec.structs.replace(
        spec, resume_session=session, cwd=old.spec.cwd, worktree=old.spec.worktree, repo=old.spec.repo,
        worktree_branch=branch_of(old.id, old.spec) if old.spec.worktree else None, base=None)


def retry_spec(h: Hub, task_id: str) -> TaskSpec | ctl.Error:
    """The spec to submit again for `supctl retry ID`."""
    try:
        old = h.sched.tasks.get(task_id) or h.store.task(task_id)
    except StoreError as e:
        return ctl.Error(kind="bad_request", message=str(e))
    return retry_spec_of(task_id, old)


def retry_spec_of(task_id: str, old: Task | None) -> TaskSpec | ctl.Error:
    """The spec to submit again for a retry of `old` (as the store has it), or why not."""
    if old is None:
        return ctl.Error(kind="not_found", message=f"no task with id {task_id!r}")
    if not old.state.final or old.state is TaskState.SUCCEEDED:
        return ctl.Error(kind="bad_request", message=(
            f"task {old.id} is {old.state.value}: only a failed, timed-out or cancelled task can be retried"))
    spec = msgspec.structs.replace(old.spec, retry_of=old.id)
    wt = old.outcome.worktree if old.outcome else None
    if spec.worktree and spec.worktree_branch is None:  # a fresh branch, from where the first one started
        spec = msgspec.structs.replace(spec, base=(wt.base if wt and wt.base else spec.base))
    return spec


# ---- dispatch ------------------------------------------------------------------------------


def dispatch_extras(h: Hub, task: Task, env: dict[str, str]) -> tuple[cp.WorktreePlan | None, int]:
    """Add the CLI's home to `env`; the worktree plan and the transcript room of this attempt.
    Notes the attempt's start in the transcript."""
    spec = task.spec
    if spec.kind == "claude" and "CLAUDE_CONFIG_DIR" not in h.config.claude.env:
        env["CLAUDE_CONFIG_DIR"] = str(claude_home(h))
    plan = None
    if spec.worktree and spec.repo:
        branch = branch_of(task.id, spec)
        what = (spec.prompt or " ".join(spec.argv or [])).strip().splitlines()
        plan = cp.WorktreePlan(repo=spec.repo, path=str(path_of(h, branch)), branch=branch, base=spec.base,
                               keep=h.config.worktrees.keep, message=f"{task.id}: {what[0] if what else ''}"[:500])
    if task.attempts == 1 and task.id not in h.extents:
        h.extents[task.id] = (0, 0)  # a first attempt has no transcript yet: no read on the hot path
    _lines, used = _extent(h, task.id)
    room = max(0, h.config.tasks.transcript_cap_bytes - used)
    if h.config.tasks.transcript_cap_bytes:
        if (unsaid := h.notes.pop(task.id, None)) is not None:  # the last attempt printed nothing, then failed
            _append(h, task.id, [unsaid], 0)
        note = f"attempt {task.attempts} started on child {task.child}" + (f" in {plan.path}" if plan else "")
        # Written with the attempt's first lines (or at its end, if it fails silently): an
        # attempt that succeeds without a word costs no transcript row on the dispatch path.
        h.notes[task.id] = cp.Line(h.clock.wall(), "supd", task.attempts, note)
    return plan, room


# ---- transcripts ---------------------------------------------------------------------------


def _extent(h: Hub, task_id: str) -> tuple[int, int]:
    got = h.extents.get(task_id)
    if got is None:
        got = h.extents[task_id] = h.store.transcript_extent(task_id)
    return got


def _append(h: Hub, task_id: str, lines: list[cp.Line], raw_bytes: int) -> int:
    first, used = _extent(h, task_id)
    h.store.append_output(task_id, first, lines, raw_bytes)
    h.extents[task_id] = (first + len(lines), used + raw_bytes)
    return first + len(lines)


def on_output(h: Hub, msg: cp.Output) -> None:
    """Transcript lines from a child: kept if they are the current attempt's."""
    task = h.sched.tasks.get(msg.task_id)
    if task is None or task.state is not TaskState.RUNNING or (msg.epoch and msg.epoch != task.epoch):
        log("stale_output", logging.DEBUG, task=msg.task_id, epoch=msg.epoch, lines=len(msg.lines))
        return
    raw = sum(len(line.text.encode()) for line in msg.lines if line.stream != "supd")
    note = h.notes.pop(task.id, None)
    nxt = _append(h, task.id, msg.lines if note is None else [note, *msg.lines], raw)
    h.spokes.events.publish(f"task/{task.id}/output", task=task.id, lines=len(msg.lines), next=nxt)


def logs(h: Hub, envelope: tuple[bytes, ...], req: ctl.Logs) -> ctl.Reply:
    """A task's transcript from line --after on (as much as one reply carries)."""
    live = h.sched.tasks.get(req.id)
    state = live.state.value if live else (v.state if (v := h.store.get(req.id)) else None)
    if state is None:
        return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
    lines, nxt = h.store.transcript(req.id, req.after, h.config.limits.max_message_bytes // 4)
    return ctl.Transcript(id=req.id, lines=lines, first=req.after, next=max(nxt, req.after), state=state,
                          final=TaskState(state).final)


#: room in a `DiffText` reply for its other fields and the cut note
DIFF_ROOM_BYTES = 4096


def diff(h: Hub, envelope: tuple[bytes, ...], req: ctl.Diff) -> ctl.Reply | None:
    """A final worktree task's diff (`git diff BASE HEAD`, or `--stat`), cut to one reply."""
    try:
        task = h.sched.tasks.get(req.id) or h.store.task(req.id)
    except StoreError as e:
        return ctl.Error(kind="journal", message=str(e))
    return diff_of(h, envelope, req, task)


def diff_of(h: Hub, envelope: tuple[bytes, ...], req: ctl.Diff, task: Task | None) -> ctl.Reply | None:
    """`diff` of `task` as the store has it (a fleet reads it off the loop first). In a
    fleet only the host the task is pinned to has its worktree: another host says which."""
    if task is None:
        return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
    if not task.spec.worktree:
        return ctl.Error(kind="bad_request", message=f"task {task.id} did not run in a worktree "
                                                     "(submit it with --worktree)")
    where = task.spec.pin or task.host
    if h.fleet is not None and where is not None and (other := pin.elsewhere(task.id, where, h.fleet.host, "worktree")):
        return ctl.Error(kind="other_host", message=f"diff: {other}")
    branch = branch_of(task.id, task.spec)
    if not task.state.final:
        return ctl.Error(kind="not_final", message=f"task {task.id} is {task.state.value}: its branch {branch} "
                                                   "is committed when the task ends; ask again then")
    wt = task.outcome.worktree if task.outcome else None
    if wt is None or not wt.base or not wt.head:
        why = wt.error if wt and wt.error else "its attempt ended without its child recording the branch"
        return ctl.Error(kind="no_diff", message=f"task {task.id} has no diff: {why}")
    if h.spokes.git is None:
        return ctl.Error(kind="unavailable", message="this daemon has no git thread to run git on")
    budget = max(1, h.reply_budget - DIFF_ROOM_BYTES)
    base, head, repo = wt.base, wt.head, wt.repo

    def then(result: tuple[str, int] | None, error: str | None) -> None:
        if result is None:
            log("diff_failed", task=task.id, error=error)
            reply: ctl.Reply = ctl.Error(kind="git", message=f"task {task.id}: {error}")
        else:
            text, left_out = result
            if left_out:
                text += (f"\n[supd: {left_out} more bytes of this diff were left out: one reply carries "
                         f"{budget} bytes of it at most (see limits.max_message_bytes); git diff {base} {head} "
                         "in the task's repository prints all of it]\n")
            reply = ctl.DiffText(id=task.id, repo=repo, branch=wt.branch, base=base, head=head, stat=req.stat,
                                 text=text, left_out_bytes=left_out)
        h.spokes.control.reply(envelope, reply)

    h.spokes.git.ask(f"diff of {task.id}", then, git.diff, repo, wt.branch, base, head, req.stat, budget)
    return None


def on_final(h: Hub, task: Task) -> None:
    """A task is final: forget its transcript size; a worktree its child did not finish (the
    child was lost) is committed and removed off the loop."""
    if (note := h.notes.pop(task.id, None)) is not None and task.state is not TaskState.SUCCEEDED:
        _append(h, task.id, [note], 0)
    h.extents.pop(task.id, None)
    if not task.spec.worktree or not task.spec.repo or (task.outcome and task.outcome.worktree):
        return
    if h.config.worktrees.keep == "worktree":
        return
    path = path_of(h, branch_of(task.id, task.spec))
    _job(h, f"finish worktree of {task.id}", _leftover, task.spec.repo, str(path), f"{task.id}: left by a lost attempt")


# ---- housekeeping (git, on the git spoke's thread) --------------------------------------------


def _job(h: Hub, what: str, fn: Callable[..., str], *args: object, **kwargs: object) -> None:
    if h.spokes.git is None:
        log("git_job_skipped", logging.WARNING, job=what, reason="no git spoke")
        return
    h.spokes.git.run(what, fn, *args, **kwargs)


def _leftover(repo: str, path: str, message: str) -> str:
    if not Path(path, ".git").exists():
        return "no worktree"
    committed = git.commit_leftovers(path, "supd <supd@localhost>", message)
    return ("committed leftovers; " if committed else "") + git.remove(repo, path, None, force=True)


def _sweep_one(path: str, message: str) -> str:
    repo = git.common_repo(path)
    if repo is None:
        return "not a git worktree: left alone"
    return _leftover(repo, path, message)


def sweep(h: Hub) -> None:
    """At start: worktree directories no unfinished task will use again are committed and
    removed (unless `[worktrees] keep = "worktree"`); the CLI's home is made."""
    claude_home(h).mkdir(mode=0o700, parents=True, exist_ok=True)
    root = worktrees_dir(h)
    if not root.is_dir() or h.config.worktrees.keep == "worktree":
        return
    in_use = {path_of(h, branch_of(t.id, t.spec)) for t in h.sched.tasks.values() if t.spec.worktree}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d not in in_use:
            _job(h, f"sweep {d}", _sweep_one, str(d), f"supd/{d.name}: left by a stopped supd")


def after_prune(h: Hub, force: bool) -> None:
    """Remove the worktrees and branches of pruned tasks (a branch with unmerged commits is
    kept unless `force`)."""
    for task_id, repo, branch, _path in h.store.take_pruned_worktrees():
        if branch != f"{BRANCH_PREFIX}{task_id}":
            continue  # a resumed task's branch is its predecessor's: pruned with that one
        _job(h, f"prune {branch}", git.remove, repo, str(path_of(h, branch)), branch, force=force)
