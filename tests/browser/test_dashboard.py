"""The dashboard in a real browser, against a real daemon running real tasks (exec tasks,
and Claude tasks through the real CLI against bench/fakeapi.py).

What a user would check: the overview's counts are the daemon's, a task submitted from
outside appears without a reload and its transcript streams in, Cancel on the page
cancels the task, every page renders (screenshots under tests/browser/screenshots/), and
without the token nothing is served. Workflows, batches, keys and the gate:
`test_dashboard_objects.py`.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from proto.task import TaskSpec
from tests.browser.conftest import shot
from tests.conftest import Supd, free_port

pytestmark = pytest.mark.timeout(180)


def start(supd_factory: Any, config: str = "", children: int = 2) -> tuple[Supd, str, str]:
    port = free_port()
    d = supd_factory(children=children, config=config + f"\n[web]\nport = {port}\n").start()
    r = d.supctl("web", "--json")
    assert r.returncode == 0, r.stderr
    web = json.loads(r.stdout)
    assert web["url"] == f"http://127.0.0.1:{port}/"
    return d, web["url"], web["token"]


def open_page(ctx: Any, url: str, token: str, route: str = "") -> Any:
    page = ctx.new_page()
    page.goto(f"{url}?token={token}")  # answered with a cookie and a redirect that drops the token
    assert "token=" not in page.url
    if route:
        page.goto(f"{url}{route}")
    page.wait_for_selector(f'body[data-ready="{route.lstrip("#") or "/"}"]')
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    return page


def card(page: Any, name: str) -> str:
    return page.inner_text(f'[data-card="{name}"] .n').strip()


def test_without_the_token_nothing_is_served(supd_factory, browser_context):
    d, url, token = start(supd_factory)
    page = browser_context.new_page()
    response = page.goto(url)
    assert response.status == 401
    assert "needs its token" in page.inner_text("body")
    shot(page, "refused")
    for path, headers in (("api/overview", {}), ("api/tasks", {"Authorization": "Bearer wrong" + token[5:]}),
                          (f"?token={token[:-1]}", {}), ("static/app.js", {}), ("api/events", {})):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5)
        assert e.value.code == 401, path
    ok = urllib.request.urlopen(urllib.request.Request(url + "api/overview",
                                                       headers={"Authorization": f"Bearer {token}"}), timeout=5)
    assert json.loads(ok.read())["status"]["pid"] == d.proc.pid
    assert re.search(r"event=web_listening host=127.0.0.1 port=\d+", d.log())


def test_overview_shows_the_daemons_counts(supd_factory, browser_context):
    d, url, token = start(supd_factory)
    ids = d.submit(TaskSpec(kind="exec", argv=["true"]), TaskSpec(kind="exec", argv=["echo", "hi"]),
                   TaskSpec(kind="exec", argv=["false"]))
    assert [t.state for t in d.wait(ids)] == ["succeeded", "succeeded", "failed"]
    page = open_page(browser_context, url, token)
    assert card(page, "queued") == "0" and card(page, "running") == "0"
    assert card(page, "children") == "2 / 2"
    assert card(page, "totals") == "2 / 1"
    assert card(page, "finished_hour") == "3"
    assert page.inner_text('[data-card="health"] .n').strip() == "ok"
    assert page.inner_text('[data-card="breaker"] .n').strip() == "closed"
    assert page.locator("#recent tr[data-task]").count() == 3
    assert page.locator("#children tr[data-child]").count() == 2
    assert page.locator("#children tr[data-spare]").count() == 1  # daemon.spares = 1, listed after the slots
    assert page.locator('[data-chart="throughput"] rect').count() == 1  # one minute, three tasks
    # live: a new task moves the numbers without a reload (snapshots come at most once a second)
    gate = d.state_dir / "go"
    [running] = d.submit(TaskSpec(kind="exec", argv=[sys.executable, "-c",
                                                    f"import os, time\nwhile not os.path.exists({str(gate)!r}): "
                                                    "time.sleep(0.02)"]))
    page.wait_for_function("document.querySelector('[data-card=running] .n').innerText.trim() === '1'")
    page.wait_for_selector(f'#recent tr[data-task="{running}"]')
    shot(page, "overview")
    gate.write_text("")
    d.wait([running])
    page.wait_for_function("document.querySelector('[data-card=finished_hour] .n').innerText.trim() === '4'")
    assert page.evaluate("window.__sameDocument") is True


def test_a_submitted_task_appears_and_its_transcript_streams(supd_factory, browser_context, claude_config):
    d, url, token = start(supd_factory, claude_config)
    page = open_page(browser_context, url, token, "#/tasks")
    [tid] = d.submit(TaskSpec(kind="claude", prompt="stream slowly [[latency:2]]"))
    page.wait_for_selector(f'#tasks tr[data-task="{tid}"]')  # no reload: the stream brought it
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "tasks")
    page.click(f'#tasks tr[data-task="{tid}"] a')
    page.wait_for_selector('body[data-ready^="/task/"]')
    page.wait_for_selector("#transcript .line")  # system/init, printed before the API answers
    page.wait_for_function("document.querySelector('#transcript').innerText.includes('assistant text')",
                           timeout=30_000)
    page.wait_for_selector('[data-field="state"] [data-state="succeeded"]', timeout=30_000)
    text = page.inner_text("#transcript")
    assert "system/init" in text and "result success" in text, text
    assert "ECHO: stream slowly" in page.inner_text("#result-text")
    [done] = d.wait([tid])
    fields = page.inner_text("#fields")
    assert done.trace_id in fields and done.span_id in fields
    assert page.locator("#timeline circle").count() >= 3
    shot(page, "task")


def test_cancel_from_the_page(supd_factory, browser_context):
    d, url, token = start(supd_factory)
    [tid] = d.submit(TaskSpec(kind="exec", argv=["sleep", "60"]))
    page = open_page(browser_context, url, token, f"#/task/{tid}")
    page.wait_for_selector('[data-field="state"] [data-state="running"]')
    page.click("#cancel")
    page.wait_for_selector('[data-field="state"] [data-state="cancelled"]')
    assert "cancelling" in page.inner_text("#said") or "cancelled" in page.inner_text("#said")
    [t] = d.wait([tid])
    assert t.state == "cancelled" and t.error is not None and t.error.kind == "cancelled"
    assert page.is_disabled("#cancel")
    shot(page, "cancelled")


def test_the_hosts_page(supd_factory, browser_context):
    d, url, token = start(supd_factory)
    page = open_page(browser_context, url, token, "#/hosts")
    assert f"pid {d.proc.pid}" in page.inner_text("#this-host")
    assert page.inner_text("#fleet") == "one host (no shared journal): no fleet"
    shot(page, "hosts")
