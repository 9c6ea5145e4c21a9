"""API Gateway HTTP API (payload 2.0) events as the JWT-authorized gateway sends them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flag_scheduler.api.app import lambda_handler

READ_WRITE = "flags:read flags:write"
# A claim set an OIDC provider issues: `sub` always, `email` when the user has one.
USER_CLAIMS = {"sub": "user-123", "email": "ops@example.com", "email_verified": "true"}


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: str | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
    scope: str | None = READ_WRITE,
    scopes: list[str] | None = None,
    authorized: bool = True,
) -> dict[str, Any]:
    """One event; `claims` (default USER_CLAIMS plus `scope`) as the JWT authorizer passes
    them, `scopes` as its route-scope list. `authorized=False`: no authorizer context."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    text = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    token_claims = dict(USER_CLAIMS if claims is None else claims)
    if scope is not None:
        token_claims["scope"] = scope
    request_context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "api",
        "domainName": "api.example.com",
        "domainPrefix": "api",
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "192.0.2.1",
            "userAgent": "tests",
        },
        "requestId": "req-1",
        "routeKey": "$default",
        "stage": "$default",
        "time": "01/Dec/2026:07:00:00 +0000",
        "timeEpoch": 1796108400000,
    }
    if authorized:
        request_context["authorizer"] = {"jwt": {"claims": token_claims, "scopes": scopes}}
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": all_headers,
        "queryStringParameters": query or None,
        "requestContext": request_context,
        "body": text,
        "isBase64Encoded": False,
    }


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def content_type(self) -> str:
        return {k.lower(): v for k, v in self.headers.items()}.get("content-type", "")


def call(event: dict[str, Any], context: Any = None) -> ApiResponse:
    """The function's answer to one event, its JSON body decoded."""
    result = lambda_handler(event, context)
    text = result.get("body") or ""
    return ApiResponse(
        status=result["statusCode"],
        headers=result.get("headers") or {},
        body=json.loads(text) if text else None,
    )
