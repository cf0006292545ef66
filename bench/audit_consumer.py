"""The audit's consumer alone against a real mongod: events/s and MongoDB round trips of a bulk import.

    python -m bench.audit_consumer                    # 2,000 events (11 a study), 3 runs
    python -m bench.audit_consumer --events 10000 --runs 5
    python -m bench.audit_consumer --one-by-one       # without batches: every record its own transaction
    python -m bench.audit_consumer --mongo-uri 'mongodb://127.0.0.1:27017/?replicaSet=rs0'   # your mongod

What runs is the audit's own consumer as the service wires it (:func:`emage_audit.handlers.domain_consumer`:
the :class:`~emage_common.kafka.ConsumerRunner` of the audited topics, its batch handler appending a poll's
records of a partition in one transaction, the :class:`~emage_audit.adapters.mongo.MongoAuditStore`, and the
checkpoint signer beside it, :func:`emage_audit.handlers.sign_checkpoints`), in this process. Only Kafka is
left out: the runner reads from an in-memory consumer (:class:`bench.consumer_harness.MemoryConsumer`)
holding what a bulk import publishes to the trail: per study, its ``instance.stored`` events (ingest's own
code, :func:`bench.data.instance_stored_record`, the catalog consumer benchmark's generator), then one
``access.decided`` of the gateway about the study (a radiologist's retrieval; one study in ten denied, one in
ten a break-the-glass access, which opens an alert). Each topic's records are spread over its partitions by
key (study UID, patient key) as Kafka's key hashing would. So the figures are the consumer's cost and
MongoDB's, not the broker's.

Each run starts from an empty ``audit`` database and reports:

* bulk load: events/s from the first poll to the last commit, and the MongoDB commands the consumer (and the
  checkpoint signer) sent — a command is one round trip — per event, by command name;
* redelivery: the same records again (offsets reset, as after a crash before the commit), events/s;
* freshness: ``access.decided`` events published one at a time, each waited for: time from the record being
  available to its offset being committed (appended to the trail), p50/p95/p99.

Each run is checked: the trail holds exactly one record per event, the chain verifies
(:meth:`emage_audit.service.AuditService.verify`, checkpoints included), and the redelivery appended nothing
(same record count, same head); a run that fails a check, or dead-letters a record, stops the benchmark.
A batch the runner had to hand to the one-by-one handler (its warning is logged) is counted and reported.

mongod is the devstack's (``emage_devstack.mongo.MongoServer``) on the port of the profile
``EMAGE_TEST_PROFILE`` (default ``test4``), started from empty data and stopped by PID at the end, unless
``--mongo-uri`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bench.consumer_harness import (
    MONGO_CLIENT_OPTIONS,
    PARTITIONS,
    CommandCounter,
    Fresh,
    MemoryConsumer,
    NullSink,
    Outcome,
    measure,
    mongod,
    partition_of,
    print_figures,
    print_progress,
)
from bench.data import (
    CATALOG_FACILITY,
    CatalogStudy,
    catalog_instances,
    catalog_plan,
    instance_stored_record,
)
from emage_audit.domain.chain import ChainHead
from emage_audit.service import AuditService
from emage_audit.settings import Settings
from emage_common.events import (
    ACCESS_DECIDED_TOPIC,
    INSTANCE_STORED_TOPIC,
    AccessDecided,
    PatientIdentity,
    Principal,
    make_event,
)

ACCESS_DECIDED_PARTITIONS: Final = 12
"""``emage.access.decided.v1``'s partition count in the devstack (``emage_devstack.kafka.TOPICS``)."""

RADIOLOGIST: Final = Principal(
    subject="kc-radiologist-a",
    role="radiologist",
    rpps="10000000001",
    facility_finess=CATALOG_FACILITY,
    name="Dr Alice Martin",
    facility_name="CHU Alpha",
)

JUSTIFICATION: Final = "Patient inconscient aux urgences, scanner antérieur nécessaire."

TopicRecord = tuple[str, int, bytes, bytes]
"""(topic, partition, key, value) of one record."""


def access_decided_record(study: CatalogStudy) -> tuple[bytes, bytes]:
    """(key, value) of the ``emage.access.decided.v1`` record the gateway publishes when a radiologist
    retrieves ``study``: allowed for care, except one study in ten denied and one in ten a break-the-glass
    access (with its justification: an alert)."""
    patient = PatientIdentity(patient_id=study.patient_id, issuer_of_patient_id=CATALOG_FACILITY)
    allowed = study.index % 10 != 4
    break_glass = study.index % 10 == 9
    reason = "care_owning_facility" if allowed else "no_care_relationship"
    data = AccessDecided(
        request_id=f"bench-{study.index + 1}",
        principal=RADIOLOGIST,
        action="break_glass" if break_glass else "retrieve",
        study_instance_uid=study.study_instance_uid,
        patient_key=patient.patient_key,
        decision="allow" if allowed else "deny",
        basis=("break_glass" if break_glass else "care") if allowed else None,
        reason="break_glass" if break_glass else reason,
        justification=JUSTIFICATION if break_glass else None,
        client_address="10.1.2.3",
        decided_at=datetime.now(UTC),
    )
    event = make_event(data, "/emage/access", subject=study.study_instance_uid)
    return data.partition_key().encode(), event.to_bytes()


def trail_records(events: int, instances: int) -> list[TopicRecord]:
    """The first ``events`` records of a bulk import, in publication order: per study, its ``instances``
    ``instance.stored`` events, then one ``access.decided``."""
    records: list[TopicRecord] = []
    studies = -(-events // (instances + 1))
    for study in catalog_plan(studies, seed=42):
        for part10 in catalog_instances(study, instances):
            key, value = instance_stored_record(part10)
            records.append((INSTANCE_STORED_TOPIC, partition_of(key), key, value))
        key, value = access_decided_record(study)
        records.append((ACCESS_DECIDED_TOPIC, partition_of(key, ACCESS_DECIDED_PARTITIONS), key, value))
    return records[:events]


def fresh_decisions(samples: int) -> list[Fresh]:
    """``access.decided`` events of other studies, on partitions of their own (after the bulk load's), so
    that they never wait behind it."""
    fresh = []
    for study in catalog_plan(samples, seed=7):
        key, value = access_decided_record(study)
        partition = partition_of(key, ACCESS_DECIDED_PARTITIONS) + ACCESS_DECIDED_PARTITIONS
        fresh.append(Fresh(ACCESS_DECIDED_TOPIC, partition, key, value))
    return fresh


class FallbackCounter(logging.Handler):
    """Counts the runner's "batch handler failed … one by one" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("batch handler failed"):
            self.count += 1


@dataclass
class Trail:
    """What a run's checks found."""

    records: int
    checkpoints: int
    batch_fallbacks: int


@dataclass
class Audit:
    service: AuditService
    database: AsyncDatabase[dict[str, Any]]


@contextlib.asynccontextmanager
async def consumer_of(
    uri: str, consumer: MemoryConsumer, counter: CommandCounter, *, one_by_one: bool
) -> AsyncIterator[Audit]:
    """The audit's consumer and checkpoint signer on an empty database, reading from ``consumer``; with
    ``one_by_one``, the same runner without its batch handler."""
    from emage_audit.adapters.mongo import MongoAuditStore
    from emage_audit.domain.entries import AUDITED_TOPICS
    from emage_audit.handlers import (
        AUDITED_MAX_RECORDS,
        build_service,
        domain_consumer,
        domain_event_handler,
        sign_checkpoints,
    )
    from emage_common.kafka import ConsumerRunner, build_kafka_config

    settings = Settings(mongo_uri=uri, kafka_max_handler_attempts=3)
    # The options of emage_common.mongo.create_mongo_client, plus the command counter.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, event_listeners=[counter], **MONGO_CLIENT_OPTIONS
    )
    sink = NullSink()
    try:
        await client.drop_database("audit")
        database = client["audit"]
        store = MongoAuditStore(client, database)
        await store.ensure_indexes()
        service = build_service(settings, store)
        dlq_publisher: Any = sink
        runner = domain_consumer(settings, service, dlq_publisher=dlq_publisher, consumer=consumer)
        if one_by_one:
            runner = ConsumerRunner(
                build_kafka_config(settings),
                topics=AUDITED_TOPICS,
                group_id=settings.consumer_group,
                handler=domain_event_handler(service),
                dlq_publisher=dlq_publisher,
                max_attempts=settings.kafka_max_handler_attempts,
                max_records=AUDITED_MAX_RECORDS,
                consumer=consumer,
            )
        signing = asyncio.create_task(
            sign_checkpoints(service, timedelta(seconds=settings.checkpoint_interval_seconds))
        )
        counter.counts.clear()
        await runner.start()
        try:
            yield Audit(service, database)
        finally:
            await runner.stop()
            signing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signing
            if sink.dead_letters:
                raise RuntimeError(f"{sink.dead_letters} record(s) dead-lettered: the run is not valid")
    finally:
        await client.close()


async def check_trail(audit: Audit, events: int) -> tuple[int, int]:
    """Exactly one record per event and a chain that verifies, or the run is not valid; (records, checkpoints
    checked)."""
    count = await audit.database["records"].count_documents({})
    if count != events:
        raise RuntimeError(f"the trail holds {count:,} records for {events:,} events: the run is not valid")
    report = await audit.service.verify()
    if not report.valid or report.records_checked != events:
        raise RuntimeError(f"the chain does not verify ({report}): the run is not valid")
    return count, report.checkpoints_checked


async def one_run(
    uri: str, records: Sequence[TopicRecord], fresh: Sequence[Fresh], *, one_by_one: bool
) -> tuple[Outcome, Trail]:
    consumer = MemoryConsumer()
    counter = CommandCounter()
    for topic, partition, key, value in records:
        consumer.append(partition, key, value, topic=topic)
    fallbacks = FallbackCounter()
    logging.getLogger("emage_common.kafka").addHandler(fallbacks)
    try:
        async with consumer_of(uri, consumer, counter, one_by_one=one_by_one) as audit:

            async def after_bulk() -> tuple[int, ChainHead]:
                count, _ = await check_trail(audit, len(records))
                return count, await audit.service.store.head()

            async def after_redelivery(before: tuple[int, ChainHead]) -> None:
                after = (
                    await audit.database["records"].count_documents({}),
                    await audit.service.store.head(),
                )
                if after != before:
                    raise RuntimeError(
                        f"the redelivery appended to the trail ({before} → {after}): the run is not valid"
                    )

            outcome = await measure(
                consumer,
                counter,
                fresh,
                events=len(records),
                after_bulk=after_bulk,
                after_redelivery=after_redelivery,
            )
            count, checkpoints = await check_trail(audit, len(records) + len(fresh))
    finally:
        logging.getLogger("emage_common.kafka").removeHandler(fallbacks)
    return outcome, Trail(count, checkpoints, fallbacks.count)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_consumer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=2000, help="events of the bulk import")
    parser.add_argument(
        "--instances", type=int, default=10, help="instance.stored events a study (then one access.decided)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument(
        "--one-by-one",
        action="store_true",
        help="no batch handler: each record appended in its own transaction",
    )
    parser.add_argument("--mongo-uri", help="use this replica set instead of starting the devstack's mongod")
    parser.add_argument("--profile", default=os.environ.get("EMAGE_TEST_PROFILE", "test4"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print(f"generating {args.events:,} instance.stored and access.decided events …", file=sys.stderr)
    records = trail_records(args.events, args.instances)
    fresh = fresh_decisions(args.latency_samples)
    with contextlib.ExitStack() as stack:
        uri = args.mongo_uri or stack.enter_context(mongod(args.profile))
        outcomes, trails = [], []
        for run in range(1, args.runs + 1):
            outcome, trail = asyncio.run(one_run(uri, records, fresh, one_by_one=args.one_by_one))
            outcomes.append(outcome)
            trails.append(trail)
            print_progress(run, outcome)
    _report(args, records, outcomes, trails)
    return 0


def _report(
    args: argparse.Namespace,
    records: Sequence[TopicRecord],
    outcomes: Sequence[Outcome],
    trails: Sequence[Trail],
) -> None:
    mode = "one record a transaction" if args.one_by_one else "batches"
    decisions = sum(1 for topic, *_ in records if topic == ACCESS_DECIDED_TOPIC)
    print(
        f"audit consumer ({mode}): {len(records):,} events ({len(records) - decisions:,} instance.stored, "
        f"{decisions:,} access.decided), {PARTITIONS} + {ACCESS_DECIDED_PARTITIONS} partitions, "
        f"{len(outcomes)} run(s)"
    )
    print_figures(outcomes, len(records), cpu_of="consumer and checkpoint signer")
    print(
        f"  checked         each run: one record per event ({trails[-1].records:,} with the one-event "
        f"samples), chain valid\n"
        f"                  ({', '.join(str(trail.checkpoints) for trail in trails)} signed checkpoint(s)), "
        f"redelivery appended nothing; {sum(trail.batch_fallbacks for trail in trails)} batch(es) handled "
        f"one by one after a failure"
    )


if __name__ == "__main__":
    sys.exit(main())
