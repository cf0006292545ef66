"""HTTP entrypoints of the catalog service: its DICOMweb routes on the common service runtime."""

from __future__ import annotations

from fastapi import FastAPI

from emage_catalog import __version__, fhir, internal
from emage_catalog.dicomweb import router
from emage_catalog.handlers import catalog_lifespan
from emage_catalog.settings import Settings
from emage_common.runtime import build_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The catalog app: QIDO-RS and WADO-RS metadata, fed by the ``instance.stored`` consumer, and the
    internal routes of the access gateway."""
    settings = settings or Settings()
    return build_service_app(
        settings,
        version=__version__,
        routers=[router, internal.router, fhir.router],
        service_lifespan=catalog_lifespan(settings),
    )
