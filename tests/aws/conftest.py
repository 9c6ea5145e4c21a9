"""Fixtures for the AWS edge: moto for Secrets Manager, SNS, EventBridge and SQS."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.aws import secrets
from tests.support import database_url_for

REGION = "eu-west-1"
ACCOUNT = "123456789012"

_empty_databases = itertools.count()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every AWS call in the test goes to moto; no real credentials can be used."""
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    secrets.reset_cache()
    with mock_aws():
        yield
    secrets.reset_cache()


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
        {"message_id": message_id, "message": message, "subject": subject}
        for message_id, message, subject, *_ in topic.sent_notifications
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
            for message in messages:
                events.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


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


@pytest.fixture
def empty_database_url(server_url: str, worker_id: str) -> Iterator[str]:
    """A database with no schema at all, for running migrations from scratch."""
    name = f"fs_empty_{worker_id}_{os.getpid()}_{next(_empty_databases)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
