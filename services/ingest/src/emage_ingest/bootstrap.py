"""Assembles the ingest components on top of the service runtime, in the app's lifespan.

Routers reach them through :func:`ingest_components` (``app.state.ingest``): the instance index, the
encrypted archive, the store use case and the outbox relay.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI, Request

from emage_common.runtime import ServiceLifespan, ServiceRuntime
from emage_ingest.adapters.archive import InstanceArchive
from emage_ingest.adapters.crypto import KeyEncryptionKey, KeyRing, StudyKeyStore
from emage_ingest.adapters.repository import STUDY_KEYS, InstanceIndex, Outbox
from emage_ingest.dimse import start_dimse_scp
from emage_ingest.handlers import acquisition_consumer
from emage_ingest.relay import OutboxRelay
from emage_ingest.service import IngestService
from emage_ingest.settings import Settings


@dataclass(frozen=True, slots=True)
class IngestComponents:
    """What ingest's entrypoints use, opened for the lifetime of the app."""

    settings: Settings
    index: InstanceIndex
    archive: InstanceArchive
    service: IngestService
    relay: OutboxRelay


def keyring_from(settings: Settings) -> KeyRing:
    """The KEKs of the settings; raises :class:`RuntimeError` when no current KEK is configured."""
    if settings.archive_kek is None:
        raise RuntimeError("EMAGE_INGEST_ARCHIVE_KEK is not set: the archive cannot encrypt without a KEK")
    current = KeyEncryptionKey(
        settings.archive_kek_id, base64.b64decode(settings.archive_kek.get_secret_value())
    )
    retired = {
        key_id: KeyEncryptionKey(key_id, base64.b64decode(secret.get_secret_value()))
        for key_id, secret in settings.archive_retired_keks.items()
    }
    return KeyRing(current, retired)


async def open_components(settings: Settings, runtime: ServiceRuntime) -> IngestComponents:
    """Build the components on the runtime's open connections and create the indexes they need."""
    keyring = keyring_from(settings)
    database = runtime.database
    index = InstanceIndex(database)
    outbox = Outbox(database)
    await index.ensure_indexes()
    await outbox.ensure_indexes()
    archive = InstanceArchive(
        runtime.s3,
        settings.s3_bucket,
        StudyKeyStore(database[STUDY_KEYS], keyring),
        segment_size=settings.archive_segment_bytes,
    )
    replica_id = f"{socket.gethostname()}:{os.getpid()}"
    lease = timedelta(seconds=settings.outbox_lease_seconds)
    relay = OutboxRelay(
        outbox,
        runtime.publisher,
        replica_id=replica_id,
        poll_interval=settings.outbox_poll_seconds,
        lease=lease,
        publish_timeout=settings.publish_timeout_seconds,
    )
    service = IngestService(
        records=index,
        archive=archive,
        events=runtime.publisher,
        outbox=outbox,
        conflict_policy=settings.conflict_policy,
        replica_id=replica_id,
        publish_timeout=settings.publish_timeout_seconds,
        outbox_lease=lease,
        wake_relay=relay.wake,
    )
    return IngestComponents(settings, index, archive, service, relay)


def ingest_lifespan(settings: Settings) -> ServiceLifespan:
    """The ingest components, the outbox relay, the DIMSE listener and the acquisition consumer (pulls),
    inside the runtime's lifespan. The consumer stops first: a C-MOVE it waits for needs the listener."""

    @asynccontextmanager
    async def lifespan(app: FastAPI, runtime: ServiceRuntime) -> AsyncIterator[None]:
        components = await open_components(settings, runtime)
        app.state.ingest = components
        components.relay.start()
        dimse = start_dimse_scp(components.service, settings) if settings.dimse_enabled else None
        try:
            async with AsyncExitStack() as pulls:
                if settings.pull_enabled:
                    await pulls.enter_async_context(
                        acquisition_consumer(settings, runtime, components.service, components.index)
                    )
                yield
        finally:
            if dimse is not None:
                await dimse.stop()
            await components.service.settle_pending()
            await components.relay.stop()

    return lifespan


async def ingest_components(request: Request) -> IngestComponents:
    """FastAPI dependency: the components of the running app."""
    components: IngestComponents = request.app.state.ingest
    return components
