"""A half-open connection (the peer vanished without closing, as in an RDS failover) fails
within seconds, not at the Lambda timeout: real packet loss in a private network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.store import connection

ROOT = Path(__file__).resolve().parents[2]
# The probe's own watchdog reports a hang after 20 s; a bounded failure is well below.
BOUND_SECONDS = 15


def _can_make_a_network_namespace() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_make_a_network_namespace(),
    reason="needs root, unshare and ip to lose packets in a private network namespace",
)
def test_a_half_open_connection_fails_within_seconds(database_url: str) -> None:
    parts = conninfo_to_dict(database_url)
    socket_dir, dbname = str(parts["host"]), str(parts["dbname"])
    if not socket_dir.startswith("/"):
        pytest.skip("the probe reaches the server through its Unix socket")
    port = str(parts.get("port") or 5432)
    probe = [sys.executable, "-m", "tests.system.half_open_probe", socket_dir, port, dbname]
    result = subprocess.run(
        ["unshare", "--net", *probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    cases = {line["case"]: line for line in map(json.loads, result.stdout.splitlines()) if line}
    print(json.dumps(cases, indent=1))  # the figures, shown by pytest -rP
    assert result.returncode == 0, (cases, result.stderr)
    # A query sent into the black hole: nothing acknowledges it, tcp_user_timeout fires.
    sent = cases["query sent into a black hole"]
    assert sent["outcome"].startswith("DatabaseUnavailable"), sent
    assert sent["seconds"] < BOUND_SECONDS, sent
    # A query the server got, whose answer never comes: keepalive probes go unanswered.
    waiting = cases["waiting for an answer"]
    assert waiting["outcome"].startswith("OperationalError"), waiting
    assert waiting["seconds"] < BOUND_SECONDS, waiting


def test_every_connection_carries_keepalives_and_a_user_timeout(database_url: str) -> None:
    with connection.connect(database_url) as conn:
        given = conn.info.get_parameters()
    # libpq applies them to TCP connections (every one in AWS); a Unix socket ignores them.
    assert {name: given.get(name) for name in connection.TcpLiveness().params()} == {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
