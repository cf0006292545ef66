"""The use cases over in-memory adapters: what is appended, announced and returned; what is refused and
leaves nothing behind."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import CONSENT_CHANGED_TOPIC, ConsentChanged, FacilityGrantee, ProfessionalGrantee
from emage_consent.domain.model import InformationGiven, Period
from emage_consent.domain.rules import (
    ConflictError,
    ForbiddenError,
    GrantDraft,
    InvalidConsentError,
    NotFoundError,
    OppositionDraft,
)
from emage_consent.ports import ConsentQuery, PatientDirectoryUnavailableError
from emage_consent.service import ConsentService

CHU_ALPHA = "750000001"
PATIENT_1, PATIENT_2, ELSEWHERE = "pid:750000001:IPP-0001", "pid:750000001:IPP-0002", "pid:690000002:IPP-0003"
STUDY_1 = "1.2.826.0.1.3680043.8.498.1"
ME = ForwardedPrincipal(subject="p1", role="patient", patient_keys=(PATIENT_1,))
SOMEONE_ELSE = ForwardedPrincipal(subject="p2", role="patient", patient_keys=(PATIENT_2,))
RADIOLOGIST = ForwardedPrincipal(
    subject="r", role="radiologist", rpps="10100000016", facility_finess=CHU_ALPHA, name="Dr A"
)
DPO = ForwardedPrincipal(subject="dpo", role="dpo")
TO_B = ProfessionalGrantee(rpps="10100000057")
INFORMED = InformationGiven(text="Sharing explained at the exam.")


def announced(fakes: Any) -> list[ConsentChanged]:
    assert all(topic == CONSENT_CHANGED_TOPIC for topic, _ in fakes.events.published)
    return [event.data_as(ConsentChanged) for _, event in fakes.events.published]


async def test_a_grant_appends_its_first_record_and_announces_revision_1(
    service: ConsentService, fakes: Any
) -> None:
    consent = await service.grant(ME, GrantDraft(None, TO_B))
    assert (consent.revision, consent.status, consent.provision, consent.patient_key) == (
        1,
        "active",
        "permit",
        PATIENT_1,
    )
    [record] = fakes.store.appended
    assert (record.consent_id, record.action) == (consent.consent_id, "grant")
    [change] = announced(fakes)
    assert change == record.change()
    [entry] = fakes.store.outbox
    assert (entry.topic, entry.event.partitionkey, entry.event.subject) == (
        CONSENT_CHANGED_TOPIC,
        PATIENT_1,
        consent.consent_id,
    )
    assert entry.event.id == fakes.events.published[0][1].id
    await service.settle_pending()
    assert fakes.marks.published == [entry.event.id]


async def test_revoking_appends_and_announces_the_next_revision_then_is_idempotent(
    service: ConsentService, fakes: Any
) -> None:
    consent = await service.grant(ME, GrantDraft(PATIENT_1, TO_B))
    revoked = await service.revoke(ME, consent.consent_id, "changed my mind")
    assert (revoked.revision, revoked.status, revoked.end_reason) == (2, "inactive", "changed my mind")
    again = await service.revoke(ME, consent.consent_id, None)
    assert again == revoked
    assert [(r.revision, r.action) for r in fakes.store.appended] == [(1, "grant"), (2, "revoke")]
    assert [(c.revision, c.status) for c in announced(fakes)] == [(1, "active"), (2, "inactive")]


async def test_an_opposition_is_lifted_by_the_patient_and_revision_counts_the_records(
    service: ConsentService, fakes: Any
) -> None:
    opposition = await service.oppose(ME, OppositionDraft(None))
    with pytest.raises(ConflictError):
        await service.revoke(ME, opposition.consent_id, None)
    lifted = await service.lift(ME, opposition.consent_id, None)
    assert (lifted.revision, lifted.status) == (2, "inactive")
    assert await service.lift(ME, opposition.consent_id, None) == lifted
    assert [(c.provision, c.grantee, c.revision, c.status) for c in announced(fakes)] == [
        ("deny", None, 1, "active"),
        ("deny", None, 2, "inactive"),
    ]


async def test_another_patients_consent_is_not_found_and_untouched(
    service: ConsentService, fakes: Any
) -> None:
    consent = await service.grant(ME, GrantDraft(None, TO_B))
    for act in (
        service.get(SOMEONE_ELSE, consent.consent_id),
        service.revoke(SOMEONE_ELSE, consent.consent_id, None),
        service.records(SOMEONE_ELSE, consent.consent_id),
        service.get(ME, "no-such-consent"),
    ):
        with pytest.raises(NotFoundError):
            await act
    with pytest.raises(NotFoundError):
        await service.grant(ME, GrantDraft(PATIENT_2, TO_B))
    with pytest.raises(NotFoundError):
        await service.history(ME, PATIENT_2)
    assert len(fakes.store.appended) == len(fakes.events.published) == 1


async def test_a_professional_records_for_patients_with_a_study_at_their_facility_only(
    service: ConsentService, fakes: Any
) -> None:
    recorded = await service.grant(
        RADIOLOGIST, GrantDraft(PATIENT_1, FacilityGrantee(finess="690000002"), STUDY_1, information=INFORMED)
    )
    assert (recorded.created_by.rpps, recorded.created_by.channel, recorded.information) == (
        "10100000016",
        "at_exam",
        INFORMED,
    )
    assert fakes.directory.asked == [(CHU_ALPHA, PATIENT_1, STUDY_1)]
    for draft in (
        GrantDraft(ELSEWHERE, TO_B, information=INFORMED),
        GrantDraft(PATIENT_1, TO_B, "1.2.9.9", information=INFORMED),
        GrantDraft("pid:750000001:NOBODY", TO_B, information=INFORMED),
    ):
        with pytest.raises(NotFoundError):
            await service.grant(RADIOLOGIST, draft)
    assert len(fakes.store.appended) == len(fakes.events.published) == 1
    # Revoking at the exam: the consent's patient must be the facility's.
    revoked = await service.revoke(RADIOLOGIST, recorded.consent_id, "patient withdrew at the desk")
    assert revoked.ended_by is not None
    assert revoked.ended_by.role == "radiologist"


async def test_bad_input_writes_nothing_and_announces_nothing(service: ConsentService, fakes: Any) -> None:
    now = fakes.clock.now
    refusals = [
        (
            ME,
            GrantDraft(None, TO_B, period=Period(now + timedelta(days=2), now + timedelta(days=1))),
            InvalidConsentError,
        ),
        (ME, GrantDraft(None, TO_B, period=Period(None, now - timedelta(days=1))), InvalidConsentError),
        (RADIOLOGIST, GrantDraft(PATIENT_1, TO_B), InvalidConsentError),
        (DPO, GrantDraft(PATIENT_1, TO_B, information=INFORMED), ForbiddenError),
    ]
    for principal, draft, error in refusals:
        with pytest.raises(error):
            await service.grant(principal, draft)
    fakes.directory.unavailable = True
    with pytest.raises(PatientDirectoryUnavailableError):
        await service.grant(RADIOLOGIST, GrantDraft(PATIENT_1, TO_B, information=INFORMED))
    assert fakes.store.appended == fakes.store.outbox == fakes.events.published == []


@pytest.mark.parametrize("failure", [KafkaConnectionError("down"), RuntimeError("producer not started")])
async def test_when_kafka_does_not_take_the_event_it_stays_in_the_outbox_for_the_relay(
    service: ConsentService, fakes: Any, failure: Exception
) -> None:
    async def fail(*args: object, **kwargs: object) -> None:
        raise failure

    fakes.events.publish = fail
    consent = await service.grant(ME, GrantDraft(None, TO_B))
    await service.settle_pending()
    [entry] = fakes.store.outbox
    assert fakes.store.consents[consent.consent_id] == consent
    assert fakes.marks.handed_back == [entry.event_id]
    assert fakes.marks.published == []
    assert fakes.relay_wakeups == 1


async def test_a_revocation_racing_another_change_decides_again(service: ConsentService, fakes: Any) -> None:
    consent = await service.grant(ME, GrantDraft(None, TO_B))
    fakes.store.conflicts_to_raise = 1
    revoked = await service.revoke(ME, consent.consent_id, None)
    assert revoked.revision == 2
    opposition = await service.oppose(ME, OppositionDraft(None))
    fakes.store.conflicts_to_raise = 5
    with pytest.raises(ConflictError):
        await service.lift(ME, opposition.consent_id, None)


async def test_history_lists_every_record_in_order_and_listings_derive_expiry(
    service: ConsentService, fakes: Any
) -> None:
    start = fakes.clock.now
    short = await service.grant(ME, GrantDraft(None, TO_B, period=Period(None, start + timedelta(hours=1))))
    fakes.clock.now = start + timedelta(minutes=1)
    opposition = await service.oppose(ME, OppositionDraft(None))
    fakes.clock.now = start + timedelta(minutes=2)
    await service.revoke(ME, short.consent_id, None)
    fakes.clock.now = start + timedelta(minutes=3)
    lasting = await service.grant(ME, GrantDraft(None, FacilityGrantee(finess="690000002")))
    await service.lift(ME, opposition.consent_id, None)

    history = await service.history(ME, None)
    assert [(r.consent_id, r.action) for r in history] == [
        (short.consent_id, "grant"),
        (opposition.consent_id, "oppose"),
        (short.consent_id, "revoke"),
        (lasting.consent_id, "grant"),
        (opposition.consent_id, "lift"),
    ]
    assert await service.history(DPO, PATIENT_1) == history

    fakes.clock.now = start + timedelta(hours=2)
    page = await service.list_consents(ME, ConsentQuery(), limit=10, offset=0)
    assert page.total == 3
    assert {c.consent_id: c.state(fakes.clock.now) for c in page.consents} == {
        short.consent_id: "revoked",
        opposition.consent_id: "lifted",
        lasting.consent_id: "active",
    }
    other = await service.grant(
        ME, GrantDraft(None, TO_B, period=Period(None, fakes.clock.now + timedelta(hours=1)))
    )
    fakes.clock.now += timedelta(hours=1)
    expired = await service.list_consents(ME, ConsentQuery(state="expired"), limit=10, offset=0)
    assert [c.consent_id for c in expired.consents] == [other.consent_id]


async def test_reads_by_role(service: ConsentService, fakes: Any) -> None:
    mine = await service.grant(ME, GrantDraft(None, TO_B))
    await service.grant(SOMEONE_ELSE, GrantDraft(None, TO_B))
    assert (await service.list_consents(DPO, ConsentQuery(), limit=10, offset=0)).total == 2
    assert (await service.list_consents(ME, ConsentQuery(), limit=10, offset=0)).total == 1
    assert (await service.get(RADIOLOGIST, mine.consent_id)) == mine
    with pytest.raises(InvalidConsentError):
        await service.list_consents(RADIOLOGIST, ConsentQuery(), limit=10, offset=0)
    with pytest.raises(NotFoundError):
        await service.list_consents(RADIOLOGIST, ConsentQuery((ELSEWHERE,)), limit=10, offset=0)
    assert [c.consent_id for c in await service.consents_of(ME, None)] == [mine.consent_id]
