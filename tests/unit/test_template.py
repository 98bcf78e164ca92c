"""Templates as tables: what a string parses into, what it renders to, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest

from supervisord.core.template import (
    Index,
    Input,
    Item,
    RenderError,
    StepJson,
    StepResult,
    StepResults,
    Template,
    TemplateError,
    WorkflowId,
    parse,
    render,
)

pytestmark = pytest.mark.timeout(10)


@dataclass
class Ctx:
    workflow_id: str = "wf-9"
    item: str | None = None
    index: int | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)

    def input(self, key: str) -> str | None:
        return self.inputs.get(key)

    def result(self, step: str) -> str | None:
        return self.results.get(step)

    def item_results(self, step: str) -> list[str] | None:
        return self.items.get(step)


@pytest.mark.parametrize(("source", "parts"), [
    ("plain", ("plain",)),
    ("", ()),
    ("{{item}}", (Item(),)),
    ("a {{ index }} b", ("a ", Index(), " b")),
    ("{{steps.x.result}}{{steps.x.results}}", (StepResult("x"), StepResults("x"))),
    ("{{steps.my-step.json.a.0.b}}", (StepJson("my-step", ("a", "0", "b")),)),
    ("id={{workflow.id}}, who={{inputs.who}}", ("id=", WorkflowId(), ", who=", Input("who"))),
    ("single { brace } stays", ("single { brace } stays",)),
])
def test_parse(source: str, parts: tuple[object, ...]) -> None:
    template = parse(source)
    assert template.parts == parts
    assert msgspec.json.decode(msgspec.json.encode(template), type=Template) == template  # storable


@pytest.mark.parametrize(("source", "message"), [
    ("{{nope}}", "unknown reference {{nope}}"),
    ("{{steps.x}}", "unknown reference {{steps.x}}"),
    ("{{steps.x.json}}", "unknown reference {{steps.x.json}}"),
    ("{{steps.x.json.}}", "unknown reference {{steps.x.json.}}"),
    ("{{inputs.}}", "unknown reference {{inputs.}}"),
    ("{{}}", "unknown reference {{}}"),
    ("ab {{item", "unclosed {{ at character 4"),
])
def test_parse_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse(source)
    assert str(caught.value).startswith(message)


CTX = Ctx(item="a.py", index=2, inputs={"who": "ann"},
          results={"j": '{"n": 3, "s": "text", "o": {"k": [true, null]}, "l": ["x", "y"]}',
                   "fenced": '```json\n{"ok": "yes"}\n```', "plain": "hello\n"},
          items={"m": ["one", 'two "quoted"']})


@pytest.mark.parametrize(("source", "text"), [
    ("{{item}}#{{index}}", "a.py#2"),
    ("{{workflow.id}}/{{inputs.who}}", "wf-9/ann"),
    ("<{{steps.plain.result}}>", "<hello\n>"),
    ("{{steps.j.json.n}}", "3"),
    ("{{steps.j.json.s}}", "text"),
    ("{{steps.j.json.o}}", '{"k":[true,null]}'),
    ("{{steps.j.json.o.k.1}}", "null"),
    ("{{steps.j.json.l.0}}", "x"),
    ("{{steps.fenced.json.ok}}", "yes"),
    ("{{steps.m.results}}", '["one", "two \\"quoted\\""]'),
])
def test_render(source: str, text: str) -> None:
    assert render(parse(source), CTX) == text


@pytest.mark.parametrize(("source", "message"), [
    ("{{steps.j.json.missing}}", '{{steps.j.json.missing}}: the result of step "j" has no field "missing"'),
    ("{{steps.j.json.o.k.5}}", '{{steps.j.json.o.k.5}}: the result of step "j" has no field "o.k.5"'),
    ("{{steps.j.json.s.x}}", '{{steps.j.json.s.x}}: the result of step "j" has no field "s.x"'),
    ("{{steps.plain.json.a}}", '{{steps.plain.json.a}}: the result of step "plain" is not JSON'),
    ("{{item}}", "{{item}}: no value here"),
])
def test_render_errors(source: str, message: str) -> None:
    ctx = Ctx(results=CTX.results) if source == "{{item}}" else CTX
    with pytest.raises(RenderError) as caught:
        render(parse(source), ctx)
    assert str(caught.value) == message
