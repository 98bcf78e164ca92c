"""Checks on what clients submit, before anything is accepted. Pure: no I/O.

Owns the rules for a well-formed `TaskSpec` and the size limits a message may carry.
Each problem is one message that names the field (and the limit, when one is hit).
The numeric bounds are `proto.task`'s: the decoder enforces them on the wire, and these
checks say the same for specs built in-process.
"""

from __future__ import annotations

from proto import task as pt
from proto.task import TaskSpec
from supervisord.config import LimitsConfig

_PERMISSION_MODES = {"default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"}


def task_problem(spec: TaskSpec, limits: LimitsConfig) -> str | None:
    """The first thing wrong with `spec`, or None if it can be accepted."""
    if spec.kind == "claude":
        if not spec.prompt or not spec.prompt.strip():
            return "claude task: prompt is missing or empty"
        if len(spec.prompt.encode()) > limits.max_prompt_bytes:
            return f"prompt: {len(spec.prompt.encode())} bytes exceeds limits.max_prompt_bytes={limits.max_prompt_bytes}"
        if spec.argv:
            return "claude task: argv is only for exec tasks"
    elif spec.kind == "exec":
        if not spec.argv or not spec.argv[0]:
            return "exec task: argv is missing or empty"
        size = sum(len(a.encode()) + 1 for a in spec.argv)
        if size > limits.max_argv_bytes:
            return f"argv: {size} bytes exceeds limits.max_argv_bytes={limits.max_argv_bytes}"
        if any("\0" in a for a in spec.argv):
            return "argv: contains a NUL byte"
        if spec.prompt is not None:
            return "exec task: prompt is only for claude tasks (give the command as argv)"
    for name, high in (("timeout_s", pt.MAX_TIMEOUT_S), ("stall_timeout_s", pt.MAX_TIMEOUT_S),
                       ("max_budget_usd", pt.MAX_BUDGET_USD)):
        value = getattr(spec, name)
        if value is not None and not 0 < value <= high:
            return f"{name}: must be > 0 and <= {high:.15g}, got {value}"
    for name, low, high in (("retries", 0, pt.MAX_RETRIES), ("max_turns", 1, pt.MAX_TURNS),
                            ("priority", pt.MIN_PRIORITY, pt.MAX_PRIORITY)):
        value = getattr(spec, name)
        if value is not None and not low <= value <= high:
            return f"{name}: must be between {low} and {high}, got {value}"
    if spec.cwd is not None and (len(spec.cwd.encode()) > pt.MAX_PATH_CHARS or "\0" in spec.cwd):
        return f"cwd: must be a path of at most {pt.MAX_PATH_CHARS} bytes without NUL"
    if spec.model is not None and len(spec.model) > pt.MAX_NAME_CHARS:
        return f"model: longer than {pt.MAX_NAME_CHARS} characters"
    for name in ("allowed_tools", "disallowed_tools"):
        tools = getattr(spec, name)
        if tools is not None and (len(tools) > pt.MAX_TOOLS or any(len(t) > pt.MAX_NAME_CHARS for t in tools)):
            return f"{name}: at most {pt.MAX_TOOLS} names of at most {pt.MAX_NAME_CHARS} characters"
    if spec.append_system_prompt is not None and len(spec.append_system_prompt.encode()) > limits.max_prompt_bytes:
        return f"append_system_prompt: exceeds limits.max_prompt_bytes={limits.max_prompt_bytes}"
    if spec.permission_mode is not None and spec.permission_mode not in _PERMISSION_MODES:
        return f"permission_mode: unknown mode {spec.permission_mode!r}"
    env_size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in spec.env.items())
    if env_size > limits.max_env_bytes:
        return f"env: {env_size} bytes exceeds limits.max_env_bytes={limits.max_env_bytes}"
    if any(not k or "=" in k or "\0" in k or "\0" in v for k, v in spec.env.items()):
        return "env: names must be non-empty without '=' or NUL"
    if spec.input is not None and len(spec.input.encode()) > limits.max_prompt_bytes:
        return f"input: exceeds limits.max_prompt_bytes={limits.max_prompt_bytes}"
    return None


def batch_problem(specs: list[TaskSpec], limits: LimitsConfig) -> str | None:
    if not specs:
        return "submit: no tasks"
    if len(specs) > limits.max_batch:
        return f"submit: {len(specs)} tasks exceeds limits.max_batch={limits.max_batch}"
    for i, spec in enumerate(specs):
        problem = task_problem(spec, limits)
        if problem:
            return problem if len(specs) == 1 else f"task {i + 1}: {problem}"
    return None
