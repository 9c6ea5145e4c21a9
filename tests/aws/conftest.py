"""Fixtures for the AWS edge: moto for Secrets Manager, SNS, EventBridge and SQS."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.aws import secrets
from flag_scheduler.store.catalog import Catalog

REGION = "eu-west-1"
ACCOUNT = "123456789012"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every AWS call in the test goes to moto; no real credentials can be used."""
    from moto import mock_aws

    _fake_credentials(monkeypatch)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    secrets.reset_cache()
    with mock_aws():
        yield
    secrets.reset_cache()


def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on a free port that other processes can reach too; AWS_ENDPOINT_URL
    (inherited by subprocesses) points every client at it. Yields its URL."""
    from moto.server import ThreadedMotoServer

    _fake_credentials(monkeypatch)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    _reset_moto(url)
    yield url
    _reset_moto(url)
    server.stop()


def _reset_moto(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dataclass
class SilentEndpoint:
    """A TCP server that accepts every connection and never sends a byte back."""

    url: str
    connections: list[socket.socket]


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    endpoint = SilentEndpoint(f"http://127.0.0.1:{listener.getsockname()[1]}", [])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            endpoint.connections.append(connection)  # held open, never read or answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join()
    for connection in endpoint.connections:
        connection.close()
    listener.close()


def client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


def rds_secret_document(database_url: str, **overrides: Any) -> dict[str, Any]:
    """The RDS-format secret for a test database (host is the embedded server's socket dir)."""
    with psycopg.connect(database_url) as conn:
        port = conn.info.port
    parts = conninfo_to_dict(database_url)
    document: dict[str, Any] = {
        "engine": "postgres",
        "host": parts.get("host"),
        "port": port,
        "username": parts.get("user") or "postgres",
        "password": parts.get("password") or "",
        "dbname": parts.get("dbname"),
    }
    document.update(overrides)
    return {key: value for key, value in document.items() if value is not None}


def create_secret(document: object, name: str = "flag-scheduler/db") -> str:
    """Store a secret in moto; returns its ARN."""
    body = document if isinstance(document, str) else json.dumps(document)
    response = client("secretsmanager").create_secret(Name=name, SecretString=body)
    return str(response["ARN"])


def create_topic(name: str = "flag-scheduler-alerts") -> str:
    return str(client("sns").create_topic(Name=name)["TopicArn"])


def sent_notifications(topic_arn: str) -> list[dict[str, Any]]:
    """Every message published to the topic, as SNS stored it."""
    from moto.sns.models import sns_backends

    topic = sns_backends[ACCOUNT][REGION].topics[topic_arn]
    return [
        {"message_id": message_id, "message": message, "subject": subject, "attributes": attrs}
        for message_id, message, subject, attrs, *_ in topic.sent_notifications
    ]


@dataclass(frozen=True)
class EventTap:
    """A bus whose FlagChanged events are copied to an SQS queue by a rule."""

    bus_name: str
    queue_url: str

    def received(self) -> list[dict[str, Any]]:
        sqs = client("sqs")
        events: list[dict[str, Any]] = []
        while True:
            response = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = response.get("Messages", [])
            if not messages:
                return events
            events += [json.loads(message["Body"]) for message in messages]
            sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]}
                    for n, message in enumerate(messages)
                ],
            )


def create_event_tap(bus_name: str = "flag-events") -> EventTap:
    events, sqs = client("events"), client("sqs")
    events.create_event_bus(Name=bus_name)
    queue_url = sqs.create_queue(QueueName=f"{bus_name}-tap")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name="flag-changed",
        EventBusName=bus_name,
        EventPattern=json.dumps({"source": ["flag-scheduler"], "detail-type": ["FlagChanged"]}),
    )
    events.put_targets(
        Rule="flag-changed", EventBusName=bus_name, Targets=[{"Id": "tap", "Arn": queue_arn}]
    )
    return EventTap(bus_name=bus_name, queue_url=queue_url)


def due_now(catalog: Catalog, key: str, updates: object) -> UUID:
    """A new flag `key` with one schedule of `updates` due a minute ago."""
    flag = catalog.create_flag(key)
    return catalog.create_schedule(flag, datetime.now(UTC) - timedelta(minutes=1), updates)


def outbox_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(message_id, kind, attempts) of every message still waiting, oldest first."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT message_id, kind, attempts FROM notification_outbox ORDER BY id"
        )
    ]


def emf_record(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The one EMF record the handler printed to stdout."""
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    # (a process's first invocation also writes the ColdStart metric's own line)
    (emf,) = [line for line in lines if "_aws" in line and "ColdStart" not in line]
    return emf
