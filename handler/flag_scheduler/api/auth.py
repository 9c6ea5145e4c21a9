"""Who is calling and what they may do, read from API Gateway's JWT authorizer context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flag_scheduler.aws.settings import ApiSettings

# Methods that only read; every other method writes.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def required_scope(settings: ApiSettings, method: str) -> str:
    """The scope a request with `method` needs."""
    return settings.read_scope if method.upper() in READ_METHODS else settings.write_scope


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: who (for history rows) and which scopes the token grants."""

    actor: str
    scopes: frozenset[str]
    # Who the token's issuer says this is, for good (`iss` and `sub`): what keys are scoped
    # by, since an e-mail can change hands or be claimed unverified.
    subject: str = ""


class Unauthenticated(Exception):
    """The request carries no verified identity (no JWT authorizer context)."""


class Forbidden(Exception):
    """The caller's token lacks the scope this operation needs."""


def _jwt(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    context = event.get("requestContext")
    authorizer = context.get("authorizer") if isinstance(context, Mapping) else None
    jwt = authorizer.get("jwt") if isinstance(authorizer, Mapping) else None
    return jwt if isinstance(jwt, Mapping) else None


def _scope_words(value: object) -> set[str]:
    """Scopes from a claim: a space-separated string, a list, or API Gateway's rendering of a
    JSON array claim as "[a b c]"."""
    if isinstance(value, list | tuple):
        return {str(item) for item in value if str(item)}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1].replace(",", " ")
        return set(text.split())
    return set()


def caller_of(event: Mapping[str, Any], settings: ApiSettings) -> Caller:
    """The caller named by the authorizer context of an API Gateway v2 event.

    Raises:
        Unauthenticated: no JWT claims, or none of the actor claims is present.
    """
    jwt = _jwt(event)
    claims = jwt.get("claims") if jwt is not None else None
    if not isinstance(claims, Mapping) or not claims:
        raise Unauthenticated("the request carries no verified token claims")
    actor = next(
        (
            str(claims[name]).strip()
            for name in settings.actor_claim_names
            if str(claims.get(name) or "").strip() and _trusted(name, claims)
        ),
        None,
    )
    if actor is None:
        names = ", ".join(settings.actor_claim_names)
        raise Unauthenticated(f"the token has none of the claims that name a caller ({names})")
    assert jwt is not None
    scopes = _scope_words(jwt.get("scopes")) | _scope_words(claims.get(settings.scope_claim))
    return Caller(actor=actor, scopes=frozenset(scopes), subject=_subject(claims, actor))


def _trusted(name: str, claims: Mapping[str, Any]) -> bool:
    """An `email` claim names the caller only if the issuer verified it; anyone can type one
    in at sign-up. API Gateway renders every claim as a string, so true arrives as "true"."""
    return name != "email" or str(claims.get("email_verified", "")).strip().lower() == "true"


def _subject(claims: Mapping[str, Any], actor: str) -> str:
    """`sub`, qualified by `iss` when present (two issuers may reuse a sub); else the actor."""
    sub = str(claims.get("sub") or "").strip()
    if not sub:
        return actor
    iss = str(claims.get("iss") or "").strip()
    return f"{iss} {sub}" if iss else sub


def authorize(event: Mapping[str, Any], settings: ApiSettings) -> Caller:
    """The caller, if their token grants the scope the request's method needs.

    Raises:
        Unauthenticated: as caller_of.
        Forbidden: naming the missing scope.
    """
    caller = caller_of(event, settings)
    method = str(event.get("requestContext", {}).get("http", {}).get("method", "GET"))
    needed = required_scope(settings, method)
    if needed not in caller.scopes:
        raise Forbidden(f"this operation needs the scope {needed!r}; the token does not grant it")
    return caller
