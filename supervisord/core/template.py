"""Workflow templates: `{{steps.NAME.result}}` and friends, parsed once, rendered purely.

Owns the template language and nothing else: `parse` turns a string into a `Template` (a
tuple of literal text and references, plain msgspec data the store can save), `render`
fills it from a `Context`. Which references a step may use (a step before it, a known
input, `item` only in a map step) is `flowspec`'s check, not this module's.

References, with optional spaces inside the braces:

- `{{steps.NAME.result}}`      the step's result text
- `{{steps.NAME.results}}`     a map step's item results as a JSON array of strings
- `{{steps.NAME.json.A.B}}`    a field of the step's JSON result (a number picks an array
                               element); a string comes out as is, anything else as JSON
- `{{inputs.KEY}}`             a `--set KEY=VALUE` input
- `{{workflow.id}}`            the workflow's id
- `{{item}}`, `{{index}}`      a map step's item (one line of the mapped result) and its
                               0-based position

There is no escape for a literal `{{`. Imports the stdlib and msgspec only; no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

import msgspec

__all__ = [
    "Context", "Index", "Input", "Item", "Part", "Ref", "RenderError", "StepJson", "StepResult",
    "StepResults", "Template", "TemplateError", "WorkflowId", "parse", "render", "show",
]


class TemplateError(Exception):
    """A template that cannot be parsed; the message quotes the bad part."""


class RenderError(Exception):
    """A template that cannot be filled (a missing JSON field, a result that is not JSON)."""


class StepResult(msgspec.Struct, frozen=True, tag="result"):
    step: str


class StepResults(msgspec.Struct, frozen=True, tag="results"):
    step: str


class StepJson(msgspec.Struct, frozen=True, tag="json"):
    step: str
    path: tuple[str, ...]


class Input(msgspec.Struct, frozen=True, tag="input"):
    key: str


class WorkflowId(msgspec.Struct, frozen=True, tag="workflow_id"):
    pass


class Item(msgspec.Struct, frozen=True, tag="item"):
    pass


class Index(msgspec.Struct, frozen=True, tag="index"):
    pass


Ref = StepResult | StepResults | StepJson | Input | WorkflowId | Item | Index
#: literal text, or a reference to fill
Part = str | Ref


class Template(msgspec.Struct, frozen=True):
    source: str
    parts: tuple[Part, ...]

    @property
    def refs(self) -> list[Ref]:
        return [p for p in self.parts if not isinstance(p, str)]


class Context(Protocol):
    """What a render can see. A step the template names has succeeded (the check saw to it)."""

    @property
    def workflow_id(self) -> str: ...
    @property
    def item(self) -> str | None: ...
    @property
    def index(self) -> int | None: ...
    def input(self, key: str) -> str | None: ...
    def result(self, step: str) -> str | None: ...
    def item_results(self, step: str) -> list[str] | None: ...


_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_STEP = re.compile(rf"steps\.({_NAME})\.(result|results|json((?:\.[^.\s{{}}]+)+))\Z")
_INPUT = re.compile(rf"inputs\.({_NAME})\Z")
_FORMS = "{{steps.NAME.result}}, {{steps.NAME.results}}, {{steps.NAME.json.FIELD}}, " \
         "{{inputs.KEY}}, {{workflow.id}}, {{item}}, {{index}}"


def _ref(expr: str) -> Ref:
    if expr == "item":
        return Item()
    if expr == "index":
        return Index()
    if expr == "workflow.id":
        return WorkflowId()
    if m := _INPUT.match(expr):
        return Input(m.group(1))
    if m := _STEP.match(expr):
        name, what = m.group(1), m.group(2)
        if what == "result":
            return StepResult(name)
        if what == "results":
            return StepResults(name)
        return StepJson(name, tuple(m.group(3)[1:].split(".")))
    raise TemplateError(f"unknown reference {{{{{expr}}}}} (use one of {_FORMS})")


def parse(source: str) -> Template:
    parts: list[Part] = []
    pos = 0
    while (start := source.find("{{", pos)) != -1:
        end = source.find("}}", start + 2)
        if end == -1:
            raise TemplateError(f"unclosed {{{{ at character {start + 1}")
        if start > pos:
            parts.append(source[pos:start])
        parts.append(_ref(source[start + 2:end].strip()))
        pos = end + 2
    if pos < len(source):
        parts.append(source[pos:])
    return Template(source, tuple(parts))


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _unfence(text: str) -> str:
    """A Claude answer often wraps JSON in a ``` fence: read what is inside."""
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and "\n" in body:
        body = body[body.index("\n") + 1:-3]
    return body


def _json_field(ref: StepJson, result: str) -> str:
    shown = show(ref)
    try:
        value: object = json.loads(_unfence(result))
    except ValueError:
        raise RenderError(f'{shown}: the result of step "{ref.step}" is not JSON') from None
    for depth, key in enumerate(ref.path):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            where = ".".join(ref.path[:depth + 1])
            raise RenderError(f'{shown}: the result of step "{ref.step}" has no field "{where}"')
    return _text(value)


def _fill(ref: Ref, ctx: Context) -> str:
    match ref:
        case StepResult(step):
            result = ctx.result(step)
        case StepResults(step):
            items = ctx.item_results(step)
            result = None if items is None else json.dumps(items, ensure_ascii=False)
        case StepJson(step):
            result = ctx.result(step)
            if result is not None:
                return _json_field(ref, result)
        case Input(key):
            result = ctx.input(key)
        case WorkflowId():
            result = ctx.workflow_id
        case Item():
            result = ctx.item
        case Index():
            result = None if ctx.index is None else str(ctx.index)
    if result is None:
        raise RenderError(f"{show(ref)}: no value here")
    return result


def show(ref: Ref) -> str:
    """The reference as it is written in a template."""
    match ref:
        case StepResult(step):
            return f"{{{{steps.{step}.result}}}}"
        case StepResults(step):
            return f"{{{{steps.{step}.results}}}}"
        case StepJson(step, path):
            return f"{{{{steps.{step}.json.{'.'.join(path)}}}}}"
        case Input(key):
            return f"{{{{inputs.{key}}}}}"
        case WorkflowId():
            return "{{workflow.id}}"
        case Item():
            return "{{item}}"
        case Index():
            return "{{index}}"


def render(template: Template, ctx: Context) -> str:
    """The template filled from `ctx`; raises `RenderError` naming the reference that failed."""
    return "".join(p if isinstance(p, str) else _fill(p, ctx) for p in template.parts)

