"""``/api/v1/consents``: patients' consents and oppositions, reached through the access gateway.

The gateway authenticates the caller and forwards the request with the caller in ``X-Emage-Principal``
(:class:`~emage_common.access_contract.ForwardedPrincipal`); without a valid one the answer is 401. Each
route calls one use case of :class:`~emage_consent.service.ConsentService`; refusals are problem details
(RFC 9457): 403 a role that may not, 404 no such consent or patient *for this caller* (another patient's
consent, or a patient without a study at the professional's facility, answer exactly as an unknown one),
409 an act that does not apply to the consent (revoking an opposition, lifting a grant), 422 invalid input
(nothing is written and no event is sent), 503 the catalog could not say whether a patient is the
professional's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from pydantic_core import to_json

from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal
from emage_common.events import PatientKey
from emage_consent import fhir
from emage_consent.domain.model import Consent, ConsentRecord, ConsentState, Provision
from emage_consent.ports import ConsentQuery
from emage_consent.schemas import (
    CLOSING_EXAMPLES,
    GRANT_EXAMPLES,
    OPPOSITION_EXAMPLES,
    PATIENT_KEY_EXAMPLE,
    ClosingRequest,
    ConsentListOut,
    ConsentOut,
    GrantRequest,
    HistoryOut,
    OppositionRequest,
    RecordOut,
)
from emage_consent.service import ConsentService

PREFIX: Final = "/api/v1/consents"

router = APIRouter(prefix=PREFIX, tags=["consents"])

_principal_header = APIKeyHeader(
    name=PRINCIPAL_HEADER,
    scheme_name="ForwardedPrincipal",
    description="The caller as the access gateway authenticated them (set by the gateway only).",
    auto_error=False,
)


Responses = dict[int | str, dict[str, Any]]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {}}}


_UNAUTHENTICATED: Final[Responses] = {
    401: _problem("No valid X-Emage-Principal: the request did not come through the gateway.")
}
_NOT_FOUND: Final[Responses] = {
    404: _problem("No such consent or patient for this caller (unknown and forbidden alike).")
}
_FORBIDDEN: Final[Responses] = {403: _problem("The caller's role may not do this (the DPO records nothing).")}
_INVALID: Final[Responses] = {422: _problem("Invalid input: nothing was written and no event was sent.")}
_UNAVAILABLE: Final[Responses] = {
    503: _problem("The catalog could not say whether the patient is the professional's.")
}
_WRITE_ERRORS: Final[Responses] = {**_UNAUTHENTICATED, **_FORBIDDEN, **_NOT_FOUND, **_INVALID, **_UNAVAILABLE}
_READ_ERRORS: Final[Responses] = {**_UNAUTHENTICATED, **_NOT_FOUND, **_INVALID, **_UNAVAILABLE}


async def current_principal(
    header: Annotated[str | None, Security(_principal_header)],
) -> ForwardedPrincipal:
    """The caller the gateway forwarded; 401 without a valid header."""
    if header is None:
        raise HTTPException(401, f"The {PRINCIPAL_HEADER} header is missing: call through the gateway.")
    try:
        return ForwardedPrincipal.decode(header)
    except ValueError:
        raise HTTPException(401, f"The {PRINCIPAL_HEADER} header is not a valid principal.") from None


async def consent_service(request: Request) -> ConsentService:
    """The service of the running app (set in its lifespan)."""
    service: ConsentService = request.app.state.consent
    return service


Principal = Annotated[ForwardedPrincipal, Depends(current_principal)]
Service = Annotated[ConsentService, Depends(consent_service)]
PatientKeyQuery = Annotated[
    PatientKey | None,
    Query(
        description="The patient. Patients may leave it out (all their own records); professionals name a "
        "patient with a study at their facility; the DPO any patient.",
        examples=[PATIENT_KEY_EXAMPLE],
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="A key the client chooses per creation (a UUID, say), sent again when it retries after "
        "losing the answer: the retry returns the consent recorded the first time. Reused for a different "
        "request: 422. (IETF draft *The Idempotency-Key HTTP Header Field*.)",
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Consents skipped before the page.")]


def _created_responses(what: str) -> Responses:
    """A 201 with the new record's ``Location``, and the refusals of a write."""
    return {
        201: {
            "description": "Recorded; its event is in Kafka or in the outbox.",
            "headers": {"Location": {"description": f"The {what}'s URL", "schema": {"type": "string"}}},
        },
        **_WRITE_ERRORS,
    }


def _closing_responses(conflict: str) -> Responses:
    """The refusals of closing a consent, with the 409 of the wrong kind of consent."""
    return {**_WRITE_ERRORS, 409: _problem(conflict)}


def _created(response: Response, service: ConsentService, consent: Consent) -> ConsentOut:
    """The consent just recorded, its URL in ``Location``."""
    response.headers["Location"] = f"{PREFIX}/{consent.consent_id}"
    return ConsentOut.of(consent, service.now())


def _reason(body: ClosingRequest | None) -> str | None:
    return body.reason if body is not None else None


def _history(records: Iterable[ConsentRecord]) -> HistoryOut:
    return HistoryOut(records=[RecordOut.of(record) for record in records])


def _fhir(document: dict[str, Any]) -> Response:
    return Response(to_json(document), media_type=fhir.FHIR_JSON)


def _fhir_response(description: str, example: dict[str, Any]) -> Responses:
    return {200: {"description": description, "content": {fhir.FHIR_JSON: {"example": example}}}}


_CONSENT_RESOURCE_EXAMPLE: Final = {
    "resourceType": "Consent",
    "id": "6f1c2d7e-0b7a-4c59-9a51-5f3a3c9f1e20",
    "meta": {"versionId": "1", "lastUpdated": "2025-03-04T09:15:00.123000Z"},
    "status": "active",
    "subject": {"type": "Patient", "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "…"}},
    "decision": "permit",
    "provision": [
        {
            "actor": [
                {
                    "role": {"coding": [{"code": "IRCP"}]},
                    "reference": {
                        "type": "Practitioner",
                        "identifier": {"system": fhir.RPPS_SYSTEM, "value": "10100000057"},
                    },
                }
            ]
        }
    ],
}


@router.post(
    "",
    status_code=201,
    response_model=ConsentOut,
    summary="Grant a consent to sharing (a patient, or a professional recording it at the exam)",
    responses=_created_responses("consent"),
)
async def grant(
    body: Annotated[GrantRequest, Body(openapi_examples=GRANT_EXAMPLES)],
    principal: Principal,
    service: Service,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ConsentOut:
    consent = await service.grant(principal, body.draft(), idempotency_key=idempotency_key)
    return _created(response, service, consent)


@router.get(
    "",
    response_model=ConsentListOut,
    summary="List consents and oppositions, newest first",
    responses=_READ_ERRORS,
)
async def list_consents(
    principal: Principal,
    service: Service,
    patient_key: PatientKeyQuery = None,
    provision: Annotated[Provision | None, Query(description="Only grants or only oppositions.")] = None,
    status: Annotated[ConsentState | None, Query(description="Only consents in this status now.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> ConsentListOut:
    query = ConsentQuery((patient_key,) if patient_key is not None else None, provision, status)
    page = await service.list_consents(principal, query, limit=limit, offset=offset)
    now = service.now()
    return ConsentListOut(
        items=[ConsentOut.of(consent, now) for consent in page.consents],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/oppositions",
    status_code=201,
    response_model=ConsentOut,
    summary="Oppose the sharing of all one's studies (or of one): a consent with a deny provision",
    responses=_created_responses("opposition"),
)
async def oppose(
    body: Annotated[OppositionRequest, Body(openapi_examples=OPPOSITION_EXAMPLES)],
    principal: Principal,
    service: Service,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ConsentOut:
    consent = await service.oppose(principal, body.draft(), idempotency_key=idempotency_key)
    return _created(response, service, consent)


@router.get(
    "/oppositions",
    response_model=ConsentListOut,
    summary="List oppositions, newest first",
    responses=_READ_ERRORS,
)
async def list_oppositions(
    principal: Principal,
    service: Service,
    patient_key: PatientKeyQuery = None,
    status: Annotated[ConsentState | None, Query(description="Only oppositions in this status now.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> ConsentListOut:
    return await list_consents(principal, service, patient_key, "deny", status, limit, offset)


@router.post(
    "/oppositions/{consent_id}/lift",
    response_model=ConsentOut,
    summary="Lift an opposition (the patient only); lifting a lifted one changes nothing",
    responses=_closing_responses("The consent is a grant, not an opposition: revoke it instead."),
)
async def lift(
    consent_id: str,
    principal: Principal,
    service: Service,
    body: Annotated[ClosingRequest | None, Body(openapi_examples=CLOSING_EXAMPLES)] = None,
) -> ConsentOut:
    consent = await service.lift(principal, consent_id, _reason(body))
    return ConsentOut.of(consent, service.now())


@router.get(
    "/history",
    response_model=HistoryOut,
    summary="Every record of a patient's consents, in the order they were appended",
    responses=_READ_ERRORS,
)
async def history(principal: Principal, service: Service, patient_key: PatientKeyQuery = None) -> HistoryOut:
    records = await service.history(principal, patient_key)
    return _history(records)


@router.get(
    "/history/fhir",
    response_class=Response,
    summary="Every version of a patient's consents as a FHIR R5 history Bundle (newest first)",
    responses={
        **_fhir_response(
            "A validated FHIR R5 Bundle of type history.", {"resourceType": "Bundle", "type": "history"}
        ),
        **_READ_ERRORS,
    },
)
async def history_fhir(
    principal: Principal, service: Service, patient_key: PatientKeyQuery = None
) -> Response:
    records = await service.history(principal, patient_key)
    return _fhir(fhir.history_bundle(records, service.now()))


@router.get(
    "/fhir",
    response_class=Response,
    summary="A patient's consents as a FHIR R5 collection Bundle of Consent resources",
    responses={
        **_fhir_response(
            "A validated FHIR R5 Bundle of type collection.",
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "fullUrl": "urn:uuid:6f1c2d7e-0b7a-4c59-9a51-5f3a3c9f1e20",
                        "resource": _CONSENT_RESOURCE_EXAMPLE,
                    }
                ],
            },
        ),
        **_READ_ERRORS,
    },
)
async def consents_fhir(
    principal: Principal, service: Service, patient_key: PatientKeyQuery = None
) -> Response:
    consents = await service.consents_of(principal, patient_key)
    return _fhir(fhir.collection_bundle(consents, service.now()))


@router.get(
    "/{consent_id}",
    response_model=ConsentOut,
    summary="One consent or opposition as it stands",
    responses=_READ_ERRORS,
)
async def get_consent(consent_id: str, principal: Principal, service: Service) -> ConsentOut:
    return ConsentOut.of(await service.get(principal, consent_id), service.now())


@router.get(
    "/{consent_id}/history",
    response_model=HistoryOut,
    summary="The records of one consent, in revision order",
    responses=_READ_ERRORS,
)
async def consent_history(consent_id: str, principal: Principal, service: Service) -> HistoryOut:
    records = await service.records(principal, consent_id)
    return _history(records)


@router.get(
    "/{consent_id}/fhir",
    response_class=Response,
    summary="One consent as a FHIR R5 Consent resource",
    responses={**_fhir_response("A validated FHIR R5 Consent.", _CONSENT_RESOURCE_EXAMPLE), **_READ_ERRORS},
)
async def consent_fhir(consent_id: str, principal: Principal, service: Service) -> Response:
    consent = await service.get(principal, consent_id)
    return _fhir(fhir.consent_json(consent, service.now()))


@router.post(
    "/{consent_id}/revoke",
    response_model=ConsentOut,
    summary="Revoke a grant; revoking a revoked one changes nothing",
    responses=_closing_responses("The consent is an opposition: lift it instead."),
)
async def revoke(
    consent_id: str,
    principal: Principal,
    service: Service,
    body: Annotated[ClosingRequest | None, Body(openapi_examples=CLOSING_EXAMPLES)] = None,
) -> ConsentOut:
    consent = await service.revoke(principal, consent_id, _reason(body))
    return ConsentOut.of(consent, service.now())
