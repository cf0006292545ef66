"""Assembles the consent components on top of the service runtime, in the app's lifespan.

Routes reach the use cases through ``app.state.consent`` (:func:`emage_consent.routes.consent_service`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
from fastapi import FastAPI

from emage_common.runtime import ServiceLifespan, ServiceRuntime
from emage_consent.adapters.catalog import CatalogPatientDirectory
from emage_consent.adapters.mongo import MongoConsentStore, MongoOutbox
from emage_consent.relay import OutboxRelay
from emage_consent.service import ConsentService
from emage_consent.settings import Settings


def consent_lifespan(settings: Settings) -> ServiceLifespan:
    """The store, the catalog client, the use cases and the outbox relay, inside the runtime's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI, runtime: ServiceRuntime) -> AsyncIterator[None]:
        database = runtime.database
        store = MongoConsentStore(database)
        outbox = MongoOutbox(database)
        await store.ensure_indexes()
        await outbox.ensure_indexes()
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
        async with httpx.AsyncClient(
            base_url=settings.catalog_url,
            timeout=httpx.Timeout(settings.catalog_timeout_seconds),
            follow_redirects=False,
        ) as catalog:
            service = ConsentService(
                store=store,
                directory=CatalogPatientDirectory(catalog),
                events=runtime.publisher,
                outbox=outbox,
                replica_id=replica_id,
                publish_timeout=settings.publish_timeout_seconds,
                outbox_lease=lease,
                wake_relay=relay.wake,
            )
            app.state.consent = service
            relay.start()
            try:
                yield
            finally:
                await service.settle_pending()
                await relay.stop()

    return lifespan
