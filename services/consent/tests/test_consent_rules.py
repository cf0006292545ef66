"""Who may record and read which consents, and what each act appends: the rules, table by table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import FacilityGrantee, ProfessionalGrantee
from emage_consent.domain import rules
from emage_consent.domain.model import Consent, InformationGiven, Period
from emage_consent.domain.rules import (
    AtFacility,
    ConflictError,
    ConsentRuleError,
    ForbiddenError,
    GrantDraft,
    InvalidConsentError,
    NotFoundError,
    OppositionDraft,
)

NOW = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)
CHU_ALPHA = "750000001"
MINE, MY_INS, OTHERS = (
    "pid:750000001:IPP-0001",
    "ins:1.2.250.1.213.1.4.10:180017512345618",
    "pid:750000001:IPP-9",
)
INFORMED = InformationGiven(notice_code="NOTICE-SHARING-v3")

PATIENT = ForwardedPrincipal(subject="p1", role="patient", patient_keys=(MINE,))
PATIENT_TWO_RECORDS = ForwardedPrincipal(subject="p1", role="patient", patient_keys=(MINE, MY_INS))
PATIENT_NO_RECORD = ForwardedPrincipal(subject="p0", role="patient")
DPO = ForwardedPrincipal(subject="dpo", role="dpo")


def pro(role: str, *, rpps: str | None = "10100000016", finess: str | None = CHU_ALPHA) -> ForwardedPrincipal:
    return ForwardedPrincipal(subject=f"s-{role}", role=role, rpps=rpps, facility_finess=finess)  # type: ignore[arg-type]


RADIOLOGIST, REFERRER, NURSE, TECHNICIAN = (
    pro("radiologist"),
    pro("referring_physician"),
    pro("nurse"),
    pro("imaging_technician"),
)


def grant_draft(patient_key: str | None = MINE, **changes: object) -> GrantDraft:
    fields: dict[str, object] = {
        "patient_key": patient_key,
        "grantee": ProfessionalGrantee(rpps="10100000057"),
    }
    fields.update(changes)
    return GrantDraft(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("principal", "patient_key", "expected"),
    [
        (PATIENT, MINE, "allowed"),
        (PATIENT, OTHERS, NotFoundError),
        (PATIENT_TWO_RECORDS, MY_INS, "allowed"),
        (PATIENT_NO_RECORD, MINE, NotFoundError),
        (DPO, OTHERS, "allowed"),
        (RADIOLOGIST, OTHERS, AtFacility(CHU_ALPHA)),
        (NURSE, MINE, AtFacility(CHU_ALPHA)),
        (pro("radiologist", finess=None), MINE, NotFoundError),
    ],
)
def test_who_reaches_a_patients_consents(
    principal: ForwardedPrincipal, patient_key: str, expected: object
) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            rules.reach(principal, patient_key)
    else:
        assert rules.reach(principal, patient_key) == expected


def test_a_professional_acting_on_one_study_reaches_the_patient_through_that_study() -> None:
    assert rules.reach(REFERRER, MINE, "1.2.3") == AtFacility(CHU_ALPHA, "1.2.3")


@pytest.mark.parametrize(
    ("principal", "draft", "outcome"),
    [
        (PATIENT, grant_draft(), "recorded"),
        (PATIENT, grant_draft(None), "recorded"),
        (PATIENT_TWO_RECORDS, grant_draft(None), InvalidConsentError),
        (PATIENT_NO_RECORD, grant_draft(None), NotFoundError),
        (RADIOLOGIST, grant_draft(information=INFORMED), "recorded"),
        (REFERRER, grant_draft(information=InformationGiven(text="Told orally.")), "recorded"),
        (NURSE, grant_draft(information=INFORMED), "recorded"),
        (TECHNICIAN, grant_draft(information=INFORMED), "recorded"),
        (RADIOLOGIST, grant_draft(), InvalidConsentError),
        (RADIOLOGIST, grant_draft(None, information=INFORMED), InvalidConsentError),
        (pro("nurse", rpps=None), grant_draft(information=INFORMED), ForbiddenError),
        (pro("nurse", finess=None), grant_draft(information=INFORMED), ForbiddenError),
        (DPO, grant_draft(information=INFORMED), ForbiddenError),
        (
            PATIENT,
            grant_draft(period=Period(NOW + timedelta(days=2), NOW + timedelta(days=1))),
            InvalidConsentError,
        ),
        (PATIENT, grant_draft(period=Period(None, NOW - timedelta(seconds=1))), InvalidConsentError),
        (PATIENT, grant_draft(period=Period(NOW + timedelta(days=1))), "recorded"),
    ],
)
def test_who_may_grant_and_with_what(
    principal: ForwardedPrincipal, draft: GrantDraft, outcome: str | type[ConsentRuleError]
) -> None:
    if outcome != "recorded":
        assert isinstance(outcome, type)
        with pytest.raises(outcome):
            rules.grant(principal, draft, consent_id="c", now=NOW)
        return
    record = rules.grant(principal, draft, consent_id="c", now=NOW)
    assert (record.revision, record.action, record.provision, record.status) == (
        1,
        "grant",
        "permit",
        "active",
    )
    assert record.patient_key == MINE
    assert record.grantee == draft.grantee
    assert record.recorded_by.subject == principal.subject
    assert record.recorded_by.channel == ("patient_portal" if principal.role == "patient" else "at_exam")
    assert record.information == draft.information


def test_an_opposition_is_a_deny_naming_no_grantee_and_needs_the_information_at_the_exam() -> None:
    record = rules.oppose(PATIENT, OppositionDraft(None), consent_id="o", now=NOW)
    assert (record.action, record.provision, record.grantee, record.study_instance_uid) == (
        "oppose",
        "deny",
        None,
        None,
    )
    study_wide = rules.oppose(
        NURSE, OppositionDraft(MINE, "1.2.3", information=INFORMED), consent_id="o2", now=NOW
    )
    assert (study_wide.study_instance_uid, study_wide.recorded_by.facility_finess) == ("1.2.3", CHU_ALPHA)
    with pytest.raises(InvalidConsentError, match="information"):
        rules.oppose(NURSE, OppositionDraft(MINE), consent_id="o3", now=NOW)
    with pytest.raises(ForbiddenError):
        rules.oppose(DPO, OppositionDraft(MINE), consent_id="o4", now=NOW)


GRANT = Consent.opened(rules.grant(PATIENT, grant_draft(), consent_id="g", now=NOW))
TO_FACILITY = Consent.opened(
    rules.grant(PATIENT, grant_draft(grantee=FacilityGrantee(finess="690000002")), consent_id="f", now=NOW)
)
OPPOSITION = Consent.opened(rules.oppose(PATIENT, OppositionDraft(MINE), consent_id="o", now=NOW))
REVOKED = GRANT.after(GRANT.closing("revoke", by=rules.recorder_of(PATIENT), now=NOW, reason=None))
LIFTED = OPPOSITION.after(OPPOSITION.closing("lift", by=rules.recorder_of(PATIENT), now=NOW, reason=None))


@pytest.mark.parametrize(
    ("principal", "consent", "outcome"),
    [
        (PATIENT, GRANT, "appended"),
        (PATIENT, TO_FACILITY, "appended"),
        (RADIOLOGIST, GRANT, "appended"),
        (PATIENT, REVOKED, "unchanged"),
        (PATIENT, OPPOSITION, ConflictError),
        (DPO, GRANT, ForbiddenError),
    ],
)
def test_revoking(principal: ForwardedPrincipal, consent: Consent, outcome: object) -> None:
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            rules.revoke(principal, consent, now=NOW)
        return
    record = rules.revoke(principal, consent, now=NOW, reason="no longer")
    if outcome == "unchanged":
        assert record is None
        return
    assert record is not None
    assert (record.action, record.status, record.revision, record.reason) == (
        "revoke",
        "inactive",
        2,
        "no longer",
    )


@pytest.mark.parametrize(
    ("principal", "consent", "outcome"),
    [
        (PATIENT, OPPOSITION, "appended"),
        (PATIENT, LIFTED, "unchanged"),
        (PATIENT, GRANT, ConflictError),
        (RADIOLOGIST, OPPOSITION, ForbiddenError),
        (NURSE, OPPOSITION, ForbiddenError),
        (DPO, OPPOSITION, ForbiddenError),
    ],
)
def test_lifting_an_opposition_is_the_patients_own_act(
    principal: ForwardedPrincipal, consent: Consent, outcome: object
) -> None:
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            rules.lift(principal, consent, now=NOW)
        return
    record = rules.lift(principal, consent, now=NOW)
    if outcome == "unchanged":
        assert record is None
        return
    assert record is not None
    assert (record.action, record.provision, record.status, record.revision) == (
        "lift",
        "deny",
        "inactive",
        2,
    )
