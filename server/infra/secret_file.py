"""The token-signing secret kept in a file: created once (mode 0600), shared by every instance."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class SecretFileError(Exception):
    """The secret file cannot be read or created; the message is one line for the operator."""


def load_or_create_secret(path: Path) -> str:
    """Read the signing secret kept in `path`, creating it (mode 0600) on first run."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(48)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        except FileExistsError:
            # Another instance created it first: use theirs, so all instances sign alike.
            return load_or_create_secret(path)
        except OSError as exc:
            raise SecretFileError(f"cannot create secret file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {path}: {exc.strerror}") from None
    return secret
