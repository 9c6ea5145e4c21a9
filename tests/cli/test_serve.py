"""`flag-scheduler serve`: the API's function over real HTTP, with the development token."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.api import runtime
from flag_scheduler.api.app import lambda_handler
from flag_scheduler_cli import serve
from tests.cli.serving import DEV_TOKEN, request, serve_command, serving
from tests.support import cli_env

ROOT = Path(__file__).resolve().parents[2]

PROBLEM = "application/problem+json"


def _content_type(headers: dict[str, str]) -> str:
    return {k.lower(): v for k, v in headers.items()}.get("content-type", "")


# --- over real HTTP against a serve subprocess ---


@pytest.mark.slow
def test_without_a_development_token_every_request_is_401(database_url: str) -> None:
    with serving(database_url, token=None) as served:
        for token in (None, "anything"):
            response = request(served, "GET", "/status", token=token)
            assert response.status == 401
            assert _content_type(response.headers) == PROBLEM
            assert response.body["type"] == "urn:flag-scheduler:problem:unauthenticated"
            assert "FLAG_SCHEDULER_DEV_TOKEN is not set" in response.body["detail"]
        assert request(served, "GET", "/openapi.json", token=None).status == 401
    assert any("every request is answered 401" in line for line in served.stderr)


@pytest.mark.slow
def test_a_wrong_or_missing_token_is_401_and_the_right_one_reads_and_writes(
    database_url: str,
) -> None:
    with serving(database_url) as served:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {DEV_TOKEN}"},
            {"Authorization": f"Bearer {DEV_TOKEN}x"},
        ):
            response = request(served, "POST", "/flags", token=None, headers=headers, body={})
            assert response.status == 401, headers
            assert _content_type(response.headers) == PROBLEM
            assert response.headers.get("WWW-Authenticate") == "Bearer"

        status = request(served, "GET", "/status")
        assert status.status == 200
        nowhere = request(served, "GET", "/nowhere")  # no route: API Gateway's own 404
        assert (nowhere.status, nowhere.body) == (404, {"message": "Not Found"})
        assert status.body["due_now"] == 0

        created = request(
            served,
            "POST",
            "/flags",
            body={"flag_key": "served-banner", "environment": "staging", "enabled": True},
        )
        assert created.status == 201, created.body
        assert created.body["flag_key"] == "served-banner"
        got = request(served, "GET", "/flags/served-banner?environment=staging")
        assert got.status == 200
        assert got.body["enabled"] is True
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT enabled, created_by FROM feature_flags WHERE flag_key = 'served-banner'"
        ).fetchone()
    assert row == (True, "dev")  # the development token's subject is the actor


@pytest.mark.slow
def test_a_body_that_is_not_utf8_is_refused_not_a_500(database_url: str) -> None:
    """API Gateway hands such a body over base64-encoded (isBase64Encoded), as serve does."""
    with serving(database_url) as served:
        for raw in (b"\xff", b'{"flag_key": "caf\xe9"}'):
            response = request(served, "POST", "/flags", raw=raw)
            assert response.status in (400, 422), (raw, response.body)
            assert _content_type(response.headers) == PROBLEM


@pytest.mark.slow
def test_the_development_token_grants_the_scopes_the_api_asks_for(database_url: str) -> None:
    with serving(
        database_url,
        FLAG_SCHEDULER_API_READ_SCOPE="flags/read",
        FLAG_SCHEDULER_API_WRITE_SCOPE="flags/write",
    ) as served:
        assert request(served, "GET", "/status").status == 200
        created = request(served, "POST", "/flags", body={"flag_key": "scoped"})
        assert created.status == 201, created.body


def test_serve_refuses_to_bind_beyond_loopback_with_a_development_token() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        completed = subprocess.run(
            serve_command("--host", host, "--port", "0"),
            env=cli_env(FLAG_SCHEDULER_DEV_TOKEN=DEV_TOKEN, DATABASE_URL="postgresql://nowhere"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.startswith(f"flag-scheduler: error: --host {host} is reachable")
        assert "FLAG_SCHEDULER_DEV_TOKEN" in completed.stderr
        assert "Traceback" not in completed.stderr


def test_serve_refuses_a_short_development_token() -> None:
    completed = subprocess.run(
        serve_command("--port", "0"),
        env=cli_env(FLAG_SCHEDULER_DEV_TOKEN="dev-123", DATABASE_URL="postgresql://nowhere"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.splitlines()
    assert line.startswith("flag-scheduler: error: FLAG_SCHEDULER_DEV_TOKEN must be at least 16")


def test_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        completed = subprocess.run(
            serve_command("--port", port),
            env=cli_env(DATABASE_URL="postgresql://nowhere"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert completed.returncode == 2
    assert completed.stderr == (
        f"flag-scheduler: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),  # all of 127.0.0.0/8
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),  # every interface
        ("::", False),
        ("10.0.0.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_which_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback
    if loopback:
        serve.check_bind_address(host, DEV_TOKEN)
    serve.check_bind_address(host, None)  # no token: nothing to leak


# --- the translation, in process (no database) ---


def test_a_request_becomes_the_payload_2_event_api_gateway_sends() -> None:
    event = serve.to_event(
        "POST",
        "/flags/a%20b/schedules?status=failed&status=pending&empty=",
        [
            ("Host", "127.0.0.1:8080"),
            ("X-Trace", "one"),
            ("x-trace", "two"),
            ("Cookie", "a=1; b=2"),
            ("User-Agent", "curl/8"),
        ],
        b'{"k": "v"}',
        source_ip="127.0.0.1",
        authorizer=serve.dev_authorizer(),
        now=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
    )
    assert event["version"] == "2.0"
    assert event["rawPath"] == "/flags/a%20b/schedules"
    assert event["rawQueryString"] == "status=failed&status=pending&empty="
    assert event["queryStringParameters"] == {"status": "failed,pending", "empty": ""}
    assert event["headers"]["x-trace"] == "one,two"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["body"] == '{"k": "v"}'
    assert event["isBase64Encoded"] is False
    http = event["requestContext"]["http"]
    assert (http["method"], http["sourceIp"], http["userAgent"]) == ("POST", "127.0.0.1", "curl/8")
    assert event["requestContext"]["timeEpoch"] == 1796108400000
    jwt = event["requestContext"]["authorizer"]["jwt"]
    assert jwt["claims"] == {"sub": "dev", "scope": "flags:read flags:write"}
    assert jwt["scopes"] == ["flags:read", "flags:write"]


def test_a_body_that_is_not_utf8_is_base64_encoded_and_an_empty_one_absent() -> None:
    args: dict[str, Any] = {"source_ip": "::1", "authorizer": None, "now": datetime.now(UTC)}
    binary = serve.to_event("PUT", "/x", [], b"\xff\x00", **args)
    assert (binary["body"], binary["isBase64Encoded"]) == ("/wA=", True)
    empty = serve.to_event("GET", "/x", [], b"", **args)
    assert "body" not in empty
    assert "queryStringParameters" not in empty
    assert "authorizer" not in empty["requestContext"]


def test_a_result_becomes_the_http_response() -> None:
    status, headers, body = serve.from_result(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json"},
            "cookies": ["c=1"],
            "body": "e30=",
            "isBase64Encoded": True,
        }
    )
    assert (status, body) == (201, b"{}")
    assert headers == [("Content-Type", "application/json"), ("Set-Cookie", "c=1")]


def _gateway(function: Any) -> serve.Gateway:
    return serve.Gateway(function, DEV_TOKEN, lambda: None)


def test_a_function_that_raises_is_a_500_like_api_gateway_gives() -> None:
    def broken(event: Any, context: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    gateway = _gateway(broken)
    try:
        status, _, body = gateway.handle(
            "GET", "/status", [("Authorization", f"Bearer {DEV_TOKEN}")], b"", "127.0.0.1"
        )
    finally:
        gateway.close()
    assert (status, body) == (500, b'{"message":"Internal Server Error"}')


def test_requests_reach_the_function_one_at_a_time() -> None:
    """Powertools' resolver keeps the current event in a class attribute: two requests
    resolved at once would read each other's."""
    inside, most = 0, 0
    lock = threading.Lock()

    def function(event: Any, context: Any) -> dict[str, Any]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)  # long enough for the other threads' requests to arrive
        with lock:
            inside -= 1
        return {"statusCode": 204}

    gateway = _gateway(function)
    auth = [("Authorization", f"Bearer {DEV_TOKEN}")]
    threads = [
        threading.Thread(target=gateway.handle, args=("GET", "/status", auth, b"", "127.0.0.1"))
        for _ in range(8)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        gateway.close()
    assert most == 1


def _keys(event: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    context = event["requestContext"]
    return set(event), set(context), set(context["http"])


def test_the_sample_api_event_has_the_shape_serve_builds_and_is_answered(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """events/api-get-status.json is a deployed stack's event (with a Cognito token's claims):
    the function answers it, and serve's events carry the same fields."""
    sample = json.loads((ROOT / "events" / "api-get-status.json").read_text())
    built = serve.to_event(
        "GET",
        "/status",
        [("Host", "h")],
        b"",
        source_ip="::1",
        authorizer={},
        now=datetime.now(UTC),
    )
    assert _keys(sample) == _keys(built)
    monkeypatch.setenv("DATABASE_URL", database_url)
    runtime.reset()
    try:
        result = lambda_handler(sample, None)
    finally:
        runtime.reset()
    assert result["statusCode"] == 200, result
    assert json.loads(result["body"])["due_now"] == 0


ROUTES = serve.routes_of(
    [
        ("GET", "/schedules/{schedule_id}"),
        ("POST", "/schedules/{schedule_id}/cancel"),
        ("POST", "/schedules/retry"),
        ("GET", "/status"),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/schedules/abc", ("GET /schedules/{schedule_id}", {"schedule_id": "abc"})),
        ("GET", "/schedules/a%20b", ("GET /schedules/{schedule_id}", {"schedule_id": "a b"})),
        ("POST", "/schedules/retry", ("POST /schedules/retry", {})),  # the literal route wins
        (
            "POST",
            "/schedules/x/cancel",
            ("POST /schedules/{schedule_id}/cancel", {"schedule_id": "x"}),
        ),
        ("GET", "/schedules/a/b", None),  # a parameter is one segment
        ("DELETE", "/status", None),  # no route for the method
        ("GET", "/status/", None),
        ("GET", "/nowhere", None),
    ],
)
def test_a_request_takes_the_route_api_gateway_would_give_it(
    method: str, path: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert serve.match(ROUTES, method, path) == expected


def test_a_path_no_route_matches_never_reaches_the_function() -> None:
    events: list[dict[str, Any]] = []

    def function(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        return {"statusCode": 200, "body": "{}"}

    gateway = serve.Gateway(function, DEV_TOKEN, lambda: None, ROUTES)
    auth = [("Authorization", f"Bearer {DEV_TOKEN}")]
    try:
        missing = gateway.handle("GET", "/nowhere?x=1", auth, b"", "127.0.0.1")
        found = gateway.handle("POST", "/schedules/s1/cancel?x=1", auth, b"", "127.0.0.1")
    finally:
        gateway.close()
    assert missing == (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
    assert found[0] == 200
    (event,) = events
    assert event["routeKey"] == event["requestContext"]["routeKey"]
    assert event["routeKey"] == "POST /schedules/{schedule_id}/cancel"
    assert event["pathParameters"] == {"schedule_id": "s1"}
