"""Every environment variable the code reads is in the README's configuration table, with its
default and range: the variables are found in the code, so a new one without a row fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flag_scheduler import config
from flag_scheduler.api import auth
from flag_scheduler.aws import settings as aws_settings
from flag_scheduler.config import Settings
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


def test_every_integer_setting_has_its_default_and_range() -> None:
    table = _table()
    for variable in config._INT_VARIABLES:
        assert variable.env in table, f"{variable.env} is not in the README's table"
        default, allowed = table[variable.env]
        assert default == str(Settings.model_fields[variable.field].default), variable.env
        assert allowed.startswith(f"{variable.low}..{variable.high}"), variable.env


def test_every_aws_setting_is_listed() -> None:
    table = _table()
    names = _named_constants(aws_settings)
    assert names >= {"DB_SECRET_ARN", "DB_HOST", "DB_NAME", "ALERT_TOPIC_ARN"}
    missing = names - table.keys()
    assert not missing, f"not in the README's table: {sorted(missing)}"
    default, allowed = table[aws_settings.DB_SECRET_MAX_AGE_SECONDS]
    assert default == str(aws_settings.AwsSettings.db_secret_max_age_seconds)
    low, high = aws_settings._MAX_AGE_RANGE
    assert allowed.startswith(f"{low}..{high}")


@pytest.mark.parametrize(
    "variable",
    sorted(
        _powertools_variables()
        | _named_constants(config)
        | {local.DATA_DIR_VARIABLE, config.POWERTOOLS_LOG_LEVEL, serve.DEV_TOKEN_VARIABLE}
        | {
            auth.READ_SCOPE_VARIABLE,
            auth.WRITE_SCOPE_VARIABLE,
            auth.SCOPE_CLAIM_VARIABLE,
            auth.ACTOR_CLAIMS_VARIABLE,
        }
    ),
)
def test_every_other_variable_is_listed(variable: str) -> None:
    assert variable in _table()
