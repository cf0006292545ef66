"""HTTP entrypoints of the ingest service."""

from __future__ import annotations

from fastapi import FastAPI

from emage_common.runtime import build_service_app
from emage_ingest import __version__
from emage_ingest.bootstrap import ingest_lifespan
from emage_ingest.retrieve import router as retrieve_router
from emage_ingest.settings import Settings
from emage_ingest.stow import router as stow_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return build_service_app(
        settings,
        version=__version__,
        routers=[stow_router, retrieve_router],
        service_lifespan=ingest_lifespan(settings),
    )
