"""A password in DATABASE_URL never shows in a log line, an exception, the summary or the CLI."""

from __future__ import annotations

import io
import json
import traceback
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.errors import FlagSchedulerError
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import run_cli
from tests.system import audit

PASSWORD = "S3cr3t-p4ss@w0rd"
ENCODED = quote(PASSWORD, safe="")
BAD_URLS = [
    f"postgresql://app:{ENCODED}@127.0.0.1:1/flags",  # nothing listens there
    f"postgresql:/app:{ENCODED}@db/flags",  # one slash: libpq quotes the whole string back
    f"postgresql:/app:{PASSWORD}@db/flags",  # and not even percent-encoded
    f"postgres ql://app:{ENCODED}@db/flags",  # a space in the scheme
    f"postgresql://app:{ENCODED}@db:notaport/flags",  # a bad port
    f"postgresql://app:{ENCODED}@/flags?host=/nonexistent&sslmode=bogus",  # a bad option
    f"host=127.0.0.1 port=1 user=app password='{PASSWORD}' dbname=flags",  # key/value form
    f"host=db password={PASSWORD} nonsense",  # key/value, unparseable
]


def _leaks(text: str) -> bool:
    return PASSWORD in text or ENCODED in text or "S3cr3t" in text


def _exception_text(exc: BaseException) -> str:
    """Everything an exception can show: messages, reprs, chained causes, the traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "args", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_handler_never_shows_the_password(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)

    with pytest.raises(FlagSchedulerError) as caught:
        scheduler.lambda_handler({}, FakeLambdaContext())

    captured = capsys.readouterr()
    shown = "\n".join([_exception_text(caught.value), logs.getvalue(), captured.out, captured.err])
    assert "cannot connect to the database" in str(caught.value)
    assert "run_aborted_systemic" in logs.getvalue() or "run_failed" in logs.getvalue()
    assert not _leaks(shown), shown


@pytest.mark.parametrize("command", [["invoke"], ["schedules", "list"], ["status"]])
@pytest.mark.parametrize("url", BAD_URLS)
def test_the_cli_never_shows_the_password(url: str, command: list[str]) -> None:
    result = run_cli(*command, env={**audit.invoke_env(url), "POWERTOOLS_LOG_LEVEL": "INFO"})
    assert result.returncode != 0
    assert "flag-scheduler: error:" in result.stderr
    assert not _leaks(result.stdout + result.stderr), result.stderr


def _with_password(database_url: str) -> str:
    # The test server trusts local connections, so the password is carried but unused.
    return database_url.replace("postgresql://postgres", f"postgresql://postgres:{ENCODED}", 1)


def test_a_working_run_shows_no_password_in_summary_or_logs(
    database_url: str,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not database_url.startswith("postgresql://postgres"):
        pytest.skip("needs the embedded server's postgres@ URL form")
    flag = catalog.create_flag("banner")
    catalog.create_schedule(flag, datetime.now(UTC) - timedelta(minutes=1), {"enabled": True})
    monkeypatch.setenv("DATABASE_URL", _with_password(database_url))
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")

    summary = scheduler.lambda_handler({}, FakeLambdaContext())

    assert summary["applied"] == 1
    captured = capsys.readouterr()
    assert not _leaks(json.dumps(summary) + logs.getvalue() + captured.out + captured.err)
    result = run_cli(
        "invoke",
        "--progress",
        env=audit.invoke_env(_with_password(database_url), POWERTOOLS_LOG_LEVEL="DEBUG"),
    )
    assert result.returncode == 0, result.stderr
    assert not _leaks(result.stdout + result.stderr)
