"""The access gateway's app: authentication, the DICOMweb proxy, ``/api/v1``, all decided and audited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from emage_access import __version__, internal_api, portal, professionals, sharing_api, viewer
from emage_access.adapters.catalog import CatalogUnavailableError, HttpStudyDirectory
from emage_access.adapters.consent_follower import ConsentFollower
from emage_access.adapters.mongo import MongoBreakGlassStore, MongoLinkStore, MongoShareStore
from emage_access.adapters.professionals import MongoDirectory
from emage_access.adapters.study_cache import CachedStudyDirectory
from emage_access.auth import authenticated_claims
from emage_access.decisions import AccessDecider, AuditUnavailableError
from emage_access.dicomweb_proxy import Upstream
from emage_access.dicomweb_proxy import router as dicomweb_router
from emage_access.domain.consent_view import InMemoryConsentView
from emage_access.settings import Settings
from emage_common.kafka import build_kafka_config
from emage_common.oidc import Claims, OidcValidator, authentication_methods
from emage_common.runtime import ServiceRuntime, build_service_app
from emage_common.web import problem_response

_log = logging.getLogger(__name__)


class Me(BaseModel):
    """Who the gateway sees behind a token (claims as Pro Santé Connect and the dev realm provide them)."""

    subject: str
    name: str | None = None
    roles: list[str]
    rpps: str | None = None
    facility: str | None = None
    facility_name: str | None = None
    patient_id: str | None = None
    authentication_methods: list[str]


router = APIRouter(prefix="/api/v1", tags=["me"])


@router.get("/me", response_model=Me, summary="The authenticated caller")
async def me(claims: Annotated[Claims, Depends(authenticated_claims)]) -> Me:
    raw: dict[str, Any] = dict(claims.raw)
    roles = raw.get("roles") or raw.get("realm_access", {}).get("roles", [])
    return Me(
        subject=claims.subject,
        name=raw.get("name"),
        roles=[role for role in roles if isinstance(role, str)],
        rpps=raw.get("rpps"),
        facility=raw.get("facility"),
        facility_name=raw.get("facility_name"),
        patient_id=raw.get("patient_id"),
        authentication_methods=sorted(authentication_methods(claims)),
    )


def _upstream_client(base_url: str, settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        settings.upstream_read_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
    )
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    view = InMemoryConsentView()
    follower = ConsentFollower(build_kafka_config(settings), view)

    @asynccontextmanager
    async def gateway_lifespan(app: FastAPI, runtime: ServiceRuntime) -> AsyncIterator[None]:
        catalog = _upstream_client(settings.catalog_url, settings)
        ingest = _upstream_client(settings.ingest_url, settings)
        consent = _upstream_client(settings.consent_url, settings)
        audit = _upstream_client(settings.audit_url, settings)
        try:
            database = runtime.database
            shares = MongoShareStore(database)
            links = MongoLinkStore(database)
            break_glass = MongoBreakGlassStore(database)
            await sharing_api.ensure_indexes(database)
            professional_directory = MongoDirectory(database)
            await professional_directory.ensure_indexes()
            app.state.professionals = professional_directory
            directory = HttpStudyDirectory(catalog)
            app.state.upstreams = {Upstream.CATALOG: catalog, Upstream.INGEST: ingest}
            app.state.internal_apis = {internal_api.CONSENT: consent, internal_api.AUDIT: audit}
            app.state.patient_birth_date = directory.patient_birth_date
            app.state.shares = shares
            app.state.links = links
            app.state.link_sessions = links
            app.state.break_glass = break_glass
            app.state.decider = AccessDecider(
                directory=CachedStudyDirectory(
                    directory, ttl_seconds=settings.study_attributes_cache_seconds
                ),
                consent=view,
                shares=shares,
                break_glass=break_glass,
                publisher=runtime.publisher,
                settings=settings.policy,
            )
            await follower.start()
            async with asyncio.timeout(settings.consent_view_ready_timeout_seconds):
                await follower.wait_caught_up()
            announcer = asyncio.create_task(_announce_pending_shares(app, runtime))
            try:
                yield
            finally:
                announcer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await announcer
        finally:
            await follower.stop()
            await asyncio.gather(catalog.aclose(), ingest.aclose(), consent.aclose(), audit.aclose())

    async def consent_view_ready() -> bool:
        """The view is complete: decisions cannot rest on a consent already revoked."""
        return follower.running and follower.caught_up

    app = build_service_app(
        settings,
        version=__version__,
        routers=[
            router,
            sharing_api.router,
            professionals.router,
            internal_api.router,
            internal_api.fhir_router,
            dicomweb_router,
            portal.router,
        ],
        service_lifespan=gateway_lifespan,
        readiness={"consent_view": consent_view_ready},
    )
    app.state.settings = settings

    async def openapi_document() -> dict[str, Any]:
        """The public surface's OpenAPI document, where ARCHITECTURE.md promises it."""
        return app.openapi()

    app.add_api_route("/api/v1/openapi.json", openapi_document, methods=["GET"], include_in_schema=False)
    app.include_router(viewer.router(settings))
    app.state.consent_view = view
    validator = OidcValidator.from_settings(settings)
    app.state.oidc = validator
    app.state.runtime.on_shutdown(validator.aclose)
    app.add_exception_handler(AuditUnavailableError, _unavailable)
    app.add_exception_handler(CatalogUnavailableError, _unavailable)
    # Professionals enter the directory patients search to share with, as their tokens are seen.
    app.add_middleware(professionals.DirectoryRecorder)
    return app


async def _announce_pending_shares(app: FastAPI, runtime: ServiceRuntime) -> None:
    """Publish share changes a crash or a Kafka outage left unannounced: at start, then every 30 s."""
    while True:
        try:
            await sharing_api.announce_pending(app, runtime.publisher)
        except Exception:  # the next round retries; a failure here must not stop the gateway
            _log.exception("pending share changes not announced yet")
        await asyncio.sleep(30)


async def _unavailable(request: Request, _error: Exception) -> Response:
    """Nothing is disclosed without its audit event, nor decided without the catalog's facts."""
    request_id = getattr(request.state, "request_id", None)
    return problem_response(
        503,
        "The service is temporarily unavailable; try again shortly.",
        request_id=request_id if isinstance(request_id, str) else None,
        headers={"Retry-After": "5"},
    )
