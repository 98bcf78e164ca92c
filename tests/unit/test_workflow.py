"""The workflow state machine as tables: (workflow, events) -> decisions, written out by hand.

No clock and no ids of its own: every `now` and task id is spelled out here. Decisions are
shown as short strings (`start NAME`, `cancel NAME`, `finish STATE KIND`) so each expected
outcome reads as the story it tells.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest

from proto.task import TaskError, TaskSpec, TaskState
from supervisord.core.flowrecord import move
from supervisord.core.flowspec import parse_flow
from supervisord.core.flowstatus import status
from supervisord.core.workflow import (
    TRANSITIONS,
    Begin,
    BudgetExceeded,
    CancelRequested,
    CancelTask,
    Decision,
    Event,
    FlowState,
    JobState,
    StartTask,
    StepState,
    TaskAccepted,
    TaskFinished,
    UndoState,
    Workflow,
    WorkflowFinished,
    WorkflowTransitionError,
    decide,
    new_workflow,
    resume,
)

pytestmark = pytest.mark.timeout(10)


def flow(toml: str, inputs: dict[str, str] | None = None) -> Workflow:
    spec = parse_flow(toml, "toml", inputs or {})
    return new_workflow("wf-1", spec, inputs or {}, now=1000.0, trace_id="trace-1")


def words(decisions: list[Decision]) -> list[str]:
    out = []
    for d in decisions:
        match d:
            case StartTask(job=job):
                out.append(f"start {job}")
            case CancelTask(job=job, task_id=tid):
                out.append(f"cancel {job} {tid}")
            case WorkflowFinished(state=state, error=error):
                out.append(f"finish {state.value} {error.kind if error else '-'}")
    return out


class Hub:
    """Feeds events and plays the hub's part: every StartTask is accepted as task `t-JOB`."""

    def __init__(self, wf: Workflow) -> None:
        self.wf = wf
        self.now = 1000.0
        self.specs: dict[str, TaskSpec] = {}

    def __call__(self, event: Event) -> list[str]:
        self.now += 1.0
        decisions = decide(self.wf, event, self.now)
        for d in decisions:
            if isinstance(d, StartTask):
                self.specs[d.job] = d.spec
                assert decide(self.wf, TaskAccepted(d.job, f"t-{d.job}"), self.now) == []
        return words(decisions)


def ok(job: str, result: str = "", cost: float = 0.0) -> TaskFinished:
    return TaskFinished(job=job, state=TaskState.SUCCEEDED, result=result, cost_usd=cost)


def fail(job: str, kind: str = "exit", message: str = "boom", cost: float = 0.0) -> TaskFinished:
    return TaskFinished(job=job, state=TaskState.FAILED, error=TaskError(kind=kind, message=message), cost_usd=cost)


def cancelled(job: str) -> TaskFinished:
    return TaskFinished(job=job, state=TaskState.CANCELLED)


def states(wf: Workflow) -> dict[str, str]:
    return {name: s.state.value for name, s in wf.steps.items()}


EXEC = 'kind = "exec"\nargv = ["true"]'


# ---- the transition tables -------------------------------------------------------------

def test_tables_are_the_documented_lives() -> None:
    assert {(a.value, b.value) for a, bs in TRANSITIONS.items() if isinstance(a, FlowState) for b in bs} == {
        ("running", "stopping"), ("running", "succeeded"), ("stopping", "failed"), ("stopping", "cancelled")}
    assert {(a.value, b.value) for a, bs in TRANSITIONS.items() if isinstance(a, StepState) for b in bs} == {
        ("blocked", "queued"), ("blocked", "skipped"),
        ("queued", "running"), ("queued", "succeeded"), ("queued", "failed"), ("queued", "skipped"),
        ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
        ("failed", "compensating"), ("compensating", "compensated"), ("compensating", "failed"),
        ("succeeded", "undone"), ("succeeded", "undo_failed")}
    assert {(a.value, b.value) for a, bs in TRANSITIONS.items() if isinstance(a, JobState) for b in bs} == {
        ("queued", "running"), ("queued", "failed"), ("queued", "skipped"),
        ("running", "succeeded"), ("running", "failed"), ("running", "cancelled")}
    assert {(a.value, b.value) for a, bs in TRANSITIONS.items() if isinstance(a, UndoState) for b in bs} == {
        ("queued", "running"), ("running", "succeeded"), ("running", "failed"), ("running", "queued")}


@pytest.mark.parametrize(("old", "new"), [(StepState.SUCCEEDED, StepState.RUNNING),
                                          (StepState.SKIPPED, StepState.QUEUED),
                                          (StepState.UNDONE, StepState.SUCCEEDED)], ids=str)
def test_a_move_off_the_table_is_refused(old: StepState, new: StepState) -> None:
    wf = flow(f"name = 'x'\n[steps.a]\n{EXEC}")
    wf.steps["a"].state = old
    with pytest.raises(WorkflowTransitionError, match=f"StepRun {old.value} -> {new.value} is not allowed"):
        move(wf, wf.steps["a"], new)


# ---- order -----------------------------------------------------------------------------

DIAMOND = f"""
name = "diamond"
[steps.a]
{EXEC}
[steps.b]
after = ["a"]
{EXEC}
[steps.c]
after = ["a"]
{EXEC}
[steps.d]
after = ["b", "c"]
{EXEC}
"""


def test_diamond_runs_in_dependency_order_with_the_middle_in_parallel() -> None:
    hub = Hub(flow(DIAMOND))
    assert hub(Begin()) == ["start a"]
    assert hub(ok("a")) == ["start b", "start c"]
    assert hub(ok("c")) == []
    assert states(hub.wf) == {"a": "succeeded", "b": "running", "c": "succeeded", "d": "blocked"}
    assert hub(ok("b")) == ["start d"]
    assert hub(ok("d")) == ["finish succeeded -"]
    assert hub.wf.state is FlowState.SUCCEEDED


def test_max_parallel_holds_ready_steps_in_file_order() -> None:
    steps = "".join(f"[steps.s{i}]\n{EXEC}\n" for i in range(1, 6))
    hub = Hub(flow(f"name = 'p'\nmax_parallel = 2\n{steps}"))
    assert hub(Begin()) == ["start s1", "start s2"]
    assert states(hub.wf)["s3"] == "queued"
    assert hub(ok("s2")) == ["start s3"]
    assert hub(ok("s1")) == ["start s4"]
    assert hub(ok("s4")) == ["start s5"]
    assert hub(ok("s3")) == []
    assert hub(ok("s5")) == ["finish succeeded -"]


# ---- results flowing on ----------------------------------------------------------------

def test_a_result_fills_argv_prompt_input_and_env() -> None:
    hub = Hub(flow("""
name = "pass"
[steps.make]
kind = "exec"
argv = ["make-it"]
[steps.use]
after = ["make"]
kind = "exec"
argv = ["echo", "got {{steps.make.result}}", "{{workflow.id}}", "{{inputs.who}}"]
input = "<{{steps.make.result}}>"
env = { OUT = "{{steps.make.json.a.b}}", N = "{{steps.make.json.list.1}}" }
[steps.ask]
after = ["make"]
prompt = "Explain {{steps.make.json.a}} to {{inputs.who}}"
""", {"who": "ann"}))
    assert hub(Begin()) == ["start make"]
    assert hub(ok("make", '{"a": {"b": "deep"}, "list": [10, 20]}')) == ["start use", "start ask"]
    result = '{"a": {"b": "deep"}, "list": [10, 20]}'
    assert hub.specs["use"] == TaskSpec(
        kind="exec", argv=["echo", f"got {result}", "wf-1", "ann"], input=f"<{result}>",
        env={"OUT": "deep", "N": "20"})
    assert hub.specs["ask"] == TaskSpec(prompt='Explain {"b":"deep"} to ann')


def test_a_missing_json_field_fails_the_step_with_its_name() -> None:
    hub = Hub(flow("""
name = "json"
[steps.make]
kind = "exec"
argv = ["make-it"]
[steps.use]
after = ["make"]
prompt = "{{steps.make.json.count}}"
"""))
    hub(Begin())
    assert hub(ok("make", '{"total": 3}')) == ["finish failed template"]
    assert states(hub.wf) == {"make": "succeeded", "use": "failed"}
    assert hub.wf.error == TaskError(kind="template", message='step use: steps.use.prompt: '
                                     '{{steps.make.json.count}}: the result of step "make" has no field "count"')


def test_a_result_that_is_not_json_fails_the_step() -> None:
    hub = Hub(flow("""
name = "json"
[steps.make]
kind = "exec"
argv = ["make-it"]
[steps.use]
after = ["make"]
kind = "exec"
argv = ["x", "{{steps.make.json.n}}"]
"""))
    hub(Begin())
    assert hub(ok("make", "not json")) == ["finish failed template"]
    assert status(hub.wf)["steps"][1]["error"] == {  # type: ignore[index]
        "kind": "template",
        "message": 'steps.use.argv[1]: {{steps.make.json.n}}: the result of step "make" is not JSON'}


# ---- map -------------------------------------------------------------------------------

MAP = """
name = "review"
{top}
[steps.files]
kind = "exec"
argv = ["git", "ls-files"]
undo = {{ kind = "exec", argv = ["rm", "-f", "list"] }}
[steps.review]
after = ["files"]
map = "files"
prompt = "Review {{{{item}}}} ({{{{index}}}})"
[steps.summary]
after = ["review"]
input = "{{{{steps.review.result}}}}"
prompt = "Summarise {{{{steps.review.results}}}}"
"""


def test_a_map_runs_once_per_non_empty_line_and_joins_results_in_item_order() -> None:
    hub = Hub(flow(MAP.format(top="")))
    assert hub(Begin()) == ["start files"]
    assert hub(ok("files", "a.py\n\n  \nb.py\nc.py\n")) == ["start review[0]", "start review[1]", "start review[2]"]
    assert [hub.specs[f"review[{i}]"].prompt for i in range(3)] == [
        "Review a.py (0)", "Review b.py (1)", "Review c.py (2)"]
    assert hub(ok("review[2]", "C fine")) == []
    assert hub(ok("review[0]", "A bad\n")) == []
    assert hub(ok("review[1]", "B ok")) == ["start summary"]
    assert hub.wf.steps["review"].result == "A bad\nB ok\nC fine"
    assert hub.specs["summary"] == TaskSpec(input="A bad\nB ok\nC fine",
                                            prompt='Summarise ["A bad", "B ok", "C fine"]')
    assert status(hub.wf)["steps"][1]["task_ids"] == ["t-review[0]", "t-review[1]", "t-review[2]"]  # type: ignore[index]


def test_a_map_over_zero_items_succeeds_with_an_empty_result() -> None:
    hub = Hub(flow(MAP.format(top="")))
    hub(Begin())
    assert hub(ok("files", "\n \n")) == ["start summary"]
    assert states(hub.wf) == {"files": "succeeded", "review": "succeeded", "summary": "running"}
    assert hub.specs["summary"] == TaskSpec(input="", prompt="Summarise []")


def test_a_failed_item_cancels_its_siblings_and_fails_the_workflow() -> None:
    hub = Hub(flow(MAP.format(top="max_parallel = 2")))
    hub(Begin())
    assert hub(ok("files", "a\nb\nc\n")) == ["start review[0]", "start review[1]"]
    assert hub(fail("review[1]", message="no")) == ["cancel review[0] t-review[0]"]
    assert states(hub.wf) == {"files": "succeeded", "review": "failed", "summary": "skipped"}
    assert hub(cancelled("review[0]")) == ["start files:undo:1"]
    assert hub(ok("files:undo:1")) == ["finish failed exit"]
    assert hub.wf.error == TaskError(kind="exit", message="step review: item 1: no")


def test_cancel_during_a_map_cancels_running_items_skips_the_rest_then_undoes() -> None:
    hub = Hub(flow(MAP.format(top="max_parallel = 2")))
    hub(Begin())
    hub(ok("files", "a\nb\nc\n"))
    assert hub(CancelRequested()) == ["cancel review[0] t-review[0]", "cancel review[1] t-review[1]"]
    assert hub.wf.jobs["review[2]"].state is JobState.SKIPPED
    assert states(hub.wf) == {"files": "succeeded", "review": "running", "summary": "skipped"}
    assert hub(cancelled("review[1]")) == []
    assert hub(ok("review[0]", "late")) == ["start files:undo:1"]  # finished before the cancel landed
    assert states(hub.wf) == {"files": "succeeded", "review": "cancelled", "summary": "skipped"}
    assert hub(ok("files:undo:1")) == ["finish cancelled cancelled"]
    assert states(hub.wf) == {"files": "undone", "review": "cancelled", "summary": "skipped"}


# ---- compensate ------------------------------------------------------------------------

COMPENSATE = f"""
name = "comp"
[steps.a]
{EXEC}
undo = {{ kind = "exec", argv = ["undo-a"] }}
[steps.b]
after = ["a"]
{EXEC}
compensate = {{ kind = "exec", argv = ["fallback"], continue = {{go_on}} }}
[steps.c]
after = ["b"]
kind = "exec"
argv = ["use"]
input = "{{{{steps.b.result}}}}"
"""


def test_compensate_with_continue_stands_in_for_the_step() -> None:
    hub = Hub(flow(COMPENSATE.replace("{go_on}", "true")))
    hub(Begin())
    assert hub(ok("a")) == ["start b"]
    assert hub(fail("b")) == ["start b:compensate"]
    assert states(hub.wf)["b"] == "compensating"
    assert hub(ok("b:compensate", "plan B")) == ["start c"]
    assert hub.specs["c"].input == "plan B"
    assert hub(ok("c")) == ["finish succeeded -"]
    assert states(hub.wf) == {"a": "succeeded", "b": "compensated", "c": "succeeded"}
    assert status(hub.wf)["steps"][1]["task_ids"] == ["t-b", "t-b:compensate"]  # type: ignore[index]


def test_compensate_without_continue_fails_the_workflow_and_undo_runs() -> None:
    hub = Hub(flow(COMPENSATE.replace("{go_on}", "false")))
    hub(Begin())
    hub(ok("a"))
    assert hub(fail("b", message="disk full")) == ["start b:compensate"]
    assert hub(ok("b:compensate", "cleaned")) == ["start a:undo:1"]
    assert hub(ok("a:undo:1")) == ["finish failed exit"]
    assert hub.wf.error == TaskError(kind="exit", message="step b: disk full")
    assert states(hub.wf) == {"a": "undone", "b": "failed", "c": "skipped"}


def test_a_failing_compensate_fails_the_workflow() -> None:
    hub = Hub(flow(COMPENSATE.replace("{go_on}", "true")))
    hub(Begin())
    hub(ok("a"))
    hub(fail("b"))
    assert hub(fail("b:compensate", kind="timeout", message="too slow")) == ["start a:undo:1"]
    assert hub.wf.error == TaskError(kind="timeout", message="step b: compensate failed: too slow")


# ---- undo ------------------------------------------------------------------------------

UNDO = """
name = "undo"
undo_retries = 1
[steps.p]
kind = "exec"
argv = ["p"]
undo = { kind = "exec", argv = ["undo-p", "{{steps.p.result}}"] }
[steps.q]
kind = "exec"
argv = ["q"]
undo = { kind = "exec", argv = ["undo-q"] }
[steps.r]
after = ["p", "q"]
kind = "exec"
argv = ["r"]
undo = { kind = "exec", argv = ["undo-r"] }
[steps.plain]
after = ["p", "q"]
kind = "exec"
argv = ["no-undo"]
[steps.last]
after = ["r", "plain"]
kind = "exec"
argv = ["last"]
"""


def test_undo_runs_last_finished_first_one_at_a_time_and_goes_on_past_a_failure() -> None:
    hub = Hub(flow(UNDO))
    assert hub(Begin()) == ["start p", "start q"]
    assert hub(ok("q")) == []  # q finishes first, p second: undo p before q
    assert hub(ok("p", "P1")) == ["start r", "start plain"]
    assert hub(ok("plain")) == []
    assert hub(ok("r")) == ["start last"]
    assert hub(fail("last")) == ["start r:undo:1"]
    assert hub(ok("r:undo:1")) == ["start p:undo:1"]
    assert hub.specs["p:undo:1"].argv == ["undo-p", "P1"]
    assert hub(fail("p:undo:1")) == ["start p:undo:2"]  # undo_retries = 1: one more try
    assert hub(fail("p:undo:2", message="still no")) == ["start q:undo:1"]
    assert hub(ok("q:undo:1")) == ["finish failed exit"]
    assert states(hub.wf) == {"p": "undo_failed", "q": "undone", "r": "undone", "plain": "succeeded",
                              "last": "failed"}
    assert status(hub.wf)["undo"] == [
        {"step": "r", "state": "succeeded", "attempts": 1, "task_id": "t-r:undo:1"},
        {"step": "p", "state": "failed", "attempts": 2, "task_id": "t-p:undo:2"},
        {"step": "q", "state": "succeeded", "attempts": 1, "task_id": "t-q:undo:1"},
    ]


def test_running_steps_are_cancelled_before_any_undo_starts() -> None:
    hub = Hub(flow(UNDO))
    hub(Begin())
    assert hub(fail("p")) == ["cancel q t-q"]
    assert states(hub.wf) == {"p": "failed", "q": "running", "r": "skipped", "plain": "skipped",
                              "last": "skipped"}
    assert hub(ok("q")) == ["start q:undo:1"]  # it finished before the cancel landed: undo it
    assert hub(ok("q:undo:1")) == ["finish failed exit"]


def test_cancel_waits_for_running_tasks_then_undoes() -> None:
    hub = Hub(flow(UNDO))
    hub(Begin())
    assert hub(ok("q")) == []
    assert hub(CancelRequested("user said stop")) == ["cancel p t-p"]
    assert hub(CancelRequested("again")) == []  # the first reason wins
    assert hub(cancelled("p")) == ["start q:undo:1"]
    assert hub(ok("q:undo:1")) == ["finish cancelled cancelled"]
    assert hub.wf.error == TaskError(kind="cancelled", message="user said stop")
    assert states(hub.wf) == {"p": "cancelled", "q": "undone", "r": "skipped", "plain": "skipped",
                              "last": "skipped"}


def test_a_step_task_cancelled_by_hand_cancels_the_workflow() -> None:
    hub = Hub(flow(DIAMOND))
    hub(Begin())
    hub(ok("a"))
    assert hub(cancelled("b")) == ["cancel c t-c"]
    assert hub(ok("c")) == ["finish cancelled cancelled"]
    assert hub.wf.error == TaskError(kind="cancelled", message="step b: its task was cancelled")
    assert states(hub.wf) == {"a": "succeeded", "b": "cancelled", "c": "succeeded", "d": "skipped"}


def test_an_undo_whose_template_cannot_fill_is_recorded_without_retry() -> None:
    hub = Hub(flow("""
name = "u"
[steps.a]
kind = "exec"
argv = ["a"]
undo = { kind = "exec", argv = ["undo", "{{steps.a.json.id}}"] }
[steps.b]
after = ["a"]
kind = "exec"
argv = ["b"]
"""))
    hub(Begin())
    hub(ok("a", "plain text"))
    assert hub(fail("b")) == ["finish failed exit"]
    assert states(hub.wf) == {"a": "undo_failed", "b": "failed"}
    undo = hub.wf.undo
    assert undo is not None and undo[0].error == TaskError(
        kind="template", message='steps.a.undo.argv[1]: {{steps.a.json.id}}: the result of step "a" is not JSON')


# ---- budget ----------------------------------------------------------------------------

BUDGET = """
name = "budget"
max_cost_usd = 1.0
[steps.a]
prompt = "a"
[steps.b]
prompt = "b"
[steps.tidy]
after = ["a", "b"]
kind = "exec"
argv = ["tidy"]
[steps.c]
after = ["a", "b"]
prompt = "c"
"""


def test_budget_stops_claude_steps_and_fails_the_workflow() -> None:
    hub = Hub(flow(BUDGET))
    assert hub(Begin()) == ["start a", "start b"]
    assert hub(ok("a", cost=0.6)) == []
    assert hub(ok("b", cost=0.5)) == ["finish failed budget"]  # neither tidy nor c starts
    assert hub.wf.error == TaskError(
        kind="budget", message="cost_usd 1.1 reached max_cost_usd 1: step c was not started")
    assert states(hub.wf) == {"a": "succeeded", "b": "succeeded", "tidy": "skipped", "c": "skipped"}
    assert hub.wf.cost_usd == pytest.approx(1.1)


def test_budget_reached_with_only_exec_steps_left_lets_them_run() -> None:
    hub = Hub(flow(BUDGET.replace('prompt = "c"', 'kind = "exec"\nargv = ["c"]')))
    hub(Begin())
    hub(ok("a", cost=0.9))
    assert hub(ok("b", cost=0.2)) == ["start tidy", "start c"]


def test_a_budget_event_fails_the_workflow() -> None:
    hub = Hub(flow(BUDGET))
    hub(Begin())
    assert hub(BudgetExceeded("daily budget spent")) == ["cancel a t-a", "cancel b t-b"]
    hub(cancelled("a"))
    assert hub(cancelled("b")) == ["finish failed budget"]


# ---- durability ------------------------------------------------------------------------

SCRIPT: list[Event] = [
    Begin(), ok("files", "x\ny\nz\n"), ok("review[1]", "Y"), fail("review[0]"), cancelled("review[2]"),
    ok("review:compensate", "fallback"), ok("summary"), fail("apply"), fail("files:undo:1"),
    ok("files:undo:2"), ok("files:undo:1"),
]
DURABLE = """
name = "durable"
max_parallel = 3
[steps.files]
kind = "exec"
argv = ["ls"]
undo = { kind = "exec", argv = ["undo-files"] }
[steps.review]
after = ["files"]
map = "files"
prompt = "{{item}}"
compensate = { prompt = "apologise", continue = true }
[steps.summary]
after = ["review"]
input = "{{steps.review.result}}"
prompt = "sum"
[steps.apply]
after = ["summary"]
kind = "exec"
argv = ["apply"]
undo = { kind = "exec", argv = ["undo-apply"] }
[steps.after_apply]
after = ["apply"]
prompt = "never"
"""
EXPECTED = [
    ["start files"], ["start review[0]", "start review[1]", "start review[2]"], [],
    ["cancel review[2] None"], ["start review:compensate"], ["start summary"], ["start apply"],
    ["start files:undo:1"],  # review was compensated, summary has no undo, apply failed
    ["start files:undo:2"], ["finish failed exit"], [],
]


def run(wf: Workflow, events: list[Event], now: float = 2000.0) -> list[list[str]]:
    return [words(decide(wf, ev, now + i)) for i, ev in enumerate(events)]


def test_the_script_tells_the_expected_story() -> None:
    assert run(flow(DURABLE), SCRIPT) == EXPECTED


@pytest.mark.parametrize("cut", range(len(SCRIPT) + 1))
def test_a_record_rebuilt_from_saved_data_decides_the_same(cut: int) -> None:
    wf = flow(DURABLE)
    before = run(wf, SCRIPT[:cut])
    saved = msgspec.json.encode(wf)
    rebuilt = msgspec.json.decode(saved, type=Workflow)
    assert msgspec.json.encode(rebuilt) == saved
    assert before + run(rebuilt, SCRIPT[cut:], 2000.0 + cut) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(SCRIPT)))
def test_every_event_delivered_twice_changes_nothing_the_second_time(cut: int) -> None:
    wf = flow(DURABLE)
    run(wf, SCRIPT[:cut])
    saved = msgspec.json.encode(wf)
    assert run(wf, [SCRIPT[cut - 1]]) == [[]]
    assert msgspec.json.encode(wf) == saved


def test_resume_after_a_crash_starts_only_what_was_never_accepted() -> None:
    wf = flow(DURABLE)
    decide(wf, Begin(), 1.0)
    decide(wf, TaskAccepted("files", "t-files"), 1.0)
    decide(wf, ok("files", "x\ny\n"), 2.0)
    decide(wf, TaskAccepted("review[0]", "t-r0"), 2.0)
    # the daemon died here: review[1] was decided, never accepted
    wf = msgspec.json.decode(msgspec.json.encode(wf), type=Workflow)
    assert words(resume(wf)) == ["start review[1]"]
    assert [d.spec for d in resume(wf) if isinstance(d, StartTask)] == [TaskSpec(prompt="y")]
    decide(wf, TaskAccepted("review[1]", "t-r1"), 3.0)
    assert resume(wf) == []
    decide(wf, CancelRequested(), 4.0)
    assert words(resume(wf)) == ["cancel review[0] t-r0", "cancel review[1] t-r1"]


def test_a_finished_step_is_never_started_again() -> None:
    wf = flow(DIAMOND)
    seen: list[str] = []
    for ev in [Begin(), ok("a"), Begin(), ok("a"), ok("b"), ok("c"), Begin(), ok("b"), ok("d"), Begin()]:
        seen += words(decide(wf, ev, 1.0))
        wf = msgspec.json.decode(msgspec.json.encode(wf), type=Workflow)
    assert seen == ["start a", "start b", "start c", "start d", "finish succeeded -"]
    assert resume(wf) == [WorkflowFinished(state=FlowState.SUCCEEDED, error=None)]


# ---- status ----------------------------------------------------------------------------

def test_status_shape() -> None:
    hub = Hub(flow(COMPENSATE.replace("{go_on}", "false")))
    hub(Begin())
    hub(ok("a", "A", cost=0.25))
    hub(fail("b", message="disk full"))
    hub(ok("b:compensate"))
    hub(ok("a:undo:1"))
    assert status(hub.wf) == {
        "id": "wf-1", "name": "comp", "state": "failed", "trace_id": "trace-1",
        "started_at": 1000.0, "finished_at": 1005.0, "cost_usd": 0.25,
        "error": {"kind": "exit", "message": "step b: disk full"},
        "steps": [
            {"name": "a", "state": "undone", "task_ids": ["t-a"], "result": "A", "error": None,
             "started_at": 1001.0, "finished_at": 1002.0},
            {"name": "b", "state": "failed", "task_ids": ["t-b", "t-b:compensate"], "result": None,
             "error": {"kind": "exit", "message": "disk full"}, "started_at": 1002.0, "finished_at": 1003.0},
            {"name": "c", "state": "skipped", "task_ids": [], "result": None, "error": None,
             "started_at": None, "finished_at": None},
        ],
        "undo": [{"step": "a", "state": "succeeded", "attempts": 1, "task_id": "t-a:undo:1"}],
    }


def test_nothing_moves_a_finished_workflow() -> None:
    hub = Hub(flow(DIAMOND))
    for ev in [Begin(), ok("a"), ok("b"), ok("c"), ok("d")]:
        hub(ev)
    for ev in itertools.chain([CancelRequested(), BudgetExceeded("x"), Begin()], [ok("a"), fail("d")]):
        assert hub(ev) == []
    assert hub.wf.state is FlowState.SUCCEEDED
