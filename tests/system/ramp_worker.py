"""A scheduler process for the ramp tests (`python -m tests.system.ramp_worker URL MODE`):
runs the engine with the real clock until no ramp is active (or a deadline), then prints
its totals as JSON. MODE `crash` stops for good inside the transaction that applied a
stage, right after its ramp step is written, and says so on stdout: the test kills it."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.ramps import RampStep
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.store import connection
from flag_scheduler.store.repository import ScheduleRepository

# Short retries, enough of them that random transient faults never exhaust a stage, and no
# outage stop: the faults are meant to be survived.
POLICY = RunPolicy(
    max_retries=10,
    batch_size=25,
    time_margin_ms=1_000,
    backoff=BackoffPolicy(base_seconds=0.2, cap_seconds=0.5, jitter_seconds=0.2),
    lock_timeout_ms=2_000,
    statement_timeout_ms=10_000,
    outage_threshold=0,
)
ACTIVE_RAMPS = "SELECT count(*) FROM flag_ramps WHERE state = 'active'"


class _StopAfterRampStep(ScheduleRepository):
    def write_ramp_steps(self, steps: Sequence[RampStep], *, now: datetime) -> None:
        super().write_ramp_steps(steps, now=now)
        print("ramp step written, not committed", flush=True)
        time.sleep(600)


def main(url: str, mode: str, seconds: float) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    with connection.connect(url) as conn:
        repository = (_StopAfterRampStep if mode == "crash" else ScheduleRepository)(conn)
        while time.monotonic() < deadline:
            summary = process_due_schedules(
                repository,
                NullNotifier(),
                clock=lambda: datetime.now(UTC),
                remaining_ms=lambda: 60_000,
                policy=POLICY,
            )
            totals.update({k: v for k, v in summary.as_dict().items() if isinstance(v, int)})
            totals["runs"] += 1
            row = conn.execute(ACTIVE_RAMPS).fetchone()
            if mode == "once" or (row is not None and row[0] == 0):
                break
            if summary.claimed == 0:
                time.sleep(0.05)  # polling for the next due stage, as the cron would
    return dict(totals)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))), flush=True)
