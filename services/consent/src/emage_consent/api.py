"""HTTP entrypoints of the consent service: ``/api/v1/consents`` on the common service runtime."""

from __future__ import annotations

import logging
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pymongo.errors import PyMongoError

from emage_common.runtime import build_service_app
from emage_common.web import problem_response
from emage_consent import __version__
from emage_consent.bootstrap import consent_lifespan
from emage_consent.domain.rules import (
    ConflictError,
    ConsentRuleError,
    ForbiddenError,
    InvalidConsentError,
    NotFoundError,
)
from emage_consent.fhir import FhirValidationError
from emage_consent.ports import PatientDirectoryUnavailableError
from emage_consent.routes import router
from emage_consent.settings import Settings

logger = logging.getLogger(__name__)

_STATUS: Final[dict[type[ConsentRuleError], int]] = {
    NotFoundError: 404,
    ForbiddenError: 403,
    InvalidConsentError: 422,
    ConflictError: 409,
}


def _request_id(request: Request) -> str | None:
    request_id = getattr(request.state, "request_id", None)
    return request_id if isinstance(request_id, str) else None


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsentRuleError)
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    return problem_response(status, str(exc), request_id=_request_id(request))


async def _catalog_unavailable(request: Request, exc: Exception) -> Response:
    return problem_response(
        503,
        "The catalog cannot say right now whether this patient is one of your facility's; retry shortly.",
        request_id=_request_id(request),
        headers={"Retry-After": "5"},
    )


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("MongoDB unavailable", exc_info=exc)
    return problem_response(
        503,
        "The consent database is unavailable right now; retry shortly.",
        request_id=_request_id(request),
        headers={"Retry-After": "5"},
    )


async def _invalid_fhir(request: Request, exc: Exception) -> Response:
    logger.error("a FHIR export failed its own validation", exc_info=exc)
    return problem_response(500, "The FHIR export could not be produced.", request_id=_request_id(request))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The consent app: its routes, the use cases and the outbox relay opened in the lifespan."""
    settings = settings or Settings()
    app = build_service_app(
        settings,
        version=__version__,
        routers=[router],
        service_lifespan=consent_lifespan(settings),
    )
    app.add_exception_handler(ConsentRuleError, _refused)
    app.add_exception_handler(PatientDirectoryUnavailableError, _catalog_unavailable)
    app.add_exception_handler(PyMongoError, _database_unavailable)
    app.add_exception_handler(FhirValidationError, _invalid_fhir)
    return app
