"""Writing and reading flags and schedules as a user of the contract tables does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from flag_scheduler import sql
from flag_scheduler.models import FlagState


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A schedule as an operator sees it."""

    id: UUID
    flag_key: str
    environment: str
    scheduled_at: datetime
    status: str
    updates: object
    applied_at: datetime | None
    retry_count: int
    max_retries: int | None
    next_retry_at: datetime | None
    last_error: str | None


class Catalog:
    """Flags and schedules, read and written outside the scheduler's run."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def create_flag(
        self,
        flag_key: str,
        *,
        environment: str = "production",
        enabled: bool = False,
        rollout_percentage: int = 0,
        description: str | None = None,
    ) -> UUID:
        row = self._conn.execute(
            sql.INSERT_FLAG,
            {
                "flag_key": flag_key,
                "environment": environment,
                "enabled": enabled,
                "rollout_percentage": rollout_percentage,
                "description": description,
            },
        ).fetchone()
        assert row is not None
        return UUID(str(row[0]))

    def create_schedule(
        self,
        flag_id: UUID,
        scheduled_at: datetime,
        updates: object,
        *,
        max_retries: int | None = None,
    ) -> UUID:
        row = self._conn.execute(
            sql.INSERT_SCHEDULE,
            {
                "flag_id": flag_id,
                "scheduled_at": scheduled_at,
                "updates": Jsonb(updates),
                "max_retries": max_retries,
            },
        ).fetchone()
        assert row is not None
        return UUID(str(row[0]))

    def schedules(self) -> list[ScheduleView]:
        return [ScheduleView(*row) for row in self._conn.execute(sql.LIST_SCHEDULES)]

    def flags(self) -> list[FlagState]:
        return [FlagState(*row) for row in self._conn.execute(sql.LIST_FLAGS)]
