"""The service's one clock and its one way of writing a moment: UTC, to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ZERO = timedelta(0)


def utc_now() -> datetime:
    """Now, truncated to the millisecond that MongoDB stores, so what we return is what we read."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and `Z` (`2026-11-28T01:22:44.192Z`); None stays None."""
    if moment is None:
        return None
    # Called for every date of every listed todo: skip the conversion when already UTC (as
    # MongoDB's are), and cut the "+00:00" rather than search for it.
    if moment.utcoffset() != ZERO:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"
