"""Event entrypoints of the catalog: the ``instance.stored`` consumer, the ``acquisition`` consumer (care
relationships announced by the facilities) and the ``study.changed`` announcer.

All run for the life of the service, inside the runtime's lifespan (:func:`catalog_lifespan`): they start
once MongoDB and the Kafka publisher are open and stop before those close, the consumer committing what it
handled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

from fastapi import FastAPI

from emage_catalog.adapters.mongo import MongoCatalogStore
from emage_catalog.adapters.orders import MongoOrderStore
from emage_catalog.service import CatalogService, StudyAnnouncer
from emage_catalog.settings import Settings
from emage_common.events import (
    ACQUISITION_TOPIC,
    INSTANCE_STORED_TOPIC,
    Acquisition,
    CloudEvent,
    InstanceStored,
)
from emage_common.kafka import (
    BatchEventHandler,
    ConsumerPort,
    ConsumerRecordMeta,
    ConsumerRunner,
    EventHandler,
    EventPublisher,
    build_kafka_config,
)
from emage_common.runtime import ServiceLifespan, ServiceRuntime


def instance_stored_handler(service: CatalogService) -> EventHandler:
    """The handler of one ``emage.instance.stored.v1`` record: catalog the instance the event describes.

    The revision of the study is the record's offset plus one: every event of a study has the study's UID as
    key, hence one partition, where offsets only grow (the topic's partition count never changes).
    """

    async def on_instance_stored(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        await service.record_instance(event.data_as(InstanceStored), revision=meta.offset + 1)

    return on_instance_stored


def instances_stored_handler(service: CatalogService) -> BatchEventHandler:
    """The handler of consecutive ``emage.instance.stored.v1`` records of a partition: catalog them all in one
    transaction (:meth:`CatalogService.record_instances`), revisions as :func:`instance_stored_handler`'s.

    When it fails (an invalid event, one contradicting the catalog, MongoDB unavailable) nothing is written,
    and the runner hands the records to :func:`instance_stored_handler` one by one.
    """

    async def on_instances_stored(batch: Sequence[tuple[CloudEvent, ConsumerRecordMeta]]) -> None:
        await service.record_instances(
            [(event.data_as(InstanceStored), meta.offset + 1) for event, meta in batch]
        )

    return on_instances_stored


INSTANCE_STORED_MAX_RECORDS: Final = 500
"""Records of ``emage.instance.stored.v1`` fetched by one poll, for all partitions: the more a partition
brings, the fewer transactions the catalog writes them in (a bulk load or a replay files hundreds of events a
transaction; a live STOW-RS request, its own few)."""


def instance_stored_consumer(
    settings: Settings,
    service: CatalogService,
    *,
    dlq_publisher: EventPublisher,
    consumer: ConsumerPort | None = None,
) -> ConsumerRunner:
    """The consumer of ``emage.instance.stored.v1`` (group ``settings.consumer_group``): each poll's records
    of a partition are filed together (:func:`instances_stored_handler`), one by one if that fails.

    ``consumer`` replaces the Kafka client (the benchmark of the consumer feeds it records from memory).
    """
    return ConsumerRunner(
        build_kafka_config(settings),
        topics=[INSTANCE_STORED_TOPIC],
        group_id=settings.consumer_group,
        handler=instance_stored_handler(service),
        batch_handler=instances_stored_handler(service),
        dlq_publisher=dlq_publisher,
        max_attempts=settings.kafka_max_handler_attempts,
        max_records=INSTANCE_STORED_MAX_RECORDS,
        consumer=consumer,
    )


def acquisition_handler(service: CatalogService) -> EventHandler:
    """The handler of ``emage.acquisition.v1`` records: record the care relationships of the order.

    The announcement's time is the event's ``time``, else the record's timestamp. Invalid events, and events
    naming another facility's or patient's study, are dead-lettered (the catalog's group on the DLQ headers).
    """

    async def on_acquisition(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        await service.record_acquisition(
            event.data_as(Acquisition), event_id=event.id, announced_at=event.time or meta.timestamp
        )

    return on_acquisition


def catalog_lifespan(settings: Settings) -> ServiceLifespan:
    """The catalog service, its consumer and its announcer, inside the runtime's lifespan.

    The service is published as ``app.state.catalog`` for the HTTP routes.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI, runtime: ServiceRuntime) -> AsyncIterator[None]:
        store = MongoCatalogStore(runtime.database)
        orders = MongoOrderStore(runtime.database)
        await store.ensure_indexes()
        await orders.ensure_indexes()
        announcer = StudyAnnouncer(
            store, runtime.publisher, debounce_seconds=settings.study_changed_debounce_seconds
        )
        service = CatalogService(store, on_study_changed=announcer.wake, orders=orders)
        app.state.catalog = service
        consumer = instance_stored_consumer(settings, service, dlq_publisher=runtime.publisher)
        # A group of its own: a slow or failing announcement never holds up the catalog of instances.
        care_consumer = ConsumerRunner.from_settings(
            settings,
            topics=[ACQUISITION_TOPIC],
            group_id=settings.care_consumer_group,
            handler=acquisition_handler(service),
            dlq_publisher=runtime.publisher,
        )
        await consumer.start()
        runtime.watch_consumer(consumer)
        await care_consumer.start()
        runtime.watch_consumer(care_consumer)
        announcing = asyncio.create_task(announcer.run(), name="study-changed-announcer")
        try:
            yield
        finally:
            try:
                await care_consumer.stop()
                await consumer.stop()
            finally:
                announcing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await announcing

    return lifespan
