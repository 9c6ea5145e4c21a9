"""Turning command results into human tables or JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from flag_scheduler.engine.durations import duration_text


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and UUIDs as plain JSON values (times in UTC, ISO 8601)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2, sort_keys=False)


def when(moment: datetime | None) -> str:
    """A moment in UTC, to the second."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """A duration to the second, as the engine's messages write one (2d, 1h30m, 4m05s)."""
    if seconds is None:
        return "-"
    return duration_text(round(seconds))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Left-aligned columns, a header line, two spaces between columns."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def updates_text(updates: object) -> str:
    if isinstance(updates, Mapping):
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in updates.items()) or "{}"
    return json.dumps(updates)


def more_line(found: int, limit: int) -> str:
    """For a list cut at `limit` (`found`: up to limit + 1 read), the line that says so."""
    if found <= limit:
        return ""
    return f"\n(the first {limit} shown; more match: --limit N shows more, or narrow the filter)"
