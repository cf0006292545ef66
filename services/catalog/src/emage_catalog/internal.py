"""Internal routes of the catalog, for the access gateway only (never proxied to clients).

``GET /internal/v1/studies/{study}/access-attributes`` answers what the gateway's policy needs to know about a
study before any decision on it (:class:`~emage_common.access_contract.StudyAccessAttributes`).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response

from emage_catalog.service import CatalogService
from emage_common.access_contract import STUDY_ACCESS_ATTRIBUTES_PATH, StudyAccessAttributes
from emage_common.events import uid_defect
from emage_common.web import problem_response

router = APIRouter(tags=["internal"])

_PROBLEM: Final[dict[str, Any]] = {"content": {"application/problem+json": {}}}


def _request_id(request: Request) -> str | None:
    request_id = getattr(request.state, "request_id", None)
    return request_id if isinstance(request_id, str) else None


@router.get(
    STUDY_ACCESS_ATTRIBUTES_PATH,
    summary="A study's owning facility, patient and care relationships, for access decisions",
    response_class=Response,
    responses={
        200: {
            "description": "The study's access attributes.",
            "content": {"application/json": {"schema": StudyAccessAttributes.model_json_schema()}},
        },
        400: {"description": "The study in the path is not a UID.", **_PROBLEM},
        404: {"description": "The study is not catalogued.", **_PROBLEM},
    },
)
async def study_access_attributes(request: Request, study: str) -> Response:
    defect = uid_defect(study)
    if defect is not None:
        return problem_response(
            400, f"the study in the path is not a UID (PS3.5 §9.1): {defect}", request_id=_request_id(request)
        )
    catalog: CatalogService = request.app.state.catalog
    attributes = await catalog.access_attributes(study)
    if attributes is None:
        return problem_response(404, "no such study in the catalog", request_id=_request_id(request))
    return Response(attributes.model_dump_json(), media_type="application/json")
