"""What the consumer micro-benchmarks share (:mod:`bench.catalog_consumer`, :mod:`bench.audit_consumer`).

A service's real :class:`~emage_common.kafka.ConsumerRunner` reads from :class:`MemoryConsumer` instead of
Kafka, so that the figures are the consumer's cost and MongoDB's, not the broker's; :class:`CommandCounter`
counts the MongoDB commands (round trips) a client sends; :func:`measure` times a bulk load, its redelivery
and one event at a time; :func:`print_figures` prints what every consumer benchmark reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiokafka.structs import TopicPartition
from pymongo import monitoring

from bench.data import catalog_instances, catalog_plan, instance_stored_record
from bench.stats import median, percentile
from emage_common.events import INSTANCE_STORED_TOPIC, CloudEvent

PARTITIONS: Final = 12
"""``emage.instance.stored.v1``'s partition count in the devstack (``emage_devstack.kafka.TOPICS``)."""

MONGO_CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "tz_aware": True,
    "w": "majority",
    "retryWrites": True,
    "uuidRepresentation": "standard",
}
"""The options of :func:`emage_common.mongo.create_mongo_client` that change what a client sends."""

T = TypeVar("T")


@dataclass
class Record:
    """What the runner reads of an aiokafka ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class MemoryConsumer:
    """An in-memory stand-in for aiokafka's consumer (:class:`emage_common.kafka.ConsumerPort`).

    ``getmany`` hands out up to ``max_records`` records, taking partitions (of every topic, in
    (topic, partition) order) in turn from where the previous poll stopped, as a fetcher holding data of every
    partition does.
    """

    partitions: dict[TopicPartition, list[Record]] = field(default_factory=dict)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    committed_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _next_partition: int = 0

    def append(self, partition: int, key: bytes, value: bytes, topic: str = INSTANCE_STORED_TOPIC) -> Record:
        records = self.partitions.setdefault(TopicPartition(topic, partition), [])
        record = Record(topic, partition, len(records), key, value, int(time.time() * 1000))
        records.append(record)
        self.arrived.set()
        return record

    def rewind(self) -> None:
        self.positions.clear()
        self.committed.clear()
        self.arrived.set()

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Mapping[TopicPartition, Sequence[Any]]:
        batch = self._take(max_records)
        if not batch:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
            batch = self._take(max_records)
        return batch

    def _take(self, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch: dict[TopicPartition, list[Record]] = {}
        partitions = sorted(self.partitions)
        taken = 0
        for step in range(len(partitions)):
            if taken >= max_records:
                break
            tp = partitions[(self._next_partition + step) % len(partitions)]
            start = self.positions.get(tp, 0)
            records = self.partitions[tp][start : start + max_records - taken]
            if records:
                batch[tp] = records
                self.positions[tp] = start + len(records)
                taken += len(records)
                self._next_partition = (self._next_partition + step + 1) % len(partitions)
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.committed[tp] = offset
        self.committed_changed.set()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def done(self) -> bool:
        return all(self.committed.get(tp, 0) >= len(records) for tp, records in self.partitions.items())

    async def wait_done(self) -> None:
        while not self.done():
            self.committed_changed.clear()
            await self.committed_changed.wait()


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends (each one round trip to the server), by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class NullSink:
    """Where the events a service publishes (the catalog's ``study.changed``) and dead letters go: counted,
    not sent (the broker is not measured)."""

    def __init__(self) -> None:
        self.dead_letters = 0

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        pass

    async def publish_record(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> None:
        self.dead_letters += 1


def bulk_records(studies: int, instances: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every ``instance.stored`` event of a bulk load, in publication order."""
    records = []
    for study in catalog_plan(studies, seed=42):
        for part10 in catalog_instances(study, instances):
            key, value = instance_stored_record(part10)
            records.append((partition_of(key), key, value))
    return records


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition of ``key``. Not Kafka's murmur2, but as even: what matters is that a key's events share
    a partition."""
    return int.from_bytes(key[-6:], "big") % partitions


@dataclass
class Outcome:
    bulk_events_per_s: float
    commands_per_event: float
    commands: Counter[str]
    cpu_ms_per_event: float
    """CPU time of this process (the consumer, and what runs beside it) per event of the bulk load."""
    redelivery_events_per_s: float
    latencies_ms: list[float]


@dataclass(frozen=True)
class Fresh:
    """One event published alone, for the latency samples: on a partition of its own, so that it never waits
    behind the bulk load."""

    topic: str
    partition: int
    key: bytes
    value: bytes


async def measure(
    consumer: MemoryConsumer,
    counter: CommandCounter,
    fresh: Sequence[Fresh],
    *,
    events: int,
    after_bulk: Callable[[], Awaitable[T]],
    after_redelivery: Callable[[T], Awaitable[None]],
) -> Outcome:
    """Time a running consumer: the ``events`` records already in ``consumer`` (bulk load), the same again
    (offsets reset, as after a crash before the commit) and the ``fresh`` events one at a time, each waited
    for. ``after_bulk`` checks the bulk load (raising if it is wrong) and returns what ``after_redelivery``
    compares the state after the redelivery with."""
    started, cpu_started = time.perf_counter(), time.process_time()
    await consumer.wait_done()
    bulk_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    commands = Counter(counter.counts)
    state = await after_bulk()

    consumer.rewind()
    started = time.perf_counter()
    await consumer.wait_done()
    redelivery_s = time.perf_counter() - started
    await after_redelivery(state)

    latencies = []
    for event in fresh:
        await asyncio.sleep(0.05)
        appended = time.perf_counter()
        consumer.append(event.partition, event.key, event.value, topic=event.topic)
        async with asyncio.timeout(60):
            await consumer.wait_done()
        latencies.append((time.perf_counter() - appended) * 1000)
    return Outcome(
        bulk_events_per_s=events / bulk_s,
        commands_per_event=sum(commands.values()) / events,
        commands=commands,
        cpu_ms_per_event=cpu_s * 1000 / events,
        redelivery_events_per_s=events / redelivery_s,
        latencies_ms=latencies,
    )


def print_progress(run: int, outcome: Outcome) -> None:
    """One run's figures, on stderr."""
    print(
        f"run {run}: bulk {outcome.bulk_events_per_s:,.1f} events/s, "
        f"{outcome.commands_per_event:.2f} commands/event; "
        f"redelivery {outcome.redelivery_events_per_s:,.1f} events/s"
        + (f"; one event: p50 {median(outcome.latencies_ms):.1f} ms" if outcome.latencies_ms else ""),
        file=sys.stderr,
    )


def print_figures(outcomes: Sequence[Outcome], events: int, *, cpu_of: str) -> None:
    """The median figures of ``outcomes`` (runs of ``events`` events each); ``cpu_of`` says what runs in
    this process."""
    bulk = [outcome.bulk_events_per_s for outcome in outcomes]
    redelivery = [outcome.redelivery_events_per_s for outcome in outcomes]
    latencies = [sample for outcome in outcomes for sample in outcome.latencies_ms]
    commands = outcomes[len(outcomes) // 2].commands
    median_commands = median([outcome.commands_per_event for outcome in outcomes])
    median_cpu = median([outcome.cpu_ms_per_event for outcome in outcomes])
    print(f"  bulk load       {median(bulk):8,.1f} events/s  (min {min(bulk):,.1f}, max {max(bulk):,.1f})")
    print(
        f"  redelivery      {median(redelivery):8,.1f} events/s  "
        f"(min {min(redelivery):,.1f}, max {max(redelivery):,.1f})"
    )
    print(f"  round trips     {median_commands:8.2f} MongoDB commands/event (bulk load)")
    for name, count in commands.most_common():
        print(f"    {name:<22} {count / events:6.2f}/event")
    print(f"  consumer CPU    {median_cpu:8.2f} ms/event (this process: {cpu_of})")
    if latencies:
        p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
        print(
            f"  one event       p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms "
            f"(available → committed, n={len(latencies)})"
        )


@contextlib.contextmanager
def mongod(profile: str) -> Iterator[str]:
    """The devstack's mongod of ``profile``, from empty data, stopped by PID on the way out."""
    from emage_devstack.mongo import MongoServer
    from emage_devstack.ports import ports_for

    server = MongoServer(profile, ports_for(profile))
    server.provision()
    server.start(wipe=True)
    try:
        yield server.uri
    finally:
        server.stop()
