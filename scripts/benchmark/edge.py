"""Turning the nginx edge on and off, the target's way (`todo-stack --var <var> edge on|off` on
one machine, `scripts/lab edge on|off` in the lab).

Where that fails (a stack without the edge's Lua modules), the benchmark marks the edge rows
"edge n/a" and measures the first page once, as the stack serves it.
"""

from __future__ import annotations

import json
import sys
import time

from scripts.benchmark.target import Target
from scripts.stack.config import StackConfig

SETTLE_SECONDS = 1.0


class Edge:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.original = original_state(target.cfg)
        self.current: str | None = None
        self.available = self.switch(self.original or "on")

    def switch(self, state: str) -> bool:
        """True once the stack's edge is `state` ("on" or "off")."""
        if state == self.current:
            return True
        failure = self.target.switch_edge(state)
        if failure is not None:
            print(f"edge {state} failed: {failure} -- edge rows n/a", file=sys.stderr)
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
