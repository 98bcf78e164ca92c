"""`supctl web`: where the daemon's dashboard is, and its token.

Owns that one command. Asks the daemon for its status (so a daemon that is not running
is exit 4, as everywhere) and reads `web.json` (0600) from the state dir the daemon
reports; a file from another daemon's life (another pid) means the dashboard is off.
Registers itself with supctl's parser (`register`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proto import control as ctl
from supervisord.ctl.client import Client, expect

EXIT_OK, EXIT_FAILED = 0, 1
TOKEN_FILE = "web.json"


def dashboard(status: dict[str, Any]) -> tuple[dict[str, str] | None, str]:
    """({url, token}, "") from the daemon's web.json, or (None, why not)."""
    path = Path(str(status.get("state_dir", ""))) / TOKEN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "the dashboard is off on this daemon: set [web] port in its config (and restart it)"
    except (OSError, ValueError) as e:
        return None, f"cannot read {path}: {e}"
    if not isinstance(data, dict) or data.get("pid") != status.get("pid"):
        return None, (f"the dashboard is off on this daemon ({path} is from an earlier one): set [web] port in "
                      "its config (and restart it)")
    url, token = data.get("url"), data.get("token")
    if not isinstance(url, str) or not isinstance(token, str):
        return None, f"{path}: no url or token in it"
    return {"url": url, "token": token}, ""


def cmd_web(c: Client, a: argparse.Namespace) -> int:
    status = expect(c.request(ctl.Status()), ctl.Info).data
    found, why = dashboard(status)
    if found is None:
        print(f"supctl: {why}", file=sys.stderr)
        return EXIT_FAILED
    if a.json:
        print(json.dumps(found))
    else:
        print(f"{found['url']}?token={found['token']}")
        print(f"token: {found['token']}  (or send it as 'Authorization: Bearer TOKEN')")
    return EXIT_OK


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    cmd("web", "the dashboard's URL (with its token) when [web] port is set; --json: {url, token}", cmd_web)
