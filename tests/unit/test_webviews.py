"""The dashboard's views ask the daemon the verbs supctl sends: which request each page
makes, what it keeps of the answer, and the 400s for bad filters. The daemon here is a
table of answers (a fake `ask` that records what it was asked)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from proto import control as ctl
from proto.task import TaskView
from supervisord.spokes import webviews
from supervisord.spokes.webfeed import Feed


def view(tid: str, **kw: Any) -> TaskView:
    base: dict[str, Any] = dict(kind="exec", state="succeeded", attempts=1, exit_code=0, result="", error=None,
                                child=None, trace_id=None, span_id=None, parent_span_id=None, submitted_at=1.0,
                                started_at=None, finished_at=None, duration_s=None)
    base.update(kw)
    return TaskView(id=tid, **base)


class Daemon:
    """Answers by request type; remembers every request."""

    def __init__(self, answers: dict[type, Any]) -> None:
        self.answers, self.asked, self.timeouts = answers, [], []

    async def ask(self, request: ctl.Request, timeout_s: float = 5.0) -> ctl.Reply:
        self.asked.append(request)
        self.timeouts.append(timeout_s)
        answer = self.answers[type(request)]
        return answer(request) if callable(answer) else answer


def call(daemon: Daemon, name: str, path: str, method: str = "GET", **match: str) -> Any:
    views = webviews.Views(daemon.ask, Feed(None, "ipc:///nowhere"), lambda: 100.0)  # type: ignore[arg-type]
    if name == "snapshot":
        return asyncio.run(views.snapshot())
    request = make_mocked_request(method, path, match_info=match)
    return asyncio.run(getattr(views, name)(request))


def test_tasks_filter_batch_and_label_at_the_daemon_and_key_and_kind_here():
    tasks = ctl.Tasks(tasks=[view("t1", key="repo-a"), view("t2", key="repo-b"), view("t3", kind="claude", key="repo-a")])
    d = Daemon({ctl.List: tasks})
    out = call(d, "tasks", "/api/tasks?batch=b1&label=nightly&key=repo-a&kind=exec&limit=7")
    assert d.asked == [ctl.List(state=None, limit=7, batch="b1", label="nightly")]
    assert [r["id"] for r in out["tasks"]] == ["t1"]


@pytest.mark.parametrize("query, problem", [
    ("state=done", "state: unknown state 'done'"),
    ("kind=shell", "kind: 'shell' is not claude or exec"),
    ("limit=0", "limit = 0: must be between 1 and 500"),
    ("key=" + "k" * 129, "key: longer than 128 characters"),
    ("label=" + "l" * 257, "label: longer than 256 characters"),
])
def test_a_bad_filter_is_a_400_naming_it(query, problem):
    d = Daemon({})
    with pytest.raises(webviews.BadInput, match=problem):
        call(d, "tasks", "/api/tasks?" + query)
    assert d.asked == []


def test_batches_are_the_batch_verbs_summaries_newest_first_without_workflow_tasks():
    tasks = ctl.Tasks(tasks=[view("t3", batch="b2"), view("t2", batch="b1"), view("t1", batch="b1"),
                             view("t0", trace_id="wf-trace", workflow="w1", step="a")])
    summaries = {"b1": {"id": "b1", "submitted_at": 1.0}, "b2": {"id": "b2", "submitted_at": 2.0}}
    d = Daemon({ctl.List: tasks, ctl.Batch: lambda r: ctl.Info(data={"batch": summaries[r.id], "tasks": []})})
    out = call(d, "batches", "/api/batches?label=nightly")
    assert d.asked == [ctl.List(state=None, limit=500, label="nightly"), ctl.Batch(id="b2", limit=1),
                       ctl.Batch(id="b1", limit=1)]
    assert [b["id"] for b in out["batches"]] == ["b2", "b1"]
    assert out["label"] == "nightly" and out["more"] is False


def test_one_batch_and_an_unknown_one():
    d = Daemon({ctl.Batch: ctl.Error(kind="not_found", message="no batch with id 'zz'")})
    assert call(d, "batch", "/api/batch/zz", id="zz") == {"ok": False, "error": "no batch with id 'zz'",
                                                          "kind": "not_found"}
    assert d.asked == [ctl.Batch(id="zz", limit=500)]


def test_workflow_pages_ask_flowlist_flowstatus_and_flowcancel():
    wf = {"id": "w1", "state": "running", "steps": [{"name": "a", "state": "running", "after": []}], "undo": []}
    d = Daemon({ctl.FlowList: ctl.Flows(flows=[{"id": "w1"}]), ctl.FlowStatus: ctl.Flows(flows=[wf]),
                ctl.FlowCancel: ctl.Ok(message="cancelling workflow w1")})
    assert call(d, "workflows", "/api/workflows?state=running")["workflows"] == [{"id": "w1"}]
    assert call(d, "workflow", "/api/workflow/w1", id="w1") == {"ok": True, "workflow": wf}
    assert call(d, "workflow_cancel", "/api/workflow/w1/cancel", "POST", id="w1") == {
        "ok": True, "message": "cancelling workflow w1"}
    assert d.asked == [ctl.FlowList(state="running", limit=100), ctl.FlowStatus(id="w1"), ctl.FlowCancel(id="w1")]
    with pytest.raises(webviews.BadInput, match="unknown workflow state 'done'"):
        call(d, "workflows", "/api/workflows?state=done")
    with pytest.raises(webviews.BadInput, match="not a task id"):
        call(d, "workflow", "/api/workflow/x", id="../etc")


def test_the_snapshot_carries_the_gate_and_the_keys_from_status():
    status = {"gate": {"state": "closed", "resets_at": 130.0}, "keys": {"deploy": {"limit": 1, "held_by": ["t1"],
                                                                                   "waiting": 2}}}
    d = Daemon({ctl.Status: ctl.Info(data=status), ctl.Health: ctl.Info(data={}), ctl.Stats: ctl.Info(data={})})
    out = call(d, "snapshot", "/")
    assert out["gate"] == {"state": "closed", "resets_at": 130.0}
    assert out["keys"] == {"deploy": {"limit": 1, "held_by": ["t1"], "waiting": 2}}


def test_hosts_are_this_daemon_and_the_fleet_of_the_hosts_verb():
    fleet = {"host": "h1", "hosts": [{"host": "h1", "pid": 7, "phase": "running", "heartbeat_age_s": 0.5,
                                      "children": 2, "running": 1}]}
    d = Daemon({ctl.Status: ctl.Info(data={"pid": 7, "phase": "running"}), ctl.Hosts: ctl.Info(data=fleet)})
    out = call(d, "hosts", "/api/hosts")
    assert d.asked == [ctl.Status(), ctl.Hosts()]
    assert out["this"]["pid"] == 7 and out["fleet"] == {**fleet, "error": None}
    alone = Daemon({ctl.Status: ctl.Info(data={}), ctl.Hosts: ctl.Info(data={"host": None, "hosts": []})})
    assert call(alone, "hosts", "/api/hosts")["fleet"] == {"host": None, "hosts": [], "error": None}


def test_a_tasks_diff_is_the_diff_verbs_answer_asked_with_the_longer_git_wait():
    text = ctl.DiffText(id="t1", repo="/r", branch="supd/t1", base="b", head="h", stat=True, text=" f | 1 +\n",
                        left_out_bytes=0)
    d = Daemon({ctl.Diff: text})
    out = call(d, "diff", "/api/task/t1/diff?stat=1", id="t1")
    assert d.asked == [ctl.Diff(id="t1", stat=True)] and d.timeouts == [20.0]
    assert out == {"ok": True, "id": "t1", "branch": "supd/t1", "base": "b", "head": "h", "stat": True,
                   "text": " f | 1 +\n", "left_out_bytes": 0}
    d = Daemon({ctl.Diff: ctl.Error(kind="not_final", message="task t1 is running: …")})
    assert call(d, "diff", "/api/task/t1/diff", id="t1") == {"ok": False, "kind": "not_final",
                                                             "error": "task t1 is running: …"}
    assert d.asked == [ctl.Diff(id="t1", stat=False)]
