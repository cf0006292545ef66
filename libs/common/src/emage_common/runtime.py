"""The connections a service holds for its lifetime, opened in its lifespan and checked by ``/readyz``.

Every service needs its own MongoDB database and a durable event publisher; ingest also holds the S3
archive client. Opening them in one place keeps the five services alike and makes their readiness mean
the same thing everywhere: each dependency the service itself uses answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from emage_common.kafka import (
    ConsumerRunner,
    EventPublisher,
    build_kafka_config,
    close_kafka_ready,
    kafka_ready,
)
from emage_common.mongo import create_mongo_client, mongo_ready, service_database
from emage_common.s3 import create_s3_client, s3_ready
from emage_common.settings import S3Settings, ServiceSettings
from emage_common.web import ReadinessCheck, create_service_app

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class ServiceRuntime:
    """MongoDB client, Kafka publisher and (when the settings carry S3) the S3 client of one service."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.kafka_config = build_kafka_config(settings)
        self._mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self._publisher: EventPublisher | None = None
        self._s3: S3Client | None = None
        self._shutdown_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._consumers: list[ConsumerRunner] = []

    def watch_consumer(self, consumer: ConsumerRunner) -> None:
        """Count ``consumer`` in readiness: a service whose consumer died handles nothing, so is not ready."""
        self._consumers.append(consumer)

    def on_shutdown(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` when the service stops, after it stopped serving requests."""
        self._shutdown_callbacks.append(callback)

    @property
    def mongo(self) -> AsyncMongoClient[dict[str, Any]]:
        if self._mongo is None:
            raise RuntimeError("the service runtime is not started")
        return self._mongo

    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        """The service's own database, never another service's."""
        return service_database(self.mongo, self.settings)

    @property
    def publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise RuntimeError("the service runtime is not started")
        return self._publisher

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise RuntimeError("this service has no S3 client (or the runtime is not started)")
        return self._s3

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """Open every connection before the first request; close them after the last."""
        async with AsyncExitStack() as stack:
            self._mongo = create_mongo_client(self.settings)
            stack.push_async_callback(self._mongo.close)
            if isinstance(self.settings, S3Settings):
                self._s3 = await stack.enter_async_context(create_s3_client(self.settings))
            self._publisher = await stack.enter_async_context(EventPublisher(self.kafka_config))
            stack.push_async_callback(close_kafka_ready)
            for callback in self._shutdown_callbacks:
                stack.push_async_callback(callback)
            try:
                yield
            finally:
                self._consumers.clear()
                self._mongo = self._publisher = self._s3 = None

    def readiness(self) -> dict[str, ReadinessCheck]:
        """One check per dependency this service uses, for :func:`emage_common.web.create_service_app`."""

        async def mongodb() -> bool:
            return self._mongo is not None and await mongo_ready(self._mongo)

        async def kafka() -> bool:
            consuming = all(consumer.running for consumer in self._consumers)
            return self._publisher is not None and consuming and await kafka_ready(self.kafka_config)

        checks: dict[str, ReadinessCheck] = {"mongodb": mongodb, "kafka": kafka}
        if isinstance(self.settings, S3Settings):
            settings = self.settings

            async def s3() -> bool:
                return self._s3 is not None and await s3_ready(self._s3, settings.s3_bucket)

            checks["s3"] = s3
        return checks


ServiceLifespan = Callable[[FastAPI, "ServiceRuntime"], AbstractAsyncContextManager[None]]
"""What a service runs for its life once its connections are open (consumers, relays, DIMSE listeners)."""


def build_service_app(
    settings: ServiceSettings,
    *,
    version: str,
    routers: Iterable[APIRouter] = (),
    service_lifespan: ServiceLifespan | None = None,
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """A service's app with its :class:`ServiceRuntime` opened in the lifespan (``app.state.runtime``).

    ``service_lifespan`` runs inside the runtime's: it starts after MongoDB, Kafka and S3 are open and stops
    before they close. ``readiness`` adds the service's own checks to those of its connections.
    """
    runtime = ServiceRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            if service_lifespan is None:
                yield
            else:
                async with service_lifespan(app, runtime):
                    yield

    app = create_service_app(
        settings,
        title=f"e-mage {settings.service_name}",
        version=version,
        readiness={**runtime.readiness(), **(readiness or {})},
        routers=routers,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app
