"""The CLI installed outside the checkout (`uv tool install '.[cli]'`, as an operator would)
migrates, demos and invokes from an empty folder: nothing may be found through the checkout.

Needs the package index (or uv's cache) to install the dependencies, pinned to the dev lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flag_scheduler

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (it is a dev dependency: make install)")
    return found


def _install(base: Path) -> dict[str, Path]:
    """A tool install of this checkout in its own folders under `base`; returns them."""
    env = {
        **_clean_environ(),
        "UV_TOOL_DIR": str(base / "tools"),
        "UV_TOOL_BIN_DIR": str(base / "bin"),
    }
    completed = subprocess.run(
        [_uv(), "tool", "install", "--python", sys.executable, "--constraints",
         str(ROOT / "requirements-dev.lock"), f"{ROOT}[cli]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return {"bin": base / "bin", "tools": base / "tools", "base": base}


def _clean_environ() -> dict[str, str]:
    """This process's environment without what would point the CLI back at the checkout or
    at the test database."""
    dropped = {"DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "FLAG_SCHEDULER_DATA_DIR"}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _run(installed: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    empty = installed["base"] / "empty"
    empty.mkdir(exist_ok=True)
    env = {
        **_clean_environ(),
        "PATH": f"{installed['bin']}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLAG_SCHEDULER_DATA_DIR": str(installed["base"] / "pgdata"),
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    return subprocess.run(
        ["flag-scheduler", *args],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_installed_outside_the_checkout_works_from_an_empty_folder(
    tmp_path: Path,
) -> None:
    # One test, one install: two xdist workers building the same checkout at once would
    # share setuptools' build/ folder.
    installed = _install(tmp_path)
    _check_the_installed_package_is_not_the_checkout(installed)
    _check_version_is_the_package_version(installed)
    _check_migrate_sql_prints_every_table_without_a_database(installed)
    _check_migrate_invoke_and_demo_work_from_an_empty_folder(installed)


def _check_the_installed_package_is_not_the_checkout(installed: dict[str, Path]) -> None:
    python = installed["tools"] / "flag-scheduler" / "bin" / "python"
    completed = subprocess.run(
        [str(python), "-c", "import flag_scheduler, migrations;"
         " print(flag_scheduler.__file__); print(migrations.__file__)"],
        cwd=installed["base"],
        env=_clean_environ(),
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    for location in completed.stdout.split():
        assert Path(location).is_relative_to(installed["tools"]), location


def _check_version_is_the_package_version(installed: dict[str, Path]) -> None:
    completed = _run(installed, "--version")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"flag-scheduler {flag_scheduler.__version__}"


def _check_migrate_sql_prints_every_table_without_a_database(installed: dict[str, Path]) -> None:
    completed = _run(installed, "migrate", "--sql")
    assert completed.returncode == 0, completed.stderr
    for table in ("feature_flags", "feature_flag_schedules", "alembic_version"):
        assert f"CREATE TABLE {table} " in completed.stdout


def _check_migrate_invoke_and_demo_work_from_an_empty_folder(installed: dict[str, Path]) -> None:
    migrated = _run(installed, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database is at the newest schema" in migrated.stdout
    invoked = _run(installed, "invoke")
    assert invoked.returncode == 0, invoked.stderr
    demo = _run(installed, "demo")
    assert demo.returncode == 0, demo.stderr
    assert "FAILED PERMANENTLY" in demo.stdout
    assert not any((installed["base"] / "empty").iterdir())
