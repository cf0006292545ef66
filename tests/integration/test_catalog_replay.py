"""Replay: an empty catalog database rebuilt from ``emage.instance.stored.v1`` answers exactly as before.

The catalog process is stopped, its database dropped and its consumer group moved back to the start of the
topic, as an operator would do to rebuild it; once restarted it must give byte-identical QIDO-RS and WADO-RS
answers, counts included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pymongo import AsyncMongoClient

from emage_common.events import INSTANCE_STORED_TOPIC, InstanceStored, PatientIdentity, make_event
from emage_common.kafka import EventPublisher, build_kafka_config
from emage_common.settings import ServiceSettings
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.8.498.7302"
WAIT_S = 60
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def stored_instance(study: int, series: int, instance: int) -> InstanceStored:
    """Instance ``instance`` of series ``series`` of study ``study``: CT for even studies, MR for odd ones."""
    study_uid, series_uid = f"{ROOT}.{study}", f"{ROOT}.{study}.{series}"
    sop_uid = f"{series_uid}.{instance}"
    modality, sop_class = ("CT", CT_IMAGE_STORAGE) if study % 2 == 0 else ("MR", MR_IMAGE_STORAGE)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = f"2021{study % 12 + 1:02d}{study % 28 + 1:02d}"
    ds.StudyTime = f"{study % 24:02d}3000"
    ds.AccessionNumber = f"RPL-{study}"
    ds.Modality = modality
    ds.PatientName = f"Replay^Patient{study % 3}"
    ds.PatientID = f"RPL-{study % 3}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated = 16
    ds.add(DataElement(0x7FE00010, "OW", bytes(32 * 32 * 2)))
    instance_path = f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    return InstanceStored(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=instance_path,
        size_bytes=4096,
        sha256="cd" * 32,
        facility_finess="750000001",
        patient=PatientIdentity(patient_id=f"RPL-{study % 3}", issuer_of_patient_id="750000001"),
        modality=modality,
        stored_at=datetime(2024, 6, 1, tzinfo=UTC),
        dicom_json=ds.to_json_dict(
            bulk_data_threshold=1024,
            bulk_data_element_handler=lambda element: f"{instance_path}/bulk/{element.tag:08X}",
        ),
    )


EVENTS = [
    stored_instance(study, series, instance)
    for study in range(1, 7)
    for series in range(1, study % 3 + 2)
    for instance in range(1, 4)
]
# A correction re-sent after the first version: a replay must end on the same, latest, values.
CORRECTED = stored_instance(1, 1, 1).model_copy(
    update={
        "dicom_json": {
            **stored_instance(1, 1, 1).dicom_json,
            "00081030": {"vr": "LO", "Value": ["Corrected description"]},
        }
    }
)
QUERIES = [
    ("/studies", {"AccessionNumber": "RPL-*", "includefield": "all"}),
    ("/studies", {"PatientName": "replay^patient1", "StudyDate": "20210101-20211231"}),
    ("/studies", {"AccessionNumber": "RPL-*", "limit": "2", "offset": "1"}),
    ("/series", {"PatientID": "RPL-0", "includefield": "all"}),
    ("/instances", {"PatientID": "RPL-2", "Modality": "CT"}),
    (f"/studies/{ROOT}.5/series", {}),
    (f"/studies/{ROOT}.5/instances", {"includefield": "all"}),
    (f"/studies/{ROOT}.1/metadata", {}),
    (f"/studies/{ROOT}.4/series/{ROOT}.4.2/metadata", {}),
]


async def answers(client: httpx.AsyncClient) -> list[tuple[int, str | None, bytes]]:
    """Status, total count and body of every query, in order."""
    responses = [await client.get(path, params=params) for path, params in QUERIES]
    return [(r.status_code, r.headers.get("X-Total-Count"), r.content) for r in responses]


async def rewind_consumer_group(kafka_bootstrap: str, group_id: str) -> None:
    """Commit the beginning of every partition for ``group_id`` (its members must have left the group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([INSTANCE_STORED_TOPIC])
    finally:
        await admin.close()
    partitions = [TopicPartition(INSTANCE_STORED_TOPIC, p["partition"]) for p in description["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    if "catalog" not in stack.services:
        stack.start_services(("catalog",))
    async with httpx.AsyncClient(base_url=stack.service_url("catalog"), timeout=10) as http:
        yield http


async def test_a_dropped_catalog_rebuilt_from_the_topic_answers_identically(
    stack: Stack, client: httpx.AsyncClient, kafka_bootstrap: str, mongo_uri: str
) -> None:
    config = build_kafka_config(
        ServiceSettings(service_name="ingest", http_port=8081, kafka_bootstrap_servers=kafka_bootstrap)
    )
    async with EventPublisher(config) as publisher:
        for stored in [*EVENTS, CORRECTED]:
            await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))

    async def catalogued() -> list[tuple[int, str | None, bytes]]:
        instances = await client.get("/instances", params={"AccessionNumber": "RPL-*"})
        corrected = await client.get(
            "/studies", params={"AccessionNumber": "RPL-1", "includefield": "00081030"}
        )
        if (
            instances.headers.get("X-Total-Count") != str(len(EVENTS))
            or b"Corrected" not in corrected.content
        ):
            return []
        # Settled: the last instances' series and study documents are written too.
        first = await answers(client)
        await asyncio.sleep(0.5)
        return first if await answers(client) == first else []

    before = await _eventually(catalogued)
    assert all(status == 200 for status, _, _ in before)

    stack.stop_service("catalog")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        await mongo.drop_database("catalog")
        assert "catalog" not in await mongo.list_database_names()
    finally:
        await mongo.close()
    await rewind_consumer_group(kafka_bootstrap, "catalog")
    stack.start_services(("catalog",))

    async def rebuilt() -> list[tuple[int, str | None, bytes]]:
        found = await answers(client)
        return found if found == before else []

    try:
        await _eventually(rebuilt)
    except TimeoutError:
        # Show what differs.
        assert await answers(client) == before


async def _eventually(check: Any) -> Any:
    async with asyncio.timeout(WAIT_S):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.2)
