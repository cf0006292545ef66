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
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pymongo import AsyncMongoClient

from bench.consumer_harness import (
    MONGO_CLIENT_OPTIONS,
    PARTITIONS,
    CommandCounter,
    Fresh,
    MemoryConsumer,
    NullSink,
    Outcome,
    bulk_records,
    measure,
    mongod,
    print_figures,
    print_progress,
)
from emage_catalog.settings import Settings
from emage_common.events import INSTANCE_STORED_TOPIC


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
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, event_listeners=[counter], **MONGO_CLIENT_OPTIONS
    )
    announcer_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, **MONGO_CLIENT_OPTIONS)
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
    fresh = [
        Fresh(INSTANCE_STORED_TOPIC, partition + PARTITIONS, key, value)
        for partition, key, value in (bulk_records(latency_samples, 1) if latency_samples else [])
    ]

    async def after_bulk() -> dict[str, list[dict[str, Any]]]:
        filed = await catalog_documents(uri)
        check_counts(filed, studies=studies, instances=instances)
        return filed

    async def after_redelivery(filed: dict[str, list[dict[str, Any]]]) -> None:
        if await catalog_documents(uri) != filed:
            raise RuntimeError("the redelivery changed the catalog: the run is not valid")

    async with consumer_of(uri, consumer, counter, one_by_one=one_by_one):
        return await measure(
            consumer,
            counter,
            fresh,
            events=len(records),
            after_bulk=after_bulk,
            after_redelivery=after_redelivery,
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
            print_progress(run, outcome)
    _report(args, records, outcomes)
    return 0


def _report(args: argparse.Namespace, records: Sequence[Any], outcomes: Sequence[Outcome]) -> None:
    mode = "one record a transaction" if args.one_by_one else "batches"
    print(
        f"catalog consumer ({mode}): {len(records):,} events ({args.studies} studies x {args.instances} "
        f"instances, 2 series a study), {PARTITIONS} partitions, {len(outcomes)} run(s)"
    )
    print_figures(outcomes, len(records), cpu_of="consumer and announcer")


if __name__ == "__main__":
    sys.exit(main())
