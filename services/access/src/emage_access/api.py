"""HTTP entrypoints of the access gateway."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from emage_access import __version__
from emage_access.settings import Settings
from emage_common.oidc import Claims, OidcValidator, TokenError, authentication_methods
from emage_common.runtime import build_service_app

_bearer = HTTPBearer(auto_error=False, description="An access token of the configured OIDC issuer.")


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Claims:
    """The verified claims of the caller's bearer token, or 401 with a ``WWW-Authenticate`` challenge.

    RFC 6750 §3: a request without a token gets the bare challenge; an invalid token gets
    ``error="invalid_token"``. The reason stays generic so the answer is no oracle for attackers.
    """
    if credentials is None:
        raise HTTPException(401, "Authentication required.", headers={"WWW-Authenticate": "Bearer"})
    validator: OidcValidator = request.app.state.oidc
    try:
        return await validator.validate(credentials.credentials)
    except TokenError as error:
        raise HTTPException(
            401,
            "The access token is not valid.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from error


class Me(BaseModel):
    """Who the gateway sees behind a token (claims as Pro Santé Connect and the dev realm provide them)."""

    subject: str
    name: str | None = None
    roles: list[str]
    rpps: str | None = None
    facility: str | None = None
    patient_id: str | None = None
    authentication_methods: list[str]


router = APIRouter(prefix="/api/v1", tags=["me"])


@router.get("/me", response_model=Me, summary="The authenticated caller")
async def me(claims: Annotated[Claims, Depends(authenticated)]) -> Me:
    raw: dict[str, Any] = dict(claims.raw)
    roles = raw.get("roles") or raw.get("realm_access", {}).get("roles", [])
    return Me(
        subject=claims.subject,
        name=raw.get("name"),
        roles=[role for role in roles if isinstance(role, str)],
        rpps=raw.get("rpps"),
        facility=raw.get("facility"),
        patient_id=raw.get("patient_id"),
        authentication_methods=sorted(authentication_methods(claims)),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = build_service_app(settings, version=__version__, routers=[router])
    validator = OidcValidator.from_settings(settings)
    app.state.oidc = validator
    app.state.runtime.on_shutdown(validator.aclose)
    return app
