"""What the scripts share: settings from the same sources as the server, one-line failures."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from server.infra.settings import Settings, SettingsError, load_settings


def script_settings(name: str, argv: Sequence[str]) -> Settings:
    """The server's settings (command line, TODO_* environment, conf file), or exit with a line."""
    try:
        return load_settings(argv)
    except SettingsError as exc:
        sys.exit(f"{name}: {exc}")
