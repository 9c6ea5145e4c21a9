"""The one Alembic runner finds the migrations as a package, not through a checkout's files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from flag_scheduler.errors import ConfigurationError
from flag_scheduler.store import alembic_runner

ROOT = Path(__file__).resolve().parents[2]


def test_the_migrations_are_found_as_the_importable_package() -> None:
    folder = alembic_runner.migrations_folder()
    assert (folder / "env.py").is_file()
    revisions = sorted(p.name for p in (folder / "versions").glob("0*.py"))
    assert revisions == sorted(p.name for p in (ROOT / "migrations" / "versions").glob("0*.py"))


def test_another_projects_migrations_package_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = tmp_path / "migrations"
    foreign.mkdir()
    (foreign / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(
        "migrations", foreign / "__init__.py", submodule_search_locations=[str(foreign)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "migrations", module)

    with pytest.raises(ConfigurationError, match=r"migrations package .* is not installed"):
        alembic_runner.migrations_folder()


def test_the_config_needs_no_alembic_ini_and_keeps_percent_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "100%" / "migrations"
    monkeypatch.setattr(alembic_runner, "migrations_folder", lambda: folder)
    url = "postgresql://user:p%40ss%25@/db?host=/tmp"

    config = alembic_runner.alembic_config(url)

    assert config.config_file_name is None
    assert config.get_main_option("script_location") == str(folder)
    assert config.cmd_opts is not None
    assert config.cmd_opts.x == [f"url={url}"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@/db", "postgresql+psycopg://u@/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_plain_postgresql_urls_get_the_driver_named(url: str, expected: str) -> None:
    assert alembic_runner.driver_url(url) == expected
