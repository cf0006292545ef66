"""Who is calling: FastAPI dependencies that turn a bearer token into the caller a decision is about.

Two kinds of bearer tokens reach the gateway:

* an access token (a JWS, three dot-separated parts) of the configured OIDC issuer, verified by
  :class:`~emage_common.oidc.OidcValidator` (signature, algorithm allow-list, issuer, audience, expiry) and
  turned into a :class:`~emage_access.domain.principal.Principal` (role, RPPS, facility, second factor);
* a share-link session token (opaque, no dot), issued when someone opened a share link, resolved through the
  :class:`~emage_access.ports.LinkSessionStore`.

Failures follow RFC 6750 §3: no token → 401 with a bare ``WWW-Authenticate: Bearer`` challenge; an invalid,
expired or forged token → 401 ``error="invalid_token"``; a genuine token without a second factor → 401
``error="insufficient_user_authentication"`` (RFC 9470 step-up); a genuine token of nobody the platform
serves (no platform role, two roles, missing RPPS) → 403. Details stay generic: the answer is no oracle.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from emage_access.domain.links import LinkSession
from emage_access.domain.principal import (
    AuthenticationTooWeakError,
    NotAuthorisedError,
    Principal,
    principal_from_claims,
)
from emage_access.ports import LinkSessionStore
from emage_common.oidc import Claims, OidcValidator, TokenError

_log = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An access token of the configured OIDC issuer, or a share-link session token.",
)

Caller = Principal | LinkSession
"""Whoever a request acts for: an authenticated user, or the holder of an opened share link."""

_MAX_OPAQUE_TOKEN = 512


def _challenge(detail: str, error: str | None = None) -> HTTPException:
    value = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": value})


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise _challenge("Authentication required.")
    return credentials.credentials


async def _claims(request: Request, token: str) -> Claims:
    validator: OidcValidator = request.app.state.oidc
    try:
        return await validator.validate(token)
    except TokenError as error:
        _log.info("bearer token refused: %s", error.reason)
        raise _challenge("The access token is not valid.", "invalid_token") from error


def _principal(request: Request, claims: Claims) -> Principal:
    settings = request.app.state.settings
    try:
        return principal_from_claims(
            claims.raw, required_amr=settings.required_amr, accepted_acr=settings.accepted_acr
        )
    except AuthenticationTooWeakError as error:
        raise _challenge(
            "This access requires authentication with a second factor.", "insufficient_user_authentication"
        ) from error
    except NotAuthorisedError as error:
        _log.info("token of %s refused: %s", claims.subject, error.reason)
        raise HTTPException(403, "This account may not use e-mage.") from error


async def authenticated_claims(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Claims:
    """The verified claims of the caller's OIDC access token (no role check)."""
    return await _claims(request, _token(credentials))


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    """The authenticated user; share-link sessions are refused here (401)."""
    token = _token(credentials)
    if "." not in token:
        raise _challenge("The access token is not valid.", "invalid_token")
    principal = _principal(request, await _claims(request, token))
    request.state.caller = principal
    return principal


async def current_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Caller:
    """The authenticated user, or the holder of an opened share link."""
    token = _token(credentials)
    if "." in token:
        principal = _principal(request, await _claims(request, token))
        request.state.caller = principal
        return principal
    if len(token) > _MAX_OPAQUE_TOKEN:
        raise _challenge("The access token is not valid.", "invalid_token")
    sessions: LinkSessionStore = request.app.state.link_sessions
    session = await sessions.session(token, now=datetime.now(UTC))
    if session is None:
        raise _challenge("The access token is not valid.", "invalid_token")
    request.state.caller = session
    return session
