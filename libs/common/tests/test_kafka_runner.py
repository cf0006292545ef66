"""ConsumerRunner and EventPublisher logic against in-memory stand-ins for aiokafka (no broker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import context, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from prometheus_client import REGISTRY
from pydantic import SecretStr

from emage_common.events import (
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    InstanceStored,
    InvalidEventDataError,
    PatientIdentity,
    make_event,
)
from emage_common.kafka import (
    DLQ_ATTEMPTS,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_FIRST_FAILURE_TIME,
    DLQ_LAST_FAILURE_TIME,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    ConsumerRecordMeta,
    ConsumerRunner,
    EventPublisher,
    build_kafka_config,
)
from emage_common.settings import ServiceSettings
from emage_common.telemetry import setup_tracing

GROUP = "catalog"
STUDY_UID = "1.2.826.0.1.3680043.8.498.10001"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class FakeProducer:
    """Records what would have been produced; can be told to fail like a broker that is down."""

    def __init__(self, consumer: FakeConsumer | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = False
        self.consumer = consumer
        self.commits_seen_at_send: list[int] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.consumer is not None:
            self.commits_seen_at_send.append(len(self.consumer.commits))
        if self.fail:
            raise KafkaTimeoutError("no broker")
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})


class FakeConsumer:
    """Serves prepared polls, then empty ones; records commits and seeks."""

    def __init__(self, *polls: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]) -> None:
        self._polls = list(polls)
        self.drained = asyncio.Event()
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.subscribed: tuple[list[str], Any] | None = None
        self.stopped = False
        self.reject_commits = False

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        self.subscribed = (list(topics), listener)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]:
        if self._polls:
            return self._polls.pop(0)
        self.drained.set()
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.reject_commits:
            raise CommitFailedError("group rebalanced")
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


def record(
    topic: str,
    offset: int,
    value: bytes,
    *,
    partition: int = 0,
    key: bytes | None = STUDY_UID.encode(),
    headers: Sequence[tuple[str, bytes]] = (("content-type", STRUCTURED_CONTENT_TYPE.encode()),),
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=1_772_439_330_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value),
        headers=list(headers),
    )


def instance_stored() -> InstanceStored:
    sop_instance_uid = f"{STUDY_UID}.1.1"
    return InstanceStored(
        study_instance_uid=STUDY_UID,
        series_instance_uid=f"{STUDY_UID}.1",
        sop_instance_uid=sop_instance_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{STUDY_UID}/{sop_instance_uid}.dcm",
        size_bytes=526_336,
        sha256="0" * 64,
        facility_finess="750712184",
        patient=PatientIdentity(patient_id="IPP-0042", issuer_of_patient_id="750712184"),
        modality="CT",
        stored_at=datetime(2026, 3, 2, 8, 15, tzinfo=UTC),
        dicom_json={"00080060": {"vr": "CS", "Value": ["CT"]}},
    )


def event_bytes() -> bytes:
    return make_event(instance_stored(), "/emage/ingest").to_bytes()


def unique_topic() -> str:
    # Metrics are process-global: a topic per test keeps their counts independent.
    return f"emage.test.{uuid.uuid4().hex[:12]}.v1"


class Handler:
    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.calls: list[tuple[CloudEvent, ConsumerRecordMeta]] = []
        self.failures = failures
        self.error = error or RuntimeError("catalog store unavailable")
        self.trace_ids: list[int] = []
        self.called = asyncio.Event()

    async def __call__(self, event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        self.calls.append((event, meta))
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        self.called.set()
        if len(self.calls) <= self.failures:
            raise self.error


class BatchHandler:
    """Records the batches it is handed; fails on a batch holding an offset of ``failing_offsets``."""

    def __init__(self, failing_offsets: tuple[int, ...] = ()) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.failing_offsets = failing_offsets

    async def __call__(self, batch: Sequence[tuple[CloudEvent, ConsumerRecordMeta]]) -> None:
        self.batches.append([(meta.partition, meta.offset) for _, meta in batch])
        if any(meta.offset in self.failing_offsets for _, meta in batch):
            raise RuntimeError("one bad event spoils the transaction")


async def run_until_drained(
    consumer: FakeConsumer,
    handler: Handler,
    producer: FakeProducer,
    *,
    max_attempts: int = 3,
    batch_handler: BatchHandler | None = None,
    max_batch_bytes: int = 8 * 1024 * 1024,
) -> ConsumerRunner:
    runner = ConsumerRunner(
        build_kafka_config(ServiceSettings(service_name="catalog", http_port=8002)),
        topics=["emage.instance.stored.v1"],
        group_id=GROUP,
        handler=handler,
        dlq_publisher=await started_publisher(producer),
        max_attempts=max_attempts,
        initial_backoff_s=0.001,
        poll_timeout_ms=5,
        consumer=consumer,
        batch_handler=batch_handler,
        max_batch_bytes=max_batch_bytes,
    )
    await runner.start()
    await asyncio.wait_for(consumer.drained.wait(), timeout=10)
    await runner.stop()
    return runner


async def started_publisher(producer: FakeProducer) -> EventPublisher:
    publisher = EventPublisher(
        build_kafka_config(ServiceSettings(service_name="ingest", http_port=8001)), producer=producer
    )
    await publisher.start()
    return publisher


def metric(name: str, topic: str) -> float:
    return REGISTRY.get_sample_value(name, {"topic": topic}) or 0.0


# --- Configuration ------------------------------------------------------------------------------------------


def test_plaintext_config_names_the_client_after_the_service() -> None:
    config = build_kafka_config(ServiceSettings(service_name="ingest", http_port=8001))
    assert config == {
        "bootstrap_servers": "127.0.0.1:9092",
        "client_id": "ingest",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_config_carries_credentials_and_a_verifying_tls_context() -> None:
    config = build_kafka_config(
        ServiceSettings(
            service_name="ingest",
            http_port=8001,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="ingest",
            kafka_sasl_password=SecretStr("s3cret"),
        )
    )
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "ingest"
    assert config["sasl_plain_password"] == "s3cret"
    assert config["ssl_context"].check_hostname


def test_sasl_without_credentials_is_a_configuration_error() -> None:
    settings = ServiceSettings(
        service_name="ingest", http_port=8001, kafka_security_protocol="SASL_PLAINTEXT"
    )
    with pytest.raises(ValueError, match="kafka_sasl_mechanism"):
        build_kafka_config(settings)


# --- Runner -------------------------------------------------------------------------------------------------


async def test_offsets_are_committed_after_the_handler_succeeded_in_partition_order() -> None:
    topic = unique_topic()
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = FakeConsumer(
        {
            p0: [record(topic, offset, event_bytes()) for offset in range(3)],
            p1: [record(topic, offset, event_bytes(), partition=1) for offset in (7, 8)],
        }
    )
    handler = Handler()
    await run_until_drained(consumer, handler, FakeProducer())

    assert consumer.commits == [{p0: 3, p1: 9}]
    assert [meta.offset for _, meta in handler.calls if meta.partition == 0] == [0, 1, 2]
    assert [meta.offset for _, meta in handler.calls if meta.partition == 1] == [7, 8]
    assert consumer.stopped
    assert metric("emage_kafka_records_handled_total", topic) == 5


async def test_failing_handler_is_retried_then_succeeds_without_dead_letter() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, 4, event_bytes())]})
    handler = Handler(failures=2)
    producer = FakeProducer()
    await run_until_drained(consumer, handler, producer, max_attempts=3)

    assert [meta.attempt for _, meta in handler.calls] == [1, 2, 3]
    assert producer.sent == []
    assert consumer.commits == [{tp: 5}]
    assert metric("emage_kafka_handler_failures_total", topic) == 2


async def test_exhausted_retries_dead_letter_the_original_record_before_committing() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 2)
    original = record(topic, 41, event_bytes(), partition=2, headers=[("traceparent", TRACEPARENT.encode())])
    consumer = FakeConsumer({tp: [original]})
    handler = Handler(failures=99, error=RuntimeError("catalog store unavailable"))
    producer = FakeProducer(consumer)
    await run_until_drained(consumer, handler, producer, max_attempts=4)

    assert len(handler.calls) == 4
    [dead] = producer.sent
    assert dead["topic"] == f"{topic}.dlq"
    assert dead["value"] == original.value
    assert dead["key"] == original.key
    headers = dict(dead["headers"])
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert headers[DLQ_ERROR_TYPE] == b"builtins.RuntimeError"
    assert headers[DLQ_ERROR_MESSAGE] == b"catalog store unavailable"
    assert headers[DLQ_ATTEMPTS] == b"4"
    assert headers[DLQ_ORIGINAL_TOPIC] == topic.encode()
    assert headers[DLQ_ORIGINAL_PARTITION] == b"2"
    assert headers[DLQ_ORIGINAL_OFFSET] == b"41"
    assert headers[DLQ_CONSUMER_GROUP] == GROUP.encode()
    assert headers[DLQ_FIRST_FAILURE_TIME] <= headers[DLQ_LAST_FAILURE_TIME]
    # Nothing was committed while the record was failing; its offset is committed once dead-lettered.
    assert producer.commits_seen_at_send == [0]
    assert consumer.commits == [{tp: 42}]
    assert metric("emage_kafka_records_dead_lettered_total", topic) == 1


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"specversion":"1.0","type":"t","source":"/s"}', b"[]"],
    ids=["garbage", "missing-id", "array"],
)
async def test_record_that_is_not_a_cloudevent_is_dead_lettered_without_retry(value: bytes) -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, 0, value), record(topic, 1, event_bytes())]})
    handler = Handler()
    producer = FakeProducer(consumer)
    await run_until_drained(consumer, handler, producer, max_attempts=5)

    [dead] = producer.sent
    assert dead["value"] == value
    assert dict(dead["headers"])[DLQ_ERROR_TYPE] == b"emage_common.events.InvalidEnvelopeError"
    assert dict(dead["headers"])[DLQ_ATTEMPTS] == b"1"
    assert [meta.offset for _, meta in handler.calls] == [1]
    assert consumer.commits == [{tp: 2}]


async def test_handler_rejecting_the_payload_is_dead_lettered_without_retry() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, 0, event_bytes())]})
    handler = Handler(failures=99, error=InvalidEventDataError("not an InstanceStored"))
    producer = FakeProducer(consumer)
    await run_until_drained(consumer, handler, producer, max_attempts=5)

    assert len(handler.calls) == 1
    assert dict(producer.sent[0]["headers"])[DLQ_ATTEMPTS] == b"1"
    assert consumer.commits == [{tp: 1}]


async def test_record_that_cannot_be_dead_lettered_is_not_committed_and_is_fetched_again() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer(
        {tp: [record(topic, 0, event_bytes()), record(topic, 1, b"poison"), record(topic, 2, event_bytes())]}
    )
    handler = Handler()
    producer = FakeProducer(consumer)
    producer.fail = True
    await run_until_drained(consumer, handler, producer)

    assert consumer.seeks == [(tp, 1)]
    assert consumer.commits == [{tp: 1}]
    assert [meta.offset for _, meta in handler.calls] == [0]


async def test_stop_during_backoff_leaves_the_record_uncommitted_for_redelivery() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, 0, event_bytes())]})
    handler = Handler(failures=99)
    producer = FakeProducer()
    runner = ConsumerRunner(
        build_kafka_config(ServiceSettings(service_name="catalog", http_port=8002)),
        topics=[topic],
        group_id=GROUP,
        handler=handler,
        dlq_publisher=await started_publisher(producer),
        max_attempts=5,
        initial_backoff_s=30,
        poll_timeout_ms=5,
        consumer=consumer,
    )
    await runner.start()
    await asyncio.wait_for(handler.called.wait(), timeout=5)
    await asyncio.wait_for(runner.stop(), timeout=5)

    assert len(handler.calls) == 1
    assert producer.sent == []
    assert consumer.commits == []
    assert consumer.stopped
    assert not runner.running


async def test_commit_rejected_by_a_rebalance_does_not_stop_consumption() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, 0, event_bytes())]}, {tp: [record(topic, 1, event_bytes())]})
    consumer.reject_commits = True
    handler = Handler()
    runner = await run_until_drained(consumer, handler, FakeProducer())

    assert [meta.offset for _, meta in handler.calls] == [0, 1]
    assert consumer.commits == []
    assert consumer.stopped
    assert not runner.running


async def test_subscription_uses_a_rebalance_listener_that_commits_before_revocation() -> None:
    topic = unique_topic()
    consumer = FakeConsumer()
    runner = ConsumerRunner(
        build_kafka_config(ServiceSettings(service_name="catalog", http_port=8002)),
        topics=[topic],
        group_id=GROUP,
        handler=Handler(),
        dlq_publisher=await started_publisher(FakeProducer()),
        max_attempts=1,
        poll_timeout_ms=5,
        consumer=consumer,
    )
    async with runner:
        assert consumer.subscribed is not None
        topics, listener = consumer.subscribed
        assert topics == [topic]
        assert isinstance(listener, ConsumerRebalanceListener)
        assert runner.running


async def test_handler_runs_in_a_span_continuing_the_trace_from_the_record_header() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    from_header = record(topic, 0, event_bytes(), headers=[("traceparent", TRACEPARENT.encode())])
    traced = make_event(instance_stored(), "/emage/ingest").model_copy(update={"traceparent": TRACEPARENT})
    from_event = record(topic, 1, traced.to_bytes(), headers=[])
    consumer = FakeConsumer({tp: [from_header, from_event]})
    handler = Handler()
    await run_until_drained(consumer, handler, FakeProducer())

    assert handler.trace_ids == [TRACE_ID, TRACE_ID]


# --- Batches ------------------------------------------------------------------------------------------------


async def test_a_batch_handler_is_handed_each_partitions_records_of_a_poll_together_in_order() -> None:
    topic = unique_topic()
    p0, p1, p2 = (TopicPartition(topic, number) for number in range(3))
    consumer = FakeConsumer(
        {
            p0: [record(topic, offset, event_bytes()) for offset in range(3)],
            p1: [record(topic, offset, event_bytes(), partition=1) for offset in (7, 8)],
            p2: [record(topic, 5, event_bytes(), partition=2)],
        },
        {p0: [record(topic, offset, event_bytes()) for offset in (3, 4)]},
    )
    handler, batches = Handler(), BatchHandler()
    await run_until_drained(consumer, handler, FakeProducer(), batch_handler=batches)

    assert sorted(batches.batches) == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4)], [(1, 7), (1, 8)]]
    # A lone record goes to the record handler, as without batches.
    assert [(meta.partition, meta.offset) for _, meta in handler.calls] == [(2, 5)]
    assert consumer.commits == [{p0: 3, p1: 9, p2: 6}, {p0: 5}]
    assert metric("emage_kafka_records_handled_total", topic) == 8


async def test_batches_hold_at_most_max_batch_bytes_of_values_a_larger_record_alone() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    size = len(event_bytes())
    description = {"00081030": {"vr": "LO", "Value": ["x" * 3 * size]}}
    large = make_event(instance_stored().model_copy(update={"dicom_json": description}), "/emage/ingest")
    values = [event_bytes(), event_bytes(), event_bytes(), large.to_bytes(), event_bytes(), event_bytes()]
    consumer = FakeConsumer({tp: [record(topic, offset, value) for offset, value in enumerate(values)]})
    handler, batches = Handler(), BatchHandler()
    await run_until_drained(
        consumer, handler, FakeProducer(), batch_handler=batches, max_batch_bytes=2 * size
    )

    assert batches.batches == [[(0, 0), (0, 1)], [(0, 4), (0, 5)]]
    assert [meta.offset for _, meta in handler.calls] == [2, 3]
    assert consumer.commits == [{tp: 6}]


async def test_a_failed_batch_is_handled_record_by_record_and_only_the_faulty_record_is_dead_lettered() -> (
    None
):
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer({tp: [record(topic, offset, event_bytes()) for offset in range(4)]})
    batches = BatchHandler(failing_offsets=(2,))

    class FailsOnOffset2(Handler):
        async def __call__(self, event: CloudEvent, meta: ConsumerRecordMeta) -> None:
            await super().__call__(event, meta)
            if meta.offset == 2:
                raise InvalidEventDataError("not an InstanceStored")

    handler = FailsOnOffset2()
    producer = FakeProducer(consumer)
    await run_until_drained(consumer, handler, producer, batch_handler=batches)

    assert batches.batches == [[(0, 0), (0, 1), (0, 2), (0, 3)]]
    assert [meta.offset for _, meta in handler.calls] == [0, 1, 2, 3]
    [dead] = producer.sent
    assert dict(dead["headers"])[DLQ_ORIGINAL_OFFSET] == b"2"
    assert consumer.commits == [{tp: 4}]


async def test_a_batch_with_a_record_that_is_not_a_cloudevent_is_handled_record_by_record() -> None:
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    consumer = FakeConsumer(
        {tp: [record(topic, 0, event_bytes()), record(topic, 1, b"poison"), record(topic, 2, event_bytes())]}
    )
    handler, batches = Handler(), BatchHandler()
    producer = FakeProducer(consumer)
    await run_until_drained(consumer, handler, producer, batch_handler=batches)

    assert batches.batches == []
    assert [meta.offset for _, meta in handler.calls] == [0, 2]
    assert [dead["value"] for dead in producer.sent] == [b"poison"]
    assert consumer.commits == [{tp: 3}]


async def test_a_batch_span_links_the_trace_of_every_record() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("kafkatest").add_span_processor(SimpleSpanProcessor(exporter))
    topic = unique_topic()
    tp = TopicPartition(topic, 0)
    traced = make_event(instance_stored(), "/emage/ingest").model_copy(update={"traceparent": TRACEPARENT})
    consumer = FakeConsumer(
        {
            tp: [
                record(topic, 0, event_bytes(), headers=[("traceparent", TRACEPARENT.encode())]),
                record(topic, 1, traced.to_bytes(), headers=[]),
                record(topic, 2, event_bytes(), headers=[]),
            ]
        }
    )
    batches = BatchHandler()
    await run_until_drained(consumer, Handler(), FakeProducer(), batch_handler=batches)

    assert batches.batches == [[(0, 0), (0, 1), (0, 2)]]
    [span] = [
        span
        for span in exporter.get_finished_spans()
        if dict(span.attributes or {}).get("messaging.destination.name") == topic
    ]
    assert span.kind is SpanKind.CONSUMER
    assert dict(span.attributes or {})["messaging.batch.message_count"] == 3
    # The records that carry a trace context are linked to it; the untraced one adds no link.
    assert [link.context.trace_id for link in span.links] == [TRACE_ID, TRACE_ID]


# --- Publisher ----------------------------------------------------------------------------------------------


async def test_publish_writes_structured_mode_record_keyed_by_partition_key_with_trace_context() -> None:
    producer = FakeProducer()
    publisher = await started_publisher(producer)
    parent = NonRecordingSpan(
        SpanContext(trace_id=TRACE_ID, span_id=0xB7AD6B7169203331, is_remote=False, trace_flags=TraceFlags(1))
    )
    token = context.attach(trace.set_span_in_context(parent))
    try:
        await publisher.publish("emage.instance.stored.v1", make_event(instance_stored(), "/emage/ingest"))
    finally:
        context.detach(token)

    [sent] = producer.sent
    headers = dict(sent["headers"])
    assert sent["key"] == STUDY_UID.encode()
    assert headers["content-type"] == b"application/cloudevents+json; charset=UTF-8"
    published = CloudEvent.from_bytes(sent["value"])
    assert published.traceparent is not None
    assert published.traceparent.split("-")[1] == f"{TRACE_ID:032x}"
    assert headers["traceparent"] == published.traceparent.encode()


async def test_publish_without_active_span_continues_the_trace_the_event_carries() -> None:
    """An outbox relay publishes later, outside the request: the trace must still be the request's."""
    producer = FakeProducer()
    publisher = await started_publisher(producer)
    event = make_event(instance_stored(), "/emage/ingest").model_copy(update={"traceparent": TRACEPARENT})
    await publisher.publish("emage.instance.stored.v1", event, key="explicit")

    [sent] = producer.sent
    assert sent["key"] == b"explicit"
    assert dict(sent["headers"])["traceparent"].split(b"-")[1] == f"{TRACE_ID:032x}".encode()


async def test_publishing_before_start_is_an_error() -> None:
    publisher = EventPublisher(
        build_kafka_config(ServiceSettings(service_name="ingest", http_port=8001)), producer=FakeProducer()
    )
    with pytest.raises(RuntimeError, match="start"):
        await publisher.publish("emage.instance.stored.v1", make_event(instance_stored(), "/emage/ingest"))
