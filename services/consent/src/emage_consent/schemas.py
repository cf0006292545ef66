"""The JSON bodies of the consent API: requests validated on the way in, answers documented in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from emage_common.events import (
    DicomUid,
    FacilityGrantee,
    PatientKey,
    ProfessionalGrantee,
    ShareGrantee,
    Text,
    UtcTimestamp,
)
from emage_consent.domain.model import (
    Channel,
    Consent,
    ConsentAction,
    ConsentRecord,
    ConsentState,
    InformationGiven,
    Period,
    Provision,
    RecordedStatus,
    Recorder,
    Role,
)
from emage_consent.domain.rules import GrantDraft, OppositionDraft

RPPS_EXAMPLE: Final = "10100000057"
FINESS_EXAMPLE: Final = "690000002"
PATIENT_KEY_EXAMPLE: Final = "ins:1.2.250.1.213.1.4.8:180017512345618"
CONSENT_ID_EXAMPLE: Final = "6f1c2d7e-0b7a-4c59-9a51-5f3a3c9f1e20"
STUDY_EXAMPLE: Final = "1.2.826.0.1.3680043.8.498.12345"


def _grantee_kind(value: Any) -> str | None:
    """The grantee's ``kind``, or the one its identifier implies (``rpps``, ``finess``, ``share_id``)."""
    if isinstance(value, dict):
        kind = value.get("kind")
        if kind is not None:
            return str(kind)
        for field, implied in (("rpps", "professional"), ("finess", "facility"), ("share_id", "share")):
            if field in value:
                return implied
        return None
    kind = getattr(value, "kind", None)
    return str(kind) if kind is not None else None


GranteeIn = Annotated[
    Annotated[ProfessionalGrantee, Tag("professional")]
    | Annotated[FacilityGrantee, Tag("facility")]
    | Annotated[ShareGrantee, Tag("share")],
    Discriminator(
        _grantee_kind,
        custom_error_type="grantee",
        custom_error_message="a grantee is a professional (11-digit rpps), a facility (9-character finess) "
        "or the holder of a share (share_id)",
    ),
]
"""Who a grant is for: ``kind`` may be left out when the identifier says it."""

NoticeCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")]
Reason = Annotated[Text, Field(min_length=1, max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class InformationIn(_Body):
    """The information given to the patient before they consented or objected: a text, a notice code, or
    both. Required when a professional records at the exam."""

    text: Annotated[Text, Field(min_length=1, max_length=4000)] | None = None
    notice_code: NoticeCode | None = None
    """The code (and version) of the information notice handed to the patient."""

    @model_validator(mode="after")
    def _something_was_given(self) -> InformationIn:
        if self.text is None and self.notice_code is None:
            raise ValueError("give the information text, the notice code, or both")
        return self

    def domain(self) -> InformationGiven:
        return InformationGiven(text=self.text, notice_code=self.notice_code)


class _Scope(_Body):
    patient_key: PatientKey | None = None
    """The patient (``ins:<oid>:<matricule>`` or ``pid:<issuer>:<patient id>``). A patient with a single
    record may leave it out; professionals always give it."""
    study_instance_uid: DicomUid | None = None
    """The one study concerned; absent: every study of the patient."""
    valid_from: UtcTimestamp | None = None
    """Start of validity (RFC 3339 with offset); absent: from now."""
    valid_until: UtcTimestamp | None = None
    """End of validity, excluded, in the future and after ``valid_from``; absent: until revoked."""
    information: InformationIn | None = None

    def _period(self) -> Period:
        return Period(self.valid_from, self.valid_until)

    def _information(self) -> InformationGiven | None:
        return self.information.domain() if self.information is not None else None


class GrantRequest(_Scope):
    """A patient's consent to sharing with one grantee, outside the facility that imaged them."""

    grantee: GranteeIn

    def draft(self) -> GrantDraft:
        return GrantDraft(
            patient_key=self.patient_key,
            grantee=self.grantee,
            study_instance_uid=self.study_instance_uid,
            period=self._period(),
            information=self._information(),
        )


class OppositionRequest(_Scope):
    """A patient's objection to the sharing of all their studies (or of one)."""

    def draft(self) -> OppositionDraft:
        return OppositionDraft(
            patient_key=self.patient_key,
            study_instance_uid=self.study_instance_uid,
            period=self._period(),
            information=self._information(),
        )


class ClosingRequest(_Body):
    """An optional reason for a revocation or the lifting of an opposition."""

    reason: Reason | None = None


GRANT_EXAMPLES: Final[dict[str, Any]] = {
    "patient": {
        "summary": "A patient lets a radiologist of another facility see all their studies for a year",
        "value": {
            "patient_key": PATIENT_KEY_EXAMPLE,
            "grantee": {"kind": "professional", "rpps": RPPS_EXAMPLE},
            "valid_until": "2026-12-31T23:00:00Z",
        },
    },
    "at_exam": {
        "summary": "A professional records consent obtained at the exam, for one study, to a facility",
        "value": {
            "patient_key": "pid:750000001:IPP-000123",
            "grantee": {"kind": "facility", "finess": FINESS_EXAMPLE},
            "study_instance_uid": STUDY_EXAMPLE,
            "information": {
                "notice_code": "NOTICE-SHARING-v3",
                "text": "Information on sharing your images outside CHU Alpha given orally and in writing.",
            },
        },
    },
}

OPPOSITION_EXAMPLES: Final[dict[str, Any]] = {
    "patient": {
        "summary": "A patient objects to any sharing of their studies",
        "value": {"patient_key": PATIENT_KEY_EXAMPLE},
    },
    "at_exam_one_study": {
        "summary": "A professional records an objection to the sharing of one study, made at the exam",
        "value": {
            "patient_key": "pid:750000001:IPP-000123",
            "study_instance_uid": STUDY_EXAMPLE,
            "information": {"notice_code": "NOTICE-SHARING-v3"},
        },
    },
}

CLOSING_EXAMPLES: Final[dict[str, Any]] = {
    "no_reason": {"summary": "No reason given", "value": {}},
    "reason": {"summary": "With a reason", "value": {"reason": "Second opinion received."}},
}


# --- Answers ------------------------------------------------------------------------------------------------


class RecorderOut(BaseModel):
    """Who made a record (provenance): the patient in the portal, or a professional at the exam."""

    subject: str
    role: Role
    name: str | None = None
    rpps: str | None = None
    facility_finess: str | None = None
    facility_name: str | None = None
    channel: Channel

    @classmethod
    def of(cls, recorder: Recorder) -> RecorderOut:
        return cls(
            subject=recorder.subject,
            role=recorder.role,
            name=recorder.name,
            rpps=recorder.rpps,
            facility_finess=recorder.facility_finess,
            facility_name=recorder.facility_name,
            channel=recorder.channel,
        )


class InformationOut(BaseModel):
    text: str | None = None
    notice_code: str | None = None

    @classmethod
    def of(cls, information: InformationGiven | None) -> InformationOut | None:
        if information is None:
            return None
        return cls(text=information.text, notice_code=information.notice_code)


Grantee = Annotated[ProfessionalGrantee | FacilityGrantee | ShareGrantee, Field(discriminator="kind")]

_CONSENT_EXAMPLE: Final[dict[str, Any]] = {
    "consent_id": CONSENT_ID_EXAMPLE,
    "patient_key": PATIENT_KEY_EXAMPLE,
    "provision": "permit",
    "grantee": {"kind": "professional", "rpps": RPPS_EXAMPLE},
    "study_instance_uid": None,
    "valid_from": None,
    "valid_until": "2026-12-31T23:00:00Z",
    "status": "active",
    "recorded_status": "active",
    "revision": 1,
    "recorded_at": "2025-03-04T09:15:00.123Z",
    "recorded_by": {"subject": "8d1f…", "role": "patient", "channel": "patient_portal"},
    "information": None,
    "updated_at": "2025-03-04T09:15:00.123Z",
    "ended_at": None,
    "ended_by": None,
    "end_reason": None,
}


class ConsentOut(BaseModel):
    """A consent as it stands: the fold of its records, with its status at the time of the answer."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, json_schema_extra={"examples": [_CONSENT_EXAMPLE]}
    )

    consent_id: str
    patient_key: str
    provision: Provision
    """``permit`` (a grant) or ``deny`` (an opposition)."""
    grantee: Grantee | None
    study_instance_uid: str | None
    valid_from: UtcTimestamp | None
    valid_until: UtcTimestamp | None
    status: ConsentState
    """``active``, ``scheduled`` (starts later), ``expired`` (lapsed by itself), ``revoked`` (a grant)
    or ``lifted`` (an opposition)."""
    recorded_status: RecordedStatus
    """FHIR ``Consent.status`` as recorded: ``inactive`` once revoked or lifted."""
    revision: int
    """How many records the consent has: the ``revision`` of its latest ``consent.changed`` event."""
    recorded_at: UtcTimestamp
    recorded_by: RecorderOut
    information: InformationOut | None
    updated_at: UtcTimestamp
    ended_at: UtcTimestamp | None
    ended_by: RecorderOut | None
    end_reason: str | None

    @classmethod
    def of(cls, consent: Consent, now: datetime) -> ConsentOut:
        return cls(
            consent_id=consent.consent_id,
            patient_key=consent.patient_key,
            provision=consent.provision,
            grantee=consent.grantee,
            study_instance_uid=consent.study_instance_uid,
            valid_from=consent.period.valid_from,
            valid_until=consent.period.valid_until,
            status=consent.state(now),
            recorded_status=consent.status,
            revision=consent.revision,
            recorded_at=consent.created_at,
            recorded_by=RecorderOut.of(consent.created_by),
            information=InformationOut.of(consent.information),
            updated_at=consent.updated_at,
            ended_at=consent.ended_at,
            ended_by=RecorderOut.of(consent.ended_by) if consent.ended_by is not None else None,
            end_reason=consent.end_reason,
        )


class ConsentListOut(BaseModel):
    """A page of consents, newest first, with how many match in all."""

    items: list[ConsentOut]
    total: int
    limit: int
    offset: int


class RecordOut(BaseModel):
    """One appended record: the act, who made it, and the consent's state after it."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "consent_id": CONSENT_ID_EXAMPLE,
                    "revision": 2,
                    "action": "revoke",
                    "patient_key": PATIENT_KEY_EXAMPLE,
                    "provision": "permit",
                    "status": "inactive",
                    "grantee": {"kind": "professional", "rpps": RPPS_EXAMPLE},
                    "study_instance_uid": None,
                    "valid_from": None,
                    "valid_until": "2026-12-31T23:00:00Z",
                    "recorded_at": "2025-04-01T08:00:00.456Z",
                    "recorded_by": {"subject": "8d1f…", "role": "patient", "channel": "patient_portal"},
                    "information": None,
                    "reason": "Second opinion received.",
                }
            ]
        },
    )

    consent_id: str
    revision: int
    action: ConsentAction
    patient_key: str
    provision: Provision
    status: RecordedStatus
    grantee: Grantee | None
    study_instance_uid: str | None
    valid_from: UtcTimestamp | None
    valid_until: UtcTimestamp | None
    recorded_at: UtcTimestamp
    recorded_by: RecorderOut
    information: InformationOut | None
    reason: str | None

    @classmethod
    def of(cls, record: ConsentRecord) -> RecordOut:
        return cls(
            consent_id=record.consent_id,
            revision=record.revision,
            action=record.action,
            patient_key=record.patient_key,
            provision=record.provision,
            status=record.status,
            grantee=record.grantee,
            study_instance_uid=record.study_instance_uid,
            valid_from=record.period.valid_from,
            valid_until=record.period.valid_until,
            recorded_at=record.recorded_at,
            recorded_by=RecorderOut.of(record.recorded_by),
            information=InformationOut.of(record.information),
            reason=record.reason,
        )


class HistoryOut(BaseModel):
    """Every record of the consents asked for, in the order they were appended."""

    records: list[RecordOut]
