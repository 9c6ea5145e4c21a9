"""Which connection failures are a refused login (configuration) and which an outage."""

from __future__ import annotations

import pytest

from flag_scheduler.store.connection import login_refused

PREFIX = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        # the server: wrong password (28P01), no pg_hba entry or unknown role (28000)
        ('FATAL:  password authentication failed for user "scheduler"', True),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.1.9", user "u", database "d"',
            True,
        ),
        ('FATAL:  role "scheduler" does not exist', True),
        # the client refusing the server: require_auth, channel_binding, certificates
        (
            'authentication method requirement "scram-sha-256" failed: server requested a'
            " cleartext password",
            True,
        ),
        ("channel binding required, but server authenticated client without channel binding", True),
        ("SSL error: certificate verify failed", True),
        ('server certificate for "db.example" does not match host name "10.0.0.5"', True),
        ('root certificate file "/var/task/x.pem" does not exist', True),
        ("server does not support SSL, but SSL was required", True),
        # outages: the database is down, unreachable or restarting
        ("Connection refused\n\tIs the server running on that host?", False),
        ("timeout expired", False),
        ('could not translate host name "db.example" to address: Name or service not known', False),
        ("FATAL:  the database system is starting up", False),
        ("server closed the connection unexpectedly", False),
    ],
)
def test_refused_logins_are_told_from_outages(message: str, refused: bool) -> None:
    assert login_refused(PREFIX + message) is refused
