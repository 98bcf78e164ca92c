"""The workflow file: its shape as typed msgspec structs, and every check before it is accepted.

Owns the file format (TOML, or JSON of the same shape) and its rules; `check` returns a
`FlowSpec` or raises `FlowSpecError` with **every** problem found, each one line that starts
with the key it is about (`name`, `steps.NAME.KEY`, `steps.NAME.compensate.KEY`). Checks
run in phases, and a phase whose input is broken is skipped: steps that do not decode are
left out of the graph checks, and references (`map`, templates) are only checked once every
step decodes and the `after` graph is a DAG ("before" means nothing in a cycle).

```toml
name = "review"            # required
max_parallel = 4           # 1..1024; absent: as many as the pool runs
max_cost_usd = 2.5         # >= 0; Claude steps stop starting once the cost reaches it
undo_retries = 3           # 0..100 retries of a failed undo
[steps.NAME]               # any TaskSpec field (not resume yet, nor supd's own), plus:
after = ["OTHER"]          # runs once these have succeeded
map = "OTHER"              # once per non-empty line of OTHER's result (OTHER must be before it)
resume_step = "OTHER"      # a claude step: continue OTHER's Claude session (OTHER before it, claude, no map)
compensate = { kind = "exec", argv = ["..."], continue = true }
undo = { kind = "exec", argv = ["..."] }
```

Pure: no I/O (the caller reads the file). Imports the stdlib, msgspec, `proto` and the core.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Literal, TypeVar

import msgspec

from proto.task import TaskSpec
from supervisord.config import LimitsConfig
from supervisord.core.template import (
    Index,
    Input,
    Item,
    Ref,
    StepJson,
    StepResult,
    StepResults,
    Template,
    TemplateError,
    parse,
    show,
)
from supervisord.core.validate import task_problem

__all__ = ["MAX_STEPS", "FlowSpec", "FlowSpecError", "Step", "TaskTemplate", "check", "load", "parse_flow"]

#: more steps than this is refused (a workflow is a plan, not a data set: use `map`)
MAX_STEPS = 10_000
MAX_PARALLEL = 1024
MAX_UNDO_RETRIES = 100
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")

T = TypeVar("T")
_TASK_KEYS = frozenset(f.name for f in msgspec.structs.fields(TaskSpec))
_TOP_KEYS = frozenset({"name", "max_parallel", "max_cost_usd", "undo_retries", "steps"})
_STEP_EXTRA = frozenset({"after", "map", "compensate", "undo", "resume_step"})
_TEMPLATED = frozenset({"prompt", "argv", "input", "env"})
#: fields of a task that supd sets itself: a submit and a workflow file that give one are refused, naming it
INTERNAL_FIELDS = ("resume_session", "worktree_branch", "repo", "retry_of", "pin")
#: agent-work fields a step cannot use yet: no session is looked up for a step, so accepting
#: one would silently drop what it asks (a worktree step is prepared by the hub: its repo)
_NOT_IN_STEPS = {"resume": "a resumed session"}


class FlowSpecError(Exception):
    """A workflow file that cannot be accepted; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class TaskTemplate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A task spec as written, with its templated fields parsed."""

    spec: TaskSpec
    prompt: Template | None = None
    argv: tuple[Template, ...] | None = None
    input: Template | None = None
    env: dict[str, Template] = {}

    def refs(self) -> Iterator[tuple[str, Ref]]:
        """(key, reference) for every reference, the key as error messages name it."""
        if self.prompt:
            yield from (("prompt", r) for r in self.prompt.refs)
        for i, arg in enumerate(self.argv or ()):
            yield from ((f"argv[{i}]", r) for r in arg.refs)
        if self.input:
            yield from (("input", r) for r in self.input.refs)
        for name, value in self.env.items():
            yield from ((f"env.{name}", r) for r in value.refs)


class Step(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    task: TaskTemplate
    after: tuple[str, ...] = ()
    map: str | None = None
    compensate: TaskTemplate | None = None
    #: the compensate's result stands in for the step's and the workflow goes on
    compensate_continue: bool = False
    undo: TaskTemplate | None = None
    #: the step whose Claude session this step's task continues (`--resume`), in its cwd
    resume_step: str | None = None
    #: the steps that name this one in `after`, in file order (derived by `check`)
    dependents: tuple[str, ...] = ()


class FlowSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    #: in file order
    steps: dict[str, Step]
    max_parallel: int | None = None
    max_cost_usd: float | None = None
    undo_retries: int = 3


def load(text: str, fmt: Literal["toml", "json"]) -> object:
    """The file's text as plain data (`check` takes it from there)."""
    try:
        return tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise FlowSpecError([f"{fmt}: {e}"]) from None


def parse_flow(text: str, fmt: Literal["toml", "json"], inputs: Mapping[str, str],
               limits: LimitsConfig | None = None) -> FlowSpec:
    return check(load(text, fmt), inputs, limits)


def _say(e: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str | null`, got `int` - at `$.prompt`" as "expected str, got int"."""
    text = str(e).split(" - at `$", 1)[0].replace("`", "").replace(" | null", "")
    return text[:1].lower() + text[1:]


def _typed(value: object, kind: type[T], where: str, problems: list[str]) -> T | None:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        problems.append(f"{where}: {_say(e)}")
        return None


def check(doc: object, inputs: Mapping[str, str], limits: LimitsConfig | None = None) -> FlowSpec:
    """The decoded file as a `FlowSpec`, or `FlowSpecError` listing every problem.

    `inputs` are the `--set KEY=VALUE` values: a template naming another input is refused.
    `limits` bound each step's task as `validate.task_problem` does (templated fields are
    checked as written; the hub checks the rendered task again before it submits it).
    """
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise FlowSpecError([f"the file must be a table of keys, got {type(doc).__name__}"])
    problems += [f"{key}: unknown key" for key in doc if key not in _TOP_KEYS]
    top = _top(doc, problems)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, dict) or not raw_steps:
        problems.append("steps: the workflow has no steps" if not raw_steps
                        else f"steps: expected a table, got {type(raw_steps).__name__}")
        raise FlowSpecError(problems)
    if len(raw_steps) > MAX_STEPS:
        raise FlowSpecError([*problems, f"steps: {len(raw_steps)} steps exceeds the limit of {MAX_STEPS}"])
    steps = _steps(raw_steps, limits or LimitsConfig(), problems)
    known = {n for n in raw_steps if STEP_NAME.match(n)}
    missing = [f'steps.{s.name}.after: no step "{a}"' for s in steps.values() for a in s.after if a not in known]
    problems += missing
    if not missing:
        cycles = _cycles(steps)
        problems += cycles
        if not cycles and not problems:
            problems += _references(steps, inputs)
    if problems:
        raise FlowSpecError(problems)
    dependents: dict[str, list[str]] = {n: [] for n in steps}
    for s in steps.values():
        for a in s.after:
            dependents[a].append(s.name)
    return FlowSpec(
        name=top.name, max_parallel=top.max_parallel, max_cost_usd=top.max_cost_usd, undo_retries=top.undo_retries,
        steps={n: msgspec.structs.replace(s, dependents=tuple(dependents[n])) for n, s in steps.items()},
    )


class _Top(msgspec.Struct, kw_only=True):
    name: str = ""
    max_parallel: int | None = None
    max_cost_usd: float | None = None
    undo_retries: int = 3


def _top(doc: dict[str, object], problems: list[str]) -> _Top:
    """The top-level keys but `steps`, checked; what is wrong goes to `problems`."""
    top = _Top()
    if "name" not in doc:
        problems.append("name: missing")
    elif (name := _typed(doc["name"], str, "name", problems)) is not None:
        if not name.strip():
            problems.append("name: must not be empty")
        top.name = name
    if "max_parallel" in doc:
        top.max_parallel = n = _typed(doc["max_parallel"], int, "max_parallel", problems)
        if n is not None and not 1 <= n <= MAX_PARALLEL:
            problems.append(f"max_parallel: must be in 1..{MAX_PARALLEL}, got {n}")
    if "max_cost_usd" in doc:
        top.max_cost_usd = cost = _typed(doc["max_cost_usd"], float, "max_cost_usd", problems)
        if cost is not None and not cost >= 0:
            problems.append(f"max_cost_usd: must be >= 0, got {cost}")
    if "undo_retries" in doc and (r := _typed(doc["undo_retries"], int, "undo_retries", problems)) is not None:
        top.undo_retries = r
        if not 0 <= r <= MAX_UNDO_RETRIES:
            problems.append(f"undo_retries: must be in 0..{MAX_UNDO_RETRIES}, got {r}")
    return top


def _steps(raw: dict[str, object], limits: LimitsConfig, problems: list[str]) -> dict[str, Step]:
    """The steps that decode cleanly; the problems of the others go to `problems`."""
    steps: dict[str, Step] = {}
    for name, table in raw.items():
        if not STEP_NAME.match(name):
            problems.append(f'steps: bad step name "{name}": use letters, digits, "_" and "-", '
                            f'start with a letter or "_", at most 64 characters')
            continue
        where = f"steps.{name}"
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table, got {type(table).__name__}")
            continue
        before = len(problems)
        task = _task(table, where, _STEP_EXTRA, limits, problems)
        after = _typed(table.get("after", []), list[str], f"{where}.after", problems)
        target = _typed(table["map"], str, f"{where}.map", problems) if "map" in table else None
        resume_from = (_typed(table["resume_step"], str, f"{where}.resume_step", problems)
                       if "resume_step" in table else None)
        compensate, go_on = None, False
        if "compensate" in table:
            comp = _table(table["compensate"], f"{where}.compensate", problems)
            if comp is not None:
                compensate = _task(comp, f"{where}.compensate", frozenset({"continue"}), limits, problems)
                go_on = bool(_typed(comp.get("continue", False), bool, f"{where}.compensate.continue", problems))
        undo = None
        if "undo" in table and (raw_undo := _table(table["undo"], f"{where}.undo", problems)) is not None:
            undo = _task(raw_undo, f"{where}.undo", frozenset(), limits, problems)
        if len(problems) == before and task is not None:
            steps[name] = Step(name=name, task=task, after=tuple(dict.fromkeys(after or ())), map=target,
                               compensate=compensate, compensate_continue=go_on, undo=undo,
                               resume_step=resume_from)
    return steps


def _table(value: object, where: str, problems: list[str]) -> dict[str, object] | None:
    if isinstance(value, dict):
        return value
    problems.append(f"{where}: expected a table, got {type(value).__name__}")
    return None


def _task(table: dict[str, object], where: str, extra: frozenset[str], limits: LimitsConfig,
          problems: list[str]) -> TaskTemplate | None:
    fields: dict[str, object] = {}
    before = len(problems)
    for key, value in table.items():
        if key in extra:
            continue
        if key not in _TASK_KEYS:
            problems.append(f"{where}.{key}: unknown key")
        elif key in INTERNAL_FIELDS:
            problems.append(f"{where}.{key}: set by supd, not by a workflow file")
        elif key in _NOT_IN_STEPS:
            problems.append(f"{where}.{key}: a workflow step cannot have {_NOT_IN_STEPS[key]} yet "
                            "(submit it as a task of its own)")
        elif _typed({key: value}, TaskSpec, f"{where}.{key}", problems) is not None:
            fields[key] = value
    if len(problems) > before:
        return None
    spec = msgspec.convert(fields, TaskSpec)
    if spec.prompt is None and spec.argv is None:
        problems.append(f"{where}: needs a prompt (claude) or an argv (exec)")
        return None
    if spec.worktree and not spec.cwd:
        problems.append(f"{where}.worktree: give cwd, a directory inside a git repository")
    if spec.base is not None and not spec.worktree:
        problems.append(f"{where}.base: only for worktree tasks (give worktree = true)")
    if problem := task_problem(spec, limits):
        problems.append(f"{where}: {problem}")
    for key, value in fields.items():
        if key not in _TEMPLATED and "{{" in json.dumps(value):
            problems.append(f"{where}.{key}: templates are filled only in prompt, argv, input and env")
    try:
        return TaskTemplate(
            spec=spec,
            prompt=_parse(spec.prompt, f"{where}.prompt"),
            argv=None if spec.argv is None else tuple(parse_at(a, f"{where}.argv[{i}]")
                                                      for i, a in enumerate(spec.argv)),
            input=_parse(spec.input, f"{where}.input"),
            env={k: parse_at(v, f"{where}.env.{k}") for k, v in spec.env.items()},
        )
    except FlowSpecError as e:
        problems += e.problems
        return None


def parse_at(source: str, where: str) -> Template:
    try:
        return parse(source)
    except TemplateError as e:
        raise FlowSpecError([f"{where}: {e}"]) from None


def _parse(source: str | None, where: str) -> Template | None:
    return None if source is None else parse_at(source, where)


def _cycles(steps: dict[str, Step]) -> list[str]:
    """One problem per cycle found in `after` (a depth-first walk; each back edge is a cycle)."""
    done: set[str] = set()
    problems: list[str] = []
    for root, first in steps.items():
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(first.after))]
        path.append(root)
        on_path.add(root)
        while stack:
            node, edges = stack[-1]
            nxt = next((a for a in edges if a in steps and a not in done), None)
            if nxt is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif nxt in on_path:
                loop = path[path.index(nxt):] + [nxt]
                problems.append(f"steps.{nxt}.after: cycle: {' after '.join(loop)}")
            else:
                stack.append((nxt, iter(steps[nxt].after)))
                path.append(nxt)
                on_path.add(nxt)
    return problems


def _ancestors(steps: dict[str, Step]) -> dict[str, int]:
    """Every step's transitive `after` set, as a bit mask over file positions (the graph is a
    DAG here; masks keep a 10,000-step chain linear in steps, not quadratic in sets)."""
    bit = {name: 1 << i for i, name in enumerate(steps)}
    memo: dict[str, int] = {}
    for root in steps:
        stack = [root]
        while stack:
            node = stack[-1]
            todo = [a for a in steps[node].after if a not in memo]
            if todo:
                stack += todo
                continue
            stack.pop()
            if node not in memo:
                mask = 0
                for a in steps[node].after:
                    mask |= memo[a] | bit[a]
                memo[node] = mask
    return memo


def _resume_problems(s: Step, steps: dict[str, Step], before: int) -> list[str]:
    where, ref = f"steps.{s.name}.resume_step", s.resume_step
    if ref not in steps:
        return [f'{where}: no step "{ref}"']
    if not before:
        return [f'{where}: step "{ref}" is not before "{s.name}" (list it in after)']
    problems = []
    if s.task.spec.kind != "claude":
        problems.append(f"{where}: only a claude step continues a session")
    if steps[ref].task.spec.kind != "claude":
        problems.append(f'{where}: step "{ref}" is not a claude step (it has no session)')
    if steps[ref].map is not None or s.map is not None:
        problems.append(f"{where}: not with a map step (one session each: its items would share or fork it)")
    if s.task.spec.worktree or s.task.spec.cwd:
        problems.append(f'{where}: the step runs where "{ref}" ran (in its worktree, if any): drop worktree and cwd')
    return problems


def _references(steps: dict[str, Step], inputs: Mapping[str, str]) -> list[str]:
    masks = _ancestors(steps)
    bit = {name: 1 << i for i, name in enumerate(steps)}
    problems: list[str] = []
    for s in steps.values():
        if s.map is not None:
            if s.map not in steps:
                problems.append(f'steps.{s.name}.map: no step "{s.map}"')
            elif not masks[s.name] & bit[s.map]:
                problems.append(f'steps.{s.name}.map: step "{s.map}" is not before "{s.name}" (list it in after)')
        if s.resume_step is not None:
            problems += _resume_problems(s, steps, masks[s.name] & bit.get(s.resume_step, 0))
        roles = (("", s.task), (".compensate", s.compensate), (".undo", s.undo))
        for suffix, tpl in roles:
            if tpl is None:
                continue
            # an undo may read its own step's result; a step or its compensate may not
            before = masks[s.name] | (bit[s.name] if suffix == ".undo" else 0)
            for key, ref in tpl.refs():
                problem = _reference(ref, s, suffix, before, bit, steps, inputs)
                if problem:
                    problems.append(f"steps.{s.name}{suffix}.{key}: {show(ref)}: {problem}")
    return problems


def _reference(ref: Ref, step: Step, suffix: str, before: int, bit: dict[str, int],
               steps: dict[str, Step], inputs: Mapping[str, str]) -> str | None:
    match ref:
        case Input(key) if key not in inputs:
            return f'no input "{key}" (give it with --set {key}=VALUE)'
        case Item() | Index() if step.map is None or suffix:
            return "is only for the task of a map step"
        case StepResult(target) | StepResults(target) | StepJson(target) if target not in steps:
            return f'no step "{target}"'
        case StepResult(target) | StepResults(target) | StepJson(target) if not before & bit[target]:
            return f'step "{target}" is not before "{step.name}" (list it in after)'
        case StepResults(target) if steps[target].map is None:
            return f'step "{target}" is not a map step'
    return None
