"""Event entrypoints and background work of the audit service, for the life of the service.

Inside the runtime's lifespan (:func:`audit_lifespan`): the consumer of the domain topics, the checkpoint
signer (every ``checkpoint_interval_seconds``, or every ``checkpoint_every_records`` records) and, when a
collector is configured, the DICOM audit message exporter. They start once MongoDB and Kafka are open and
stop before those close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Final

from fastapi import FastAPI

from emage_audit.adapters.mongo import MongoAuditStore
from emage_audit.domain.atna import AuditSource
from emage_audit.domain.checkpoints import CheckpointSigner, TrustedKeys
from emage_audit.domain.entries import AUDITED_TOPICS
from emage_audit.export import SYSLOG_EXPORT, SyslogExporter, tls_context
from emage_audit.service import AuditService
from emage_audit.settings import DEV_ONLY_CHECKPOINT_SIGNING_KEY, Settings
from emage_common.events import CloudEvent
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

logger = logging.getLogger(__name__)


def domain_event_handler(service: AuditService) -> EventHandler:
    """The handler of every audited topic: append the event to the trail (once, whatever the redeliveries)."""

    async def on_domain_event(event: CloudEvent, _meta: ConsumerRecordMeta) -> None:
        await service.record_event(event)

    return on_domain_event


def domain_events_handler(service: AuditService) -> BatchEventHandler:
    """The batch handler of the audited topics: a poll's records of one partition appended together, in one
    transaction (the runner hands them to :func:`domain_event_handler` one by one if that fails)."""

    async def on_domain_events(batch: Sequence[tuple[CloudEvent, ConsumerRecordMeta]]) -> None:
        await service.record_events([event for event, _meta in batch])

    return on_domain_events


AUDITED_MAX_RECORDS: Final = 500
"""Records of the audited topics fetched by one poll, for all partitions: a bulk import's ``instance.stored``
events are appended hundreds a transaction; a gateway's decisions, the few a poll brings."""


def domain_consumer(
    settings: Settings,
    service: AuditService,
    *,
    dlq_publisher: EventPublisher,
    consumer: ConsumerPort | None = None,
) -> ConsumerRunner:
    """The consumer of the audited topics (group ``settings.consumer_group``): each poll's records of a
    partition appended together (:func:`domain_events_handler`), one by one if that fails.

    ``consumer`` replaces the Kafka client (the benchmark of the consumer feeds it records from memory).
    """
    return ConsumerRunner(
        build_kafka_config(settings),
        topics=AUDITED_TOPICS,
        group_id=settings.consumer_group,
        handler=domain_event_handler(service),
        batch_handler=domain_events_handler(service),
        dlq_publisher=dlq_publisher,
        max_attempts=settings.kafka_max_handler_attempts,
        max_records=AUDITED_MAX_RECORDS,
        consumer=consumer,
    )


async def sign_checkpoints(service: AuditService, interval: timedelta) -> None:
    """Sign the chain's head periodically, and as soon as enough records were appended."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.checkpoint_due.wait(), timeout=interval.total_seconds())
        service.checkpoint_due.clear()
        try:
            await service.checkpoint(interval=interval)
        except Exception:
            logger.exception("signing a checkpoint failed; trying again at the next interval")


def build_service(settings: Settings, store: MongoAuditStore) -> AuditService:
    signer = CheckpointSigner.from_base64_seed(settings.checkpoint_signing_key.get_secret_value())
    return AuditService(
        store=store,
        signer=signer,
        trusted_keys=TrustedKeys.of(signer, settings.checkpoint_previous_public_keys),
        source=AuditSource(settings.audit_source_id, settings.audit_enterprise_site_id),
        retention=timedelta(days=settings.retention_days),
        checkpoint_every_records=settings.checkpoint_every_records,
        export_cursor=SYSLOG_EXPORT if settings.syslog_host else None,
    )


def audit_lifespan(settings: Settings) -> ServiceLifespan:
    """The audit service, its consumer and background tasks; the service is ``app.state.audit``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI, runtime: ServiceRuntime) -> AsyncIterator[None]:
        if settings.checkpoint_signing_key.get_secret_value() == DEV_ONLY_CHECKPOINT_SIGNING_KEY:
            logger.warning(
                "checkpoints are signed with the DEVELOPMENT-ONLY key: set EMAGE_AUDIT_CHECKPOINT_SIGNING_KEY"
            )
        store = MongoAuditStore(runtime.mongo, runtime.database)
        await store.ensure_indexes()
        service = build_service(settings, store)
        app.state.audit = service
        app.state.settings = settings
        consumer = domain_consumer(settings, service, dlq_publisher=runtime.publisher)
        await consumer.start()
        runtime.watch_consumer(consumer)
        tasks = [
            asyncio.create_task(
                sign_checkpoints(service, timedelta(seconds=settings.checkpoint_interval_seconds)),
                name="audit-checkpoints",
            )
        ]
        if settings.syslog_host:
            exporter = SyslogExporter(
                store,
                service.source,
                host=settings.syslog_host,
                port=settings.syslog_port,
                tls=tls_context(
                    settings.syslog_tls_cafile, settings.syslog_tls_certfile, settings.syslog_tls_keyfile
                )
                if settings.syslog_tls
                else None,
                hostname=settings.syslog_hostname,
                app_name=settings.syslog_app_name,
                appended=service.appended,
                poll_s=settings.syslog_poll_seconds,
                retry_initial_s=settings.syslog_retry_initial_seconds,
                retry_max_s=settings.syslog_retry_max_seconds,
            )
            tasks.append(asyncio.create_task(exporter.run(), name="audit-syslog-export"))
        try:
            yield
        finally:
            try:
                await consumer.stop()
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    return lifespan
