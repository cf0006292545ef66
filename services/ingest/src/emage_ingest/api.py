"""HTTP entrypoints of the ingest service."""

from __future__ import annotations

from fastapi import FastAPI

from emage_common.runtime import build_service_app
from emage_ingest import __version__
from emage_ingest.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_service_app(settings or Settings(), version=__version__)
