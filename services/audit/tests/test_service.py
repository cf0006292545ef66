"""The audit trail's use cases on in-memory adapters: append once, checkpoints, purge, reading."""

from __future__ import annotations

from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest

from emage_audit.domain.verification import BreakReason
from emage_audit.service import AuditService, RecordQuery
from emage_common.events import Acquisition, EventDecodingError, make_event


async def test_an_event_is_appended_once_however_often_it_is_delivered(
    service: AuditService, store: Any, audit: ModuleType
) -> None:
    event = audit.access_event()
    first = await service.record_event(event)
    again = await service.record_event(event)
    assert first.created
    assert not again.created
    assert again.record == first.record
    assert len(store.documents) == 1
    assert service.appended.is_set()


async def test_a_batch_is_appended_in_order_each_event_once(
    service: AuditService, store: Any, audit: ModuleType
) -> None:
    earlier = audit.access_event()
    await service.record_event(earlier)
    stored, decided = audit.instance_event(), audit.access_event(action="rendered")
    appended = await service.record_events([stored, earlier, decided, stored])
    assert [(a.record.seq, a.created) for a in appended] == [(2, True), (1, False), (3, True), (2, False)]
    assert [a.record.event_id for a in appended] == [stored.id, earlier.id, decided.id, stored.id]
    assert appended[2].record.prev_hash == appended[0].record.hash
    assert len(store.documents) == 3
    assert store.exam_facts[audit.STUDY_1].modality == "CT"
    report = await service.verify()
    assert report.valid
    assert report.records_checked == 3


async def test_a_batch_holding_an_event_the_trail_does_not_keep_appends_nothing(
    service: AuditService, store: Any, audit: ModuleType
) -> None:
    not_audited = make_event(
        Acquisition.model_validate(
            {
                "facility_finess": audit.CHU_ALPHA,
                "accession_number": "ACC-1",
                "patient": audit.PATIENT_1.model_dump(),
                "source": {"kind": "dicomweb", "base_url": "https://pacs.example.org/dicom-web"},
            }
        ),
        "/hospital",
    )
    with pytest.raises(EventDecodingError):
        await service.record_events([audit.access_event(), not_audited])
    assert store.documents == {}
    assert not service.appended.is_set()


async def test_a_batch_crossing_a_multiple_of_the_checkpoint_period_calls_for_one(
    store: Any, clock: Any, audit: ModuleType
) -> None:
    service = audit.build_service(store, clock, checkpoint_every_records=5)
    await service.record_events([audit.access_event() for _ in range(4)])
    assert not service.checkpoint_due.is_set()
    await service.record_events([audit.access_event() for _ in range(3)])  # seq 5 to 7
    assert service.checkpoint_due.is_set()
    service.checkpoint_due.clear()
    await service.record_events([audit.access_event() for _ in range(2)])  # 8, 9
    assert not service.checkpoint_due.is_set()


async def test_append_times_never_go_back(service: AuditService, clock: Any, audit: ModuleType) -> None:
    first = await service.record_event(audit.access_event())
    clock.now -= timedelta(hours=1)
    second = await service.record_event(audit.access_event())
    assert second.record.recorded_at == first.record.recorded_at


async def test_a_fresh_trail_verifies(service: AuditService, audit: ModuleType) -> None:
    for event in (audit.instance_event(), audit.access_event(), audit.consent_event(), audit.share_event()):
        await service.record_event(event)
    report = await service.verify()
    assert report.valid
    assert report.records_checked == 4


async def test_tampering_in_the_store_is_named(service: AuditService, store: Any, audit: ModuleType) -> None:
    for _ in range(4):
        await service.record_event(audit.access_event())
    original = store.documents[3]
    store.documents[3] = type(original)(original.record, {**original.index, "patient_key": "pid:X:Y"})
    report = await service.verify()
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (3, BreakReason.INDEX_MISMATCH)


async def test_checkpoints_sign_the_head_when_it_moved(
    service: AuditService, clock: Any, audit: ModuleType
) -> None:
    assert await service.checkpoint() is None  # nothing to sign yet
    await service.record_event(audit.access_event())
    first = await service.checkpoint()
    assert first is not None
    assert first.seq == 1
    assert await service.checkpoint() is None  # the head did not move
    await service.record_event(audit.access_event())
    interval = timedelta(minutes=5)
    assert await service.checkpoint(interval=interval) is None  # too early
    clock.now += interval
    second = await service.checkpoint(interval=interval)
    assert second is not None
    assert second.seq == 2
    assert service.trusted_keys.verify(second)


async def test_enough_appended_records_call_for_a_checkpoint(
    store: Any, clock: Any, audit: ModuleType
) -> None:
    service = audit.build_service(store, clock, checkpoint_every_records=3)
    for _ in range(2):
        await service.record_event(audit.access_event())
    assert not service.checkpoint_due.is_set()
    await service.record_event(audit.access_event())
    assert service.checkpoint_due.is_set()
    assert await service.checkpoint(interval=timedelta(days=1)) is not None


async def fill(service: AuditService, clock: Any, audit: ModuleType, *, days: int, records: int) -> None:
    for _ in range(records):
        await service.record_event(audit.access_event(at=clock.now))
        clock.now += timedelta(days=days)


async def test_a_purge_removes_whole_expired_segments_and_keeps_the_chain_verifiable(
    service: AuditService, store: Any, clock: Any, audit: ModuleType
) -> None:
    await fill(service, clock, audit, days=100, records=3)  # records 1-3, 100 days apart
    await service.checkpoint()  # segment 1-3
    await fill(service, clock, audit, days=100, records=3)  # records 4-6
    await service.checkpoint()  # segment 4-6
    await fill(service, clock, audit, days=1, records=1)  # record 7
    # A year later than record 3 but not record 6: only the first segment has expired.
    result = await service.purge({"subject": "kc-dpo", "role": "dpo"})
    assert (result.through_seq, result.records_purged) == (3, 3)
    assert result.record is not None
    assert result.record.seq == 8
    assert result.record.data["through_seq"] == 3
    assert sorted(store.documents) == [4, 5, 6, 7, 8]
    report = await service.verify()
    assert report.valid, report.broken
    # Checkpoint 3 anchors record 4; checkpoint 6 still vouches for the kept chain.
    assert (report.first_seq, report.checkpoints_checked, report.anchored_through) == (4, 2, 6)


async def test_nothing_expired_nothing_purged(service: AuditService, store: Any, audit: ModuleType) -> None:
    await service.record_event(audit.access_event())
    await service.checkpoint()
    result = await service.purge({"subject": "kc-dpo", "role": "dpo"})
    assert (result.through_seq, result.records_purged, result.record) == (None, 0, None)
    assert sorted(store.documents) == [1]


async def test_records_not_yet_exported_are_not_purged(store: Any, clock: Any, audit: ModuleType) -> None:
    service = audit.build_service(store, clock, export_cursor="syslog")
    await fill(service, clock, audit, days=400, records=2)
    await service.checkpoint()
    assert (await service.purge({"subject": "kc-dpo"})).through_seq is None
    store.exports["syslog"] = {"last_seq": 2, "owner": None, "lease_until": clock.now}
    assert (await service.purge({"subject": "kc-dpo"})).through_seq == 2


async def test_a_patients_log_holds_their_own_decisions_only(
    service: AuditService, audit: ModuleType
) -> None:
    await service.record_event(audit.instance_event())
    await service.record_event(audit.access_event())
    await service.record_event(audit.access_event(decision="deny", reason="no_relationship"))
    await service.record_event(audit.access_event(study=audit.STUDY_2, patient=audit.PATIENT_2))
    keys = (audit.PATIENT_1.patient_key,)
    total, lines = await service.access_log(
        keys, reader_subject="kc-patient-1", lang="fr", include_denied=False, offset=0, limit=10
    )
    assert total == 1
    assert "« Scanner du 10 mars 2025 (THORAX) »" in lines[0].text
    total, lines = await service.access_log(
        keys, reader_subject="kc-patient-1", lang="en", include_denied=True, offset=0, limit=10
    )
    assert total == 2
    assert [line.decision for line in lines] == ["deny", "allow"]


async def test_searches_filter_and_page(service: AuditService, audit: ModuleType) -> None:
    await service.record_event(audit.access_event())
    await service.record_event(
        audit.access_event(audit.RADIOLOGIST_B, study=audit.STUDY_2, patient=audit.PATIENT_2)
    )
    await service.record_event(audit.consent_event())
    total, records = await service.search(RecordQuery(facility=audit.CLINIQUE_BETA), offset=0, limit=10)
    assert total == 1
    assert records[0].data["principal"]["subject"] == "kc-radiologist-b"
    total, records = await service.search(RecordQuery(), offset=1, limit=1)
    assert (total, [r.seq for r in records]) == (3, [2])
    total, _ = await service.search(RecordQuery(since=audit.NOW + timedelta(seconds=1)), offset=0, limit=10)
    assert total == 0


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "one batch"])
async def test_break_the_glass_alerts_gather_an_episode(
    service: AuditService, audit: ModuleType, batched: bool
) -> None:
    events = [
        audit.access_event(
            audit.RADIOLOGIST_B, action=action, basis="break_glass", justification=audit.JUSTIFICATION
        )
        for action in ("break_glass", "retrieve", "rendered")
    ] + [audit.instance_event()]
    if batched:
        await service.record_events(events)
    for event in events:
        await service.record_event(event)  # once batched: redeliveries, which change nothing
    total, alerts = await service.alerts((audit.PATIENT_1.patient_key,), lang="fr", offset=0, limit=10)
    assert total == 1
    alert, text = alerts[0]
    assert (alert.records, alert.first_seq, alert.last_seq) == (3, 1, 3)
    assert text.startswith("Accès d'urgence (bris de glace) à votre examen « Scanner du 10 mars 2025")
    assert (await service.alerts((audit.PATIENT_2.patient_key,), lang="fr", offset=0, limit=10))[0] == 0
