"""Replay: an empty catalog database rebuilt from ``emage.instance.stored.v1`` answers exactly as before.

The catalog process is stopped, its database dropped and its consumer group moved back to the start of the
topic, as an operator would do to rebuild it; once restarted it must give byte-identical QIDO-RS and WADO-RS
answers, counts included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from catalog_events import (
    SyntheticInstances,
    answers,
    eventually,
    numbered_instances,
    publish_stored,
    settled_answers,
)
from pymongo import AsyncMongoClient

from emage_common.events import INSTANCE_STORED_TOPIC, InstanceStored
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.8.498.7302"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


INSTANCES = SyntheticInstances(
    ROOT,
    rows=32,
    size_bytes=4096,
    sha256="cd" * 32,
    stored_at=datetime(2024, 6, 1, tzinfo=UTC),
    bulk_data_threshold=1024,
)


def stored_instance(study: int, series: int, instance: int) -> InstanceStored:
    """Instance ``instance`` of series ``series`` of study ``study``: CT for even studies, MR for odd ones."""
    modality, sop_class = ("CT", CT_IMAGE_STORAGE) if study % 2 == 0 else ("MR", MR_IMAGE_STORAGE)
    return INSTANCES.event(
        study,
        series,
        instance,
        modality=modality,
        sop_class=sop_class,
        facility="750000001",
        patient_id=f"RPL-{study % 3}",
        patient_name=f"Replay^Patient{study % 3}",
        study_date=f"2021{study % 12 + 1:02d}{study % 28 + 1:02d}",
        study_time=f"{study % 24:02d}3000",
        accession=f"RPL-{study}",
    )


EVENTS = [stored_instance(*numbers) for numbers in numbered_instances(6)]
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
    await publish_stored(kafka_bootstrap, [*EVENTS, CORRECTED])

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
        return await settled_answers(client, QUERIES)

    before = await eventually(catalogued)
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
        found = await answers(client, QUERIES)
        return found if found == before else []

    try:
        await eventually(rebuilt)
    except TimeoutError:
        # Show what differs.
        assert await answers(client, QUERIES) == before
