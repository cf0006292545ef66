"""DICOMweb routes of the catalog: QIDO-RS search (PS3.18 §10.6) and WADO-RS metadata (PS3.18 §10.4).

Paths are PS3.18's, relative to the DICOMweb service root, so the gateway proxies them unchanged. Absolute
URLs in responses (Retrieve URL, BulkDataURI) are built on the URL the client used: the gateway passes it
in ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-Prefix``.

A search the gateway forwards carries the studies its user may find in ``X-Emage-Search-Scope``
(:class:`~emage_common.access_contract.WireSearchScope`); the catalog applies it inside its query, at every
level. A search without the header is an internal caller's, unscoped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic_core import to_json

from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.query import InvalidQueryError, parse_search
from emage_catalog.service import CatalogService
from emage_catalog.settings import Settings
from emage_common.access_contract import SEARCH_SCOPE_HEADER, InvalidScopeError, WireSearchScope
from emage_common.events import uid_defect
from emage_common.web import problem_response, public_base_url

DICOM_JSON: Final = "application/dicom+json"
TOTAL_COUNT_HEADER: Final = "X-Total-Count"

router = APIRouter(tags=["DICOMweb"])

_ACCEPTABLE: Final = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
_UTF8_CHARSETS: Final = frozenset({"utf-8", "utf8", "iso_ir 192"})

_SEARCH_DESCRIPTION: Final = f"""
Matching follows PS3.4 §C.2.2.2 as PS3.18 §8.3.4.1 applies it: `{{attributeID}}={{value}}` with the attribute
named by keyword (`PatientID`) or tag (`00100020`). Single value matching; `*` and `?` wildcards (AE, CS, LO,
LT, PN, SH, ST, UC, UR, UT); person names matched case-insensitively; DA/TM/DT ranges `lower-upper`, `-upper`,
`lower-` (inclusive; a partial time stands for the whole period it names); UID lists separated by `,` or
`\\`; other value lists by `\\`. An empty value asks for the attribute to be returned. Unknown attributes,
attributes the catalog does not match on at this level, and values the attribute's VR does not allow are
rejected with 400.

`includefield` (repeatable, comma-separated, or `all`) adds attributes to the defaults of PS3.18
Tables 10.6.3-3 to -5. `limit` (at most the server maximum, else reduced with a `Warning` header saying how
many more results there are) and `offset` page the results, ordered most recent study first (Study Date and
Time descending), then by Series and Instance Number, with UIDs breaking ties: the order is stable.
`fuzzymatching=true` is accepted; only literal matching is performed, which a `Warning` header says.

With the **`{SEARCH_SCOPE_HEADER}`** header (set by the access gateway), only results of the studies the scope
permits are matched, counted and paged; a scope permitting no study gives an empty page.

The total number of matches is in the **`{TOTAL_COUNT_HEADER}`** response header. No match is a `200` with an
empty array (PS3.18 CP-2473, RFC 9110 §15.3.5).
"""

_SEARCH_PARAMETERS: Final = [
    {
        "name": "includefield",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Attributes to add to the defaults (keywords or tags, comma-separated), or `all`.",
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "Most results to return.",
    },
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Number of results to skip.",
    },
    {
        "name": "fuzzymatching",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "Accepted; matching stays literal.",
    },
    {
        "name": SEARCH_SCOPE_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "The studies the search may return (set by the access gateway); absent: unscoped.",
    },
]
_DATASETS_SCHEMA: Final = {"type": "array", "items": {"type": "object", "additionalProperties": True}}
_PROBLEM: Final[dict[str, Any]] = {"content": {"application/problem+json": {}}}
_SEARCH_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Matching results in the DICOM JSON Model (PS3.18 Annex F).",
        "content": {DICOM_JSON: {"schema": _DATASETS_SCHEMA}},
        "headers": {
            TOTAL_COUNT_HEADER: {
                "description": "Total number of matches, on all pages.",
                "schema": {"type": "integer"},
            },
            "Warning": {
                "description": "PS3.18 §8.3.4 warnings (reduced page size, fuzzy matching).",
                "schema": {"type": "string"},
            },
        },
    },
    400: {"description": "Invalid query: unknown attribute, bad value, bad UID, bad scope.", **_PROBLEM},
    406: {"description": "Only application/dicom+json (or application/json) is produced.", **_PROBLEM},
}
_METADATA_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The instances' metadata, BulkDataURIs absolute (PS3.18 §10.4.1.1.2).",
        "content": {DICOM_JSON: {"schema": _DATASETS_SCHEMA}},
    },
    400: {"description": "A UID in the path is not a valid UID.", **_PROBLEM},
    404: {"description": "No instance of this study, series or instance is catalogued.", **_PROBLEM},
    406: _SEARCH_RESPONSES[406],
}


def _request_id(request: Request) -> str | None:
    request_id = getattr(request.state, "request_id", None)
    return request_id if isinstance(request_id, str) else None


def _catalog(request: Request) -> CatalogService:
    catalog: CatalogService = request.app.state.catalog
    return catalog


def _negotiation_failure(request: Request) -> Response | None:
    """406 unless the client accepts DICOM JSON (PS3.18 §8.3.3: the ``accept`` parameter overrides)."""
    accept = request.query_params.get("accept")
    if accept is None:
        accept = ", ".join(request.headers.getlist("accept"))
    if accept.strip() and not any(_acceptable(media_range) for media_range in accept.split(",")):
        return problem_response(
            406,
            f"this resource is available as {DICOM_JSON} only",
            request_id=_request_id(request),
        )
    charset = request.query_params.get("charset")
    if charset is not None and charset.strip().lower() not in _UTF8_CHARSETS:
        return problem_response(406, "DICOM JSON is encoded in UTF-8 only", request_id=_request_id(request))
    return None


def _acceptable(media_range: str) -> bool:
    media_type, *parameters = (part.strip() for part in media_range.split(";"))
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q" and value.strip() in ("0", "0.0", "0.00", "0.000"):
            return False
    return media_type.lower() in _ACCEPTABLE


def _invalid_uid(request: Request, **uids: str | None) -> Response | None:
    for name, uid in uids.items():
        if uid is None:
            continue
        defect = uid_defect(uid)
        if defect is not None:
            return problem_response(
                400,
                f"the {name} in the path is not a UID (PS3.5 §9.1): {defect}",
                request_id=_request_id(request),
            )
    return None


async def _search(
    request: Request, level: QueryLevel, study: str | None = None, series: str | None = None
) -> Response:
    failure = _negotiation_failure(request) or _invalid_uid(request, study=study, series=series)
    if failure is not None:
        return failure
    settings: Settings = request.app.state.runtime.settings
    try:
        query = parse_search(
            request.query_params.multi_items(),
            level=level,
            study_instance_uid=study,
            series_instance_uid=series,
            max_limit=settings.qido_max_limit,
        )
    except InvalidQueryError as exc:
        return problem_response(400, str(exc), request_id=_request_id(request))
    scoped = _scope(request)
    if isinstance(scoped, Response):
        return scoped
    if scoped is not None:
        query = replace(query, scope=scoped)
    base_url = public_base_url(request)
    page = await _catalog(request).search(query, base_url)
    headers = {TOTAL_COUNT_HEADER: str(page.total)}
    warnings = []
    service = base_url.rstrip("/")
    remaining = page.remaining_after(query.offset)
    if query.limit_reduced and remaining:
        warnings.append(f'299 {service}: "There are {remaining} additional results that can be requested"')
    if query.fuzzy_matching_requested:
        warnings.append(
            f'299 {service}: "The fuzzymatching parameter is not supported. '
            'Only literal matching has been performed."'
        )
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return Response(to_json(page.results), media_type=DICOM_JSON, headers=headers)


def _scope(request: Request) -> WireSearchScope | Response | None:
    """The search scope the request carries, None for none, or the 400 problem of an invalid one.

    The gateway sends one header; several are refused rather than one of them picked.
    """
    headers = request.headers.getlist(SEARCH_SCOPE_HEADER)
    if not headers:
        return None
    if len(headers) > 1:
        return problem_response(
            400, f"the {SEARCH_SCOPE_HEADER} header is given more than once", request_id=_request_id(request)
        )
    try:
        return WireSearchScope.decode(headers[0])
    except InvalidScopeError as exc:
        return problem_response(400, str(exc), request_id=_request_id(request))


async def _metadata(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    failure = _negotiation_failure(request) or _invalid_uid(
        request, study=study, series=series, instance=instance
    )
    if failure is not None:
        return failure
    datasets = _catalog(request).metadata(public_base_url(request), study, series, instance)
    first = await anext(datasets, None)
    if first is None:
        await datasets.aclose()
        return problem_response(404, "no such instances in the catalog", request_id=_request_id(request))

    async def body() -> AsyncIterator[bytes]:
        # Streamed: the metadata of a study of thousands of instances never sits whole in memory.
        yield b"[" + to_json(first)
        async for dataset in datasets:
            yield b"," + to_json(dataset)
        yield b"]"

    return StreamingResponse(body(), media_type=DICOM_JSON)


_SEARCH: Final[dict[str, Any]] = {
    "description": _SEARCH_DESCRIPTION,
    "responses": _SEARCH_RESPONSES,
    "openapi_extra": {"parameters": _SEARCH_PARAMETERS},
    "response_class": Response,
}


@router.get("/studies", summary="Search for studies (QIDO-RS)", **_SEARCH)
async def search_for_studies(request: Request) -> Response:
    return await _search(request, QueryLevel.STUDY)


@router.get("/series", summary="Search for series in all studies (QIDO-RS)", **_SEARCH)
async def search_for_all_series(request: Request) -> Response:
    return await _search(request, QueryLevel.SERIES)


@router.get("/instances", summary="Search for instances in all studies (QIDO-RS)", **_SEARCH)
async def search_for_all_instances(request: Request) -> Response:
    return await _search(request, QueryLevel.INSTANCE)


@router.get("/studies/{study}/series", summary="Search for series of a study (QIDO-RS)", **_SEARCH)
async def search_for_series(request: Request, study: str) -> Response:
    return await _search(request, QueryLevel.SERIES, study)


@router.get("/studies/{study}/instances", summary="Search for instances of a study (QIDO-RS)", **_SEARCH)
async def search_for_study_instances(request: Request, study: str) -> Response:
    return await _search(request, QueryLevel.INSTANCE, study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="Search for instances of a series (QIDO-RS)",
    **_SEARCH,
)
async def search_for_instances(request: Request, study: str, series: str) -> Response:
    return await _search(request, QueryLevel.INSTANCE, study, series)


_METADATA: Final[dict[str, Any]] = {"responses": _METADATA_RESPONSES, "response_class": Response}


@router.get("/studies/{study}/metadata", summary="Retrieve study metadata (WADO-RS)", **_METADATA)
async def retrieve_study_metadata(request: Request, study: str) -> Response:
    return await _metadata(request, study)


@router.get(
    "/studies/{study}/series/{series}/metadata", summary="Retrieve series metadata (WADO-RS)", **_METADATA
)
async def retrieve_series_metadata(request: Request, study: str, series: str) -> Response:
    return await _metadata(request, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Retrieve instance metadata (WADO-RS)",
    **_METADATA,
)
async def retrieve_instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
    return await _metadata(request, study, series, instance)
