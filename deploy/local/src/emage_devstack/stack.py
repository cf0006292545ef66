"""The whole native stack of one profile: infrastructure servers, topics, bucket, then the five services."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .kafka import TOPICS, KafkaServer
from .keycloak import KeycloakServer
from .mongo import MongoServer
from .paths import state_dir
from .ports import Ports, ports_for
from .process import ManagedProcess
from .s3 import ARCHIVE_BUCKET, S3Server
from .viewer import ensure_viewer, is_provisioned, viewer_dir

if TYPE_CHECKING:
    from emage_common.settings import S3Settings

SERVICES: tuple[str, ...] = ("ingest", "catalog", "consent", "access", "audit")

# DEVELOPMENT ONLY, public in this repository: the key-encryption key of the local archive. Any real
# deployment sets EMAGE_INGEST_ARCHIVE_KEK from its own secret store (or a KMS) and never this value.
DEV_ONLY_ARCHIVE_KEK = "ZGV2LW9ubHkgZS1tYWdlIEtFSyAtIG5vdCBzZWNyZXQ="


@dataclass
class Stack:
    """Starts and stops, by PID and in order, everything ``make run`` and the integration tests need."""

    profile: str = "run"
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    otlp_endpoint: str | None = None
    """Base URL of an OTLP/HTTP trace receiver (``http://127.0.0.1:4318``) every service exports its spans to;
    ``None``: spans are made (trace context still propagates) but not exported."""

    def __post_init__(self) -> None:
        self.ports: Ports = ports_for(self.profile)
        self.kafka = KafkaServer(self.profile, self.ports)
        self.mongo = MongoServer(self.profile, self.ports)
        self.s3 = S3Server(self.profile, self.ports)
        self.keycloak = KeycloakServer(self.profile, self.ports)
        self.services: dict[str, ManagedProcess] = {}

    def provision(self) -> None:
        """Fetch and unpack every server once (idempotent; downloads are cached across checkouts)."""
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures: list[Future[object]] = [
                pool.submit(s.provision) for s in (self.keycloak, self.kafka, self.mongo, self.s3)
            ]
            # The OHIF build the gateway serves at /viewer/ (npm, verified, cached like the servers).
            futures.append(pool.submit(ensure_viewer))
            for future in futures:
                future.result()
        self.log(f"provisioned in {time.monotonic() - started:.1f}s")

    def start_infrastructure(self, *, wipe: bool = False, keycloak: bool = True) -> None:
        """Kafka, MongoDB, S3 (and Keycloak, the slowest, concurrently), then topics and the bucket."""
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            servers: list[MongoServer | S3Server | KafkaServer | KeycloakServer] = [
                self.mongo,
                self.s3,
                self.kafka,
            ]
            if keycloak:
                servers.append(self.keycloak)
            futures = {pool.submit(s.start, wipe=wipe): s for s in servers}
            errors = []
            for future, server in futures.items():
                try:
                    future.result()
                except Exception as exc:
                    errors.append(f"{type(server).__name__}: {exc}")
            if errors:
                self.stop()
                raise RuntimeError("the local stack failed to start:\n" + "\n".join(errors))
        asyncio.run(self._create_topics_and_bucket())
        self.log(f"infrastructure up in {time.monotonic() - started:.1f}s")

    async def _create_topics_and_bucket(self) -> None:
        from emage_common.kafka import ensure_topics
        from emage_common.s3 import create_s3_client, ensure_bucket

        # Kept forever locally: the catalog and the audit trail are rebuilt by replaying their topics.
        await ensure_topics(self.kafka.bootstrap_servers, TOPICS, retention_ms=-1)
        async with create_s3_client(self.s3_settings()) as client:
            await ensure_bucket(client, ARCHIVE_BUCKET)

    def s3_settings(self) -> S3Settings:
        from emage_common.settings import S3Settings

        return S3Settings(
            s3_endpoint_url=self.s3.endpoint_url,
            s3_access_key_id=self.s3.access_key,
            s3_secret_access_key=self.s3.secret_key,
            s3_bucket=ARCHIVE_BUCKET,
        )

    def service_port(self, name: str) -> int:
        port: int = getattr(self.ports, name)
        return port

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.service_port(name)}"

    def service_env(self) -> dict[str, str]:
        """The ``EMAGE_<SERVICE>_*`` variables wiring each service to this profile's servers."""
        env: dict[str, str] = {}
        for name in SERVICES:
            prefix = f"EMAGE_{name.upper()}_"
            env[prefix + "HTTP_HOST"] = "127.0.0.1"
            env[prefix + "HTTP_PORT"] = str(self.service_port(name))
            env[prefix + "KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
            env[prefix + "MONGO_URI"] = self.mongo.uri
        env["EMAGE_INGEST_S3_ENDPOINT_URL"] = self.s3.endpoint_url
        env["EMAGE_INGEST_S3_ACCESS_KEY_ID"] = self.s3.access_key
        env["EMAGE_INGEST_S3_SECRET_ACCESS_KEY"] = self.s3.secret_key
        env["EMAGE_INGEST_S3_BUCKET"] = ARCHIVE_BUCKET
        env["EMAGE_INGEST_DIMSE_PORT"] = str(self.ports.dimse)
        # The modalities of the two dev facilities, as DIMSE calling AE titles (others: the default facility).
        env["EMAGE_INGEST_AE_TITLE_FACILITIES"] = '{"CHUA_MODALITY":"750000001","CLIB_MODALITY":"690000002"}'
        env["EMAGE_INGEST_ARCHIVE_KEK"] = DEV_ONLY_ARCHIVE_KEK
        env["EMAGE_INGEST_ARCHIVE_KEK_ID"] = "dev-only-kek"
        env["EMAGE_ACCESS_OIDC_ISSUER"] = self.keycloak.issuer
        env["EMAGE_ACCESS_CATALOG_URL"] = self.service_url("catalog")
        env["EMAGE_ACCESS_INGEST_URL"] = self.service_url("ingest")
        env["EMAGE_ACCESS_CONSENT_URL"] = self.service_url("consent")
        env["EMAGE_ACCESS_AUDIT_URL"] = self.service_url("audit")
        if is_provisioned():
            env["EMAGE_ACCESS_VIEWER_DIR"] = str(viewer_dir())
        env["EMAGE_CONSENT_CATALOG_URL"] = self.service_url("catalog")
        if self.otlp_endpoint:
            for name in SERVICES:
                env[f"EMAGE_{name.upper()}_OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        return env

    def start_services(self, names: tuple[str, ...] = SERVICES, timeout: float = 60) -> None:
        env = {**os.environ, **self.service_env()}
        logs = state_dir(self.profile) / "services"
        for name in names:
            process = ManagedProcess(
                name, [sys.executable, "-m", f"emage_{name}"], logs / f"{name}.log", env=env
            )
            process.start()
            self.services[name] = process
        for name in names:
            self.services[name].wait_ready(partial(self._ready, name), timeout)

    def _ready(self, name: str) -> bool:
        return httpx.get(f"{self.service_url(name)}/readyz", timeout=2).status_code == 200

    def stop_service(self, name: str) -> None:
        process = self.services.pop(name, None)
        if process:
            process.stop(timeout=15)

    def stop(self) -> None:
        """Services first (they flush to the servers), then the servers; each by its own PID."""
        for name in list(self.services):
            self.stop_service(name)
        for server in (self.keycloak, self.kafka, self.s3, self.mongo):
            try:
                server.stop()
            except Exception as exc:
                self.log(f"stopping {type(server).__name__}: {exc}")

    def logs_dir(self) -> Path:
        return state_dir(self.profile)
