"""Shares to professionals and break-the-glass requests as pure rules, and the ``share.changed`` events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emage_access.domain.links import (
    GrantRequestError,
    LinkRequest,
    LinkSettings,
    NotRevocableError,
    issue_link,
    revoke_link,
)
from emage_access.domain.policy import PolicySettings, StudyAttributes
from emage_access.domain.principal import Principal, Role
from emage_access.domain.sharing import (
    ShareRequest,
    SharingSettings,
    check_share_request,
    create_share,
    link_changed,
    normalize_justification,
    request_break_glass,
    revoke_share,
    share_changed,
)
from emage_common.events import LinkRecipient, PatientIdentity, ProfessionalRecipient

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SETTINGS = SharingSettings()
UID = "1.2.826.0.1.3680043.8.498.1"
GRANTEE = "10100000099"
STUDY = StudyAttributes(
    study_instance_uid=UID,
    facility_finess="750000001",
    patient_key="ins:1.2.250.1.213.1.4.10:285047505612322",
)
PATIENT = Principal(
    "patient-sub",
    Role.PATIENT,
    patient=PatientIdentity.model_validate(
        {
            "patient_id": "IPP-A-000001",
            "issuer_of_patient_id": "750000001",
            "ins": {"matricule": "285047505612322", "oid": "1.2.250.1.213.1.4.10"},
        }
    ),
)
RADIOLOGIST = Principal("radiologist-sub", Role.RADIOLOGIST, rpps="10100000016", facility_finess="750000001")
COLLEAGUE = Principal("colleague-sub", Role.RADIOLOGIST, rpps="10100000057", facility_finess="750000001")
GRANTEE_PRINCIPAL = Principal(
    "grantee-sub", Role.REFERRING_PHYSICIAN, rpps=GRANTEE, facility_finess="690000002"
)


def _request(
    study: str | None = UID, expires_at: datetime = NOW + 30 * DAY, grantee: str = GRANTEE
) -> ShareRequest:
    return ShareRequest(grantee_rpps=grantee, expires_at=expires_at, study_instance_uid=study)


@pytest.mark.parametrize(
    ("principal", "request_", "reason"),
    [
        (RADIOLOGIST, _request(), None),
        (PATIENT, _request(), None),
        (PATIENT, _request(study=None), None),
        (RADIOLOGIST, _request(study=None), "study_required"),
        (RADIOLOGIST, _request(grantee="1010000001"), "grantee_rpps_invalid"),
        (RADIOLOGIST, _request(grantee="1010000001x"), "grantee_rpps_invalid"),
        (RADIOLOGIST, _request(grantee=RADIOLOGIST.rpps or ""), "share_to_self"),
        (RADIOLOGIST, _request(expires_at=NOW), "expiry_past"),
        (RADIOLOGIST, _request(expires_at=NOW - DAY), "expiry_past"),
        (RADIOLOGIST, _request(expires_at=NOW + 365 * DAY), None),
        (RADIOLOGIST, _request(expires_at=NOW + 366 * DAY), "expiry_too_far"),
        (RADIOLOGIST, _request(expires_at=datetime(2026, 4, 1)), "expiry_naive"),
    ],
)
def test_share_requests(principal: Principal, request_: ShareRequest, reason: str | None) -> None:
    if reason is None:
        check_share_request(principal, request_, now=NOW, settings=SETTINGS)
    else:
        with pytest.raises(GrantRequestError) as refused:
            check_share_request(principal, request_, now=NOW, settings=SETTINGS)
        assert refused.value.reason == reason


def test_the_maximum_lifetime_is_configurable() -> None:
    short = SharingSettings(share_max_lifetime=7 * DAY)
    with pytest.raises(GrantRequestError, match="7 days"):
        check_share_request(RADIOLOGIST, _request(expires_at=NOW + 8 * DAY), now=NOW, settings=short)
    with pytest.raises(ValueError, match="positive"):
        SharingSettings(share_max_lifetime=timedelta(0))


def test_a_professional_s_share_records_their_facility() -> None:
    record = create_share(RADIOLOGIST, _request(), STUDY, now=NOW, settings=SETTINGS)
    assert record.shared_by == RADIOLOGIST.subject
    assert record.shared_by_facility == "750000001"
    assert record.patient_key == STUDY.patient_key
    assert record.study_instance_uid == UID
    share = record.share
    assert share.shared_by_facility == "750000001"
    assert share.covers(STUDY)
    assert share.in_force(NOW)
    assert record.status(NOW) == "active"
    assert record.status(record.expires_at) == "expired"


def test_a_patient_shares_one_study_or_their_whole_record() -> None:
    one = create_share(PATIENT, _request(), STUDY, now=NOW, settings=SETTINGS)
    assert one.shared_by_facility is None
    assert one.patient_key == STUDY.patient_key
    everything = create_share(PATIENT, _request(study=None), None, now=NOW, settings=SETTINGS)
    assert everything.study_instance_uid is None
    assert everything.patient_key == PATIENT.patient_key
    assert everything.share.covers(STUDY)
    assert one.share_id != everything.share_id


def test_the_study_decided_on_must_be_the_one_shared() -> None:
    with pytest.raises(ValueError, match="decided"):
        create_share(RADIOLOGIST, _request(study="1.2.3"), STUDY, now=NOW, settings=SETTINGS)


@pytest.mark.parametrize(
    ("creator", "revoker", "allowed"),
    [
        (RADIOLOGIST, RADIOLOGIST, True),
        (RADIOLOGIST, PATIENT, True),
        (PATIENT, PATIENT, True),
        (RADIOLOGIST, COLLEAGUE, False),
        (RADIOLOGIST, GRANTEE_PRINCIPAL, False),
        (PATIENT, RADIOLOGIST, False),
    ],
)
def test_revocation_by_the_creator_or_the_patient(
    creator: Principal, revoker: Principal, allowed: bool
) -> None:
    record = create_share(creator, _request(), STUDY, now=NOW, settings=SETTINGS)
    if not allowed:
        with pytest.raises(NotRevocableError):
            revoke_share(record, revoker, NOW + DAY)
        return
    revoked = revoke_share(record, revoker, NOW + DAY)
    assert revoked.revoked_at == NOW + DAY
    assert revoked.revoked_by == revoker.subject
    assert revoked.revision == 2
    assert not revoked.share.in_force(NOW + DAY)
    assert revoked.share.revoked
    assert revoke_share(revoked, revoker, NOW + 2 * DAY) is revoked


def test_share_changed_follows_each_change_with_a_higher_revision() -> None:
    record = create_share(RADIOLOGIST, _request(), STUDY, now=NOW, settings=SETTINGS)
    created = share_changed(record)
    assert created.revision == 1
    assert created.status == "active"
    assert created.changed_at == NOW
    assert created.study_instance_uids == (UID,)
    assert not created.all_studies
    assert created.recipient == ProfessionalRecipient(rpps=GRANTEE)
    assert created.shared_by == RADIOLOGIST.subject
    assert created.shared_by_facility == "750000001"
    revoked = share_changed(revoke_share(record, PATIENT, NOW + DAY))
    assert revoked.revision == 2
    assert revoked.status == "revoked"
    assert revoked.changed_at == NOW + DAY
    whole = share_changed(create_share(PATIENT, _request(study=None), None, now=NOW, settings=SETTINGS))
    assert whole.all_studies
    assert whole.study_instance_uids == ()
    assert whole.shared_by_facility is None


def test_link_changed_names_the_link_never_its_secret() -> None:
    issued = issue_link(
        PATIENT, LinkRequest(UID, NOW + DAY), STUDY, patient_birth_date=None, now=NOW, settings=LinkSettings()
    )
    event = link_changed(issued.link)
    assert event.share_id == issued.link.link_id
    assert event.recipient == LinkRecipient(link_id=issued.link.link_id)
    assert event.study_instance_uids == (UID,)
    assert event.status == "active"
    assert issued.secret[32:] not in event.model_dump_json()
    revoked = link_changed(revoke_link(issued.link, PATIENT, NOW + timedelta(hours=1)))
    assert revoked.revision == 2
    assert revoked.status == "revoked"


# --- Break the glass ----------------------------------------------------------------------------------------

POLICY = PolicySettings()


@pytest.mark.parametrize(
    ("justification", "normalised", "reason"),
    [
        ("Unconscious patient in the ER", "Unconscious patient in the ER", None),
        ("  Unconscious patient\n\tin the ER  ", "Unconscious patient in the ER", None),
        ("0123456789", "0123456789", None),
        ("   short   ", None, "justification_too_short"),
        ("", None, "justification_too_short"),
        ("          \n  ", None, "justification_too_short"),
        ("x" * 2000, "x" * 2000, None),
        ("x" * 2001, None, "justification_too_long"),
        ("Unconscious\x00patient in the ER", None, "justification_invalid"),
    ],
)
def test_justifications(justification: str, normalised: str | None, reason: str | None) -> None:
    if reason is None:
        assert normalize_justification(justification) == normalised
    else:
        with pytest.raises(GrantRequestError) as refused:
            normalize_justification(justification)
        assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("duration", "reason"),
    [
        (timedelta(minutes=30), None),
        (POLICY.break_glass_max_duration, None),
        (POLICY.break_glass_max_duration + timedelta(minutes=1), "duration_too_long"),
        (timedelta(0), "duration_invalid"),
        (timedelta(minutes=-5), "duration_invalid"),
    ],
)
def test_break_glass_time_box(duration: timedelta, reason: str | None) -> None:
    if reason is None:
        grant = request_break_glass(
            "10100000016", UID, " Unconscious patient in the ER ", duration, now=NOW, settings=POLICY
        )
        assert grant.holder_rpps == "10100000016"
        assert grant.study_instance_uid == UID
        assert grant.justification == "Unconscious patient in the ER"
        assert grant.justified
        assert grant.opened_at == NOW
        assert grant.expires_at == NOW + duration
        assert grant.within_time_box(POLICY.break_glass_max_duration)
        assert grant.in_force(NOW)
    else:
        with pytest.raises(GrantRequestError) as refused:
            request_break_glass(
                "10100000016", UID, "Unconscious patient in the ER", duration, now=NOW, settings=POLICY
            )
        assert refused.value.reason == reason


def test_the_break_glass_limit_is_the_policy_s() -> None:
    tight = PolicySettings(break_glass_max_duration=timedelta(minutes=15))
    with pytest.raises(GrantRequestError, match="15 minutes"):
        request_break_glass(
            "10100000016", UID, "Unconscious patient", timedelta(minutes=16), now=NOW, settings=tight
        )
