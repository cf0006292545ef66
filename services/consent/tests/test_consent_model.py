"""Consents as the fold of their records: periods, derived status, the event each record announces — and
that the access gateway's consent view, fed those events, decides as the consent service states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emage_access.domain.consent_view import InMemoryConsentView
from emage_common.events import ConsentChanged, FacilityGrantee, ProfessionalGrantee
from emage_consent.domain.model import (
    Consent,
    ConsentRecord,
    ConsentState,
    InformationGiven,
    Period,
    Recorder,
    to_millisecond,
)

NOW = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)
HOUR = timedelta(hours=1)
PATIENT = "pid:750000001:IPP-0001"
STUDY = "1.2.826.0.1.3680043.8.498.1"
ME = Recorder(subject="patient-1", role="patient")


ALWAYS = Period()


def opened(
    provision: str = "permit", period: Period = ALWAYS, study: str | None = None, consent_id: str = "c-1"
) -> ConsentRecord:
    return ConsentRecord(
        consent_id=consent_id,
        revision=1,
        action="grant" if provision == "permit" else "oppose",
        patient_key=PATIENT,
        provision=provision,  # type: ignore[arg-type]
        status="active",
        grantee=ProfessionalGrantee(rpps="10100000057") if provision == "permit" else None,
        study_instance_uid=study,
        period=period,
        recorded_at=NOW - 2 * HOUR,
        recorded_by=ME,
    )


@pytest.mark.parametrize(
    ("period", "defect"),
    [
        (Period(), None),
        (Period(NOW - HOUR, NOW + HOUR), None),
        (Period(NOW + HOUR, NOW + 2 * HOUR), None),
        (Period(None, NOW + timedelta(milliseconds=1)), None),
        (Period(NOW + HOUR, NOW + HOUR), "valid_until must be after valid_from"),
        (Period(NOW + 2 * HOUR, NOW + HOUR), "valid_until must be after valid_from"),
        (Period(None, NOW), "valid_until must be in the future"),
        (Period(NOW - 2 * HOUR, NOW - HOUR), "valid_until must be in the future"),
    ],
)
def test_a_period_ends_after_it_starts_and_not_in_the_past(period: Period, defect: str | None) -> None:
    found = period.defect(NOW)
    assert (found is None) if defect is None else (found is not None and found.startswith(defect))


def test_instants_are_kept_to_the_millisecond_and_must_be_aware() -> None:
    precise = datetime(2025, 1, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    assert Period(precise).valid_from == datetime(2025, 1, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert to_millisecond(precise).microsecond == 123_000
    with pytest.raises(ValueError, match="UTC offset"):
        Period(datetime(2025, 1, 1))


def test_information_given_is_a_text_or_a_notice_code() -> None:
    assert InformationGiven(notice_code="N-1").text is None
    with pytest.raises(ValueError, match="information"):
        InformationGiven()


@pytest.mark.parametrize(
    ("provision", "period", "closed", "state"),
    [
        ("permit", Period(), False, "active"),
        ("permit", Period(NOW - HOUR, NOW + HOUR), False, "active"),
        ("permit", Period(NOW + HOUR), False, "scheduled"),
        ("permit", Period(None, NOW), False, "expired"),
        ("permit", Period(NOW - 2 * HOUR, NOW - HOUR), False, "expired"),
        ("permit", Period(), True, "revoked"),
        ("permit", Period(None, NOW - HOUR), True, "revoked"),
        ("deny", Period(), False, "active"),
        ("deny", Period(None, NOW), False, "expired"),
        ("deny", Period(), True, "lifted"),
    ],
)
def test_the_status_a_reader_sees_is_derived_from_the_records_and_the_clock(
    provision: str, period: Period, closed: bool, state: ConsentState
) -> None:
    consent = Consent.opened(opened(provision, period))
    if closed:
        consent = consent.after(
            consent.closing("revoke" if provision == "permit" else "lift", by=ME, now=NOW - HOUR, reason=None)
        )
    assert consent.state(NOW) == state


def test_closing_appends_the_next_revision_and_keeps_the_opening_provenance() -> None:
    first = opened()
    consent = Consent.opened(first)
    closing = consent.closing("revoke", by=ME, now=NOW, reason="changed my mind")
    assert (closing.revision, closing.status, closing.action) == (2, "inactive", "revoke")
    assert (closing.grantee, closing.period, closing.patient_key) == (first.grantee, first.period, PATIENT)
    revoked = consent.after(closing)
    assert (revoked.revision, revoked.status, revoked.created_at) == (2, "inactive", first.recorded_at)
    assert (revoked.ended_at, revoked.ended_by, revoked.end_reason) == (NOW, ME, "changed my mind")
    assert Consent.fold([first, closing]) == revoked


def test_a_record_out_of_sequence_does_not_fold() -> None:
    consent = Consent.opened(opened())
    skipping = consent.closing("revoke", by=ME, now=NOW, reason=None)
    with pytest.raises(ValueError, match="does not follow"):
        consent.after(ConsentRecord(**{**_fields(skipping), "revision": 3}))
    with pytest.raises(ValueError, match="opened by"):
        Consent.opened(skipping)


def _fields(record: ConsentRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_each_record_announces_the_consent_at_its_revision() -> None:
    first = opened(period=Period(NOW - HOUR, NOW + HOUR), study=STUDY)
    change = first.change()
    assert isinstance(change, ConsentChanged)
    assert change.model_dump() == {
        "consent_id": "c-1",
        "revision": 1,
        "patient_key": PATIENT,
        "status": "active",
        "provision": "permit",
        "grantee": {"kind": "professional", "rpps": "10100000057"},
        "study_instance_uid": STUDY,
        "valid_from": NOW - HOUR,
        "valid_until": NOW + HOUR,
        "changed_at": NOW - 2 * HOUR,
    }
    assert change.partition_key() == PATIENT
    opposition = opened("deny").change()
    assert (opposition.provision, opposition.grantee) == ("deny", None)


def test_the_gateway_view_fed_the_events_sees_what_the_consent_service_states() -> None:
    """The contract with the access service: grants by grantee, oppositions patient- or study-wide,
    revocations and lifts by a higher revision, whatever order the events arrive in."""
    view = InMemoryConsentView()
    grant = opened(consent_id="g")
    to_facility = ConsentRecord(
        **{**_fields(opened(consent_id="f")), "grantee": FacilityGrantee(finess="690000002")}
    )
    opposition = opened("deny", study=STUDY, consent_id="o")
    revoked = Consent.opened(grant).closing("revoke", by=ME, now=NOW, reason=None)
    lifted = Consent.opened(opposition).closing("lift", by=ME, now=NOW, reason=None)

    for record in (grant, to_facility, opposition):
        assert view.apply(record.change())
    consents = view.consents_of(PATIENT)
    assert [g.consent_id for g in consents.grants_to("10100000057", None) if g.in_force(NOW)] == ["g"]
    assert [g.consent_id for g in consents.grants_to(None, "690000002") if g.in_force(NOW)] == ["f"]
    assert consents.opposed(STUDY, NOW)
    assert not consents.opposed("1.2.3", NOW)

    assert view.apply(revoked.change())
    assert view.apply(lifted.change())
    assert not view.apply(grant.change()), "a replayed older revision changes nothing"
    consents = view.consents_of(PATIENT)
    assert not any(g.in_force(NOW) for g in consents.grants_to("10100000057", None))
    assert not consents.opposed(STUDY, NOW)
