"""IngestService.store_instance over in-memory adapters: decisions, durability and failure handling."""

from __future__ import annotations

import hashlib
from typing import Any

from aiokafka.errors import KafkaConnectionError
from botocore.exceptions import EndpointConnectionError
from pymongo.errors import ServerSelectionTimeoutError

from emage_common.events import INSTANCE_STORED_TOPIC, InstanceStored
from emage_ingest.service import StoreRequest

REQUEST = StoreRequest(source="stow", facility_finess="750000001")


async def test_a_new_instance_is_archived_recorded_and_announced(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    data = dicom.ct_slice(IssuerOfPatientID=None)
    outcome = await ingest.service.store_instance(write_file(data), REQUEST)
    assert outcome.status == "stored"
    assert outcome.failure_reason is None
    (instance,) = ingest.records.instances.values()
    assert instance.sha256 == hashlib.sha256(data).hexdigest()
    assert instance.size_bytes == len(data)
    assert instance.object_key == (
        f"studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )
    assert ingest.archive.objects[instance.object_key] == data
    ((topic, event),) = ingest.events.published
    assert topic == INSTANCE_STORED_TOPIC
    stored = event.data_as(InstanceStored)
    assert stored.sha256 == instance.sha256
    assert stored.patient.issuer_of_patient_id == "750000001"  # the facility, for want of an issuer
    assert event.partitionkey == instance.study_instance_uid
    await ingest.service.settle_pending()
    assert ingest.records.outbox[event.id][1] == "published"
    assert not ingest.records.claims


async def test_identical_bytes_are_a_duplicate_without_a_second_event(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    data = dicom.ct_slice()
    await ingest.service.store_instance(write_file(data), REQUEST)
    outcome = await ingest.service.store_instance(write_file(data), REQUEST)
    assert outcome.status == "duplicate"
    assert outcome.succeeded
    assert len(ingest.events.published) == 1


async def test_different_bytes_are_rejected_under_the_reject_policy(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    await ingest.service.store_instance(write_file(dicom.ct_slice(SOPInstanceUID="1.2.3.4")), REQUEST)
    outcome = await ingest.service.store_instance(
        write_file(dicom.ct_slice(SOPInstanceUID="1.2.3.4")), REQUEST
    )
    assert outcome.status == "failed"
    assert outcome.failure_reason == 0x0111
    assert len(ingest.archive.objects) == 1
    assert len(ingest.events.published) == 1


async def test_different_bytes_replace_with_a_warning_under_the_replace_policy(
    replacing_ingest: Any, dicom: Any, write_file: Any
) -> None:
    ingest = replacing_ingest
    uids = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.1", "SOPInstanceUID": "1.2.3.4"}
    await ingest.service.store_instance(write_file(dicom.ct_slice(**uids)), REQUEST)
    first_key = ingest.records.instances["1.2.3.4"].object_key
    newer = dicom.ct_slice(**uids)
    outcome = await ingest.service.store_instance(write_file(newer), REQUEST)
    assert outcome.status == "replaced"
    assert outcome.warning_reason == 0xB00E
    instance = ingest.records.instances["1.2.3.4"]
    assert instance.object_key == f"{first_key}.v{instance.sha256[:16]}"
    assert list(ingest.archive.objects) == [instance.object_key]  # the replaced version is gone
    assert ingest.archive.objects[instance.object_key] == newer
    assert len(ingest.events.published) == 2


async def test_a_study_contradicting_the_request_is_refused(ingest: Any, dicom: Any, write_file: Any) -> None:
    request = StoreRequest(source="stow", facility_finess="750000001", expected_study_uid="1.2.3")
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), request)
    assert outcome.failure_reason == 0xA900
    assert "1.2.3" in outcome.detail
    assert not ingest.archive.objects
    assert not ingest.records.instances


async def test_unparseable_input_fails_and_stores_nothing(ingest: Any, write_file: Any) -> None:
    outcome = await ingest.service.store_instance(write_file(b"not dicom"), REQUEST)
    assert outcome.failure_reason == 0xC000
    assert outcome.sop_instance_uid is None
    assert not ingest.archive.objects
    assert not ingest.events.published


async def test_an_invalid_modality_value_is_a_mismatch(ingest: Any, dicom: Any, write_file: Any) -> None:
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice(Modality="ct scan")), REQUEST)
    assert outcome.failure_reason == 0xA900
    assert "modality" in outcome.detail


async def test_s3_unavailable_is_out_of_resources(ingest: Any, dicom: Any, write_file: Any) -> None:
    ingest.archive.fail_put = EndpointConnectionError(endpoint_url="http://s3")
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), REQUEST)
    assert outcome.failure_reason == 0xA700
    assert not ingest.records.instances
    assert not ingest.events.published
    assert not ingest.records.claims


async def test_a_failed_record_deletes_the_archived_object(ingest: Any, dicom: Any, write_file: Any) -> None:
    ingest.records.fail_record = ServerSelectionTimeoutError("mongo down")
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), REQUEST)
    assert outcome.failure_reason == 0xA700
    assert not ingest.archive.objects
    assert not ingest.events.published


async def test_a_commit_whose_acknowledgement_was_lost_is_a_success(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    ingest.records.fail_after_commit = ServerSelectionTimeoutError("connection lost after commit")
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), REQUEST)
    assert outcome.status == "stored"
    assert len(ingest.archive.objects) == 1
    assert len(ingest.events.published) == 1


async def test_kafka_down_still_acknowledges_and_leaves_the_event_to_the_relay(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    ingest.events.fail = KafkaConnectionError("kafka down")
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), REQUEST)
    assert outcome.status == "stored"
    await ingest.service.settle_pending()
    ((entry, state),) = ingest.records.outbox.values()
    assert state == "pending"
    assert ingest.outbox.retried == [entry.event_id]
    assert ingest.wakeups == 1


async def test_kafka_too_slow_is_left_to_the_relay_too(ingest: Any, dicom: Any, write_file: Any) -> None:
    import asyncio

    async def hang(*_: Any, **__: Any) -> None:
        await asyncio.sleep(10)

    ingest.events.publish = hang
    outcome = await ingest.service.store_instance(write_file(dicom.ct_slice()), REQUEST)
    assert outcome.status == "stored"
    await ingest.service.settle_pending()
    assert ingest.wakeups == 1


def _ingested_bytes(path: str) -> float:
    """``emage_ingest_bytes_total{path=...}`` as Prometheus would scrape it from this process."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("emage_ingest_bytes_total", {"path": path}) or 0.0


async def test_ingested_bytes_count_what_became_durable_by_path(
    replacing_ingest: Any, dicom: Any, write_file: Any
) -> None:
    ingest = replacing_ingest
    before = {path: _ingested_bytes(path) for path in ("stow", "dimse", "pull", "import")}
    uids = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.1", "SOPInstanceUID": "1.2.3.9"}
    first, newer = dicom.ct_slice(**uids), dicom.ct_slice(**uids)
    assert (await ingest.service.store_instance(write_file(first), REQUEST)).status == "stored"
    duplicate = await ingest.service.store_instance(write_file(first), REQUEST)
    assert duplicate.status == "duplicate"
    dimse = StoreRequest(source="dimse", facility_finess="750000001", calling_ae_title="CT01")
    assert (await ingest.service.store_instance(write_file(newer), dimse)).status == "replaced"
    assert _ingested_bytes("stow") - before["stow"] == len(first)  # the duplicate added nothing
    assert _ingested_bytes("dimse") - before["dimse"] == len(newer)
    assert _ingested_bytes("pull") == before["pull"]
    assert _ingested_bytes("import") == before["import"]


async def test_ingested_bytes_ignore_what_was_refused_or_not_archived(
    ingest: Any, dicom: Any, write_file: Any
) -> None:
    before = _ingested_bytes("pull")
    pull = StoreRequest(source="pull", facility_finess="750000001")
    assert (await ingest.service.store_instance(write_file(b"not dicom"), pull)).status == "failed"
    ingest.archive.fail_put = EndpointConnectionError(endpoint_url="http://s3")
    assert (await ingest.service.store_instance(write_file(dicom.ct_slice()), pull)).status == "failed"
    ingest.archive.fail_put = None
    ingest.records.fail_record = ServerSelectionTimeoutError("mongo down")
    assert (await ingest.service.store_instance(write_file(dicom.ct_slice()), pull)).status == "failed"
    assert _ingested_bytes("pull") == before
    # Kafka down: the event waits in the outbox, the instance is durable and acknowledged, so it counts.
    ingest.records.fail_record = None
    ingest.events.fail = KafkaConnectionError("kafka down")
    data = dicom.ct_slice()
    assert (await ingest.service.store_instance(write_file(data), pull)).status == "stored"
    await ingest.service.settle_pending()
    assert _ingested_bytes("pull") - before == len(data)
