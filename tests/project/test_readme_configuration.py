"""Every environment variable the code reads is in the README's configuration table, with its
default and range: the variables are found in the code, so a new one without a row fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flag_scheduler.aws import settings
from flag_scheduler.aws.settings import PROCESS_SETTINGS, Variable
from flag_scheduler_cli import local, serve

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "handler" / "flag_scheduler"
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|([^|]*)\|([^|]*)\|", re.MULTILINE)


def _table() -> dict[str, tuple[str, str]]:
    """The configuration section's rows: variable -> (default, range)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: (m[2].strip(), m[3].strip()) for m in _ROW.finditer(section)}


def _named_constants(module: object) -> set[str]:
    """Module constants naming an environment variable (written `NAME = "NAME"`)."""
    return {name for name, value in vars(module).items() if name.isupper() and value == name}


def _powertools_variables() -> set[str]:
    """POWERTOOLS_* variables the code names (in string literals) or the template sets."""
    found = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"[\"'](POWERTOOLS_[A-Z_]+)[\"']", path.read_text())
    }
    template = (ROOT / "template.yaml").read_text()
    return found | set(re.findall(r"^\s+(POWERTOOLS_[A-Z_]+):", template, re.MULTILINE))


def _settings_variables() -> list[Variable]:
    """Every variable some process's settings read, once each (DATABASE_URL is shared)."""
    found: dict[str, Variable] = {}
    for model in PROCESS_SETTINGS:
        for variable in model.variables():
            # A variable two processes read means the same to both: one README row.
            assert found.setdefault(variable.name, variable) == variable, variable.name
    return sorted(found.values(), key=lambda v: v.name)


@pytest.mark.parametrize("variable", _settings_variables(), ids=lambda v: v.name)
def test_every_setting_has_its_row_with_its_default_and_range(variable: Variable) -> None:
    table = _table()
    assert variable.name in table, f"{variable.name} is not in the README's table"
    default, allowed = table[variable.name]
    if variable.range is None:
        assert default == ("—" if variable.default is None else variable.default), variable.name
    else:
        assert default == str(variable.default), variable.name
        low, high = variable.range
        assert allowed.startswith(f"{low}..{high}"), variable.name


def test_the_settings_of_every_process_are_found() -> None:
    names = {variable.name for variable in _settings_variables()}
    assert {
        "DATABASE_URL",
        "DB_SECRET_ARN",
        "FLAG_SCHEDULE_MAX_RETRIES",
        "ALERT_TOPIC_ARN",
        "FLAG_SCHEDULER_API_READ_SCOPE",
        "FLAG_SCHEDULER_API_ACTOR_CLAIMS",
    } <= names


@pytest.mark.parametrize(
    "variable",
    sorted(
        _powertools_variables()
        | _named_constants(settings)
        | {local.DATA_DIR_VARIABLE, settings.POWERTOOLS_LOG_LEVEL, serve.DEV_TOKEN_VARIABLE}
    ),
)
def test_every_other_variable_is_listed(variable: str) -> None:
    assert variable in _table()
