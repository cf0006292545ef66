"""HTTP entrypoints of the consent service."""

from __future__ import annotations

from fastapi import FastAPI

from emage_common.runtime import build_service_app
from emage_consent import __version__
from emage_consent.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_service_app(settings or Settings(), version=__version__)
