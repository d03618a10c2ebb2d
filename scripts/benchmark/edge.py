"""Turning the nginx edge on and off through `todo-stack --var <var> edge on|off`.

The edge branch builds that command; where it does not exist (or fails), the benchmark marks
the edge rows "edge n/a" and measures the first page once, as the stack serves it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from scripts.stack.config import StackConfig

SETTLE_SECONDS = 1.0


class Edge:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.original = original_state(cfg)
        self.current: str | None = None
        self.available = self.switch(self.original or "on")

    def switch(self, state: str) -> bool:
        """True once the stack's edge is `state` ("on" or "off")."""
        if state == self.current:
            return True
        result = subprocess.run(
            [sys.executable, "-m", "scripts.stack.commands", "--var", str(self.cfg.root),
             "edge", state], capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            print(f"todo-stack edge {state} failed: {(result.stderr or result.stdout).strip()}"
                  " -- edge rows n/a", file=sys.stderr)
            return False
        time.sleep(SETTLE_SECONDS)  # old nginx workers finish with the old config
        self.current = state
        return True

    def restore(self) -> None:
        if self.available:
            self.switch(self.original or "on")


def original_state(cfg: StackConfig) -> str | None:
    """The edge setting saved in stack.json ("on"/"off", or a boolean), if any."""
    try:
        saved = json.loads(cfg.path("stack.json").read_text()).get("edge")
    except (OSError, ValueError):
        return None
    if isinstance(saved, bool):
        return "on" if saved else "off"
    return saved if saved in ("on", "off") else None
