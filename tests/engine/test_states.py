"""The enums every layer shares: the operators' state table, and the schema's light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flag_scheduler.engine.states import ErrorClass, State, Status
from flag_scheduler_cli.cli import SCHEDULE_STATES, _parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("status", "waiting", "error_class", "state"),
    [
        (Status.PENDING, False, None, State.PENDING),
        (Status.APPLIED, False, None, State.APPLIED),
        (Status.CANCELLED, False, None, State.CANCELLED),  # even if it was waiting once
        (Status.SUPERSEDED, False, None, State.SUPERSEDED),
        (Status.FAILED, True, ErrorClass.LOCK_TIMEOUT, State.WAITING_FOR_RETRY),
        (Status.FAILED, False, ErrorClass.LOCK_TIMEOUT, State.FAILED_PERMANENTLY),  # no retry left
        (Status.FAILED, False, ErrorClass.EXPIRED, State.EXPIRED),  # past the lateness limit
        (Status.FAILED, False, ErrorClass.UNRECORDABLE, State.FAILED_PERMANENTLY),  # parked
    ],
)
def test_operators_see_failed_split_into_waiting_permanent_and_expired(
    status: Status, waiting: bool, error_class: ErrorClass | None, state: State
) -> None:
    assert State.of(status, waiting_for_retry=waiting, error_class=error_class) is state


@pytest.mark.parametrize("state", [*State, Status.FAILED])
def test_the_cli_filters_by_every_state_it_prints_and_by_failed(state: str) -> None:
    args = _parser().parse_args(["schedules", "list", "--status", str(state)])
    assert args.status == [str(state)]
    # Plain strings: argparse prints their repr in its "invalid choice" error.
    assert all(type(choice) is str for choice in SCHEDULE_STATES)


def test_alembic_loads_the_schema_without_the_engines_dependencies() -> None:
    """migrations/schema.py builds its CHECK lists from the enums; importing them must not
    pull in the driver, pydantic, boto3 or Powertools (a migration runs without them)."""
    heavy = ("psycopg", "pydantic", "boto3", "botocore", "aws_lambda_powertools")
    script = (
        "import sys, migrations.schema;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'handler'}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
