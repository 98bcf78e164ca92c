"""The dashboard's pages for the daemon's objects, in a real browser against a real daemon:
a workflow's DAG whose step states change as its real processes run (a step waits on a
file the test creates), its Cancel button and the undo order that follows; a batch's
summary line (the `Batch` verb's) changing as its tasks end, the label and key filters;
the rate-limit gate closing and opening on the overview after a real 429 through the real
CLI, and a held key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.browser.conftest import shot
from tests.browser.test_dashboard import open_page, start
from tests.conftest import gate

pytestmark = pytest.mark.timeout(180)


def step_state(page: Any, name: str) -> str:
    return page.get_attribute(f'#dag g[data-step="{name}"]', "data-state")


def wait_step(page: Any, name: str, state: str) -> None:
    page.wait_for_selector(f'#dag g[data-step="{name}"][data-state="{state}"]', timeout=30_000)


def waits_for(path: Path, word: str, log: Path) -> str:
    """A shell command that logs `word`, then waits until `path` exists."""
    return f"echo {word} >> {log}; while [ ! -e {path} ]; do sleep 0.05; done"


def test_a_workflows_dag_shows_its_steps_changing_and_cancel_runs_the_undo(supd_factory, browser_context,
                                                                            tmp_path):
    d, url, token = start(supd_factory)
    log, go_b, go_c = tmp_path / "log", tmp_path / "go-b", tmp_path / "go-c"
    flow = tmp_path / "flow.toml"
    flow.write_text(f"""
name = "pipeline"
[steps.fetch]
kind = "exec"
argv = ["sh", "-c", "echo fetch >> {log}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "echo undo-fetch >> {log}"] }}
[steps.build]
after = ["fetch"]
kind = "exec"
argv = ["sh", "-c", "{waits_for(go_b, 'build', log)}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "echo undo-build >> {log}"] }}
[steps.lint]
after = ["fetch"]
kind = "exec"
argv = ["true"]
[steps.ship]
after = ["build", "lint"]
kind = "exec"
argv = ["sh", "-c", "{waits_for(go_c, 'ship', log)}"]
""")
    page = open_page(browser_context, url, token, "#/workflows")
    r = d.supctl("flow", "run", str(flow), "--json")
    assert r.returncode == 0, r.stderr
    wf_id = json.loads(r.stdout)["id"]
    # the list: the new workflow appears without a reload
    page.wait_for_selector(f'#flows tr[data-flow="{wf_id}"] [data-state="running"]')
    assert "pipeline" in page.inner_text(f'#flows tr[data-flow="{wf_id}"]')
    page.click(f'#flows tr[data-flow="{wf_id}"] a')
    page.wait_for_selector(f'body[data-ready="/workflow/{wf_id}"]')
    page.evaluate("window.__sameDocument = true")
    wait_step(page, "build", "running")
    wait_step(page, "lint", "succeeded")
    assert [step_state(page, s) for s in ("fetch", "build", "ship")] == ["succeeded", "running", "blocked"]
    assert page.locator("#dag line").count() == 4  # fetch->build, fetch->lint, build->ship, lint->ship
    shot(page, "workflow-running")
    go_b.write_text("")  # build ends: the drawing moves on by itself
    wait_step(page, "build", "succeeded")
    wait_step(page, "ship", "running")
    assert page.inner_text("#undo-box").startswith("no undo ran")
    page.click("#flow-cancel")
    page.wait_for_selector('#flow-state [data-state="cancelled"]', timeout=30_000)
    assert "cancelling workflow" in page.inner_text("#said")
    wait_step(page, "ship", "cancelled")
    wait_step(page, "build", "undone")
    wait_step(page, "fetch", "undone")
    assert page.is_disabled("#flow-cancel")
    # the undo order: last finished first, as the daemon ran it
    assert [li.get_attribute("data-undo") for li in page.query_selector_all("#undo li")] == ["build", "fetch"]
    assert log.read_text().split() == ["fetch", "build", "ship", "undo-build", "undo-fetch"]
    status = json.loads(d.supctl("flow", "status", wf_id, "--json").stdout)
    assert status["state"] == "cancelled"
    assert [u["step"] for u in status["undo"]] == ["build", "fetch"]
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "workflow")
    page.click('#steps tr[data-step-row="build"] a')  # a step's task names its workflow and step
    page.wait_for_selector('body[data-ready^="/task/"]')
    assert page.inner_text('[data-field="workflow"]') == wf_id and page.inner_text('[data-field="step"]') == "build"
    page.click('[data-field="workflow"] a')
    page.wait_for_selector(f'body[data-ready="/workflow/{wf_id}"]')
    page.goto(f"{url}#/workflows")
    page.wait_for_selector(f'#flows tr[data-flow="{wf_id}"] [data-state="cancelled"]')
    shot(page, "workflows")


def test_the_batches_page_shows_a_batchs_summary_and_the_filters_work(supd_factory, browser_context, tmp_path):
    d, url, token = start(supd_factory, children=3)
    go = tmp_path / "go"
    reply = d.request(ctl.Submit(label="nightly", tasks=[
        TaskSpec(kind="exec", argv=["true"]), TaskSpec(kind="exec", argv=["false"]),
        TaskSpec(kind="exec", argv=gate(go), key="repo-a")]))
    assert isinstance(reply, ctl.Accepted) and reply.batch
    batch = reply.batch
    [other] = d.submit(TaskSpec(kind="exec", argv=["echo", "unlabelled"]))
    d.wait([other])
    page = open_page(browser_context, url, token, "#/batches")
    row = f'#batches tr[data-batch="{batch}"]'
    page.wait_for_function(f"document.querySelector('{row} .summary').innerText.includes('1 running')")
    assert page.inner_text(f"{row} .summary") == "1 succeeded, 1 failed, 1 running of 3"
    assert "nightly" in page.inner_text(row) and page.get_attribute(f"{row} [data-state]", "data-state") == "running"
    assert page.locator("#batches tr[data-batch]").count() == 2
    go.write_text("")  # the last task ends: the summary changes without a reload
    page.wait_for_function(f"document.querySelector('{row} [data-state]').dataset.state === 'done'", timeout=30_000)
    assert page.inner_text(f"{row} .summary") == "2 succeeded, 1 failed, 0 running of 3"
    summary = d.info(ctl.Batch(id=batch))["batch"]
    assert float(page.get_attribute(f"{row} [data-wall]", "data-wall")) == summary["wall_s"] > 0
    shot(page, "batches")
    # the label filter (the daemon's `List(label=)` / batch ids): only the labelled batch
    page.goto(f"{url}#/batches?label=nightly")
    page.wait_for_selector('body[data-ready="/batches"]')
    assert page.locator("#batches tr[data-batch]").count() == 1
    page.click(f"{row} a")
    page.wait_for_selector(f'body[data-ready="/batch/{batch}"]')
    assert page.locator("#batch-tasks tr[data-task]").count() == 3
    assert "repo-a" in page.inner_text("#batch-tasks")
    shot(page, "batch")
    page.goto(f"{url}#/tasks?label=nightly")
    page.wait_for_selector('body[data-ready="/tasks"]')
    assert page.locator("#tasks tr[data-task]").count() == 3
    page.goto(f"{url}#/tasks?key=repo-a")
    page.wait_for_selector('body[data-ready="/tasks"]')
    assert page.locator("#tasks tr[data-task]").count() == 1
    assert page.input_value('input[name="key"]') == "repo-a"
    page.goto(f"{url}#/tasks?batch={batch}&state=failed")
    page.wait_for_selector('body[data-ready="/tasks"]')
    assert page.locator("#tasks tr[data-task]").count() == 1


def test_the_overview_shows_the_gate_and_the_held_keys(supd_factory, browser_context, claude_config, tmp_path):
    d, url, token = start(supd_factory, claude_config, children=3)
    page = open_page(browser_context, url, token)
    assert page.get_attribute('[data-card="gate"] [data-state]', "data-state") == "open"
    assert "no key is held" in page.inner_text("#keybox")
    go = tmp_path / "go"
    [holder] = d.submit(TaskSpec(kind="exec", argv=gate(go), key="deploy"))
    [waiter] = d.submit(TaskSpec(kind="exec", argv=["true"], key="deploy"))
    page.wait_for_selector('#keys tr[data-key="deploy"]')
    key_row = page.inner_text('#keys tr[data-key="deploy"]')
    assert "1 / 1" in key_row and holder in key_row, key_row
    page.wait_for_function("document.querySelector('#keys tr[data-key=deploy] td:last-child').innerText === '1'")
    shot(page, "overview-keys")
    go.write_text("")
    d.wait([holder, waiter])
    page.wait_for_selector("#keybox p.na")  # released: no key held any more
    # a real 429 through the real CLI closes the gate until its retry-after; then it opens
    [limited] = d.submit(TaskSpec(kind="claude", prompt="[[status:429]] [[retry_after:4]] [[once]] gate",
                                  model="claude-sonnet-4-5", retries=1))
    page.wait_for_selector('[data-card="gate"] [data-state="closed"]', timeout=30_000)
    assert "until" in page.inner_text('[data-card="gate"]')
    shot(page, "overview-gate")
    page.wait_for_selector('[data-card="gate"] [data-state="open"]', timeout=30_000)
    [t] = d.wait([limited], timeout_s=60)
    assert t.state == "succeeded" and t.attempts == 2
    assert page.evaluate("window.__sameDocument") is True
