"""``/api/v1/consents`` and ``/api/v1/audit``: the consent and audit services' APIs, behind the gateway.

The gateway authenticates the caller and forwards the request unchanged, with the caller in the
:data:`~emage_common.access_contract.PRINCIPAL_HEADER` (never their token). Each service applies its own
rules on top (a patient acts on their own consents only; a patient reads their own access log only).

Reading the audit trail is itself an access to patient data: the gateway decides it (patients their own
log, the DPO any record, nobody else) and audits the decision like any other.
"""

from __future__ import annotations

from typing import Annotated, Final

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from emage_access.auth import Caller, current_caller, current_principal
from emage_access.decisions import AccessDecider, get_decider, not_found
from emage_access.dicomweb_proxy import PREFIX, Upstream, forward, route_each_method
from emage_access.domain.policy import Action
from emage_access.domain.principal import Principal
from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal

CONSENT: Final = "consent"
AUDIT: Final = "audit"

router = APIRouter(prefix="/api/v1")

_FORWARDED_HEADERS: Final = ("accept", "accept-language", "content-type", "content-length", "idempotency-key")


def forwarded_principal(principal: Principal) -> ForwardedPrincipal:
    """The caller as the internal services see them."""
    return ForwardedPrincipal(
        subject=principal.subject,
        role=principal.role.value,
        name=principal.name,
        rpps=principal.rpps,
        facility_finess=principal.facility_finess,
        facility_name=principal.facility_name,
        patient_keys=tuple(sorted(principal.patient_keys)),
    )


def _headers(request: Request, principal: Principal) -> dict[str, str]:
    headers = {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}
    headers[PRINCIPAL_HEADER] = forwarded_principal(principal).encode()
    request_id = getattr(request.state, "request_id", None)
    if isinstance(request_id, str):
        headers["X-Request-Id"] = request_id
    return headers


def _client(request: Request, name: str) -> httpx.AsyncClient:
    clients: dict[str, httpx.AsyncClient] = request.app.state.internal_apis
    return clients[name]


_METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@route_each_method(
    router,
    "/consents{path:path}",
    _METHODS,
    tags=["consents"],
    summary="Patients' consents and oppositions (served by the consent service)",
    description="See the consent service's OpenAPI document for the operations; the gateway authenticates "
    "and forwards them.",
)
async def consents(
    path: str, request: Request, principal: Annotated[Principal, Depends(current_principal)]
) -> Response:
    if path and not path.startswith("/"):
        raise HTTPException(404, "No such resource.")
    return await forward(
        _client(request, CONSENT), request, f"api/v1/consents{path}", _headers(request, principal)
    )


@route_each_method(
    router,
    "/audit{path:path}",
    ["GET", "POST"],
    tags=["audit"],
    summary="The audit trail: a patient's access log, the DPO's queries, chain verification",
    description="Served by the audit service. Patients read their own access log; the DPO reads and "
    "verifies the trail; nobody else reaches it. Each read is itself audited.",
)
async def audit(
    path: str,
    request: Request,
    principal: Annotated[Principal, Depends(current_principal)],
    decider: Annotated[AccessDecider, Depends(get_decider)],
) -> Response:
    if path and not path.startswith("/"):
        raise HTTPException(404, "No such resource.")
    action = Action.VERIFY_AUDIT if path.startswith("/verify") else Action.READ_AUDIT
    decided = await decider.decide(principal, action, None, request=request)
    if not decided.allowed:
        raise HTTPException(403, "Your role may not read the audit trail.")
    return await forward(
        _client(request, AUDIT), request, f"api/v1/audit{path}", _headers(request, principal)
    )


fhir_router = APIRouter(prefix="/fhir")
"""FHIR resources of the platform, at ``/fhir`` (outside ``/api/v1``, where FHIR clients look)."""


@fhir_router.get(
    "/ImagingStudy/{study}",
    tags=["FHIR"],
    summary="A study as a FHIR R4 ImagingStudy (for EHR connectors)",
    description="Decided like the study's metadata: a study the caller may not read answers 404 like an "
    "unknown one. The contained Endpoint points at this gateway's `/dicomweb/`.",
    responses={
        200: {"content": {"application/fhir+json": {}}},
        404: {"description": "Unknown or not permitted."},
    },
)
async def imaging_study(
    study: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    decider: Annotated[AccessDecider, Depends(get_decider)],
) -> Response:
    decided = await decider.decide(caller, Action.READ_METADATA, study, request=request)
    if not decided.allowed:
        raise not_found()
    headers = {"Accept": "application/fhir+json", "X-Forwarded-Proto": request.url.scheme}
    headers["X-Forwarded-Host"] = request.headers.get("host", request.url.netloc)
    headers["X-Forwarded-Prefix"] = PREFIX
    clients: dict[Upstream, httpx.AsyncClient] = request.app.state.upstreams
    return await forward(clients[Upstream.CATALOG], request, f"internal/v1/studies/{study}/fhir", headers)
