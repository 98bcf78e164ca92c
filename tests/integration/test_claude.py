"""Real Claude Code CLI tasks through supd, against the project's stand-in Messages API."""

from __future__ import annotations

import json
import uuid

import pytest

from proto.task import TaskSpec

pytestmark = pytest.mark.timeout(120)


def test_eight_claude_tasks_on_four_children_each_reach_the_api_once(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=4, config=claude_config).start()
    run = uuid.uuid4().hex[:8]
    prompts = [f"task {i} of run {run}" for i in range(8)]
    ids = d.submit(*[TaskSpec(kind="claude", prompt=p, model="claude-sonnet-4-5") for p in prompts])
    tasks = d.wait(ids, timeout_s=100)
    for prompt, task in zip(prompts, tasks):
        assert task.state == "succeeded", (task.error, d.log()[-2000:])
        assert task.result == f"ECHO: {prompt}"
        assert task.usage is not None and task.usage.input_tokens > 0 and task.usage.output_tokens > 0
        assert task.cost_usd is not None and task.cost_usd > 0
        assert task.session_id and task.num_turns == 1
        assert task.exit_code == 0
    by_prompt = fakeapi.stats()["by_prompt"]
    assert [by_prompt.get(p) for p in prompts] == [1] * 8, "each task reaches the API exactly once"
    assert len({t.child for t in tasks}) == 4


def test_claude_auth_failure_is_classified_and_not_retried(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    prompt = f"[[status:401]] {uuid.uuid4().hex[:8]}"
    (task,) = d.wait(d.submit(TaskSpec(kind="claude", prompt=prompt, retries=3)), timeout_s=60)
    assert task.state == "failed" and task.error.kind == "auth"
    assert task.attempts == 1
    assert fakeapi.stats()["by_prompt"].get(prompt) == 1


def test_supctl_submit_claude_wait_json(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    prompt = f"hello from supctl {uuid.uuid4().hex[:8]}"
    r = d.supctl("submit", "--wait", "--json", prompt)
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    assert task["kind"] == "claude" and task["result"] == f"ECHO: {prompt}"
    assert {"input_tokens", "output_tokens"} <= task["usage"].keys()
    assert task["cost_usd"] > 0 and task["session_id"] and task["num_turns"] == 1


def test_claude_without_credentials_fails_as_auth_without_calling_the_api(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    prompt = f"no key {uuid.uuid4().hex[:8]}"
    (task,) = d.wait(d.submit(TaskSpec(kind="claude", prompt=prompt, env={"ANTHROPIC_API_KEY": ""}, retries=2)),
                     timeout_s=60)
    assert task.state == "failed" and task.error.kind == "auth", task.error
    assert task.attempts == 1, "not retryable"
    assert fakeapi.stats()["by_prompt"].get(prompt) is None
