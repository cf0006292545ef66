"""STOW-RS: ``POST /studies`` and ``POST /studies/{study}`` (PS3.18 §10.5, Store Transaction).

The request is ``multipart/related; type="application/dicom"`` with one DICOM Part 10 object per part
(PS3.18 §10.5.1.1). Parts are stored as they arrive, a few concurrently, while the rest of the body is
still being received; each part's outcome becomes an item of the response (PS3.18 §10.5.3):

* ``ReferencedSOPSequence`` (0008,1199) for each stored instance, with its ``RetrieveURL`` and, when it
  was stored with a warning, ``WarningReason`` (0008,1196);
* ``FailedSOPSequence`` (0008,1198) for each instance not stored, with ``FailureReason`` (0008,1197);
* ``RetrieveURL`` (0008,1190) of the study when the request concerns one study.

HTTP status (PS3.18 Table 10.5.3-1): 200 every instance stored without warning, 202 some failed or carry
a warning, 409 none stored. A problem with the message itself gets 400 (malformed or truncated), 413 (too
large) or 415 (not ``multipart/related; type="application/dicom"``) as ``application/problem+json``; an
``Warning: 299`` header (PS3.18 §8.10.3) explains each failure in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from emage_common.access_contract import FACILITY_HEADER
from emage_common.events import uid_defect
from emage_common.web import problem_response, public_base_url
from emage_ingest.adapters.multipart import (
    BodyPart,
    MultipartError,
    MultipartReader,
    parse_media_type,
    related_boundary,
)
from emage_ingest.bootstrap import IngestComponents, ingest_components
from emage_ingest.service import StoreOutcome, StoreRequest

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
_ACCEPTABLE: Final = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
_FINESS: Final = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}")
_MAX_WARNING_HEADERS: Final = 20

router = APIRouter(tags=["STOW-RS"])

Components = Annotated[IngestComponents, Depends(ingest_components)]


def _element(vr: str, *values: Any) -> dict[str, Any]:
    present = [value for value in values if value is not None]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _accepts_dicom_json(accept: str | None) -> bool:
    """Whether the Accept header (RFC 9110 §12.5.1) admits ``application/dicom+json``."""
    if not accept:
        return True
    for media_range in accept.split(","):
        try:
            media_type = parse_media_type(media_range)
        except ValueError:
            continue
        try:
            quality = float(media_type.parameters.get("q", "1"))
        except ValueError:
            continue
        if media_type.essence in _ACCEPTABLE and quality > 0:
            return True
    return False


class _StoreResponse:
    """Builds the Store Instances Response Module (PS3.18 §10.5.3) from the outcomes, in part order."""

    def __init__(self, base_url: str, study: str | None) -> None:
        self._base_url = base_url.rstrip("/") + "/"
        self._study = study

    def _study_url(self, study: str) -> str:
        return f"{self._base_url}studies/{study}"

    def build(self, outcomes: list[StoreOutcome]) -> tuple[int, dict[str, Any]]:
        referenced = []
        failed = []
        studies = {outcome.study_instance_uid for outcome in outcomes if outcome.succeeded}
        for outcome in outcomes:
            if outcome.succeeded:
                url = (
                    f"{self._study_url(str(outcome.study_instance_uid))}/series/{outcome.series_instance_uid}"
                    f"/instances/{outcome.sop_instance_uid}"
                )
                item = {
                    "00081150": _element("UI", outcome.sop_class_uid),
                    "00081155": _element("UI", outcome.sop_instance_uid),
                    "00081190": _element("UR", url),
                }
                if outcome.warning_reason is not None:
                    item["00081196"] = _element("US", outcome.warning_reason)
                referenced.append(item)
            else:
                failed.append(
                    {
                        "00081150": _element("UI", outcome.sop_class_uid),
                        "00081155": _element("UI", outcome.sop_instance_uid),
                        "00081197": _element("US", outcome.failure_reason),
                    }
                )
        study = self._study or (next(iter(studies)) if len(studies) == 1 else None)
        body: dict[str, Any] = {"00081190": _element("UR", self._study_url(study) if study else None)}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        if referenced:
            body["00081199"] = {"vr": "SQ", "Value": referenced}
        if not referenced:
            return 409, body
        warned = any(outcome.warning_reason is not None for outcome in outcomes)
        return (202 if failed or warned else 200), body


def _warnings(outcomes: Iterable[StoreOutcome]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for position, outcome in enumerate(outcomes, start=1):
        if outcome.status in ("failed", "replaced", "duplicate") and len(headers) < _MAX_WARNING_HEADERS:
            text = f"part {position}: {outcome.detail}".replace("\\", "\\\\").replace('"', '\\"')
            headers.append(("warning", f'299 emage-ingest "{text}"'))
    return headers


async def _store_part(
    components: IngestComponents, part: BodyPart, request: StoreRequest, slots: asyncio.Semaphore
) -> StoreOutcome:
    try:
        return await components.service.store_instance(part.path, request)
    finally:
        slots.release()
        await asyncio.to_thread(part.path.unlink, True)


async def _store_instances(request: Request, study: str | None, components: IngestComponents) -> Response:
    settings = components.settings
    if not _accepts_dicom_json(request.headers.get("accept")):
        return problem_response(406, f"the Store Instances Response is available as {DICOM_JSON} only")
    if study is not None and (defect := uid_defect(study)) is not None:
        return problem_response(400, f"the study in the path is not a UID (PS3.5 §9.1): {defect}")
    facility = request.headers.get(FACILITY_HEADER, settings.default_facility)
    if _FINESS.fullmatch(facility) is None:
        return problem_response(400, f"{FACILITY_HEADER} is not a FINESS number (9 characters)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.stow_max_request_bytes:
        return problem_response(413, f"the request body exceeds {settings.stow_max_request_bytes} bytes")
    try:
        boundary = related_boundary(request.headers.get("content-type"), required_type=DICOM)
    except MultipartError as invalid:
        return problem_response(invalid.status, invalid.detail)

    store_request = StoreRequest(source="stow", facility_finess=facility, expected_study_uid=study)
    slots = asyncio.Semaphore(settings.stow_parallel_stores)
    tasks: list[asyncio.Task[StoreOutcome]] = []
    failure: MultipartError | None = None
    spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="stow-", dir=settings.stow_spool_dir))
    try:
        reader = MultipartReader(
            request.stream(),
            boundary,
            spool_dir=spool,
            max_part_bytes=settings.stow_max_part_bytes,
            max_body_bytes=settings.stow_max_request_bytes,
        )
        try:
            async for part in reader.parts():
                part_type = part.content_type
                if part_type is not None and _essence(part_type) != DICOM:
                    await asyncio.to_thread(part.path.unlink, True)
                    raise MultipartError(415, f"part {part.index + 1} is {part_type}, not {DICOM}")
                await slots.acquire()
                tasks.append(asyncio.create_task(_store_part(components, part, store_request, slots)))
        except MultipartError as raised:
            failure = raised
        except ClientDisconnect:
            failure = MultipartError(400, "the client disconnected before the end of the body")
        # Parts already received are stored to the end even if the request fails or is abandoned.
        outcomes = list(await asyncio.shield(asyncio.gather(*tasks)))
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)

    if failure is not None:
        return _message_problem(failure, outcomes)
    if not outcomes:
        return problem_response(400, "the multipart body has no part")
    base_url = settings.dicomweb_base_url or public_base_url(request)
    status, body = _StoreResponse(base_url, study).build(outcomes)
    response = JSONResponse(body, status_code=status, media_type=DICOM_JSON)
    for name, value in _warnings(outcomes):
        response.headers.append(name, value)
    return response


def _essence(media_type: str) -> str | None:
    with contextlib.suppress(ValueError):
        return parse_media_type(media_type).essence
    return None


def _message_problem(error: MultipartError, outcomes: list[StoreOutcome]) -> Response:
    """The message failed after ``outcomes`` were settled: say so, and list what is durably stored."""
    stored = [
        {"sop_instance_uid": outcome.sop_instance_uid, "study_instance_uid": outcome.study_instance_uid}
        for outcome in outcomes
        if outcome.succeeded
    ]
    detail = error.detail
    if stored:
        detail += f"; the {len(stored)} complete part(s) before it were stored"
    return problem_response(error.status, detail, extensions={"stored": stored} if stored else None)


@router.post(
    "/studies",
    summary="Store instances (STOW-RS, PS3.18 §10.5)",
    response_class=JSONResponse,
    responses={200: {"content": {DICOM_JSON: {}}}, 202: {}, 400: {}, 406: {}, 409: {}, 413: {}, 415: {}},
)
async def store_instances(request: Request, components: Components) -> Response:
    """Store the DICOM instances of a ``multipart/related; type="application/dicom"`` body."""
    return await _store_instances(request, None, components)


@router.post(
    "/studies/{study}",
    summary="Store instances of one study (STOW-RS, PS3.18 §10.5)",
    response_class=JSONResponse,
    responses={200: {"content": {DICOM_JSON: {}}}, 202: {}, 400: {}, 406: {}, 409: {}, 413: {}, 415: {}},
)
async def store_study_instances(study: str, request: Request, components: Components) -> Response:
    """Store instances that must belong to ``study``; any other is refused with Failure Reason 0xA900."""
    return await _store_instances(request, study, components)
