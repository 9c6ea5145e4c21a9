"""`flag-scheduler serve`: the HTTP API's function behind a local HTTP server, called with the
API Gateway HTTP API (payload 2.0) event it receives in AWS."""

from __future__ import annotations

import argparse
import base64
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from flag_scheduler.errors import ConfigurationError
from flag_scheduler_cli.arguments import int_in
from flag_scheduler_cli.local import (
    FakeLambdaContext,
    check_database_url,
    data_folder,
    migrate,
    start_embedded_server,
)

logger = logging.getLogger(__name__)

DEV_TOKEN_VARIABLE = "FLAG_SCHEDULER_DEV_TOKEN"  # noqa: S105 (a variable name, not a secret)
# What the development token stands for: the claims API Gateway's JWT authorizer would pass
# (serve grants the scopes the API is configured to ask for; these are its defaults).
DEV_SUBJECT = "dev"
# A token grants every scope: one short enough to guess is no lock at all.
MIN_DEV_TOKEN_LENGTH = 16
DEV_SCOPES = ("flags:read", "flags:write")
# API Gateway's own limits: a 10 MB request and a 30 s integration timeout.
MAX_BODY_BYTES = 10 * 1024 * 1024
FUNCTION_TIMEOUT_SECONDS = 30.0
_PROBLEM_TYPE = "urn:flag-scheduler:problem:"
# API Gateway's own bodies, for a function that failed and a path no route matches.
_INTERNAL_ERROR = b'{"message":"Internal Server Error"}'
_NOT_FOUND = b'{"message":"Not Found"}'
_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"})

Function = Callable[[dict[str, Any], Any], Mapping[str, Any]]


def dev_token(environ: Mapping[str, str]) -> str | None:
    """The development token, or None when FLAG_SCHEDULER_DEV_TOKEN is unset or blank.

    Raises:
        ConfigurationError: the token is shorter than MIN_DEV_TOKEN_LENGTH.
    """
    token = environ.get(DEV_TOKEN_VARIABLE, "").strip() or None
    if token is not None and len(token) < MIN_DEV_TOKEN_LENGTH:
        raise ConfigurationError(
            f"{DEV_TOKEN_VARIABLE} must be at least {MIN_DEV_TOKEN_LENGTH} characters"
            f" (it grants every scope), got {len(token)}; e.g. dev-$(openssl rand -hex 8)"
        )
    return token


def check_bind_address(host: str, token: str | None) -> None:
    """Refuse a non-loopback address while a development token is set: the token grants every
    scope, and anyone who can reach the port could use it.

    Raises:
        ConfigurationError: naming the address and the variable.
    """
    if token is None or is_loopback(host):
        return
    raise ConfigurationError(
        f"--host {host} is reachable beyond this machine and {DEV_TOKEN_VARIABLE} grants every"
        " scope: serve on a loopback address (127.0.0.1, ::1, localhost) or unset the token"
    )


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def bearer_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (constant time)."""
    if token is None or not authorization:
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def dev_authorizer(scopes: Sequence[str] = DEV_SCOPES) -> dict[str, Any]:
    """The JWT authorizer context of a request carrying the development token."""
    return {
        "jwt": {
            "claims": {"sub": DEV_SUBJECT, "scope": " ".join(scopes)},
            "scopes": list(scopes),
        }
    }


def to_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    source_ip: str,
    authorizer: dict[str, Any] | None,
    now: datetime,
    route_key: str = "$default",
    path_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API (payload 2.0) event for one request, built as API Gateway
    builds it (the helpers below say how: headers and cookies, query, body)."""
    parts = urlsplit(target)
    joined, cookies = _gateway_headers(headers)
    request_context = _request_context(
        method, parts.path, joined, source_ip=source_ip, now=now, route_key=route_key
    )
    request_context.update({"authorizer": authorizer} if authorizer is not None else {})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": joined,
        "requestContext": request_context,
        "isBase64Encoded": False,
    }
    query = _gateway_query(parts.query)
    optional = {
        "cookies": cookies,
        "queryStringParameters": query,
        "pathParameters": path_parameters,
    }
    event.update({name: value for name, value in optional.items() if value})
    if body:
        event.update(_gateway_body(body))
    return event


def _gateway_headers(headers: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Headers as API Gateway passes them: names lower-cased, repeats joined with commas,
    cookies apart."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined, cookies


def _gateway_query(query_string: str) -> dict[str, str]:
    """Query parameters as API Gateway passes them: repeats joined with commas."""
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    return query


def _request_context(
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    source_ip: str,
    now: datetime,
    route_key: str,
) -> dict[str, Any]:
    """The event's requestContext, without the authorizer."""
    return {
        "accountId": "000000000000",
        "apiId": "local",
        "domainName": headers.get("host", "localhost"),
        "domainPrefix": "local",
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": f"local-{uuid.uuid4()}",
        "routeKey": route_key,
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }


def _gateway_body(body: bytes) -> dict[str, Any]:
    """The body as text, or base64-encoded when it is not UTF-8."""
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "isBase64Encoded": True}


def from_result(result: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the HTTP response for a function's payload-2.0 result."""
    status = int(result.get("statusCode", 200))
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
    text = result.get("body") or ""
    body = base64.b64decode(text) if result.get("isBase64Encoded") else str(text).encode()
    return status, headers, body


def problem(
    status: int, slug: str, title: str, detail: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An RFC 9457 problem response the server gives without calling the function."""
    document = {"type": _PROBLEM_TYPE + slug, "title": title, "status": status, "detail": detail}
    headers = [("Content-Type", "application/problem+json")]
    if status == HTTPStatus.UNAUTHORIZED:
        headers.append(("WWW-Authenticate", "Bearer"))
    return status, headers, json.dumps(document).encode()


@dataclass(frozen=True)
class Route:
    """One route of the stack: `GET /schedules/{schedule_id}` matches one path segment."""

    method: str
    template: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, method: str, template: str) -> Route:
        parts = re.split(r"(\{[^}/]+\})", template)
        regex = "".join(
            f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
            for part in parts
        )
        return cls(method.upper(), template, re.compile(regex))

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


def routes_of(operations: Iterable[tuple[str, str]]) -> list[Route]:
    """Routes for (method, path template) pairs, literal segments before variables, as API
    Gateway prefers them (`/schedules/retry` over `/schedules/{schedule_id}`)."""
    routes = [Route.of(method, path) for method, path in operations]
    return sorted(routes, key=lambda r: (r.template.count("{"), r.template))


def match(routes: list[Route], method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The route key and the (decoded) path parameters of the route a request takes."""
    for route in routes:
        found = route.pattern.fullmatch(path)
        if found and route.method == method.upper():
            return route.key, {k: unquote(v) for k, v in found.groupdict().items()}
    return None


class Gateway:
    """What API Gateway does for a request: check the token, build the event, call the
    function with a time limit, turn its result into a response.

    With `routes` (the stack's), a request no route matches is API Gateway's 404 and the
    function never runs; a matched one carries its route key and path parameters. Unlike API
    Gateway, the token is checked first: without it every request is a 401.

    The function runs on one worker thread, one request at a time, as in one Lambda
    container: Powertools' resolver keeps the current event in a class attribute, so two
    requests resolved at once would read each other's, and the worker keeps its database
    connection from request to request.
    """

    def __init__(
        self,
        function: Function,
        token: str | None,
        context_factory: Callable[[], Any],
        routes: list[Route] | None = None,
        scopes: Sequence[str] = DEV_SCOPES,
    ):
        self.function = function
        self.token = token
        self.context_factory = context_factory
        self.routes = routes
        self.authorizer = dev_authorizer(scopes)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="function")

    def handle(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        authorization = next((v for k, v in headers if k.lower() == "authorization"), None)
        if not bearer_matches(authorization, self.token):
            why = (
                f"{DEV_TOKEN_VARIABLE} is not set: serve accepts no request without it"
                if self.token is None
                else "send Authorization: Bearer <the development token>"
            )
            return problem(401, "unauthenticated", "Not authenticated", why)
        route_key, parameters = "$default", None
        if self.routes is not None:
            matched = match(self.routes, method, urlsplit(target).path)
            if matched is None:
                return 404, [("Content-Type", "application/json")], _NOT_FOUND
            route_key, parameters = matched
        event = to_event(
            method,
            target,
            headers,
            body,
            source_ip=source_ip,
            authorizer=self.authorizer,
            now=datetime.now(UTC),
            route_key=route_key,
            path_parameters=parameters,
        )
        future = self.worker.submit(self.function, event, self.context_factory())
        try:
            return from_result(future.result(timeout=FUNCTION_TIMEOUT_SECONDS))
        except TimeoutError:
            return problem(504, "timeout", "Function timed out", "no answer within 30 s")
        except Exception:
            # API Gateway answers 500 when the function raises; the traceback is the log.
            logger.exception("function_failed")
            return 500, [("Content-Type", "application/json")], _INTERNAL_ERROR

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self._send(*problem(411, "length-required", "Length required", "send Content-Length"))
            return
        try:
            size = int(length or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY_BYTES:
            detail = f"the body must be 0..{MAX_BODY_BYTES} bytes with a valid Content-Length"
            self.close_connection = True
            self._send(*problem(413, "body-too-large", "Body too large", detail))
            return
        body = self.rfile.read(size)
        headers = list(self.headers.items())
        self._send(
            *self.server.gateway.handle(
                self.command, self.path, headers, body, self.client_address[0]
            )
        )

    # http.server's names for its method dispatch; every method goes to the function.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One JSON access line per request on stderr, as the stage's access log has them.
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ip": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "status": int(code) if str(code).isdigit() else code,
        }
        sys.stderr.write(json.dumps(line) + "\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.gateway = gateway
        super().__init__(address, _RequestHandler)


def make_server(host: str, port: int, gateway: Gateway) -> _Server:
    """A bound server (port 0: any free port; read it from server_address)."""
    return _Server((host.strip("[]"), port), gateway)


# --- the command ---


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `flag-scheduler serve` on the CLI's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="serve the HTTP API locally (development token auth)",
        description="Serve the HTTP API's function over HTTP, each request translated into"
        " the API Gateway event it receives in AWS, on DATABASE_URL or an embedded PostgreSQL"
        f" in --data-dir (migrated automatically). {DEV_TOKEN_VARIABLE}: requests carrying"
        " `Authorization: Bearer <token>` get both scopes as subject `dev`; every other"
        " request is answered 401.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int_in(0, 65535), default=8080, help="0..65535, 0: any free port"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL data folder when DATABASE_URL is unset (as for invoke)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); returns the exit code.

    Raises:
        ConfigurationError: a development token with a non-loopback --host, or a bad
            DATABASE_URL.
        DatabaseUnavailable: the embedded server cannot start or migrate.
    """
    token = dev_token(os.environ)
    check_bind_address(args.host, token)
    where = _use_database(args.data_dir)
    # Deferred: the CLI's other commands do not pay for importing the API and Powertools.
    from flag_scheduler.api.app import lambda_handler
    from flag_scheduler.aws.settings import ApiSettings

    auth = ApiSettings.from_env(os.environ)
    gateway = Gateway(
        lambda_handler,
        token,
        lambda: FakeLambdaContext(timeout_seconds=FUNCTION_TIMEOUT_SECONDS),
        _stack_routes(),
        scopes=(auth.read_scope, auth.write_scope),
    )
    try:
        server = make_server(args.host, args.port, gateway)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None
    _announce(server, where, token)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        gateway.close()
    return 0


def _announce(server: ThreadingHTTPServer, where: str, token: str | None) -> None:
    """Say on stderr where the API listens, on which database, and whether it can be used."""
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    print(
        f"flag-scheduler: serving the HTTP API on http://{shown}:{port} ({where})", file=sys.stderr
    )
    if token is None:
        print(
            f"flag-scheduler: {DEV_TOKEN_VARIABLE} is not set: every request is answered 401",
            file=sys.stderr,
        )
    sys.stderr.flush()


def _stack_routes() -> list[Route]:
    """The deployed stack's routes: the OpenAPI document's operations and the public paths
    (tests/aws/test_template.py holds the template to the same)."""
    # Deferred with the API itself (see run).
    from flag_scheduler.api.app import PUBLIC_PATHS, openapi_document

    operations = [
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method.upper() in _HTTP_METHODS
    ]
    return routes_of([*operations, *(("GET", path) for path in PUBLIC_PATHS)])


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _use_database(override: Path | None) -> str:
    """Point DATABASE_URL at the database to serve; says which, for people (never the URL:
    it may hold a password)."""
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        check_database_url(configured)
        return "database: DATABASE_URL"
    folder = data_folder(os.environ, override)
    server = start_embedded_server(folder, throwaway=False)
    url = server.get_uri()
    migrate(url)
    os.environ["DATABASE_URL"] = url
    return f"database: embedded PostgreSQL in {folder}"
