"""A scheduler process for the ramp tests (`python -m tests.system.ramp_worker URL MODE S`):
invokes the Lambda entry point (`flag_scheduler.aws.scheduler.lambda_handler`, configured
from the environment as in AWS) again and again, as the every-minute rule would but without
the minute's wait, until no ramp is active (or S seconds), then prints its totals as JSON.
MODE `once` invokes it once; `crash` stops for good inside the transaction that applied a
stage, right after its ramp step is written, and says so on stdout: the test kills it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

# The handler reads its settings once per container: short retries, enough of them that
# random transient faults never exhaust a stage, and no outage stop (the faults are meant
# to be survived).
SETTINGS = {
    "FLAG_SCHEDULE_MAX_RETRIES": "10",
    "FLAG_SCHEDULE_BATCH_SIZE": "25",
    "FLAG_SCHEDULE_BACKOFF_BASE_SECONDS": "1",
    "FLAG_SCHEDULE_BACKOFF_CAP_SECONDS": "1",
    "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS": "1",
    "FLAG_SCHEDULE_LOCK_TIMEOUT_MS": "2000",
    "FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS": "10000",
    "FLAG_SCHEDULE_TIME_MARGIN_SECONDS": "1",
    "FLAG_SCHEDULE_OUTAGE_THRESHOLD": "0",
}
ACTIVE_RAMPS = "SELECT count(*) FROM flag_ramps WHERE state = 'active'"
EVENT = {"detail-type": "Scheduled Event", "source": "aws.events"}


def _stop_after_ramp_step() -> None:
    from flag_scheduler.engine.ramps import RampStep
    from flag_scheduler.store.repository import ScheduleRepository

    write = ScheduleRepository.write_ramp_steps

    def write_then_stop(
        self: ScheduleRepository, steps: Sequence[RampStep], *, now: datetime
    ) -> None:
        write(self, steps, now=now)
        print("ramp step written, not committed", flush=True)
        time.sleep(600)

    ScheduleRepository.write_ramp_steps = write_then_stop  # type: ignore[method-assign]


def main(url: str, mode: str, seconds: float) -> dict[str, Any]:
    os.environ.update(SETTINGS)
    os.environ["DATABASE_URL"] = url
    from flag_scheduler.aws import scheduler
    from flag_scheduler_cli.local import FakeLambdaContext

    if mode == "crash":
        _stop_after_ramp_step()
    totals: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            result = scheduler.lambda_handler(EVENT, FakeLambdaContext(timeout_seconds=60))
            totals.update({k: v for k, v in result.items() if isinstance(v, int)})
            totals["runs"] += 1
            row = conn.execute(ACTIVE_RAMPS).fetchone()
            if mode == "once" or (row is not None and row[0] == 0):
                break
            if result["claimed"] == 0:
                time.sleep(0.05)  # polling for the next due stage, as the rule would
    return dict(totals)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))), flush=True)
