"""Kafka plumbing shared by every service: client configuration, a durable CloudEvents publisher, a consumer
runner with retry and dead-lettering, event-id deduplication, topic creation and a readiness probe.

Delivery guarantees, end to end:

* :class:`EventPublisher` is an idempotent producer with ``acks=all``; :meth:`EventPublisher.publish` returns
  only once every in-sync replica has the record, so a caller may acknowledge its own client afterwards.
* :class:`ConsumerRunner` commits an offset only after the handler succeeded or the record is durably on the
  dead-letter topic: a crash at any point redelivers, never loses. Handlers must therefore be idempotent;
  :class:`MongoProcessedEventLog` is the reusable building block for that.

Records are CloudEvents in structured content mode (CloudEvents Kafka protocol binding §3.3). The W3C trace
context travels both in the ``traceparent``/``tracestate`` Kafka headers (what OpenTelemetry Kafka
instrumentations read) and in the event's distributed-tracing extension attributes (what survives the
event being copied elsewhere, e.g. an outbox).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, NotRequired, Protocol, Required, Self, TypedDict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import TopicPartition
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from emage_common.events import (
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    EventDecodingError,
    InvalidEnvelopeError,
    dlq_topic,
    format_rfc3339,
)
from emage_common.settings import ServiceSettings

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
"""Largest record e-mage produces, fetches and lets topics accept: an InstanceStored event carries the whole
DICOM JSON metadata of an instance, which for enhanced multi-frame objects exceeds Kafka's 1 MB default."""

RECORDS_HANDLED = Counter("emage_kafka_records_handled", "Records whose handler succeeded.", ["topic"])
HANDLER_FAILURES = Counter(
    "emage_kafka_handler_failures", "Handler attempts that raised (each retry counts).", ["topic"]
)
RECORDS_DEAD_LETTERED = Counter(
    "emage_kafka_records_dead_lettered", "Records written to the dead-letter topic.", ["topic"]
)
HANDLER_DURATION = Histogram(
    "emage_kafka_handler_duration_seconds",
    "Duration of one handler attempt.",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Headers a dead-lettered record carries on top of its original ones.
DLQ_ERROR_TYPE: Final = "emage-dlq-error-type"
DLQ_ERROR_MESSAGE: Final = "emage-dlq-error-message"
DLQ_ATTEMPTS: Final = "emage-dlq-attempts"
DLQ_ORIGINAL_TOPIC: Final = "emage-dlq-original-topic"
DLQ_ORIGINAL_PARTITION: Final = "emage-dlq-original-partition"
DLQ_ORIGINAL_OFFSET: Final = "emage-dlq-original-offset"
DLQ_CONSUMER_GROUP: Final = "emage-dlq-consumer-group"
DLQ_FIRST_FAILURE_TIME: Final = "emage-dlq-first-failure-time"
DLQ_LAST_FAILURE_TIME: Final = "emage-dlq-last-failure-time"
_DLQ_MESSAGE_LIMIT: Final = 4096

_TRACE_HEADERS: Final = ("traceparent", "tracestate")

Headers = Sequence[tuple[str, bytes]]


# --- Configuration ------------------------------------------------------------------------------------------


class KafkaClientConfig(TypedDict):
    """Keyword arguments common to aiokafka's producer, consumer and admin client."""

    bootstrap_servers: Required[str]
    client_id: Required[str]
    security_protocol: Required[str]
    ssl_context: NotRequired[ssl.SSLContext]
    sasl_mechanism: NotRequired[str]
    sasl_plain_username: NotRequired[str]
    sasl_plain_password: NotRequired[str]


def build_kafka_config(settings: ServiceSettings) -> KafkaClientConfig:
    """aiokafka connection settings of a service: bootstrap servers, client id, TLS and SASL.

    The client id is the service name, so broker logs, quotas and ACLs see which service connects. TLS
    verifies the broker against ``kafka_ssl_cafile`` (or the system trust store) with hostname checking.
    """
    config = KafkaClientConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        security_protocol=settings.kafka_security_protocol,
    )
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        config["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if (
            settings.kafka_sasl_mechanism is None
            or settings.kafka_sasl_username is None
            or settings.kafka_sasl_password is None
        ):
            raise ValueError(
                f"{settings.kafka_security_protocol} needs kafka_sasl_mechanism, kafka_sasl_username "
                "and kafka_sasl_password"
            )
        # aiokafka takes SCRAM credentials through the sasl_plain_* arguments too.
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def _as_config(config: KafkaClientConfig | str) -> KafkaClientConfig:
    if isinstance(config, str):
        return KafkaClientConfig(bootstrap_servers=config, client_id="emage", security_protocol="PLAINTEXT")
    return config


# --- Seams onto aiokafka, so the runner's logic is testable without a broker --------------------------------


class ProducerPort(Protocol):
    """The part of :class:`aiokafka.AIOKafkaProducer` the publisher uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any: ...


class ConsumerPort(Protocol):
    """The part of :class:`aiokafka.AIOKafkaConsumer` the runner uses."""

    def subscribe(self, topics: Sequence[str], listener: Any) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[Any]]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...


# --- Publishing ---------------------------------------------------------------------------------------------


class EventPublisher:
    """Publishes CloudEvents durably: idempotent producer, ``acks=all``, one in-order stream per key.

    Use as ``async with EventPublisher(config) as publisher: ...`` or call :meth:`start`/:meth:`stop`.
    """

    def __init__(self, config: KafkaClientConfig, *, producer: ProducerPort | None = None) -> None:
        self._config = config
        self._producer = producer
        self._started = False

    async def start(self) -> None:
        """Connect to the cluster and obtain a producer id (needed for idempotence)."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                **self._config,
                enable_idempotence=True,
                acks="all",
                max_request_size=MAX_EVENT_BYTES,
                # No lingering: every publish is awaited by a caller (a STOW's acknowledgement, a gateway
                # decision), so a linger adds its delay to each of them; records published while a
                # produce request is in flight still share the next one.
                linger_ms=0,
            )
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Flush pending records and disconnect."""
        if self._producer is not None and self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        """Publish ``event`` on ``topic``; return once all in-sync replicas of the partition have it.

        ``key`` defaults to the event's ``partitionkey`` (set by :func:`emage_common.events.make_event`). A
        producer span is started as a child of the current span or, when there is none (an outbox relay, say),
        of the trace context the event already carries; that span's context is written into the event's
        ``traceparent``/``tracestate`` and into the Kafka headers. Raises :class:`aiokafka.errors.KafkaError`
        if the record could not be made durable.
        """
        partition_key = key if key is not None else event.partitionkey
        parent = None
        if not trace.get_current_span().get_span_context().is_valid and event.traceparent is not None:
            parent = propagate.extract(_trace_carrier_of_event(event))
        with _tracer.start_as_current_span(
            f"send {topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.message.id": event.id,
            },
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if "traceparent" in carrier:
                event = event.model_copy(
                    update={"traceparent": carrier["traceparent"], "tracestate": carrier.get("tracestate")}
                )
            headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
            headers.extend((name, carrier[name].encode()) for name in _TRACE_HEADERS if carrier.get(name))
            await self.publish_record(
                topic,
                event.to_bytes(),
                key=partition_key.encode() if partition_key is not None else None,
                headers=headers,
            )

    async def publish_record(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        """Publish raw bytes durably (used to dead-letter a record byte-identical to what was consumed)."""
        if self._producer is None or not self._started:
            raise RuntimeError("EventPublisher.start() has not been awaited")
        await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers))


def _decode(value: bytes | None) -> CloudEvent | InvalidEnvelopeError:
    try:
        return CloudEvent.from_bytes(value or b"")
    except InvalidEnvelopeError as exc:
        return exc


def _trace_carrier_of_event(event: CloudEvent) -> dict[str, str]:
    carrier = {"traceparent": event.traceparent} if event.traceparent else {}
    if event.tracestate:
        carrier["tracestate"] = event.tracestate
    return carrier


# --- Consuming ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerRecordMeta:
    """Where a handled event came from, and which attempt this is."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp: datetime
    headers: tuple[tuple[str, bytes], ...]
    attempt: int
    """1 for the first delivery to the handler, incremented on each retry."""


EventHandler = Callable[[CloudEvent, ConsumerRecordMeta], Awaitable[None]]
BatchEventHandler = Callable[[Sequence[tuple[CloudEvent, ConsumerRecordMeta]]], Awaitable[None]]
"""Handles consecutive records of one partition together, in order (see :class:`ConsumerRunner`)."""


class ConsumerRunner:
    """Consumes topics as one member of a consumer group and hands each CloudEvent to ``handler``.

    * At-least-once: the offset of a record is committed only after the handler returned, or after the record
      was durably written to ``<topic>.dlq``. Commits are batched per poll.
    * A handler that raises is retried with exponential backoff, ``max_attempts`` attempts in all, then the
      original record (value, key, headers) is dead-lettered with headers recording the failure. Records that
      are not CloudEvents, and handlers raising :class:`~emage_common.events.EventDecodingError`, are
      dead-lettered at once: retrying cannot fix their bytes.
    * Records of one partition are handled strictly in order; partitions of one poll are handled concurrently.
    * With a ``batch_handler``, the records a poll brought of one partition are first handed to it together,
      in order, in batches of at most ``max_batch_bytes`` of record values: one call may then write a whole
      batch at once (one transaction, say). It must be all or nothing, or idempotent: when it raises, the
      batch's records are handled one by one by ``handler`` as above (retries, then dead-lettering of the
      record at fault), so a batch never dead-letters the records that were not at fault.
    * :meth:`stop` lets in-flight records finish, commits, and leaves the group so that partitions move to
      other members at once.

    The records of one poll (at most ``max_records``) must settle within ``max_poll_interval_ms``, or the
    broker hands their partitions to another member and they are handled twice. With the defaults a record
    that exhausts 5 attempts takes about 15 s of backoff: lower ``max_records`` for slow or flaky handlers.
    """

    def __init__(
        self,
        config: KafkaClientConfig,
        *,
        topics: Sequence[str],
        group_id: str,
        handler: EventHandler,
        dlq_publisher: EventPublisher,
        max_attempts: int,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_records: int = 100,
        poll_timeout_ms: int = 500,
        max_poll_interval_ms: int = 300_000,
        consumer: ConsumerPort | None = None,
        batch_handler: BatchEventHandler | None = None,
        max_batch_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._config = config
        self._topics = tuple(topics)
        self._group_id = group_id
        self._handler = handler
        self._batch_handler = batch_handler
        self._max_batch_bytes = max_batch_bytes
        self._dlq_publisher = dlq_publisher
        self._max_attempts = max_attempts
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._consumer = consumer
        self._stopping = asyncio.Event()
        # Held while a poll's records are handled and committed, and by the rebalance listener, so that
        # partitions are never handed to another member with records in flight.
        self._batch_lock = asyncio.Lock()
        self._settled: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: ServiceSettings,
        *,
        topics: Sequence[str],
        group_id: str,
        handler: EventHandler,
        dlq_publisher: EventPublisher,
    ) -> ConsumerRunner:
        """A runner configured from a service's settings (connection and ``kafka_max_handler_attempts``)."""
        return cls(
            build_kafka_config(settings),
            topics=topics,
            group_id=group_id,
            handler=handler,
            dlq_publisher=dlq_publisher,
            max_attempts=settings.kafka_max_handler_attempts,
        )

    @property
    def running(self) -> bool:
        """Whether the consume loop is alive (for readiness probes)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Join the group and start consuming in a background task."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                **self._config,
                group_id=self._group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_partition_fetch_bytes=MAX_EVENT_BYTES,
                max_poll_interval_ms=self._max_poll_interval_ms,
                # The broker must wait for the revocation listener, which waits for in-flight records.
                rebalance_timeout_ms=self._max_poll_interval_ms,
            )
        self._consumer.subscribe(list(self._topics), listener=_CommitBeforeRevocation(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._consume(), name=f"kafka-consumer[{self._group_id}]")

    async def stop(self) -> None:
        """Finish in-flight records, commit, leave the group. Re-raises what made the consume loop fail."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _consume(self) -> None:
        consumer = self._require_consumer()
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(
                    timeout_ms=self._poll_timeout_ms, max_records=self._max_records
                )
                if not batch:
                    continue
                async with self._batch_lock:
                    async with asyncio.TaskGroup() as partitions:
                        for tp, records in batch.items():
                            partitions.create_task(self._consume_partition(tp, records))
                    await self._commit_settled()
        finally:
            try:
                async with self._batch_lock:
                    await self._commit_settled()
            finally:
                await consumer.stop()

    async def _consume_partition(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        batch_handler = self._batch_handler
        for batch in self._batches(records):
            if self._stopping.is_set():
                return
            if (
                batch_handler is not None
                and len(batch) > 1
                and await self._handle_batch(batch_handler, batch)
            ):
                self._settled[tp] = batch[-1].offset + 1
                continue
            for record in batch:
                if self._stopping.is_set():
                    return
                if not await self._settle(record):
                    # Unsettled: fetch it again rather than skip it, whatever else was already fetched.
                    self._require_consumer().seek(tp, record.offset)
                    return
                self._settled[tp] = record.offset + 1

    def _batches(self, records: Sequence[Any]) -> list[Sequence[Any]]:
        """``records`` cut into consecutive batches of at most ``max_batch_bytes`` of values (a larger record
        alone); all of them at once without a batch handler."""
        if self._batch_handler is None:
            return [records]
        batches: list[Sequence[Any]] = []
        start, size = 0, 0
        for index, record in enumerate(records):
            value_size = len(record.value or b"")
            if index > start and size + value_size > self._max_batch_bytes:
                batches.append(records[start:index])
                start, size = index, 0
            size += value_size
        batches.append(records[start:])
        return batches

    async def _handle_batch(self, batch_handler: BatchEventHandler, records: Sequence[Any]) -> bool:
        """Hand ``records`` (one partition's, in order) to the batch handler at once; False if it raised or
        a record is not a CloudEvent, for the caller to handle them one by one."""
        batch: list[tuple[CloudEvent, ConsumerRecordMeta]] = []
        links: list[trace.Link] = []
        for record in records:
            event = _decode(record.value)
            if not isinstance(event, CloudEvent):
                return False
            headers = tuple(record.headers)
            meta = ConsumerRecordMeta(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC),
                headers=headers,
                attempt=1,
            )
            batch.append((event, meta))
            # One span for the batch, linked to the trace of every record in it.
            carrier = {name: value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
            linked = trace.get_current_span(propagate.extract(carrier or _trace_carrier_of_event(event)))
            if linked.get_span_context().is_valid:
                links.append(trace.Link(linked.get_span_context()))
        first = records[0]
        with _tracer.start_as_current_span(
            f"process {first.topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": first.topic,
                "messaging.destination.partition.id": str(first.partition),
                "messaging.kafka.offset": first.offset,
                "messaging.batch.message_count": len(records),
                "messaging.consumer.group.name": self._group_id,
            },
        ) as span:
            started = time.perf_counter()
            try:
                await batch_handler(batch)
            except Exception as exc:
                HANDLER_DURATION.labels(first.topic).observe(time.perf_counter() - started)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                logger.warning(
                    "batch handler failed on %s[%d]@%d..%d (%r); handling its records one by one",
                    first.topic,
                    first.partition,
                    first.offset,
                    records[-1].offset,
                    exc,
                )
                return False
        HANDLER_DURATION.labels(first.topic).observe(time.perf_counter() - started)
        RECORDS_HANDLED.labels(first.topic).inc(len(records))
        return True

    async def _settle(self, record: Any) -> bool:
        """Handle one record or dead-letter it; False if it must be delivered again."""
        headers = tuple(record.headers)
        decoded = _decode(record.value)
        carrier = {name: value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
        if "traceparent" not in carrier and isinstance(decoded, CloudEvent):
            carrier = _trace_carrier_of_event(decoded)
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self._group_id,
        }
        if isinstance(decoded, CloudEvent):
            attributes["messaging.message.id"] = decoded.id
        with _tracer.start_as_current_span(
            f"process {record.topic}",
            context=propagate.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            if isinstance(decoded, InvalidEnvelopeError):
                span.record_exception(decoded)
                span.set_status(Status(StatusCode.ERROR, "not a CloudEvent"))
                return await self._dead_letter(record, decoded, attempts=1, first_failure=datetime.now(UTC))
            return await self._handle_with_retries(record, decoded, headers, span)

    async def _handle_with_retries(
        self, record: Any, event: CloudEvent, headers: tuple[tuple[str, bytes], ...], span: trace.Span
    ) -> bool:
        topic = record.topic
        timestamp = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        first_failure: datetime | None = None
        attempt = 1
        while True:
            meta = ConsumerRecordMeta(
                topic=topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                timestamp=timestamp,
                headers=headers,
                attempt=attempt,
            )
            started = time.perf_counter()
            try:
                await self._handler(event, meta)
            except Exception as exc:
                HANDLER_DURATION.labels(topic).observe(time.perf_counter() - started)
                HANDLER_FAILURES.labels(topic).inc()
                span.record_exception(exc, attributes={"emage.attempt": attempt})
                first_failure = first_failure or datetime.now(UTC)
                if isinstance(exc, EventDecodingError) or attempt >= self._max_attempts:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    return await self._dead_letter(record, exc, attempts=attempt, first_failure=first_failure)
                logger.warning(
                    "handler failed on %s[%d]@%d (attempt %d/%d): %r",
                    topic,
                    record.partition,
                    record.offset,
                    attempt,
                    self._max_attempts,
                    exc,
                )
                if await self._stopped_during_backoff(attempt):
                    return False
                attempt += 1
            else:
                HANDLER_DURATION.labels(topic).observe(time.perf_counter() - started)
                RECORDS_HANDLED.labels(topic).inc()
                return True

    async def _stopped_during_backoff(self, attempt: int) -> bool:
        delay = min(self._max_backoff_s, self._initial_backoff_s * 2 ** (attempt - 1))
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _dead_letter(
        self, record: Any, error: BaseException, *, attempts: int, first_failure: datetime
    ) -> bool:
        last_failure = datetime.now(UTC)
        failure = {
            DLQ_ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
            DLQ_ERROR_MESSAGE: str(error)[:_DLQ_MESSAGE_LIMIT],
            DLQ_ATTEMPTS: str(attempts),
            DLQ_ORIGINAL_TOPIC: record.topic,
            DLQ_ORIGINAL_PARTITION: str(record.partition),
            DLQ_ORIGINAL_OFFSET: str(record.offset),
            DLQ_CONSUMER_GROUP: self._group_id,
            DLQ_FIRST_FAILURE_TIME: format_rfc3339(first_failure),
            DLQ_LAST_FAILURE_TIME: format_rfc3339(last_failure),
        }
        headers = [*record.headers, *((name, value.encode()) for name, value in failure.items())]
        try:
            await self._dlq_publisher.publish_record(
                dlq_topic(record.topic), record.value or b"", key=record.key, headers=headers
            )
        except KafkaError:
            logger.exception(
                "cannot dead-letter %s[%d]@%d; it will be delivered again",
                record.topic,
                record.partition,
                record.offset,
            )
            return False
        RECORDS_DEAD_LETTERED.labels(record.topic).inc()
        logger.error(
            "dead-lettered %s[%d]@%d after %d attempt(s): %s",
            record.topic,
            record.partition,
            record.offset,
            attempts,
            failure[DLQ_ERROR_TYPE],
        )
        return True

    async def _commit_settled(self) -> None:
        if not self._settled:
            return
        offsets = dict(self._settled)
        try:
            await self._require_consumer().commit(offsets)
        except (CommitFailedError, IllegalStateError):
            # The group moved on (rebalanced, or this member was evicted): the partitions' new owners resume
            # from the last commit and idempotent handlers absorb the redelivery. Retrying cannot succeed.
            logger.warning("offset commit rejected, partitions were reassigned: %s", offsets)
        except KafkaError:
            logger.exception("offset commit failed; retrying with the next commit")
            return
        for tp, offset in offsets.items():
            if self._settled.get(tp) == offset:
                del self._settled[tp]

    async def _commit_before_revocation(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._commit_settled()
            for tp in revoked:
                self._settled.pop(tp, None)

    def _require_consumer(self) -> ConsumerPort:
        if self._consumer is None:
            raise RuntimeError("ConsumerRunner.start() has not been awaited")
        return self._consumer


class _CommitBeforeRevocation:
    """Rebalance listener: commit what was handled before partitions move to another member."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner._commit_before_revocation(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do: consumption resumes from the committed offsets."""


# aiokafka type-checks listeners against its ABC; registering avoids subclassing an untyped base.
ConsumerRebalanceListener.register(_CommitBeforeRevocation)


# --- Idempotent handling ------------------------------------------------------------------------------------


class ProcessedEventLog(Protocol):
    """Remembers which events a service has already applied, so a redelivered event is applied once."""

    async def seen_or_mark(self, event_id: str, *, session: AsyncClientSession | None = None) -> bool:
        """True if ``event_id`` was already marked; otherwise mark it and return False."""
        ...


class MongoProcessedEventLog:
    """A :class:`ProcessedEventLog` in a collection of the service's own MongoDB database.

    The event id is the document ``_id``, so MongoDB's unique ``_id`` index is what rejects a second mark,
    even between concurrent consumers. e-mage events have UUIDv4 ids
    (:func:`~emage_common.events.make_event`), unique across sources.

    Mark inside the transaction that writes the handler's effect (pass its ``session``): the mark then
    commits or aborts with the effect, so a handler that fails after marking is retried rather than skipped.
    """

    def __init__(self, database: AsyncDatabase[Any], collection: str = "processed_events") -> None:
        self._collection = database[collection]

    async def seen_or_mark(self, event_id: str, *, session: AsyncClientSession | None = None) -> bool:
        """True if ``event_id`` was already marked; otherwise mark it and return False."""
        # Inside a transaction a duplicate-key error would abort the whole transaction: read first.
        in_transaction = session is not None and session.in_transaction
        if in_transaction and await self._collection.find_one({"_id": event_id}, session=session) is not None:
            return True
        try:
            await self._collection.insert_one(
                {"_id": event_id, "processed_at": datetime.now(UTC)}, session=session
            )
        except DuplicateKeyError:
            return True
        return False


# --- Administration -----------------------------------------------------------------------------------------


async def ensure_topics(
    config: KafkaClientConfig | str,
    specs: Mapping[str, int],
    *,
    replication_factor: int = 1,
    retention_ms: int | None = None,
) -> None:
    """Create each topic of ``specs`` (name → partition count) and its ``.dlq`` twin, unless it exists.

    The dead-letter topic gets the same partition count (the original key keeps mapping to the same partition
    number) and unlimited retention, since a dead letter waits for a human. ``min.insync.replicas`` is 2 when
    there are 3 or more replicas, so ``acks=all`` survives the loss of one broker. ``retention_ms`` applies to
    the main topics (``None``: the broker's default; ``-1``: keep forever, for topics views are rebuilt from).
    An existing topic is left as it is: growing its partition count would move keys between partitions and
    break per-key order.
    """
    min_insync = 2 if replication_factor >= 3 else 1
    common = {"min.insync.replicas": str(min_insync), "max.message.bytes": str(MAX_EVENT_BYTES)}
    main_configs = common | ({"retention.ms": str(retention_ms)} if retention_ms is not None else {})
    new_topics = [
        NewTopic(
            name, num_partitions=partitions, replication_factor=replication_factor, topic_configs=configs
        )
        for topic, partitions in specs.items()
        for name, configs in ((topic, main_configs), (dlq_topic(topic), common | {"retention.ms": "-1"}))
    ]
    admin = AIOKafkaAdminClient(**_as_config(config))
    await admin.start()
    try:
        response = await admin.create_topics(new_topics)
    finally:
        await admin.close()
    for topic_error in response.topic_errors:
        name, error_code = topic_error[0], topic_error[1]
        if error_code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(error_code)(f"cannot create topic {name!r}: {topic_error[2:]}")


_readiness_admins: dict[tuple[str, str, str], AIOKafkaAdminClient] = {}


async def kafka_ready(config: KafkaClientConfig, *, timeout_s: float = 2.0) -> bool:
    """Whether the cluster answers a metadata request within ``timeout_s`` (for ``/readyz``).

    The admin client is kept between calls, so a probe costs one metadata round trip; it is dropped after a
    failure so the next probe reconnects from the bootstrap servers.
    """
    cache_key = (config["bootstrap_servers"], config["security_protocol"], config["client_id"])
    admin = _readiness_admins.get(cache_key)
    try:
        async with asyncio.timeout(timeout_s):
            if admin is None:
                admin = AIOKafkaAdminClient(**config, request_timeout_ms=int(timeout_s * 1000))
                await admin.start()
                _readiness_admins[cache_key] = admin
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        if admin is not None:
            _readiness_admins.pop(cache_key, None)
            await admin.close()
        return False
    return bool(cluster["brokers"])


async def close_kafka_ready() -> None:
    """Close the admin clients :func:`kafka_ready` keeps (call at service shutdown)."""
    admins = list(_readiness_admins.values())
    _readiness_admins.clear()
    for admin in admins:
        await admin.close()
