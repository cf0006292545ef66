"""The policy decision point against the role table of ARCHITECTURE.md, written out as explicit tables.

The main matrix is every persona, situation and action on one study of facility A: each row lists what
the persona may do in that situation and on what basis; every action a row does not list must be denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emage_access.domain.consent_view import (
    ConsentGrant,
    InMemoryConsentView,
    Opposition,
    PatientConsents,
)
from emage_access.domain.policy import (
    DEFAULT_SETTINGS,
    IMAGE_ACTIONS,
    Action,
    BreakGlass,
    Decision,
    PolicySettings,
    Share,
    StudyAttributes,
    StudyStatus,
    decide,
    search_scope,
)
from emage_access.domain.principal import Principal, Role
from emage_common.events import (
    ConsentChanged,
    FacilityGrantee,
    PatientIdentity,
    ProfessionalGrantee,
    ShareGrantee,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

FACILITY_A = "750000001"
FACILITY_B = "690000002"

P1 = "ins:1.2.250.1.213.1.4.10:285047505612322"
P2 = "ins:1.2.250.1.213.1.4.10:162116912304526"

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY_UID = "1.2.826.0.1.3680043.8.498.2"


def _patient(key_matricule: str, patient_id: str, issuer: str) -> PatientIdentity:
    return PatientIdentity.model_validate(
        {
            "patient_id": patient_id,
            "issuer_of_patient_id": issuer,
            "ins": {"matricule": key_matricule, "oid": "1.2.250.1.213.1.4.10"},
        }
    )


PERSONAS: dict[str, Principal] = {
    "radiologist-a": Principal("s1", Role.RADIOLOGIST, rpps="10100000016", facility_finess=FACILITY_A),
    "referrer-a (ordered it)": Principal(
        "s2", Role.REFERRING_PHYSICIAN, rpps="10100000024", facility_finess=FACILITY_A
    ),
    "referrer-a2 (did not order)": Principal(
        "s3", Role.REFERRING_PHYSICIAN, rpps="10100000099", facility_finess=FACILITY_A
    ),
    "nurse-a": Principal("s4", Role.NURSE, rpps="10100000032", facility_finess=FACILITY_A),
    "technician-a (acquired it)": Principal(
        "s5", Role.IMAGING_TECHNICIAN, rpps="10100000040", facility_finess=FACILITY_A
    ),
    "technician-a2 (did not)": Principal(
        "s6", Role.IMAGING_TECHNICIAN, rpps="10100000107", facility_finess=FACILITY_A
    ),
    "radiologist-b": Principal("s7", Role.RADIOLOGIST, rpps="10100000057", facility_finess=FACILITY_B),
    "referrer-b": Principal("s8", Role.REFERRING_PHYSICIAN, rpps="10100000065", facility_finess=FACILITY_B),
    "nurse-b": Principal("s9", Role.NURSE, rpps="10100000073", facility_finess=FACILITY_B),
    "technician-b": Principal("s10", Role.IMAGING_TECHNICIAN, rpps="10100000081", facility_finess=FACILITY_B),
    "patient-1": Principal(
        "s11", Role.PATIENT, patient=_patient("285047505612322", "IPP-A-000001", FACILITY_A)
    ),
    "patient-2": Principal(
        "s12", Role.PATIENT, patient=_patient("162116912304526", "IPP-B-000002", FACILITY_B)
    ),
    "dpo": Principal("s13", Role.DPO),
}

# The study every matrix row is about: patient-1's, at facility A, ordered by referrer-a, acquired by
# technician-a, not yet released.
STUDY = StudyAttributes(
    study_instance_uid=STUDY_UID,
    facility_finess=FACILITY_A,
    patient_key=P1,
    referring_physician_rpps="10100000024",
    performing_technician_rpps=frozenset({"10100000040"}),
    status=StudyStatus.UNRELEASED,
)

# --- Situations: what patient-1 consented to, what was shared, what glass was broken ------------------------


@dataclass
class World:
    consent: InMemoryConsentView = field(default_factory=InMemoryConsentView)
    shares: list[Share] = field(default_factory=list)
    break_glass: list[BreakGlass] = field(default_factory=list)


def _rpps_of(principal: Principal) -> str:
    # Patients and the DPO have no RPPS: their situations name radiologist-b, which must not matter.
    return principal.rpps or "10100000057"


def _grant(
    grantee: Any, *, active: bool = True, until: datetime | None = None, study: str | None = None
) -> PatientConsents:
    grant = ConsentGrant(
        consent_id="c1", grantee=grantee, study_instance_uid=study, valid_until=until, active=active
    )
    return PatientConsents(P1, grants=(grant,))


def _opposition() -> PatientConsents:
    return PatientConsents(P1, oppositions=(Opposition(consent_id="o1"),))


def _share(principal: Principal, *, revoked: bool = False, expires_at: datetime = NOW + HOUR) -> Share:
    return Share("sh1", P1, _rpps_of(principal), expires_at=expires_at, revoked=revoked)


def _break_glass(principal: Principal, justification: str = "unconscious patient in the ER") -> BreakGlass:
    return BreakGlass(
        _rpps_of(principal), STUDY_UID, justification, opened_at=NOW - HOUR, expires_at=NOW + HOUR
    )


SITUATIONS: dict[str, Any] = {
    "nothing": lambda p: World(),
    "consent to them": lambda p: World(InMemoryConsentView([_grant(ProfessionalGrantee(rpps=_rpps_of(p)))])),
    "consent to facility B": lambda p: World(
        InMemoryConsentView([_grant(FacilityGrantee(finess=FACILITY_B))])
    ),
    "consent revoked": lambda p: World(
        InMemoryConsentView([_grant(ProfessionalGrantee(rpps=_rpps_of(p)), active=False)])
    ),
    "consent expired": lambda p: World(
        InMemoryConsentView([_grant(ProfessionalGrantee(rpps=_rpps_of(p)), until=NOW - HOUR)])
    ),
    "patient opposed": lambda p: World(InMemoryConsentView([_opposition()])),
    "share valid": lambda p: World(shares=[_share(p)]),
    "share expired": lambda p: World(shares=[_share(p, expires_at=NOW - HOUR)]),
    "share revoked": lambda p: World(shares=[_share(p, revoked=True)]),
    "break-glass": lambda p: World(break_glass=[_break_glass(p)]),
    "break-glass, no justification": lambda p: World(break_glass=[_break_glass(p, "  ")]),
    "opposed + break-glass": lambda p: World(
        InMemoryConsentView([_opposition()]), break_glass=[_break_glass(p)]
    ),
}

SEARCH, METADATA, RETRIEVE, RENDERED = Action.SEARCH, Action.READ_METADATA, Action.RETRIEVE, Action.RENDERED
DOWNLOAD, STORE, CORRECT, SHARE = Action.DOWNLOAD, Action.STORE, Action.CORRECT_METADATA, Action.SHARE
BREAK_GLASS, READ_AUDIT, VERIFY_AUDIT = Action.BREAK_GLASS, Action.READ_AUDIT, Action.VERIFY_AUDIT

VIEW = {SEARCH, METADATA, RETRIEVE, RENDERED}
VIEW_AND_DOWNLOAD = VIEW | {DOWNLOAD}
RADIOLOGIST_CARE = VIEW | {DOWNLOAD, STORE, SHARE}
TECHNICIAN_CARE = VIEW | {STORE, CORRECT}
OWN_RECORD = VIEW | {DOWNLOAD, SHARE, READ_AUDIT}
AUDIT = {READ_AUDIT, VERIFY_AUDIT}
EVERY_SITUATION = list(SITUATIONS)
NO_GRANT = ["nothing", "consent revoked", "consent expired", "share expired", "share revoked"]
GRANTS = ["consent to them", "consent to facility B", "share valid"]
BREAK_GLASS_NO_JUSTIFICATION = ["break-glass, no justification"]


@dataclass(frozen=True)
class Row:
    persona: str
    situation: str
    allowed: Mapping[str, frozenset[Action]]
    """basis → the actions allowed on that basis; every other action is denied."""


def rows(persona: str, situations: list[str], **allowed: set[Action]) -> list[Row]:
    return [Row(persona, s, {basis: frozenset(a) for basis, a in allowed.items()}) for s in situations]


MATRIX: list[Row] = [
    # Radiologist of the owning facility: care; an opposition spares the owning radiology but forbids sharing.
    *rows("radiologist-a", [*NO_GRANT, *GRANTS, *BREAK_GLASS_NO_JUSTIFICATION], care=RADIOLOGIST_CARE),
    *rows("radiologist-a", ["patient opposed"], care=RADIOLOGIST_CARE - {SHARE}),
    *rows("radiologist-a", ["break-glass"], care=RADIOLOGIST_CARE, break_glass={BREAK_GLASS}),
    *rows(
        "radiologist-a", ["opposed + break-glass"], care=RADIOLOGIST_CARE - {SHARE}, break_glass={BREAK_GLASS}
    ),
    # Referring physician who ordered the study at their facility: care, read and download; opposed: only
    # break-the-glass (view only) remains.
    *rows(
        "referrer-a (ordered it)", [*NO_GRANT, *GRANTS, *BREAK_GLASS_NO_JUSTIFICATION], care=VIEW_AND_DOWNLOAD
    ),
    *rows("referrer-a (ordered it)", ["patient opposed"]),
    *rows("referrer-a (ordered it)", ["break-glass"], care=VIEW_AND_DOWNLOAD, break_glass={BREAK_GLASS}),
    *rows("referrer-a (ordered it)", ["opposed + break-glass"], break_glass=VIEW | {BREAK_GLASS}),
    # A referrer of the same facility who did not order it needs a consent or a share, like an outsider.
    *rows("referrer-a2 (did not order)", [*NO_GRANT, "consent to facility B", "patient opposed"]),
    *rows("referrer-a2 (did not order)", BREAK_GLASS_NO_JUSTIFICATION),
    *rows("referrer-a2 (did not order)", ["consent to them"], consent=VIEW_AND_DOWNLOAD),
    *rows("referrer-a2 (did not order)", ["share valid"], share=VIEW_AND_DOWNLOAD),
    *rows(
        "referrer-a2 (did not order)",
        ["break-glass", "opposed + break-glass"],
        break_glass=VIEW | {BREAK_GLASS},
    ),
    # Nurse of the owning facility: consultative care; an opposition removes it; no break-the-glass.
    *rows("nurse-a", [*NO_GRANT, *GRANTS, "break-glass", *BREAK_GLASS_NO_JUSTIFICATION], care=VIEW),
    *rows("nurse-a", ["patient opposed", "opposed + break-glass"]),
    # Technician who acquired it (not yet released): operational care, spared by an opposition.
    *rows("technician-a (acquired it)", EVERY_SITUATION, care=TECHNICIAN_CARE),
    # Technician who did not acquire it: nothing, and no consent or share reaches technicians.
    *rows("technician-a2 (did not)", EVERY_SITUATION),
    # Radiologist of another facility: consent (to them or their facility) or share; break-the-glass.
    *rows("radiologist-b", [*NO_GRANT, "patient opposed", *BREAK_GLASS_NO_JUSTIFICATION]),
    *rows("radiologist-b", ["consent to them", "consent to facility B"], consent=VIEW_AND_DOWNLOAD),
    *rows("radiologist-b", ["share valid"], share=VIEW_AND_DOWNLOAD),
    *rows("radiologist-b", ["break-glass", "opposed + break-glass"], break_glass=VIEW | {BREAK_GLASS}),
    # Referring physician of another facility: same as radiologist-b (reads and downloads only).
    *rows("referrer-b", [*NO_GRANT, "patient opposed", *BREAK_GLASS_NO_JUSTIFICATION]),
    *rows("referrer-b", ["consent to them", "consent to facility B"], consent=VIEW_AND_DOWNLOAD),
    *rows("referrer-b", ["share valid"], share=VIEW_AND_DOWNLOAD),
    *rows("referrer-b", ["break-glass", "opposed + break-glass"], break_glass=VIEW | {BREAK_GLASS}),
    # Nurse of another facility: consultative, through a consent or a share only.
    *rows("nurse-b", [*NO_GRANT, "patient opposed", "break-glass", "opposed + break-glass"]),
    *rows("nurse-b", BREAK_GLASS_NO_JUSTIFICATION),
    *rows("nurse-b", ["consent to them", "consent to facility B"], consent=VIEW),
    *rows("nurse-b", ["share valid"], share=VIEW),
    # Technician of another facility: nothing whatever happens.
    *rows("technician-b", EVERY_SITUATION),
    # The patient: their own record, always; another patient: never.
    *rows("patient-1", EVERY_SITUATION, own_record=OWN_RECORD),
    *rows("patient-2", EVERY_SITUATION),
    # The DPO: the audit trail, never images.
    *rows("dpo", EVERY_SITUATION, audit_role=AUDIT),
]


def test_the_matrix_covers_every_persona_in_every_situation() -> None:
    covered = [(row.persona, row.situation) for row in MATRIX]
    assert sorted(covered) == sorted((p, s) for p in PERSONAS for s in SITUATIONS)


MATRIX_CASES = [
    pytest.param(row, action, id=f"{row.persona} | {row.situation} | {action.value}")
    for row in MATRIX
    for action in Action
]


def _decide_in(
    principal: Principal,
    world: World | GeneratedWorld,
    action: Action,
    study: StudyAttributes | None = STUDY,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> Decision:
    """``principal``'s decision on ``study`` in ``world`` (its consents, shares, break-glass grants)."""
    return decide(
        principal,
        action,
        study,
        consent=world.consent,
        shares=world.shares,
        break_glass=world.break_glass,
        now=NOW,
        settings=settings,
    )


def _decide_as(persona: str, situation: str, action: Action) -> Decision:
    """``persona``'s decision on :data:`STUDY` in the world that ``situation`` builds for them."""
    principal = PERSONAS[persona]
    return _decide_in(principal, SITUATIONS[situation](principal), action)


@pytest.mark.parametrize(("row", "action"), MATRIX_CASES)
def test_matrix(row: Row, action: Action) -> None:
    expected_basis = next((basis for basis, actions in row.allowed.items() if action in actions), None)

    decision = _decide_as(row.persona, row.situation, action)

    assert (decision.allowed, decision.basis) == (expected_basis is not None, expected_basis), decision.reason


# --- Why a denial was made: the precise reason kept for audit -----------------------------------------------

REASONS = [
    ("nurse-a", "nothing", DOWNLOAD, "action_not_permitted_for_role"),
    ("nurse-a", "nothing", SHARE, "action_not_permitted_for_role"),
    ("dpo", "nothing", RETRIEVE, "action_not_permitted_for_role"),
    ("dpo", "nothing", SEARCH, "action_not_permitted_for_role"),
    ("nurse-a", "nothing", BREAK_GLASS, "action_not_permitted_for_role"),
    ("referrer-a (ordered it)", "nothing", STORE, "action_not_permitted_for_role"),
    ("radiologist-a", "nothing", READ_AUDIT, "action_not_permitted_for_role"),
    ("patient-2", "nothing", RETRIEVE, "not_own_record"),
    ("radiologist-b", "nothing", RETRIEVE, "no_relationship"),
    ("radiologist-b", "consent revoked", RETRIEVE, "consent_revoked"),
    ("radiologist-b", "consent expired", RETRIEVE, "consent_expired"),
    ("radiologist-b", "share expired", RETRIEVE, "share_expired"),
    ("radiologist-b", "share revoked", RETRIEVE, "share_revoked"),
    ("radiologist-b", "patient opposed", RETRIEVE, "no_relationship"),
    ("radiologist-b", "break-glass, no justification", RETRIEVE, "break_glass_unjustified"),
    ("radiologist-b", "break-glass, no justification", BREAK_GLASS, "break_glass_unjustified"),
    ("radiologist-b", "nothing", BREAK_GLASS, "break_glass_not_requested"),
    ("radiologist-b", "consent to them", SHARE, "action_not_permitted_on_basis"),
    ("radiologist-b", "consent to them", STORE, "action_not_permitted_on_basis"),
    ("radiologist-b", "break-glass", DOWNLOAD, "action_not_permitted_on_basis"),
    ("radiologist-a", "patient opposed", SHARE, "patient_opposition"),
    ("referrer-a (ordered it)", "patient opposed", RETRIEVE, "patient_opposition"),
    ("nurse-a", "patient opposed", RETRIEVE, "patient_opposition"),
    ("technician-a2 (did not)", "nothing", STORE, "no_relationship"),
]


ALLOW_REASONS = [
    ("radiologist-a", "nothing", RETRIEVE, "care_owning_facility"),
    ("nurse-a", "nothing", RETRIEVE, "care_owning_facility"),
    ("referrer-a (ordered it)", "nothing", RETRIEVE, "care_ordering_physician"),
    ("technician-a (acquired it)", "nothing", CORRECT, "care_performing_technician"),
    ("radiologist-b", "consent to them", RETRIEVE, "consent_to_professional"),
    ("radiologist-b", "consent to facility B", RETRIEVE, "consent_to_facility"),
    ("radiologist-b", "share valid", RETRIEVE, "share_by_patient"),
    ("radiologist-b", "break-glass", RETRIEVE, "break_glass"),
    ("patient-1", "nothing", DOWNLOAD, "own_record"),
    ("dpo", "nothing", VERIFY_AUDIT, "audit_role"),
]

REASON_CASES = [*((*case, False) for case in REASONS), *((*case, True) for case in ALLOW_REASONS)]


@pytest.mark.parametrize(("persona", "situation", "action", "reason", "allowed"), REASON_CASES)
def test_decision_reason(persona: str, situation: str, action: Action, reason: str, allowed: bool) -> None:
    decision = _decide_as(persona, situation, action)

    # A denial is exactly Decision(allowed=False, reason=reason): no basis; an allowance has one.
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert (decision.basis is None) == (not allowed), decision


# --- Requests that target no single study -------------------------------------------------------------------

WITHOUT_STUDY = [
    # persona, action, expected basis (None = denied), reason
    ("radiologist-a", SEARCH, "care", "query_scoped"),
    ("nurse-b", SEARCH, "care", "query_scoped"),
    ("patient-1", SEARCH, "own_record", "query_scoped"),
    ("dpo", SEARCH, None, "action_not_permitted_for_role"),
    ("technician-a (acquired it)", STORE, "care", "new_study_at_own_facility"),
    ("radiologist-a", STORE, None, "study_required"),
    ("patient-1", STORE, None, "action_not_permitted_for_role"),
    ("patient-1", SHARE, "own_record", "own_record"),
    ("radiologist-a", SHARE, None, "study_required"),
    ("patient-1", READ_AUDIT, "own_record", "own_record"),
    ("dpo", READ_AUDIT, "audit_role", "audit_role"),
    ("dpo", VERIFY_AUDIT, "audit_role", "audit_role"),
    ("patient-1", VERIFY_AUDIT, None, "action_not_permitted_for_role"),
    ("radiologist-a", RETRIEVE, None, "study_required"),
    ("radiologist-a", BREAK_GLASS, None, "study_required"),
]


@pytest.mark.parametrize(("persona", "action", "basis", "reason"), WITHOUT_STUDY)
def test_without_a_study(persona: str, action: Action, basis: str | None, reason: str) -> None:
    decision = decide(PERSONAS[persona], action, None, consent=InMemoryConsentView(), now=NOW)

    assert (decision.basis, decision.reason) == (basis, reason)


# --- Details of the rules -----------------------------------------------------------------------------------


def _decide(persona: str, action: Action, study: StudyAttributes = STUDY, **world: Any) -> Decision:
    world.setdefault("consent", InMemoryConsentView())
    world.setdefault("now", NOW)
    return decide(PERSONAS[persona], action, study, **world)


@pytest.mark.parametrize("action", [STORE, CORRECT])
def test_a_technician_writes_only_before_release(action: Action) -> None:
    released = replace(STUDY, status=StudyStatus.RELEASED)

    assert _decide("technician-a (acquired it)", action, released) == Decision(False, "study_released")
    assert _decide("technician-a (acquired it)", RETRIEVE, released).allowed


def test_a_referrer_ordering_at_another_facility_is_not_in_care_there() -> None:
    ordered_elsewhere = replace(STUDY, referring_physician_rpps="10100000065")  # referrer-b's RPPS

    assert _decide("referrer-b", RETRIEVE, ordered_elsewhere) == Decision(False, "no_relationship")


def test_a_consent_for_one_study_does_not_open_another() -> None:
    consent = InMemoryConsentView([_grant(ProfessionalGrantee(rpps="10100000057"), study=STUDY_UID)])
    other = replace(STUDY, study_instance_uid=OTHER_STUDY_UID)

    assert _decide("radiologist-b", RETRIEVE, consent=consent).allowed
    assert not _decide("radiologist-b", RETRIEVE, other, consent=consent).allowed


def test_a_consent_not_yet_valid_does_not_open() -> None:
    grant = ConsentGrant(
        consent_id="c1", grantee=ProfessionalGrantee(rpps="10100000057"), valid_from=NOW + HOUR
    )
    consent = InMemoryConsentView([PatientConsents(P1, grants=(grant,))])

    assert _decide("radiologist-b", RETRIEVE, consent=consent) == Decision(False, "consent_not_yet_valid")
    assert _decide("radiologist-b", RETRIEVE, consent=consent, now=NOW + HOUR).allowed


def test_a_consent_lapses_by_itself_at_its_end() -> None:
    consent = InMemoryConsentView([_grant(ProfessionalGrantee(rpps="10100000057"), until=NOW + HOUR)])

    assert _decide("radiologist-b", RETRIEVE, consent=consent, now=NOW + HOUR - timedelta(seconds=1)).allowed
    assert not _decide("radiologist-b", RETRIEVE, consent=consent, now=NOW + HOUR).allowed


def test_an_opposition_to_one_study_leaves_the_others() -> None:
    consent = InMemoryConsentView(
        [PatientConsents(P1, oppositions=(Opposition(consent_id="o1", study_instance_uid=STUDY_UID),))]
    )
    other = replace(STUDY, study_instance_uid=OTHER_STUDY_UID)

    assert not _decide("nurse-a", RETRIEVE, consent=consent).allowed
    assert _decide("nurse-a", RETRIEVE, other, consent=consent).allowed


def test_a_lifted_opposition_no_longer_blocks() -> None:
    consent = InMemoryConsentView(
        [PatientConsents(P1, oppositions=(Opposition(consent_id="o1", active=False),))]
    )

    assert _decide("nurse-a", RETRIEVE, consent=consent).allowed


def test_a_patient_share_of_one_study_covers_only_it() -> None:
    share = Share("sh1", P1, "10100000057", expires_at=NOW + HOUR, study_instance_uid=STUDY_UID)
    other = replace(STUDY, study_instance_uid=OTHER_STUDY_UID)

    assert _decide("radiologist-b", RETRIEVE, shares=[share]).allowed
    assert not _decide("radiologist-b", RETRIEVE, other, shares=[share]).allowed


def test_a_share_to_someone_else_opens_nothing() -> None:
    share = Share("sh1", P1, "10100000065", expires_at=NOW + HOUR)

    assert not _decide("radiologist-b", RETRIEVE, shares=[share]).allowed


def test_a_professional_share_outside_the_facility_needs_the_patients_consent_to_it() -> None:
    share = Share("sh1", P1, "10100000057", expires_at=NOW + HOUR, shared_by_facility=FACILITY_A)
    consented = InMemoryConsentView([_grant(ShareGrantee(share_id="sh1"))])
    consented_other_share = InMemoryConsentView([_grant(ShareGrantee(share_id="sh2"))])

    assert _decide("radiologist-b", RETRIEVE, shares=[share]) == Decision(False, "share_without_consent")
    assert not _decide("radiologist-b", RETRIEVE, shares=[share], consent=consented_other_share).allowed
    assert _decide("radiologist-b", RETRIEVE, shares=[share], consent=consented) == Decision(
        True, "share_consented", "share"
    )


def test_a_professional_share_inside_the_facility_needs_no_consent() -> None:
    share = Share("sh1", P1, "10100000099", expires_at=NOW + HOUR, shared_by_facility=FACILITY_A)

    assert _decide("referrer-a2 (did not order)", DOWNLOAD, shares=[share]) == Decision(
        True, "share_within_facility", "share"
    )


def test_a_professional_share_covers_only_the_sharing_facilitys_studies() -> None:
    share = Share("sh1", P1, "10100000057", expires_at=NOW + HOUR, shared_by_facility=FACILITY_B)
    consented = InMemoryConsentView([_grant(ShareGrantee(share_id="sh1"))])

    assert not _decide("radiologist-b", RETRIEVE, shares=[share], consent=consented).allowed


def test_a_share_ends_at_its_expiry() -> None:
    share = Share("sh1", P1, "10100000057", expires_at=NOW)

    assert _decide("radiologist-b", RETRIEVE, shares=[share], now=NOW - timedelta(seconds=1)).allowed
    assert _decide("radiologist-b", RETRIEVE, shares=[share]) == Decision(False, "share_expired")


@pytest.mark.parametrize(
    ("opened_at", "expires_at", "reason"),
    [
        (NOW - 5 * HOUR, NOW + HOUR, "break_glass_time_box_exceeded"),  # asks for 6 h, the box is 4 h
        (NOW - 2 * HOUR, NOW, "break_glass_expired"),
        (NOW + HOUR, NOW + 2 * HOUR, "break_glass_not_yet_open"),
    ],
)
def test_break_glass_is_time_boxed(opened_at: datetime, expires_at: datetime, reason: str) -> None:
    grant = BreakGlass("10100000057", STUDY_UID, "cardiac arrest", opened_at, expires_at)

    assert _decide("radiologist-b", RETRIEVE, break_glass=[grant]) == Decision(False, reason)
    assert _decide("radiologist-b", BREAK_GLASS, break_glass=[grant]) == Decision(False, reason)


def test_break_glass_is_for_its_holder_and_its_study_only() -> None:
    grant = BreakGlass("10100000057", STUDY_UID, "cardiac arrest", NOW - HOUR, NOW + HOUR)
    other = replace(STUDY, study_instance_uid=OTHER_STUDY_UID)

    assert _decide("radiologist-b", RETRIEVE, break_glass=[grant]).allowed
    assert not _decide("referrer-b", RETRIEVE, break_glass=[grant]).allowed
    assert not _decide("radiologist-b", RETRIEVE, other, break_glass=[grant]).allowed


def test_settings_may_withdraw_the_radiology_exception_to_opposition() -> None:
    strict = PolicySettings(opposition_spares_owning_radiology=False)
    opposed = InMemoryConsentView([_opposition()])

    assert _decide("radiologist-a", RETRIEVE, consent=opposed, settings=strict) == Decision(
        False, "patient_opposition"
    )
    assert not _decide("technician-a (acquired it)", STORE, consent=opposed, settings=strict).allowed


def test_settings_may_let_an_opposition_stop_break_glass() -> None:
    strict = PolicySettings(opposition_spares_break_glass=False)
    world = SITUATIONS["opposed + break-glass"](PERSONAS["radiologist-b"])

    decision = _decide(
        "radiologist-b", RETRIEVE, consent=world.consent, break_glass=world.break_glass, settings=strict
    )

    assert decision == Decision(False, "patient_opposition")


def test_settings_may_let_nurses_break_the_glass() -> None:
    with_nurses = PolicySettings(break_glass_roles=frozenset({Role.RADIOLOGIST, Role.NURSE}))
    world = SITUATIONS["break-glass"](PERSONAS["nurse-b"])

    assert (
        _decide("nurse-b", RETRIEVE, break_glass=world.break_glass, settings=with_nurses).basis
        == "break_glass"
    )
    assert not _decide("nurse-b", DOWNLOAD, break_glass=world.break_glass, settings=with_nurses).allowed
    assert not _decide("referrer-b", BREAK_GLASS, break_glass=world.break_glass, settings=with_nurses).allowed


def test_settings_refuse_break_glass_for_non_professionals() -> None:
    with pytest.raises(ValueError, match="health professionals"):
        PolicySettings(break_glass_roles=frozenset({Role.DPO}))


def test_a_patient_is_matched_by_their_local_identity_too() -> None:
    local = replace(STUDY, patient_key="pid:750000001:IPP-A-000001")

    assert _decide("patient-1", RETRIEVE, local).allowed
    assert not _decide("patient-2", RETRIEVE, local).allowed


def test_decisions_need_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="aware"):
        _decide("radiologist-a", RETRIEVE, now=datetime(2026, 3, 1, 12, 0))


def test_an_allowed_decision_always_has_a_basis() -> None:
    with pytest.raises(ValueError, match="basis"):
        Decision(allowed=True, reason="care_owning_facility")
    with pytest.raises(ValueError, match="basis"):
        Decision(allowed=False, reason="no_relationship", basis="care")


# --- The consent view fed by consent.changed events ---------------------------------------------------------


def _changed(revision: int, **overrides: Any) -> ConsentChanged:
    fields: dict[str, Any] = {
        "consent_id": "c1",
        "revision": revision,
        "patient_key": P1,
        "status": "active",
        "provision": "permit",
        "grantee": {"kind": "professional", "rpps": "10100000057"},
        "changed_at": NOW,
    }
    return ConsentChanged.model_validate(fields | overrides)


def test_the_view_follows_grant_then_revocation_and_ignores_stale_changes() -> None:
    view = InMemoryConsentView()

    assert view.apply(_changed(1))
    assert _decide("radiologist-b", RETRIEVE, consent=view).allowed
    assert view.apply(_changed(2, status="inactive"))
    assert _decide("radiologist-b", RETRIEVE, consent=view) == Decision(False, "consent_revoked")
    assert not view.apply(_changed(1))  # redelivered: the revocation stands
    assert not view.apply(_changed(2))
    assert not _decide("radiologist-b", RETRIEVE, consent=view).allowed


def test_the_view_reads_a_deny_provision_as_an_opposition() -> None:
    view = InMemoryConsentView()
    view.apply(_changed(1, provision="deny", grantee={"kind": "facility", "finess": FACILITY_A}))

    assert _decide("nurse-a", RETRIEVE, consent=view) == Decision(False, "patient_opposition")
    assert view.apply(
        _changed(2, provision="deny", status="inactive", grantee={"kind": "facility", "finess": FACILITY_A})
    )
    assert _decide("nurse-a", RETRIEVE, consent=view).allowed


def test_the_view_indexes_grants_by_grantee() -> None:
    view = InMemoryConsentView()
    view.apply(_changed(1))
    view.apply(_changed(1, consent_id="c2", grantee={"kind": "facility", "finess": FACILITY_B}))
    view.apply(_changed(1, consent_id="c3", patient_key=P2, grantee={"kind": "share", "share_id": "sh1"}))

    assert {(key, g.consent_id) for key, g in view.grants_to(rpps="10100000057", facility_finess=None)} == {
        (P1, "c1")
    }
    assert {g.consent_id for _, g in view.grants_to(rpps=None, facility_finess=FACILITY_B)} == {"c2"}
    assert [g.consent_id for g in view.consents_of(P2).grants_to_share("sh1")] == ["c3"]
    assert view.consents_of("ins:unknown") == PatientConsents("ins:unknown")


# --- Search scope -------------------------------------------------------------------------------------------


def test_a_nurses_search_scope_is_her_facility_minus_opposed_patients() -> None:
    consent = InMemoryConsentView([_opposition()])
    scope = search_scope(PERSONAS["nurse-a"], consent, [], [], NOW)
    unopposed = replace(STUDY, patient_key=P2)

    assert not scope.matches(STUDY)
    assert scope.matches(unopposed)
    assert not scope.matches(replace(unopposed, facility_finess=FACILITY_B))
    assert [clause.excluded_patient_keys for clause in scope.clauses] == [frozenset({P1})]


def test_a_referrers_search_scope_is_what_they_ordered_plus_what_they_were_granted() -> None:
    consent = InMemoryConsentView([_grant(ProfessionalGrantee(rpps="10100000065"), study=OTHER_STUDY_UID)])
    scope = search_scope(PERSONAS["referrer-b"], consent, [], [], NOW)

    assert {clause.basis for clause in scope.clauses} == {"care", "consent"}
    assert scope.matches(replace(STUDY, study_instance_uid=OTHER_STUDY_UID))
    assert not scope.matches(STUDY)
    assert scope.matches(replace(STUDY, facility_finess=FACILITY_B, referring_physician_rpps="10100000065"))


def test_the_dpo_searches_nothing() -> None:
    assert search_scope(PERSONAS["dpo"], InMemoryConsentView(), [], [], NOW).is_empty


# --- Properties over generated worlds -----------------------------------------------------------------------

FACILITIES = [FACILITY_A, FACILITY_B, "2A0000003"]
RPPS_POOL = ["10100000016", "10100000024", "10100000032", "10100000040", "10100000057"]
PATIENTS = [P1, P2, "pid:750000001:IPP-A-000003"]
UIDS = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 7)]
OFFSETS = [None, -48 * HOUR, -HOUR, timedelta(0), HOUR, 48 * HOUR]


def _at(offset: timedelta | None) -> datetime | None:
    return None if offset is None else NOW + offset


@st.composite
def studies(draw: st.DrawFn) -> list[StudyAttributes]:
    uids = draw(st.lists(st.sampled_from(UIDS), min_size=1, max_size=len(UIDS), unique=True))
    return [
        StudyAttributes(
            study_instance_uid=uid,
            facility_finess=draw(st.sampled_from(FACILITIES)),
            patient_key=draw(st.sampled_from(PATIENTS)),
            referring_physician_rpps=draw(st.sampled_from([None, *RPPS_POOL])),
            performing_technician_rpps=draw(st.frozensets(st.sampled_from(RPPS_POOL), max_size=2)),
            status=draw(st.sampled_from(StudyStatus)),
        )
        for uid in uids
    ]


@st.composite
def principals(draw: st.DrawFn, roles: list[Role] | None = None) -> Principal:
    role = draw(st.sampled_from(roles or list(Role)))
    if role is Role.PATIENT:
        key = draw(st.sampled_from(PATIENTS))
        identity = (
            _patient("285047505612322", "IPP-A-000001", FACILITY_A)
            if key == P1
            else _patient("162116912304526", "IPP-B-000002", FACILITY_B)
            if key == P2
            else PatientIdentity(patient_id="IPP-A-000003", issuer_of_patient_id=FACILITY_A)
        )
        return Principal("p", role, patient=identity)
    if role is Role.DPO:
        return Principal("d", role)
    return Principal(
        "s", role, rpps=draw(st.sampled_from(RPPS_POOL)), facility_finess=draw(st.sampled_from(FACILITIES))
    )


@dataclass
class GeneratedWorld:
    studies: list[StudyAttributes]
    consent: InMemoryConsentView
    shares: list[Share]
    break_glass: list[BreakGlass]


@st.composite
def worlds(draw: st.DrawFn) -> GeneratedWorld:
    all_studies = draw(studies())
    # Study-scoped consents, oppositions and shares name a study of the same patient, as the services ensure.
    by_patient: dict[str, list[PatientConsents]] = {}
    grants: list[tuple[str, ConsentGrant]] = []
    oppositions: list[tuple[str, Opposition]] = []
    for n in range(draw(st.integers(0, 5))):
        study = draw(st.sampled_from(all_studies))
        scope = draw(st.sampled_from([None, study.study_instance_uid]))
        grantee = draw(
            st.sampled_from(
                [
                    ProfessionalGrantee(rpps=draw(st.sampled_from(RPPS_POOL))),
                    FacilityGrantee(finess=draw(st.sampled_from(FACILITIES))),
                    ShareGrantee(share_id=f"sh{draw(st.integers(0, 3))}"),
                ]
            )
        )
        grants.append(
            (
                study.patient_key,
                ConsentGrant(
                    consent_id=f"c{n}",
                    grantee=grantee,
                    study_instance_uid=scope,
                    valid_from=_at(draw(st.sampled_from(OFFSETS))),
                    valid_until=_at(draw(st.sampled_from(OFFSETS))),
                    active=draw(st.booleans()),
                ),
            )
        )
    for n in range(draw(st.integers(0, 2))):
        study = draw(st.sampled_from(all_studies))
        oppositions.append(
            (
                study.patient_key,
                Opposition(
                    consent_id=f"o{n}",
                    study_instance_uid=draw(st.sampled_from([None, study.study_instance_uid])),
                    valid_until=_at(draw(st.sampled_from(OFFSETS))),
                    active=draw(st.booleans()),
                ),
            )
        )
    for key in {k for k, _ in grants} | {k for k, _ in oppositions}:
        by_patient[key] = [
            PatientConsents(
                key,
                grants=tuple(g for k, g in grants if k == key),
                oppositions=tuple(o for k, o in oppositions if k == key),
            )
        ]
    shares = []
    for n in range(draw(st.integers(0, 3))):
        study = draw(st.sampled_from(all_studies))
        shares.append(
            Share(
                f"sh{n}",
                study.patient_key,
                draw(st.sampled_from(RPPS_POOL)),
                expires_at=NOW + draw(st.sampled_from([-HOUR, timedelta(0), HOUR])),
                study_instance_uid=draw(st.sampled_from([None, study.study_instance_uid])),
                revoked=draw(st.booleans()),
                shared_by_facility=draw(st.sampled_from([None, *FACILITIES])),
            )
        )
    glass = [
        BreakGlass(
            draw(st.sampled_from(RPPS_POOL)),
            draw(st.sampled_from(all_studies)).study_instance_uid,
            draw(st.sampled_from(["", " ", "multiple trauma"])),
            opened_at=NOW + draw(st.sampled_from([-5 * HOUR, -HOUR, HOUR])),
            expires_at=NOW + draw(st.sampled_from([-HOUR, timedelta(0), HOUR])),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    consent = InMemoryConsentView([p for patients in by_patient.values() for p in patients])
    return GeneratedWorld(all_studies, consent, shares, glass)


POLICY_SETTINGS = st.builds(
    PolicySettings,
    opposition_spares_owning_radiology=st.booleans(),
    opposition_spares_break_glass=st.booleans(),
    break_glass_roles=st.sampled_from(
        [
            frozenset({Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN}),
            frozenset({Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN, Role.NURSE}),
            frozenset(),
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(principal=principals(), world=worlds(), policy=POLICY_SETTINGS)
def test_search_scope_agrees_with_decide(
    principal: Principal, world: GeneratedWorld, policy: PolicySettings
) -> None:
    scope = search_scope(principal, world.consent, world.shares, world.break_glass, NOW, policy)

    for study in world.studies:
        decision = _decide_in(principal, world, Action.SEARCH, study, policy)
        assert decision.allowed == scope.matches(study), (study, decision)
        if decision.allowed:
            assert decision.basis in scope.bases_for(study)


PROFESSIONALS = [Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN, Role.NURSE, Role.IMAGING_TECHNICIAN]


@settings(max_examples=300, deadline=None)
@given(
    principal=principals(PROFESSIONALS),
    world=worlds(),
    action=st.sampled_from(Action),
    policy=POLICY_SETTINGS,
)
def test_deny_by_default_outside_the_owning_facility(
    principal: Principal, world: GeneratedWorld, action: Action, policy: PolicySettings
) -> None:
    for study in world.studies:
        if study.facility_finess == principal.facility_finess:
            continue
        decision = decide(principal, action, study, consent=InMemoryConsentView(), now=NOW, settings=policy)
        assert not decision.allowed, (study, decision)


@settings(max_examples=300, deadline=None)
@given(world=worlds(), action=st.sampled_from(sorted(IMAGE_ACTIONS)), policy=POLICY_SETTINGS)
def test_the_dpo_never_gets_an_image_action(
    world: GeneratedWorld, action: Action, policy: PolicySettings
) -> None:
    for study in [*world.studies, None]:
        decision = _decide_in(PERSONAS["dpo"], world, action, study, policy)
        assert not decision.allowed


@settings(max_examples=300, deadline=None)
@given(
    principal=principals([Role.PATIENT]),
    world=worlds(),
    action=st.sampled_from(Action),
    policy=POLICY_SETTINGS,
)
def test_a_patient_never_reaches_another_patients_study(
    principal: Principal, world: GeneratedWorld, action: Action, policy: PolicySettings
) -> None:
    scope = search_scope(principal, world.consent, world.shares, world.break_glass, NOW, policy)
    for study in world.studies:
        decision = _decide_in(principal, world, action, study, policy)
        if study.patient_key not in principal.patient_keys:
            assert not decision.allowed
            assert not scope.matches(study)
