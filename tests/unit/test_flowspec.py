"""The workflow file's checks as a table: each bad file and the exact problems it gets."""

from __future__ import annotations

import json

import pytest

from proto.task import TaskSpec
from supervisord.core.flowspec import FlowSpecError, check, load, parse_flow
from supervisord.core.template import Item, StepResult

pytestmark = pytest.mark.timeout(10)

EXAMPLE = """
name = "review"
max_parallel = 4
[steps.files]
kind = "exec"
argv = ["git", "ls-files", "*.py"]
[steps.review]
after = ["files"]
map = "files"
prompt = "Review {{item}} for bugs. One line."
[steps.summary]
after = ["review"]
input = "{{steps.review.result}}"
prompt = "Summarise these reviews."
[steps.apply]
after = ["summary"]
kind = "exec"
argv = ["sh", "-c", "./apply.sh"]
undo = { kind = "exec", argv = ["git", "checkout", "--", "."] }
"""


def test_the_issue_example_is_accepted() -> None:
    spec = parse_flow(EXAMPLE, "toml", {})
    assert (spec.name, spec.max_parallel, spec.max_cost_usd, spec.undo_retries) == ("review", 4, None, 3)
    assert list(spec.steps) == ["files", "review", "summary", "apply"]
    review = spec.steps["review"]
    assert (review.after, review.map, review.dependents) == (("files",), "files", ("summary",))
    assert review.task.spec == TaskSpec(prompt="Review {{item}} for bugs. One line.")
    assert review.task.prompt is not None
    assert review.task.prompt.parts == ("Review ", Item(), " for bugs. One line.")
    summary = spec.steps["summary"].task
    assert summary.input is not None and summary.input.parts == (StepResult("review"),)
    undo = spec.steps["apply"].undo
    assert undo is not None and undo.spec == TaskSpec(kind="exec", argv=["git", "checkout", "--", "."])
    assert spec.steps["files"].dependents == ("review",)
    assert spec.steps["apply"].dependents == ()


def test_json_of_the_same_shape_gives_the_same_spec() -> None:
    doc = {
        "name": "review", "max_parallel": 4,
        "steps": {
            "files": {"kind": "exec", "argv": ["git", "ls-files", "*.py"]},
            "review": {"after": ["files"], "map": "files", "prompt": "Review {{item}} for bugs. One line."},
            "summary": {"after": ["review"], "input": "{{steps.review.result}}",
                        "prompt": "Summarise these reviews."},
            "apply": {"after": ["summary"], "kind": "exec", "argv": ["sh", "-c", "./apply.sh"],
                      "undo": {"kind": "exec", "argv": ["git", "checkout", "--", "."]}},
        },
    }
    assert parse_flow(json.dumps(doc), "json", {}) == parse_flow(EXAMPLE, "toml", {})


def test_compensate_and_limits_decode() -> None:
    spec = parse_flow("""
name = "x"
max_cost_usd = 2
undo_retries = 0
[steps.a]
kind = "exec"
argv = ["a"]
[steps.a.compensate]
prompt = "fix it"
continue = true
""", "toml", {})
    a = spec.steps["a"]
    assert (spec.max_cost_usd, spec.undo_retries, a.compensate_continue) == (2.0, 0, True)
    assert a.compensate is not None and a.compensate.spec == TaskSpec(prompt="fix it")


OK = 'kind = "exec"\nargv = ["true"]'

BAD = [
    # (the file, its problems in order)
    ("", ["name: missing", "steps: the workflow has no steps"]),
    ('name = "x"\nsteps = {}', ["steps: the workflow has no steps"]),
    ('name = "x"\nsteps = 3', ["steps: expected a table, got int"]),
    (f'name = ""\n[steps.a]\n{OK}', ["name: must not be empty"]),
    (f'name = 7\n[steps.a]\n{OK}', ["name: expected str, got int"]),
    (f'name = "x"\ncolour = "red"\n[steps.a]\n{OK}', ["colour: unknown key"]),
    (f'name = "x"\nmax_parallel = 0\n[steps.a]\n{OK}', ["max_parallel: must be in 1..1024, got 0"]),
    (f'name = "x"\nmax_parallel = 1025\n[steps.a]\n{OK}', ["max_parallel: must be in 1..1024, got 1025"]),
    (f'name = "x"\nmax_parallel = "4"\n[steps.a]\n{OK}', ["max_parallel: expected int, got str"]),
    (f'name = "x"\nmax_cost_usd = -1\n[steps.a]\n{OK}', ["max_cost_usd: must be >= 0, got -1.0"]),
    (f'name = "x"\nundo_retries = 101\n[steps.a]\n{OK}', ["undo_retries: must be in 0..100, got 101"]),
    (f'name = "x"\n[steps."a.b"]\n{OK}',
     [('steps: bad step name "a.b": use letters, digits, "_" and "-", start with a letter or "_", '
      'at most 64 characters')]),
    ('name = "x"\n[steps]\na = 3', ["steps.a: expected a table, got int"]),
    ('name = "x"\n[steps.a]\nkind = "exec"\nargv = ["true"]\ncolour = 1', ["steps.a.colour: unknown key"]),
    ('name = "x"\n[steps.a]\nkind = "exec"\nargv = ["true"]\npin = "host-b"',
     ["steps.a.pin: set by supd, not by a workflow file"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nrepo = "/srv/r"\nretry_of = "t1"',
     ["steps.a.repo: set by supd, not by a workflow file", "steps.a.retry_of: set by supd, not by a workflow file"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nworktree = true',
     ["steps.a.worktree: give cwd, a directory inside a git repository"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nresume = "t1"\n[steps.a.undo]\nprompt = "u"\nbase = "main"',
     ["steps.a.resume: a workflow step cannot have a resumed session yet (submit it as a task of its own)",
      "steps.a.undo.base: only for worktree tasks (give worktree = true)"]),
    ('name = "x"\n[steps.a]\nprompt = 3', ["steps.a.prompt: expected str, got int"]),
    ('name = "x"\n[steps.a]\nkind = "shell"\nargv = ["x"]', ["steps.a.kind: invalid enum value 'shell'"]),
    ('name = "x"\n[steps.a]\nkind = "exec"\nargv = "true"', ["steps.a.argv: expected array, got str"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nenv = { A = 1 }', ["steps.a.env: expected str, got int"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nafter = "b"', ["steps.a.after: expected array, got str"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nmap = 1', ["steps.a.map: expected str, got int"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nundo = "rm"', ["steps.a.undo: expected a table, got str"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\ncompensate = { prompt = "q", continue = "yes" }',
     ["steps.a.compensate.continue: expected bool, got str"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\ncompensate = { prompt = "q", again = true }',
     ["steps.a.compensate.again: unknown key"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nundo = { prompt = "q", continue = true }',
     ["steps.a.undo.continue: unknown key"]),
    ('name = "x"\n[steps.a]\ntimeout_s = 5', ["steps.a: needs a prompt (claude) or an argv (exec)"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nundo = { kind = "exec" }',
     ["steps.a.undo: needs a prompt (claude) or an argv (exec)"]),
    ('name = "x"\n[steps.a]\nkind = "exec"\nprompt = "p"',
     ["steps.a: exec task: argv is missing or empty"]),
    ('name = "x"\n[steps.a]\nargv = ["true"]', ["steps.a: claude task: prompt is missing or empty"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\ntimeout_s = 0', ["steps.a.timeout_s: expected float > 0.0"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\ncwd = "/tmp/{{workflow.id}}"',
     ["steps.a.cwd: templates are filled only in prompt, argv, input and env"]),
    # the graph
    ('name = "x"\n[steps.a]\nprompt = "p"\nafter = ["nope"]', ['steps.a.after: no step "nope"']),
    ('name = "x"\n[steps.a]\nprompt = "p"\nafter = ["a"]', ["steps.a.after: cycle: a after a"]),
    (('name = "x"\n[steps.a]\nprompt = "p"\nafter = ["c"]\n[steps.b]\nprompt = "p"\nafter = ["a"]\n'
     '[steps.c]\nprompt = "p"\nafter = ["b"]'), ["steps.a.after: cycle: a after c after b after a"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nmap = "nope"', ['steps.a.map: no step "nope"']),
    (f'name = "x"\n[steps.a]\n{OK}\n[steps.b]\nprompt = "p"\nmap = "a"',
     ['steps.b.map: step "a" is not before "b" (list it in after)']),
    # templates
    ('name = "x"\n[steps.a]\nprompt = "{{steps.nope.result}}"',
     ['steps.a.prompt: {{steps.nope.result}}: no step "nope"']),
    (f'name = "x"\n[steps.a]\n{OK}\n[steps.b]\nkind = "exec"\nargv = ["x", "{{{{steps.a.result}}}}"]',
     ['steps.b.argv[1]: {{steps.a.result}}: step "a" is not before "b" (list it in after)']),
    ('name = "x"\n[steps.a]\nprompt = "hi {{inputs.who}}"',
     ['steps.a.prompt: {{inputs.who}}: no input "who" (give it with --set who=VALUE)']),
    ('name = "x"\n[steps.a]\nprompt = "p"\ninput = "{{item}}"',
     ["steps.a.input: {{item}}: is only for the task of a map step"]),
    ('name = "x"\n[steps.a]\nprompt = "p"\nenv = { I = "{{index}}" }',
     ["steps.a.env.I: {{index}}: is only for the task of a map step"]),
    ((f'name = "x"\n[steps.a]\n{OK}\n[steps.b]\nafter = ["a"]\nmap = "a"\nprompt = "{{{{item}}}}"\n'
     'undo = { prompt = "undo {{item}}" }'),
     ["steps.b.undo.prompt: {{item}}: is only for the task of a map step"]),
    (f'name = "x"\n[steps.a]\n{OK}\n[steps.b]\nafter = ["a"]\nprompt = "{{{{steps.a.results}}}}"',
     ['steps.b.prompt: {{steps.a.results}}: step "a" is not a map step']),
    ('name = "x"\n[steps.a]\nprompt = "p"\ncompensate = { prompt = "{{steps.a.result}}" }',
     ['steps.a.compensate.prompt: {{steps.a.result}}: step "a" is not before "a" (list it in after)']),
    ('name = "x"\n[steps.a]\nprompt = "{{steps.a}}"',
     [("steps.a.prompt: unknown reference {{steps.a}} (use one of {{steps.NAME.result}}, "
      "{{steps.NAME.results}}, {{steps.NAME.json.FIELD}}, {{inputs.KEY}}, {{workflow.id}}, {{item}}, "
      "{{index}})")]),
    ('name = "x"\n[steps.a]\nprompt = "oops {{item"', ["steps.a.prompt: unclosed {{ at character 6"]),
    # several problems at once, in file order
    (('colour = 1\nmax_parallel = 0\n[steps.a]\nprompt = 3\n[steps.b]\nbogus = 1\n[steps.c]\nprompt = "p"\n'
     'after = ["zz"]'),
     ["colour: unknown key", "name: missing", "max_parallel: must be in 1..1024, got 0",
      "steps.a.prompt: expected str, got int", "steps.b.bogus: unknown key", 'steps.c.after: no step "zz"']),
    # resume_step: a claude step continuing an earlier claude step's session
    ('name = "x"\n[steps.a]\nprompt = "p"\n[steps.b]\nprompt = "q"\nresume_step = "zz"',
     ['steps.b.resume_step: no step "zz"']),
    ('name = "x"\n[steps.a]\nprompt = "p"\n[steps.b]\nprompt = "q"\nresume_step = "a"',
     ['steps.b.resume_step: step "a" is not before "b" (list it in after)']),
    ('name = "x"\n[steps.a]\nkind = "exec"\nargv = ["true"]\n[steps.b]\nafter = ["a"]\nkind = "exec"\n'
     'argv = ["true"]\nresume_step = "a"',
     ["steps.b.resume_step: only a claude step continues a session",
      'steps.b.resume_step: step "a" is not a claude step (it has no session)']),
    ('name = "x"\n[steps.a]\nprompt = "p"\n[steps.b]\nafter = ["a"]\nmap = "a"\nprompt = "{{item}}"\n'
     'resume_step = "a"\ncwd = "/srv"',
     ["steps.b.resume_step: not with a map step (one session each: its items would share or fork it)",
      'steps.b.resume_step: the step runs where "a" ran (in its worktree, if any): drop worktree and cwd']),
    ('name = "x"\n[steps.a]\nprompt = "p"\n[steps.b]\nprompt = "q"\nresume_step = 1',
     ["steps.b.resume_step: expected str, got int"]),
]


@pytest.mark.parametrize(("text", "problems"), BAD, ids=[p[0] for _, p in BAD])
def test_a_bad_file_is_refused_naming_the_key(text: str, problems: list[str]) -> None:
    with pytest.raises(FlowSpecError) as caught:
        parse_flow(text, "toml", {})
    assert caught.value.problems == problems
    assert str(caught.value) == "\n".join(problems)


def test_an_undo_may_read_its_own_step_and_an_input_given_with_set() -> None:
    spec = parse_flow('name = "x"\n[steps.a]\nprompt = "for {{inputs.who}}"\n'
                      'undo = { kind = "exec", argv = ["rm", "{{steps.a.result}}"] }', "toml", {"who": "ann"})
    assert spec.steps["a"].undo is not None


def test_too_many_steps() -> None:
    doc = {"name": "big", "steps": {f"s{i}": {"prompt": "p"} for i in range(10_001)}}
    with pytest.raises(FlowSpecError) as caught:
        check(doc, {})
    assert caught.value.problems == ["steps: 10001 steps exceeds the limit of 10000"]


def test_ten_thousand_steps_in_a_chain_are_checked() -> None:
    steps = {"s0": {"prompt": "p"}} | {f"s{i}": {"prompt": f"{{{{steps.s{i - 1}.result}}}}", "after": [f"s{i - 1}"]}
                                       for i in range(1, 10_000)}
    spec = check({"name": "chain", "steps": steps}, {})
    assert spec.steps["s9999"].after == ("s9998",)


@pytest.mark.parametrize(("text", "fmt", "problem"), [
    ("name = ", "toml", "toml: Invalid value (at end of document)"),
    ('{"name": ', "json", "json: Expecting value: line 1 column 10 (char 9)"),
])
def test_a_file_that_does_not_parse(text: str, fmt: str, problem: str) -> None:
    with pytest.raises(FlowSpecError) as caught:
        load(text, fmt)  # type: ignore[arg-type]
    assert caught.value.problems == [problem]


def test_the_file_must_be_a_table() -> None:
    with pytest.raises(FlowSpecError) as caught:
        check([1, 2], {})
    assert caught.value.problems == ["the file must be a table of keys, got list"]


def test_a_worktree_step_is_accepted_with_its_cwd_and_base() -> None:
    spec = parse_flow('name = "x"\n[steps.a]\nprompt = "p"\nworktree = true\ncwd = "/srv/r/sub"\nbase = "main"',
                      "toml", {})
    t = spec.steps["a"].task.spec
    assert (t.worktree, t.cwd, t.base, t.repo) == (True, "/srv/r/sub", "main", None)  # the hub finds the repo
