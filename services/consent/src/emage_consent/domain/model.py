"""Consents and oppositions as an append-only history of records, in the shape of FHIR R5 Consent.

A *consent* is one FHIR Consent: a patient's ``permit`` (a grant: this professional, this facility or the
holder of this share may see one study or all the patient's studies, within a period) or ``deny`` (an
opposition: the patient objects to the sharing of one study or of all their studies). Each act on it
appends one :class:`ConsentRecord`: ``grant`` or ``oppose`` opens it (revision 1), ``revoke`` (a grant) or
``lift`` (an opposition) closes it. Records are never changed; the :class:`Consent` is their fold.

Validity periods are half-open, ``valid_from <= now < valid_until``, as the access gateway's consent view
reads them: a consent lapses by itself at its end, without a record or an event (its derived
:attr:`Consent.state` becomes ``expired``).

Instants are kept to the millisecond, the precision MongoDB stores, so that a record read back equals the
record written and the event published from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from emage_common.events import ConsentChanged, ConsentGrantee

Provision = Literal["permit", "deny"]
"""FHIR R5 ``Consent.decision``: ``permit`` grants access, ``deny`` opposes it."""

RecordedStatus = Literal["active", "inactive"]
"""FHIR ``Consent.status`` as recorded: ``inactive`` once revoked or lifted."""

ConsentAction = Literal["grant", "oppose", "revoke", "lift"]
"""What one record did: open a grant, open an opposition, revoke a grant, lift an opposition."""

ConsentState = Literal["active", "scheduled", "expired", "revoked", "lifted"]
"""The status a reader sees at an instant: recorded status and validity period together."""

Role = Literal["radiologist", "referring_physician", "nurse", "imaging_technician", "patient", "dpo"]

PROFESSIONAL_ROLES: Final[frozenset[Role]] = frozenset(
    {"radiologist", "referring_physician", "nurse", "imaging_technician"}
)
"""Roles that record a consent obtained at the exam, for the patients of their facility."""

Channel = Literal["patient_portal", "at_exam"]
"""How a record was made: by the patient themself, or by a professional with the patient at the exam."""


def to_millisecond(instant: datetime) -> datetime:
    """``instant`` truncated to the millisecond (MongoDB's precision)."""
    return instant.replace(microsecond=instant.microsecond - instant.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class Period:
    """When a consent applies: ``valid_from <= now < valid_until``; ``None`` leaves that side open."""

    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("valid_from", "valid_until"):
            instant: datetime | None = getattr(self, name)
            if instant is not None:
                if instant.tzinfo is None:
                    raise ValueError(f"{name} must carry a UTC offset")
                object.__setattr__(self, name, to_millisecond(instant))

    def defect(self, now: datetime) -> str | None:
        """Why this period cannot be recorded at ``now``, or ``None``."""
        start, end = self.valid_from, self.valid_until
        if start is not None and end is not None and end <= start:
            return "valid_until must be after valid_from"
        if end is not None and end <= now:
            return "valid_until must be in the future: a consent is not recorded already expired"
        return None

    def started(self, now: datetime) -> bool:
        return self.valid_from is None or self.valid_from <= now

    def ended(self, now: datetime) -> bool:
        return self.valid_until is not None and self.valid_until <= now


@dataclass(frozen=True, slots=True)
class InformationGiven:
    """What the patient was told before consenting or objecting: a text, the code of a notice, or both."""

    text: str | None = None
    notice_code: str | None = None

    def __post_init__(self) -> None:
        if self.text is None and self.notice_code is None:
            raise ValueError("the information given is a text or the code of an information notice")


@dataclass(frozen=True, slots=True)
class Recorder:
    """Who made a record, as the gateway authenticated them (provenance)."""

    subject: str
    role: Role
    name: str | None = None
    rpps: str | None = None
    facility_finess: str | None = None
    facility_name: str | None = None

    @property
    def channel(self) -> Channel:
        return "patient_portal" if self.role == "patient" else "at_exam"


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One act on a consent, appended and never changed; it carries the consent's whole state after it."""

    consent_id: str
    revision: int
    """1 for the record that opened the consent, then +1 per record: the consent's record count."""
    action: ConsentAction
    patient_key: str
    provision: Provision
    status: RecordedStatus
    grantee: ConsentGrantee | None
    """Who a grant is for; ``None`` for an opposition (to sharing altogether, or of one study)."""
    study_instance_uid: str | None
    """The one study concerned, or ``None`` for every study of the patient."""
    period: Period
    recorded_at: datetime
    recorded_by: Recorder
    information: InformationGiven | None = None
    """What the patient was told (required when a professional records a grant or opposition)."""
    reason: str | None = None
    """Why a consent was revoked or an opposition lifted, when the actor said."""

    def change(self) -> ConsentChanged:
        """The ``consent.changed`` payload announcing this record."""
        return ConsentChanged(
            consent_id=self.consent_id,
            revision=self.revision,
            patient_key=self.patient_key,
            status=self.status,
            provision=self.provision,
            grantee=self.grantee,
            study_instance_uid=self.study_instance_uid,
            valid_from=self.period.valid_from,
            valid_until=self.period.valid_until,
            changed_at=self.recorded_at,
        )


@dataclass(frozen=True, slots=True)
class Consent:
    """The current state of one consent: the fold of its records."""

    consent_id: str
    patient_key: str
    provision: Provision
    grantee: ConsentGrantee | None
    study_instance_uid: str | None
    period: Period
    status: RecordedStatus
    revision: int
    created_at: datetime
    created_by: Recorder
    information: InformationGiven | None
    updated_at: datetime
    ended_at: datetime | None = None
    ended_by: Recorder | None = None
    end_reason: str | None = None

    @classmethod
    def opened(cls, record: ConsentRecord) -> Consent:
        """The consent its first record (a grant or an opposition) opens."""
        if record.revision != 1 or record.action not in ("grant", "oppose"):
            raise ValueError("a consent is opened by a grant or an opposition at revision 1")
        return cls(
            consent_id=record.consent_id,
            patient_key=record.patient_key,
            provision=record.provision,
            grantee=record.grantee,
            study_instance_uid=record.study_instance_uid,
            period=record.period,
            status=record.status,
            revision=1,
            created_at=record.recorded_at,
            created_by=record.recorded_by,
            information=record.information,
            updated_at=record.recorded_at,
        )

    def after(self, record: ConsentRecord) -> Consent:
        """This consent once ``record`` (its next revision) is appended."""
        if record.consent_id != self.consent_id or record.revision != self.revision + 1:
            raise ValueError(f"record {record.consent_id}#{record.revision} does not follow {self.revision}")
        ended = record.status == "inactive" and self.status == "active"
        return replace(
            self,
            status=record.status,
            period=record.period,
            revision=record.revision,
            updated_at=record.recorded_at,
            ended_at=record.recorded_at if ended else self.ended_at,
            ended_by=record.recorded_by if ended else self.ended_by,
            end_reason=record.reason if ended else self.end_reason,
        )

    @classmethod
    def fold(cls, records: Iterable[ConsentRecord]) -> Consent:
        """The state the records of one consent, in revision order, lead to."""
        iterator = iter(records)
        consent = cls.opened(next(iterator))
        for record in iterator:
            consent = consent.after(record)
        return consent

    def state(self, now: datetime) -> ConsentState:
        """What a reader sees at ``now``: revoked or lifted, else expired, scheduled or active."""
        if self.status == "inactive":
            return "revoked" if self.provision == "permit" else "lifted"
        if self.period.ended(now):
            return "expired"
        if not self.period.started(now):
            return "scheduled"
        return "active"

    def closing(
        self, action: ConsentAction, *, by: Recorder, now: datetime, reason: str | None
    ) -> ConsentRecord:
        """The record that makes this consent inactive (a revocation or a lift)."""
        return ConsentRecord(
            consent_id=self.consent_id,
            revision=self.revision + 1,
            action=action,
            patient_key=self.patient_key,
            provision=self.provision,
            status="inactive",
            grantee=self.grantee,
            study_instance_uid=self.study_instance_uid,
            period=self.period,
            recorded_at=to_millisecond(now),
            recorded_by=by,
            reason=reason,
        )
