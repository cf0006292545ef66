"""The catalog's ``instance.stored`` consumer alone against a real mongod: events/s and MongoDB round trips.

    python -m bench.catalog_consumer                  # 200 studies x 10 instances, 12 partitions, 3 runs
    python -m bench.catalog_consumer --studies 50 --instances 100 --runs 5
    python -m bench.catalog_consumer --one-by-one     # without batches: every record its own transaction
    python -m bench.catalog_consumer --mongo-uri 'mongodb://127.0.0.1:27017/?replicaSet=rs0'   # your mongod

What runs is the catalog's own consumer as the service wires it (:func:`emage_catalog.handlers.
instance_stored_consumer`: the :class:`~emage_common.kafka.ConsumerRunner`, its handlers, the Mongo stores
and the ``study.changed`` announcer), in this process. Only Kafka is left out: the runner reads from an
in-memory consumer holding the records a bulk load would publish (one ``InstanceStored`` event per instance,
built by ingest's own code from header-only Part 10 files, :func:`bench.data.instance_stored_record`), the
study UID as key, spread over the topic's partitions as Kafka's key hashing would. So the figures are the
consumer's cost and MongoDB's, not the broker's.

Each run starts from an empty ``catalog`` database and reports:

* bulk load: events/s from the first poll to the last commit, and the MongoDB commands the consumer sent
  (a command is one round trip) per event, by command name;
* redelivery: the same records again (offsets reset, as after a crash before the commit), events/s;
* freshness: events published one at a time, each waited for: time from the record being available to its
  offset being committed (what STOW → QIDO adds on the catalog's side), p50/p95/p99.

Each run is checked: every study catalogued with its two series and all its instances, and the redelivery
leaving every document as it was; a run that fails a check, or dead-letters a record, stops the benchmark.

mongod is the devstack's (``emage_devstack.mongo.MongoServer``) on the port of the profile
``EMAGE_TEST_PROFILE`` (default ``test4``), started from empty data and stopped by PID at the end, unless
``--mongo-uri`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition
from pymongo import AsyncMongoClient, monitoring

from bench.data import catalog_instances, catalog_plan, instance_stored_record
from emage_catalog.settings import Settings
from emage_common.events import INSTANCE_STORED_TOPIC, CloudEvent

PARTITIONS = 12
"""``emage.instance.stored.v1``'s partition count in the devstack (``emage_devstack.kafka.TOPICS``)."""


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

    ``getmany`` hands out up to ``max_records`` records, taking partitions in turn from where the previous
    poll stopped, as a fetcher holding data of every partition does.
    """

    partitions: dict[int, list[Record]] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    committed_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _next_partition: int = 0

    def append(self, partition: int, key: bytes, value: bytes) -> Record:
        records = self.partitions.setdefault(partition, [])
        record = Record(INSTANCE_STORED_TOPIC, partition, len(records), key, value, int(time.time() * 1000))
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
        numbers = sorted(self.partitions)
        taken = 0
        for step in range(len(numbers)):
            if taken >= max_records:
                break
            number = numbers[(self._next_partition + step) % len(numbers)]
            start = self.positions.get(number, 0)
            records = self.partitions[number][start : start + max_records - taken]
            if records:
                batch[TopicPartition(INSTANCE_STORED_TOPIC, number)] = records
                self.positions[number] = start + len(records)
                taken += len(records)
                self._next_partition = (self._next_partition + step + 1) % len(numbers)
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.committed[tp.partition] = offset
        self.committed_changed.set()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition.partition] = offset

    def done(self) -> bool:
        return all(
            self.committed.get(number, 0) >= len(records) for number, records in self.partitions.items()
        )

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
    """Where the announcer's ``study.changed`` events and dead letters go: counted, not sent (the broker is
    not measured)."""

    def __init__(self) -> None:
        self.dead_letters = 0

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        pass

    async def publish_record(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> None:
        self.dead_letters += 1


def bulk_records(studies: int, instances: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every event of the bulk load, in publication order."""
    records = []
    for study in catalog_plan(studies, seed=42):
        for part10 in catalog_instances(study, instances):
            key, value = instance_stored_record(part10)
            records.append((_partition(key), key, value))
    return records


def _partition(key: bytes) -> int:
    # Not Kafka's murmur2, but as even: what matters is that a study's events share a partition.
    return int.from_bytes(key[-6:], "big") % PARTITIONS


@dataclass
class Outcome:
    bulk_events_per_s: float
    commands_per_event: float
    commands: Counter[str]
    cpu_ms_per_event: float
    """CPU time of this process (the consumer, and the announcer beside it) per event of the bulk load."""
    redelivery_events_per_s: float
    latencies_ms: list[float]


@contextlib.asynccontextmanager
async def consumer_of(
    uri: str, consumer: MemoryConsumer, counter: CommandCounter, *, one_by_one: bool
) -> AsyncIterator[None]:
    """The catalog's consumer and announcer on an empty database, reading from ``consumer``; with
    ``one_by_one``, the same runner without its batch handler."""
    from emage_catalog.adapters.mongo import MongoCatalogStore
    from emage_catalog.adapters.orders import MongoOrderStore
    from emage_catalog.handlers import (
        INSTANCE_STORED_MAX_RECORDS,
        instance_stored_consumer,
        instance_stored_handler,
    )
    from emage_catalog.service import CatalogService, StudyAnnouncer
    from emage_common.kafka import ConsumerRunner, build_kafka_config

    settings = Settings(mongo_uri=uri, kafka_max_handler_attempts=3)
    # The options of emage_common.mongo.create_mongo_client, plus the command counter.
    options: dict[str, Any] = {
        "tz_aware": True,
        "w": "majority",
        "retryWrites": True,
        "uuidRepresentation": "standard",
    }
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, event_listeners=[counter], **options)
    announcer_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, **options)
    sink = NullSink()
    try:
        await client.drop_database("catalog")
        database = client["catalog"]
        store = MongoCatalogStore(database)
        await store.ensure_indexes()
        orders = MongoOrderStore(database)
        await orders.ensure_indexes()
        announcer = StudyAnnouncer(
            MongoCatalogStore(announcer_client["catalog"]),
            sink,
            debounce_seconds=settings.study_changed_debounce_seconds,
        )
        service = CatalogService(store, on_study_changed=announcer.wake, orders=orders)
        dlq_publisher: Any = sink
        runner = instance_stored_consumer(settings, service, dlq_publisher=dlq_publisher, consumer=consumer)
        if one_by_one:
            runner = ConsumerRunner(
                build_kafka_config(settings),
                topics=[INSTANCE_STORED_TOPIC],
                group_id=settings.consumer_group,
                handler=instance_stored_handler(service),
                dlq_publisher=dlq_publisher,
                max_attempts=settings.kafka_max_handler_attempts,
                max_records=INSTANCE_STORED_MAX_RECORDS,
                consumer=consumer,
            )
        announcing = asyncio.create_task(announcer.run())
        counter.counts.clear()
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcing
            if sink.dead_letters:
                raise RuntimeError(f"{sink.dead_letters} record(s) dead-lettered: the run is not valid")
    finally:
        await client.close()
        await announcer_client.close()


async def one_run(
    uri: str,
    records: list[tuple[int, bytes, bytes]],
    latency_samples: int,
    *,
    studies: int,
    instances: int,
    one_by_one: bool,
) -> Outcome:
    consumer = MemoryConsumer()
    counter = CommandCounter()
    for partition, key, value in records:
        consumer.append(partition, key, value)
    # Fresh partitions for the freshness samples, so that they never wait behind the bulk load.
    fresh = bulk_records(latency_samples, 1) if latency_samples else []
    async with consumer_of(uri, consumer, counter, one_by_one=one_by_one):
        started, cpu_started = time.perf_counter(), time.process_time()
        await consumer.wait_done()
        bulk_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        commands = Counter(counter.counts)
        filed = await catalog_documents(uri)
        check_counts(filed, studies=studies, instances=instances)

        consumer.rewind()
        started = time.perf_counter()
        await consumer.wait_done()
        redelivery_s = time.perf_counter() - started
        if await catalog_documents(uri) != filed:
            raise RuntimeError("the redelivery changed the catalog: the run is not valid")

        latencies = []
        for partition, key, value in fresh:
            await asyncio.sleep(0.05)
            appended = time.perf_counter()
            consumer.append(partition + PARTITIONS, key, value)
            async with asyncio.timeout(60):
                await consumer.wait_done()
            latencies.append((time.perf_counter() - appended) * 1000)
    total = len(records)
    return Outcome(
        bulk_events_per_s=total / bulk_s,
        commands_per_event=sum(commands.values()) / total,
        commands=commands,
        cpu_ms_per_event=cpu_s * 1000 / total,
        redelivery_events_per_s=total / redelivery_s,
        latencies_ms=latencies,
    )


async def catalog_documents(uri: str) -> dict[str, list[dict[str, Any]]]:
    """Every document of the catalog's three collections, by ``_id`` (announcement marks left out: the
    announcer moves them on its own time)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        database = client["catalog"]
        found = {}
        for name in ("studies", "series", "instances"):
            found[name] = (
                await database[name]
                .find({}, {"announcement_pending": 0, "announced_revision": 0}, sort=[("_id", 1)])
                .to_list()
            )
        return found
    finally:
        await client.close()


def check_counts(documents: Mapping[str, list[dict[str, Any]]], *, studies: int, instances: int) -> None:
    """Every study catalogued with its two series and all its instances, or the run is not valid."""
    halves = sorted((instances - instances // 2, instances // 2))
    wrong = [
        study["_id"]
        for study in documents["studies"]
        if study["dataset"]["00201206"]["Value"] != [2]
        or study["dataset"]["00201208"]["Value"] != [instances]
    ]
    series_counts = sorted(series["instance_count"] for series in documents["series"])
    if (
        len(documents["studies"]) != studies
        or len(documents["instances"]) != studies * instances
        or wrong
        or series_counts != sorted(halves * studies)
    ):
        raise RuntimeError(f"the catalog's counts are wrong ({len(wrong)} studies): the run is not valid")


def _percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.catalog_consumer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--instances", type=int, default=10, help="instances a study, in two series")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument(
        "--one-by-one", action="store_true", help="no batch handler: each record filed in its own transaction"
    )
    parser.add_argument("--mongo-uri", help="use this replica set instead of starting the devstack's mongod")
    parser.add_argument("--profile", default=os.environ.get("EMAGE_TEST_PROFILE", "test4"))
    args = parser.parse_args(argv)

    print(f"generating {args.studies * args.instances:,} instance.stored events …", file=sys.stderr)
    records = bulk_records(args.studies, args.instances)
    with contextlib.ExitStack() as stack:
        uri = args.mongo_uri or stack.enter_context(mongod(args.profile))
        outcomes = []
        for run in range(1, args.runs + 1):
            outcome = asyncio.run(
                one_run(
                    uri,
                    records,
                    args.latency_samples,
                    studies=args.studies,
                    instances=args.instances,
                    one_by_one=args.one_by_one,
                )
            )
            outcomes.append(outcome)
            print(
                f"run {run}: bulk {outcome.bulk_events_per_s:,.1f} events/s, "
                f"{outcome.commands_per_event:.2f} commands/event; "
                f"redelivery {outcome.redelivery_events_per_s:,.1f} events/s"
                + (
                    f"; one event: p50 {_percentile(outcome.latencies_ms, 0.5):.1f} ms"
                    if outcome.latencies_ms
                    else ""
                ),
                file=sys.stderr,
            )
    _report(args, records, outcomes)
    return 0


def _report(args: argparse.Namespace, records: Sequence[Any], outcomes: Sequence[Outcome]) -> None:
    bulk = [outcome.bulk_events_per_s for outcome in outcomes]
    redelivery = [outcome.redelivery_events_per_s for outcome in outcomes]
    latencies = [sample for outcome in outcomes for sample in outcome.latencies_ms]
    commands = outcomes[len(outcomes) // 2].commands
    median_commands = statistics.median(outcome.commands_per_event for outcome in outcomes)
    median_cpu = statistics.median(outcome.cpu_ms_per_event for outcome in outcomes)
    mode = "one record a transaction" if args.one_by_one else "batches"
    print(
        f"catalog consumer ({mode}): {len(records):,} events ({args.studies} studies x {args.instances} "
        f"instances, 2 series a study), {PARTITIONS} partitions, {len(outcomes)} run(s)"
    )
    print(
        f"  bulk load       {statistics.median(bulk):8,.1f} events/s  "
        f"(min {min(bulk):,.1f}, max {max(bulk):,.1f})"
    )
    print(
        f"  redelivery      {statistics.median(redelivery):8,.1f} events/s  "
        f"(min {min(redelivery):,.1f}, max {max(redelivery):,.1f})"
    )
    print(f"  round trips     {median_commands:8.2f} MongoDB commands/event (bulk load)")
    for name, count in commands.most_common():
        print(f"    {name:<22} {count / len(records):6.2f}/event")
    print(f"  consumer CPU    {median_cpu:8.2f} ms/event (this process: consumer and announcer)")
    if latencies:
        p50, p95, p99 = (_percentile(latencies, fraction) for fraction in (0.5, 0.95, 0.99))
        print(
            f"  one event       p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms "
            f"(available → committed, n={len(latencies)})"
        )


if __name__ == "__main__":
    sys.exit(main())
