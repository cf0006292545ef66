"""Events between two services over a real Kafka broker (and MongoDB for deduplication).

An ``ingest`` publisher and a ``catalog`` consumer group, as in production: the trace started before
publishing continues in the handler, a handler that keeps failing dead-letters the record with its error,
and an event delivered twice changes the catalog once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo import AsyncMongoClient

from emage_common.events import (
    CloudEvent,
    InstanceStored,
    PatientIdentity,
    dlq_topic,
    make_event,
)
from emage_common.kafka import (
    DLQ_ATTEMPTS,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    ConsumerRecordMeta,
    ConsumerRunner,
    EventPublisher,
    KafkaClientConfig,
    MongoProcessedEventLog,
    build_kafka_config,
    close_kafka_ready,
    ensure_topics,
    kafka_ready,
)
from emage_common.settings import ServiceSettings

pytestmark = pytest.mark.integration

STUDY_UID = "1.2.826.0.1.3680043.8.498.20002"
WAIT_S = 60


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Finished spans of this process; joins the SDK provider if telemetry already installed one."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def topic() -> str:
    """A topic of its own per test, so reruns and parallel tests never see each other's records."""
    return f"emage.it.{uuid.uuid4().hex[:12]}.instance.stored.v1"


@pytest.fixture
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, object]]]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_uri)
    yield client
    await client.close()


def kafka_config(service_name: str, kafka_bootstrap: str) -> KafkaClientConfig:
    return build_kafka_config(
        ServiceSettings(service_name=service_name, http_port=8000, kafka_bootstrap_servers=kafka_bootstrap)
    )


def instance_stored(sop_suffix: int = 1) -> InstanceStored:
    sop_instance_uid = f"{STUDY_UID}.1.{sop_suffix}"
    return InstanceStored(
        study_instance_uid=STUDY_UID,
        series_instance_uid=f"{STUDY_UID}.1",
        sop_instance_uid=sop_instance_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{STUDY_UID}/{sop_instance_uid}.dcm",
        size_bytes=526_336,
        sha256="ab" * 32,
        facility_finess="750712184",
        patient=PatientIdentity(patient_id="IPP-0042", issuer_of_patient_id="750712184"),
        modality="CT",
        stored_at=datetime.now(UTC),
        dicom_json={
            "00080018": {"vr": "UI", "Value": [sop_instance_uid]},
            "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
        },
    )


async def read_one(kafka_bootstrap: str, topic: str) -> tuple[bytes, bytes | None, dict[str, bytes]]:
    """The first record of ``topic``, read outside any consumer group."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        found = await asyncio.wait_for(consumer.getone(), timeout=WAIT_S)
    finally:
        await consumer.stop()
    return found.value, found.key, dict(found.headers)


async def committed_offset(kafka_bootstrap: str, group_id: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id, partitions=[tp])
    finally:
        await admin.close()
    return offsets[tp].offset if tp in offsets else None


def by_name(spans: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    return {
        span.name: span
        for span in spans.get_finished_spans()
        if span.context is not None and span.context.trace_id == trace_id
    }


async def test_event_is_handled_by_another_service_within_the_publishers_trace(
    kafka_bootstrap: str, topic: str, spans: InMemorySpanExporter
) -> None:
    await ensure_topics(kafka_bootstrap, {topic: 3})
    tracer = trace.get_tracer("tests.integration")
    handled: asyncio.Queue[tuple[InstanceStored, ConsumerRecordMeta, int]] = asyncio.Queue()

    async def upsert_instance(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        with tracer.start_as_current_span("catalog.upsert_instance") as span:
            await handled.put((event.data_as(InstanceStored), meta, span.get_span_context().trace_id))

    payload = instance_stored()
    async with EventPublisher(kafka_config("ingest", kafka_bootstrap)) as publisher:
        with tracer.start_as_current_span("ingest.stow_rs") as request_span:
            await publisher.publish(topic, make_event(payload, "/emage/ingest"))
        trace_id = request_span.get_span_context().trace_id

        async with ConsumerRunner(
            kafka_config("catalog", kafka_bootstrap),
            topics=[topic],
            group_id=f"catalog-{uuid.uuid4().hex[:8]}",
            handler=upsert_instance,
            dlq_publisher=publisher,
            max_attempts=3,
        ):
            stored, meta, handler_trace_id = await asyncio.wait_for(handled.get(), timeout=WAIT_S)

    assert stored == payload
    assert meta.key == STUDY_UID.encode()
    assert handler_trace_id == trace_id
    trace_spans = by_name(spans, trace_id)
    # stow_rs → send (producer) → process (consumer, in catalog) → the handler's own span.
    chain = [trace_spans[name] for name in (f"send {topic}", f"process {topic}", "catalog.upsert_instance")]
    parents = [request_span.get_span_context().span_id] + [span.context.span_id for span in chain[:-1]]
    assert [span.parent.span_id if span.parent else None for span in chain] == parents


async def test_failing_handler_dead_letters_the_event_after_max_attempts(
    kafka_bootstrap: str, topic: str
) -> None:
    await ensure_topics(kafka_bootstrap, {topic: 1})
    group_id = f"catalog-{uuid.uuid4().hex[:8]}"
    attempts: list[int] = []

    async def unavailable_store(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        attempts.append(meta.attempt)
        raise ConnectionError("catalog store unavailable")

    async with EventPublisher(kafka_config("ingest", kafka_bootstrap)) as publisher:
        await publisher.publish(topic, make_event(instance_stored(), "/emage/ingest"))
        original, _, _ = await read_one(kafka_bootstrap, topic)
        async with ConsumerRunner(
            kafka_config("catalog", kafka_bootstrap),
            topics=[topic],
            group_id=group_id,
            handler=unavailable_store,
            dlq_publisher=publisher,
            max_attempts=3,
            initial_backoff_s=0.05,
        ):
            dead, key, headers = await read_one(kafka_bootstrap, dlq_topic(topic))

    assert attempts == [1, 2, 3]
    assert dead == original
    assert key == STUDY_UID.encode()
    assert headers["content-type"] == b"application/cloudevents+json; charset=UTF-8"
    assert headers[DLQ_ERROR_TYPE] == b"builtins.ConnectionError"
    assert headers[DLQ_ERROR_MESSAGE] == b"catalog store unavailable"
    assert headers[DLQ_ATTEMPTS] == b"3"
    assert headers[DLQ_ORIGINAL_TOPIC] == topic.encode()
    assert headers[DLQ_ORIGINAL_PARTITION] == b"0"
    assert headers[DLQ_ORIGINAL_OFFSET] == b"0"
    assert headers[DLQ_CONSUMER_GROUP] == group_id.encode()
    # Dead-lettered means settled: the group moved past the record.
    assert await committed_offset(kafka_bootstrap, group_id, TopicPartition(topic, 0)) == 1


async def test_event_delivered_twice_is_applied_once(
    kafka_bootstrap: str, topic: str, mongo_client: AsyncMongoClient[dict[str, object]]
) -> None:
    await ensure_topics(kafka_bootstrap, {topic: 1})
    catalog_db = mongo_client[f"it_catalog_{uuid.uuid4().hex[:8]}"]
    processed = MongoProcessedEventLog(catalog_db)
    deliveries: list[str] = []
    both_delivered = asyncio.Event()

    async def upsert_instance(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        stored = event.data_as(InstanceStored)
        async with mongo_client.start_session() as session, await session.start_transaction():
            if await processed.seen_or_mark(event.id, session=session):
                deliveries.append("duplicate")
            else:
                await catalog_db.instances.update_one(
                    {"_id": stored.sop_instance_uid}, {"$inc": {"applied": 1}}, upsert=True, session=session
                )
                deliveries.append("applied")
        if len(deliveries) == 2:
            both_delivered.set()

    event = make_event(instance_stored(), "/emage/ingest")
    try:
        async with EventPublisher(kafka_config("ingest", kafka_bootstrap)) as publisher:
            # The same event twice, as a relay re-sending after a lost acknowledgement would.
            await publisher.publish(topic, event)
            await publisher.publish(topic, event)
            async with ConsumerRunner(
                kafka_config("catalog", kafka_bootstrap),
                topics=[topic],
                group_id=f"catalog-{uuid.uuid4().hex[:8]}",
                handler=upsert_instance,
                dlq_publisher=publisher,
                max_attempts=3,
            ):
                await asyncio.wait_for(both_delivered.wait(), timeout=WAIT_S)

        assert deliveries == ["applied", "duplicate"]
        instance = await catalog_db.instances.find_one({"_id": instance_stored().sop_instance_uid})
        assert instance is not None
        assert instance["applied"] == 1
    finally:
        await mongo_client.drop_database(catalog_db.name)


async def test_processed_event_log_marks_an_event_once_under_concurrency(
    mongo_client: AsyncMongoClient[dict[str, object]],
) -> None:
    database = mongo_client[f"it_dedupe_{uuid.uuid4().hex[:8]}"]
    processed = MongoProcessedEventLog(database)
    try:
        seen = await asyncio.gather(*(processed.seen_or_mark("event-1") for _ in range(10)))
        assert sorted(seen) == [False] + [True] * 9
        assert await processed.seen_or_mark("event-2") is False
    finally:
        await mongo_client.drop_database(database.name)


async def test_topics_are_created_with_their_dead_letter_twin_and_creation_is_repeatable(
    kafka_bootstrap: str, topic: str
) -> None:
    await ensure_topics(kafka_bootstrap, {topic: 4})
    await ensure_topics(kafka_bootstrap, {topic: 4})

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([topic, dlq_topic(topic)])}
    finally:
        await admin.close()
    assert len(described[topic]["partitions"]) == 4
    assert len(described[dlq_topic(topic)]["partitions"]) == 4


async def test_readiness_reflects_whether_the_cluster_answers(kafka_bootstrap: str) -> None:
    try:
        assert await kafka_ready(kafka_config("catalog", kafka_bootstrap))
        assert await kafka_ready(kafka_config("catalog", kafka_bootstrap))
        assert not await kafka_ready(kafka_config("catalog", "127.0.0.1:1"), timeout_s=1.0)
    finally:
        await close_kafka_ready()
