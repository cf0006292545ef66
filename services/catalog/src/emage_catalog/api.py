"""HTTP entrypoints of the catalog service."""

from __future__ import annotations

from fastapi import FastAPI

from emage_catalog import __version__
from emage_catalog.settings import Settings
from emage_common.runtime import build_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_service_app(settings or Settings(), version=__version__)
