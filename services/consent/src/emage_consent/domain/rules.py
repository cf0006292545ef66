"""Who may record and read which consents, and what each act appends: pure rules, no I/O.

Roles (ARCHITECTURE.md "Who may do what", the consent part of it):

* a **patient** grants, revokes, opposes and lifts on their own record only (the patient keys the gateway
  forwards). Anyone else's consent, or anyone else's patient key, is *not found*: the answer is the same as
  for a consent that does not exist, so the service is no oracle of other patients' consents;
* a **professional** (radiologist, referring physician, nurse, imaging technician) records a grant, an
  opposition or a revocation the patient expressed at the exam, for a patient with a study at the
  professional's facility, with its provenance: who recorded it and the information given to the patient
  (a text or the code of the information notice, required). Lifting an opposition removes a protection
  the patient asked for, so it is the patient's own act: a professional is refused (403). A patient
  without a study at the professional's facility is *not found*;
* the **DPO** reads every consent and records none (403).

Closing acts are idempotent: revoking a revoked grant, or lifting a lifted opposition, appends nothing.
Revoking an opposition, or lifting a grant, is a conflict (409): the consent exists and the caller may see
it, but the act does not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import ConsentGrantee
from emage_consent.domain.model import (
    PROFESSIONAL_ROLES,
    Consent,
    ConsentRecord,
    InformationGiven,
    Period,
    Recorder,
    to_millisecond,
)


class ConsentRuleError(Exception):
    """A request the rules refuse; the subclass says which answer it gets."""


class NotFoundError(ConsentRuleError):
    """No such consent or patient for this caller (unknown and forbidden look alike)."""


class ForbiddenError(ConsentRuleError):
    """The caller's role may not do this at all."""


class InvalidConsentError(ConsentRuleError):
    """The request is well-formed but cannot be recorded (period, missing information...)."""


class ConflictError(ConsentRuleError):
    """The act does not apply to this consent as it stands."""


class IdempotencyKeyReusedError(InvalidConsentError):
    """An ``Idempotency-Key`` sent again with a different request (422, as the IETF draft
    *The Idempotency-Key HTTP Header Field* asks)."""


NOT_FOUND: Final = "No such consent or patient."


@dataclass(frozen=True, slots=True)
class GrantDraft:
    """A grant as requested: the consent to record once the rules accept it."""

    patient_key: str | None
    grantee: ConsentGrantee
    study_instance_uid: str | None = None
    period: Period = field(default_factory=Period)
    information: InformationGiven | None = None


@dataclass(frozen=True, slots=True)
class OppositionDraft:
    """An opposition as requested: to sharing altogether, or of one study."""

    patient_key: str | None
    study_instance_uid: str | None = None
    period: Period = field(default_factory=Period)
    information: InformationGiven | None = None


@dataclass(frozen=True, slots=True)
class AtFacility:
    """The caller reaches the patient only if the patient has a study (this one, if given) at the facility."""

    facility_finess: str
    study_instance_uid: str | None = None


Reach = Literal["allowed"] | AtFacility
"""What must hold for a caller to reach a patient's consents (anything else raises :class:`NotFoundError`)."""


def is_professional(principal: ForwardedPrincipal) -> bool:
    return principal.role in PROFESSIONAL_ROLES


def recorder_of(principal: ForwardedPrincipal) -> Recorder:
    """The provenance of a record the principal makes."""
    return Recorder(
        subject=principal.subject,
        role=principal.role,
        name=principal.name,
        rpps=principal.rpps,
        facility_finess=principal.facility_finess,
        facility_name=principal.facility_name,
    )


def check_may_write(principal: ForwardedPrincipal) -> None:
    """Refuse a caller who records no consent whatever the patient: the DPO, a professional without a
    facility or an RPPS (provenance names both)."""
    if principal.role == "dpo":
        raise ForbiddenError("The DPO reads consents and records none.")
    if is_professional(principal) and (principal.facility_finess is None or principal.rpps is None):
        raise ForbiddenError("Recording a consent at the exam needs your RPPS and your facility (FINESS).")


def reach(principal: ForwardedPrincipal, patient_key: str, study_instance_uid: str | None = None) -> Reach:
    """Whether the caller reaches ``patient_key``'s consents, or what must be checked first.

    The DPO reaches every patient; a patient their own keys; a professional the patients with a study at
    their facility (that study, when the act is about one).
    """
    if principal.role == "dpo":
        return "allowed"
    if principal.role == "patient":
        if patient_key in principal.patient_keys:
            return "allowed"
        raise NotFoundError(NOT_FOUND)
    if principal.facility_finess is None:
        raise NotFoundError(NOT_FOUND)
    return AtFacility(principal.facility_finess, study_instance_uid)


def subject_patient_key(principal: ForwardedPrincipal, requested: str | None) -> str:
    """The patient a new consent is about: the one requested, or a patient's only key when none is."""
    if requested is not None:
        return requested
    if principal.role == "patient":
        if len(principal.patient_keys) == 1:
            return principal.patient_keys[0]
        if not principal.patient_keys:
            raise NotFoundError("No patient record of yours is known yet.")
        raise InvalidConsentError("You have several patient records: say which one (patient_key).")
    raise InvalidConsentError("patient_key is required: the patient the consent is about.")


def _provenance(principal: ForwardedPrincipal, information: InformationGiven | None) -> Recorder:
    if is_professional(principal) and information is None:
        raise InvalidConsentError(
            "A consent recorded at the exam states the information given to the patient "
            "(information.text or information.notice_code)."
        )
    return recorder_of(principal)


def _check_period(period: Period, now: datetime) -> None:
    defect = period.defect(now)
    if defect is not None:
        raise InvalidConsentError(defect)


def grant(
    principal: ForwardedPrincipal, draft: GrantDraft, *, consent_id: str, now: datetime
) -> ConsentRecord:
    """The record opening a grant (revision 1), once the caller may write and the draft is valid."""
    check_may_write(principal)
    _check_period(draft.period, now)
    recorder = _provenance(principal, draft.information)
    return ConsentRecord(
        consent_id=consent_id,
        revision=1,
        action="grant",
        patient_key=subject_patient_key(principal, draft.patient_key),
        provision="permit",
        status="active",
        grantee=draft.grantee,
        study_instance_uid=draft.study_instance_uid,
        period=draft.period,
        recorded_at=to_millisecond(now),
        recorded_by=recorder,
        information=draft.information,
    )


def oppose(
    principal: ForwardedPrincipal, draft: OppositionDraft, *, consent_id: str, now: datetime
) -> ConsentRecord:
    """The record opening an opposition (revision 1): a ``deny`` naming no grantee."""
    check_may_write(principal)
    _check_period(draft.period, now)
    recorder = _provenance(principal, draft.information)
    return ConsentRecord(
        consent_id=consent_id,
        revision=1,
        action="oppose",
        patient_key=subject_patient_key(principal, draft.patient_key),
        provision="deny",
        status="active",
        grantee=None,
        study_instance_uid=draft.study_instance_uid,
        period=draft.period,
        recorded_at=to_millisecond(now),
        recorded_by=recorder,
        information=draft.information,
    )


def check_may_lift(principal: ForwardedPrincipal) -> None:
    """Only the patient lifts their opposition."""
    check_may_write(principal)
    if principal.role != "patient":
        raise ForbiddenError("Only the patient lifts their opposition.")


def revoke(
    principal: ForwardedPrincipal, consent: Consent, *, now: datetime, reason: str | None = None
) -> ConsentRecord | None:
    """The record revoking a grant, or ``None`` when it is already inactive (idempotent).

    The caller must already reach the consent's patient (:func:`reach`).
    """
    check_may_write(principal)
    if consent.provision != "permit":
        raise ConflictError(f"Consent {consent.consent_id} is an opposition: it is lifted, not revoked.")
    if consent.status == "inactive":
        return None
    return consent.closing("revoke", by=recorder_of(principal), now=now, reason=reason)


def lift(
    principal: ForwardedPrincipal, consent: Consent, *, now: datetime, reason: str | None = None
) -> ConsentRecord | None:
    """The record lifting an opposition, or ``None`` when it is already lifted (idempotent).

    The caller must already reach the consent's patient (:func:`reach`).
    """
    check_may_lift(principal)
    if consent.provision != "deny":
        raise ConflictError(
            f"Consent {consent.consent_id} is a grant, not an opposition: it is revoked, not lifted."
        )
    if consent.status == "inactive":
        return None
    return consent.closing("lift", by=recorder_of(principal), now=now, reason=reason)
