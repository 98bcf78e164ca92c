"""Finding the Claude Code CLI: a configured command, `claude` on PATH, else the binary
bundled in the `claude-agent-sdk` wheel (shared/CLAUDE_CLI.md). Owns nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ClaudeCommand:
    argv: list[str]
    source: str  # "config", "path" or "bundled"; "missing" when none was found


def bundled_binary() -> Path | None:
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_bundled" / "claude"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve(configured: list[str], path: str | None = None) -> ClaudeCommand:
    if configured:
        return ClaudeCommand(list(configured), "config")
    found = shutil.which("claude", path=path)
    if found:
        return ClaudeCommand([found], "path")
    bundled = bundled_binary()
    if bundled:
        return ClaudeCommand([str(bundled)], "bundled")
    return ClaudeCommand(["claude"], "missing")
