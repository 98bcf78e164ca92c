"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the dashboard.

Without the browser these tests are skipped, and say so plainly (`make test` also prints
a line before the run). The flags keep a machine without internet from stalling chromium
on refused connections; each run gets a fresh profile directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
NO_BROWSER = f"no browser: {CHROMIUM} is missing (apt-get install -y chromium), so the dashboard's browser tests are SKIPPED"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_context() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(NO_BROWSER)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="supd-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                viewport={"width": 1100, "height": 760})
            ctx.set_default_timeout(15_000)
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def shot(page: Any, name: str) -> None:
    """A screenshot of the page as the test saw it, under tests/browser/screenshots/."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
