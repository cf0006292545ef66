"""HTTP entrypoints of the audit service: ``/api/v1/audit``, reached only through the access gateway.

The gateway authenticates the caller, decides whether they may read the trail at all (and audits that
decision), and forwards the request with the caller in ``X-Emage-Principal``. This service still applies its
own rule on every route: a patient reads only the records about themselves (their own patient keys), the
DPO reads and verifies everything, nobody else reads anything. Nothing here edits a record; the only
deletion is the DPO's explicit retention purge, itself recorded in the chain.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict

from emage_audit import __version__
from emage_audit.domain.chain import ChainRecord
from emage_audit.domain.checkpoints import public_key_bytes
from emage_audit.domain.rendering import AccessLogLine, Language
from emage_audit.domain.verification import VerificationReport
from emage_audit.handlers import audit_lifespan
from emage_audit.service import Alert, AuditService, RecordQuery
from emage_audit.settings import Settings
from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal
from emage_common.runtime import build_service_app

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

TOTAL_COUNT_HEADER: Final = "X-Total-Count"
FHIR_JSON: Final = "application/fhir+json"
_PROBLEM: Final[dict[str, Any]] = {"content": {"application/problem+json": {}}}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No principal forwarded by the gateway.", **_PROBLEM},
    403: {"description": "The caller's role may not do this.", **_PROBLEM},
}


# --- Who is asking ----------------------------------------------------------------------------------------


async def current_principal(request: Request) -> ForwardedPrincipal:
    """The caller the gateway authenticated; 401 without a valid ``X-Emage-Principal``."""
    header = request.headers.get(PRINCIPAL_HEADER)
    if header is None:
        raise HTTPException(
            401, "No authenticated principal: the audit trail is reached through the gateway."
        )
    try:
        return ForwardedPrincipal.decode(header)
    except ValueError:
        raise HTTPException(401, "The forwarded principal is not valid.") from None


Principal = Annotated[ForwardedPrincipal, Depends(current_principal)]


def readable_patients(principal: ForwardedPrincipal) -> tuple[str, ...] | None:
    """Whose records the caller may read: a patient their own keys, the DPO everyone's (None)."""
    if principal.role == "dpo":
        return None
    if principal.role == "patient":
        return principal.patient_keys
    raise HTTPException(403, "Only patients (their own records) and the DPO read the audit trail.")


def require_dpo(principal: ForwardedPrincipal) -> None:
    if principal.role != "dpo":
        raise HTTPException(403, "Only the DPO may do this.")


async def _service(request: Request) -> AuditService:
    service: AuditService = request.app.state.audit
    return service


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Service = Annotated[AuditService, Depends(_service)]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="How many matches to skip.")]
LanguageQuery = Annotated[Language, Query(description="`fr` (default) or `en`.")]
WordedLimit = Annotated[int, Query(ge=1, le=500)]
"""Page size of what is worded for a reader (access log lines, alerts)."""


# --- Response shapes --------------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RecordOut(_Out):
    """One record of the chain, as stored."""

    seq: int
    event_id: str
    type: str
    time: str
    recorded_at: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: ChainRecord) -> RecordOut:
        return cls(
            seq=record.seq,
            event_id=record.event_id,
            type=record.type,
            time=record.time,
            recorded_at=record.recorded_at,
            data=dict(record.data),
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class WhoOut(_Out):
    name: str | None
    profession: str
    facility: str | None
    is_you: bool


class AccessLogEntryOut(_Out):
    """One line of a patient's access log, in words."""

    seq: int
    time: str
    """Paris time, ISO 8601 with its UTC offset."""
    when: str
    who: WhoOut
    action: str
    study_instance_uid: str | None
    exam: str | None
    basis: str | None
    decision: str
    break_glass: bool
    justification: str | None
    text: str

    @classmethod
    def of(cls, line: AccessLogLine) -> AccessLogEntryOut:
        return cls(
            seq=line.seq,
            time=line.time,
            when=line.when,
            who=WhoOut(
                name=line.who.name,
                profession=line.who.profession,
                facility=line.who.facility,
                is_you=line.who.is_you,
            ),
            action=line.action,
            study_instance_uid=line.study_instance_uid,
            exam=line.exam,
            basis=line.basis,
            decision=line.decision,
            break_glass=line.break_glass,
            justification=line.justification,
            text=line.text,
        )


class AccessLogOut(_Out):
    total: int
    entries: list[AccessLogEntryOut]


class BreakOut(_Out):
    seq: int
    reason: str
    detail: str


class VerificationOut(_Out):
    """The chain recomputed up to its head; ``broken`` names the first record that is not as appended."""

    valid: bool
    records_checked: int
    first_seq: int | None
    last_seq: int | None
    head_seq: int
    checkpoints_checked: int
    anchored_through: int | None
    broken: BreakOut | None

    @classmethod
    def of(cls, report: VerificationReport) -> VerificationOut:
        broken = report.broken
        return cls(
            valid=report.valid,
            records_checked=report.records_checked,
            first_seq=report.first_seq,
            last_seq=report.last_seq,
            head_seq=report.head_seq,
            checkpoints_checked=report.checkpoints_checked,
            anchored_through=report.anchored_through,
            broken=None
            if broken is None
            else BreakOut(seq=broken.seq, reason=broken.reason, detail=broken.detail),
        )


class AlertOut(_Out):
    """A break-the-glass episode: a professional's emergency access to a study without consent."""

    alert_id: str
    patient_key: str | None
    study_instance_uid: str | None
    principal: dict[str, Any]
    justification: str | None
    first_at: datetime
    last_at: datetime
    first_seq: int
    last_seq: int
    records: int
    text: str

    @classmethod
    def of(cls, alert: Alert, text: str) -> AlertOut:
        return cls(
            alert_id=alert.alert_id,
            patient_key=alert.patient_key,
            study_instance_uid=alert.study_instance_uid,
            principal=dict(alert.principal),
            justification=alert.justification,
            first_at=alert.first_at,
            last_at=alert.last_at,
            first_seq=alert.first_seq,
            last_seq=alert.last_seq,
            records=alert.records,
            text=text,
        )


class AlertsOut(_Out):
    total: int
    alerts: list[AlertOut]


class CheckpointOut(_Out):
    seq: int
    hash: str
    recorded_at: str
    signed_at: str
    key_id: str
    signature: str


class CheckpointsOut(_Out):
    """The signed checkpoints, and the public keys (raw Ed25519, base64) anyone can verify them with."""

    public_keys: dict[str, str]
    checkpoints: list[CheckpointOut]


class PurgeOut(_Out):
    through_seq: int | None
    records_purged: int
    purge_record_seq: int | None


# --- Routes -----------------------------------------------------------------------------------------------


class RecordFilters:
    """The DPO's search conditions (a patient's are narrowed to their own records)."""

    def __init__(
        self,
        patient_key: Annotated[
            str | None, Query(max_length=256, description="The patient's platform key.")
        ] = None,
        study: Annotated[str | None, Query(max_length=64, description="A Study Instance UID.")] = None,
        subject: Annotated[str | None, Query(max_length=256, description="Who acted (OIDC subject).")] = None,
        facility: Annotated[str | None, Query(max_length=9, description="FINESS of the facility.")] = None,
        decision: Annotated[Literal["allow", "deny"] | None, Query()] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        type_: Annotated[str | None, Query(alias="type", max_length=128, description="Event type.")] = None,
        since: Annotated[
            AwareDatetime | None, Query(alias="from", description="From this instant on.")
        ] = None,
        until: Annotated[AwareDatetime | None, Query(alias="to", description="Before this instant.")] = None,
        break_glass: Annotated[bool | None, Query(description="Only break-the-glass accesses.")] = None,
    ) -> None:
        self._query = RecordQuery(
            patient_key=patient_key,
            study=study,
            subject=subject,
            facility=facility,
            decision=decision,
            action=action,
            type=type_,
            since=since,
            until=until,
            break_glass=break_glass,
        )

    def query(self, patients: tuple[str, ...] | None) -> RecordQuery:
        """The conditions, narrowed to ``patients`` (None: every patient)."""
        return replace(self._query, patient_keys=patients)


Filters = Annotated[RecordFilters, Depends()]


def _page_limit(request: Request, limit: int | None) -> int:
    maximum = _settings(request).exports_page_limit
    return maximum if limit is None else min(limit, maximum)


class RecordSearch:
    """One page of a search of the trail: the filters narrowed to what the caller may read, and the paging."""

    def __init__(
        self,
        request: Request,
        principal: Principal,
        filters: Filters,
        limit: Annotated[int | None, Query(ge=1)] = None,
        offset: Offset = 0,
    ) -> None:
        self.query = filters.query(readable_patients(principal))
        self.offset = offset
        self.limit = _page_limit(request, limit)


Search = Annotated[RecordSearch, Depends()]


@router.get(
    "/me",
    response_model=AccessLogOut,
    summary="My access log: who saw my exams, when, and on what basis (patients)",
    responses=_ERRORS,
)
async def my_access_log(
    response: Response,
    principal: Principal,
    service: Service,
    lang: LanguageQuery = "fr",
    include_denied: Annotated[bool, Query(description="Also the refused attempts.")] = False,
    limit: WordedLimit = 50,
    offset: Offset = 0,
) -> AccessLogOut:
    if principal.role != "patient":
        raise HTTPException(403, "The access log is the patient's own; the DPO searches /records.")
    total, lines = await service.access_log(
        principal.patient_keys,
        reader_subject=principal.subject,
        lang=lang,
        include_denied=include_denied,
        offset=offset,
        limit=limit,
    )
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return AccessLogOut(total=total, entries=[AccessLogEntryOut.of(line) for line in lines])


@router.get(
    "/records",
    response_model=list[RecordOut],
    summary="Search the trail, most recent first; the total is in X-Total-Count",
    responses=_ERRORS,
)
async def records(response: Response, service: Service, search: Search) -> list[RecordOut]:
    total, found = await service.search(search.query, offset=search.offset, limit=search.limit)
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [RecordOut.of(record) for record in found]


@router.get(
    "/fhir",
    summary="The matching records as a FHIR R4 searchset Bundle of AuditEvents",
    response_class=Response,
    responses={200: {"description": "A Bundle.", "content": {FHIR_JSON: {}}}, **_ERRORS},
)
async def fhir(service: Service, search: Search) -> Response:
    bundle = await service.fhir_bundle(search.query, offset=search.offset, limit=search.limit)
    return Response(
        bundle.model_dump_json(), media_type=FHIR_JSON, headers={TOTAL_COUNT_HEADER: str(bundle.total)}
    )


async def verify(principal: Principal, service: Service) -> VerificationOut:
    require_dpo(principal)
    return VerificationOut.of(await service.verify())


for _method in ("GET", "POST"):
    # One OpenAPI operation per method (a shared one would repeat its operation id).
    router.add_api_route(
        "/verify",
        verify,
        methods=[_method],
        operation_id=f"verify_{_method.lower()}",
        response_model=VerificationOut,
        summary="Recompute the chain and its signed checkpoints; name the first broken record (DPO)",
        responses=_ERRORS,
    )


@router.get(
    "/alerts",
    response_model=AlertsOut,
    summary="Break-the-glass alerts, most recent first (a patient's own, or all for the DPO)",
    responses=_ERRORS,
)
async def alerts(
    response: Response,
    principal: Principal,
    service: Service,
    lang: LanguageQuery = "fr",
    limit: WordedLimit = 50,
    offset: Offset = 0,
) -> AlertsOut:
    total, found = await service.alerts(readable_patients(principal), lang=lang, offset=offset, limit=limit)
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return AlertsOut(total=total, alerts=[AlertOut.of(alert, text) for alert, text in found])


@router.get(
    "/checkpoints",
    response_model=CheckpointsOut,
    summary="The signed checkpoints and the keys that verify them (DPO)",
    responses=_ERRORS,
)
async def checkpoints(principal: Principal, service: Service) -> CheckpointsOut:
    require_dpo(principal)
    found = await service.store.checkpoints()
    return CheckpointsOut(
        public_keys={
            service.signer.key_id: base64.b64encode(public_key_bytes(service.signer.public_key)).decode(
                "ascii"
            )
        },
        checkpoints=[
            CheckpointOut(
                seq=c.seq,
                hash=c.hash,
                recorded_at=c.recorded_at,
                signed_at=c.signed_at,
                key_id=c.key_id,
                signature=c.signature,
            )
            for c in sorted(found.values(), key=lambda c: c.seq)
        ],
    )


@router.post(
    "/purge",
    response_model=PurgeOut,
    summary="Purge the whole segments past the retention period; the purge is itself recorded (DPO)",
    responses=_ERRORS,
)
async def purge(principal: Principal, service: Service) -> PurgeOut:
    require_dpo(principal)
    result = await service.purge(principal.model_dump(include={"subject", "role", "name"}, exclude_none=True))
    return PurgeOut(
        through_seq=result.through_seq,
        records_purged=result.records_purged,
        purge_record_seq=None if result.record is None else result.record.seq,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The audit app: the domain-topic consumer, checkpoints, syslog export and ``/api/v1/audit``."""
    settings = settings or Settings()
    return build_service_app(
        settings, version=__version__, routers=[router], service_lifespan=audit_lifespan(settings)
    )
