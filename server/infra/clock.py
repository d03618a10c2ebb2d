"""The service's one clock and its one way of writing a moment: UTC, to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, truncated to the millisecond that MongoDB stores, so what we return is what we read."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and `Z` (`2026-11-28T01:22:44.192Z`); None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
