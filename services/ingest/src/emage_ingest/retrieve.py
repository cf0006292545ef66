"""WADO-RS: the bytes of stored instances, their frames, bulk data, rendered images, thumbnails and video.

Resources of PS3.18 §10.4 (Retrieve transaction), at the paths of Table 10.4.1-1 so the gateway proxies them
unchanged:

- ``/studies/{study}``, ``.../series/{series}``, ``.../instances/{instance}``: DICOM instances as
  ``multipart/related; type="application/dicom"`` (§10.4.1.1.1), streamed from the archive one instance after
  the other; Explicit VR Little Endian on request by decompressing one instance at a time.
- ``.../frames/{frameList}`` (§10.4.1.1.2): each frame cut from the archive with one ranged read, so the first
  frame leaves after two small S3 reads whatever the size of the instance.
  Frames of an MPEG-4 AVC/HEVC video are not separable: they are decoded (PyAV) and sent as Explicit VR Little
  Endian RGB, which is also what ``transfer-syntax=*`` gets (Cornerstone prefetches them in OHIF's video
  viewport); thumbnails and rendered frames of a video are made from the same decoded frames.
- ``.../bulk/{tag}``: the bulk data a metadata ``BulkDataURI`` points to (§10.4.1.1.4, PS3.18 Annex F.2.6).
- ``.../rendered`` and ``.../frames/{n}/rendered`` (§10.4.1.1.3, §9.5): JPEG, PNG or GIF through
  :mod:`emage_ingest.domain.rendering`; ``video/mp4`` for MPEG-4 AVC/HEVC instances held in an MP4
  container, with byte ranges so that a ``<video>`` element can seek. This is where OHIF's video viewport
  looks (the viewer's configuration fetches ``.../rendered`` with the token, Accept ``*/*``).
- ``.../thumbnail`` of a study, series, instance or frame (§10.4.1.1.5): a JPEG of at most 128 pixels a side.

Media types are negotiated per §8.7.5 (:mod:`emage_ingest.domain.frames`); the ``accept`` query parameter of
§8.3.3.1 takes the place of the ``Accept`` header. Errors are RFC 9457 problem details: an invalid UID or
parameter is 400, an unknown resource 404, an unsatisfiable media type 406.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from emage_common.events import uid_defect
from emage_common.s3 import ObjectNotFoundError
from emage_ingest.bootstrap import IngestComponents, ingest_components
from emage_ingest.domain.frames import (
    APPLICATION_DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HEVC_TRANSFER_SYNTAXES,
    MPEG4_AVC_TRANSFER_SYNTAXES,
    OCTET_STREAM,
    RENDERED_IMAGE_MEDIA_TYPES,
    UNCOMPRESSED_FRAME_TRANSFER_SYNTAXES,
    VIDEO_MP4,
    VIDEO_TRANSFER_SYNTAXES,
    BulkRepresentation,
    FrameOutOfRangeError,
    InvalidFrameListError,
    MalformedAcceptError,
    MediaRange,
    NotAcceptableError,
    RangeNotSatisfiableError,
    close_delimiter,
    is_iso_bmff,
    iso_bmff_box_size,
    multipart_content_type,
    negotiate_instances,
    negotiate_pixel_data,
    negotiate_rendered,
    parse_accept,
    parse_byte_range,
    parse_frame_list,
    part_preamble,
    stream_slices,
)
from emage_ingest.domain.model import ArchivedInstance, FrameLocation
from emage_ingest.domain.rendering import (
    Rendered,
    RenderingParameterError,
    RenderingParameters,
    UndecodableFrameError,
    bulk_data_value,
    can_decode,
    decode_video_frames,
    decompressed_size,
    frame_as_native_octets,
    render_frame,
    render_video_frame,
    rendering_parameters,
    thumbnail_viewport,
    transcode_to_explicit_vr_little_endian,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS"])

Components = Annotated[IngestComponents, Depends(ingest_components)]

PIXEL_DATA_TAG: Final = "7FE00010"
MAX_DECOMPRESSED_BYTES: Final = 1 << 30
"""Largest uncompressed pixel data we decompress for one instance: decompression holds it in memory."""
VIDEO_READ_BYTES: Final = 2 << 20
"""Bytes of a video read from the archive at a time while streaming a range."""
_SPOOL_IN_MEMORY_BYTES: Final = 8 << 20
READ_AHEAD_INSTANCES: Final = 4
"""Instances of a series or study retrieval fetched ahead of the one being sent, at most: the S3 store serves
several GETs at once much faster than one after the other (docs/performance.md, WADO-RS)."""
READ_AHEAD_MAX_BYTES: Final = 4 << 20
"""Instances sent as stored up to this size are fetched ahead whole (a retrieval holds at most
``READ_AHEAD_INSTANCES`` of them in memory); larger ones are streamed when their turn comes."""
_MAX_TOP_LEVEL_BOXES: Final = 64
_MAX_REMEMBERED_VIDEOS: Final = 4096
_VIDEO_LENGTHS: dict[str, int] = {}
"""MP4 length by SHA-256 of the instance: immutable for a given content, so safe to remember."""
_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}")

_STUDY: Final = "/studies/{study}"
_SERIES: Final = _STUDY + "/series/{series}"
_INSTANCE: Final = _SERIES + "/instances/{instance}"


# --- lookups ------------------------------------------------------------------------------------------------


def _check_uids(**uids: str) -> None:
    for name, value in uids.items():
        defect = uid_defect(value)
        if defect is not None:
            raise HTTPException(400, f"the {name} UID in the path is not a DICOM UID (PS3.5 §9.1): {defect}")


async def _instances(
    components: IngestComponents, study: str, series: str | None = None
) -> list[ArchivedInstance]:
    if series is None:
        _check_uids(study=study)
    else:
        _check_uids(study=study, series=series)
    records = await components.index.list(study, series)
    if not records:
        raise HTTPException(404, "no such series" if series is not None else "no such study")
    return records


async def _instance(components: IngestComponents, study: str, series: str, instance: str) -> ArchivedInstance:
    _check_uids(study=study, series=series, instance=instance)
    record = await components.index.get(instance)
    if record is None or record.study_instance_uid != study or record.series_instance_uid != series:
        raise HTTPException(404, "no such instance")
    return record


def _acceptable(request: Request) -> tuple[MediaRange, ...]:
    """The acceptable media types: the ``accept`` query parameter if given (PS3.18 §8.3.3.1), else the
    ``Accept`` header field (§8.7.5)."""
    values = request.query_params.getlist("accept") or request.headers.getlist("accept")
    try:
        return parse_accept(values)
    except MalformedAcceptError as exc:
        raise HTTPException(400, f"the acceptable media types are malformed: {exc}") from exc


def _not_acceptable(exc: NotAcceptableError) -> HTTPException:
    return HTTPException(406, str(exc))


def _image_frames(record: ArchivedInstance) -> Sequence[FrameLocation]:
    """The frame locations of an image, or 404 when the instance has no frames to cut."""
    if record.number_of_frames < 1 or not record.frames:
        raise HTTPException(404, "the instance has no pixel data")
    if record.transfer_syntax_uid in VIDEO_TRANSFER_SYNTAXES:
        raise HTTPException(
            406,
            "the pixel data is one video bit stream (PS3.5 §8.2.5-8.2.9): its frames are not separable; "
            "retrieve the instance's rendered resource as video/mp4",
        )
    return record.frames


def _decodable_video(record: ArchivedInstance) -> bool:
    """An MPEG-4 AVC or HEVC bit stream whose frames can be decoded here (PyAV) for frames, rendered frames
    and thumbnails."""
    return (
        record.transfer_syntax_uid in MPEG4_AVC_TRANSFER_SYNTAXES | HEVC_TRANSFER_SYNTAXES
        and bool(record.frames)
        and record.number_of_frames > 0
        and record.pixels is not None
    )


def _frame_numbers(record: ArchivedInstance, frame_list: str) -> tuple[int, ...]:
    count = record.number_of_frames if _decodable_video(record) else len(_image_frames(record))
    try:
        return parse_frame_list(frame_list, count)
    except InvalidFrameListError as exc:
        raise HTTPException(400, str(exc)) from exc
    except FrameOutOfRangeError as exc:
        raise HTTPException(404, str(exc)) from exc


# --- streaming helpers --------------------------------------------------------------------------------------


async def _primed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` with its first chunk already fetched: a missing object fails before any header is sent."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except ObjectNotFoundError as exc:
        logger.error("archive object missing for an indexed instance", extra={"error": str(exc)})
        raise HTTPException(404, "the instance's bytes are not in the archive") from exc

    async def replay() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return replay()


async def _pipelined(
    producers: Sequence[Callable[[], Awaitable[bytes]]], ahead: int = 1
) -> AsyncGenerator[bytes, None]:
    """The results of ``producers`` in order, up to ``ahead`` next ones already running while the current
    one is sent; what runs ahead is cancelled when the iteration ends early."""
    running: deque[asyncio.Future[bytes]] = deque()
    started = 0
    try:
        for index in range(len(producers)):
            if started == index:  # nothing running ahead (the first, or ahead=0)
                running.append(asyncio.ensure_future(producers[index]()))
                started += 1
            current = await running.popleft()
            while started < len(producers) and started <= index + ahead:
                running.append(asyncio.ensure_future(producers[started]()))
                started += 1
            yield current
    finally:
        for future in running:
            future.cancel()
        await asyncio.gather(*running, return_exceptions=True)


PartContent = bytes | AsyncIterator[bytes]


def _multipart(parts: AsyncIterator[tuple[str, PartContent]], part_media_type: str) -> StreamingResponse:
    """A ``multipart/related`` response (RFC 2387) of ``parts``, each a content type and its bytes (whole or
    as chunks), produced only as the client reads; the boundary is random for every response."""
    boundary = secrets.token_hex(16)

    async def body() -> AsyncIterator[bytes]:
        first = True
        async for content_type, content in parts:
            yield part_preamble(boundary, content_type, first=first)
            first = False
            if isinstance(content, bytes):
                yield content
            else:
                async for chunk in content:
                    yield chunk
        yield close_delimiter(boundary)

    return StreamingResponse(body(), media_type=multipart_content_type(part_media_type, boundary))


# --- DICOM instances (§10.4.1.1.1) --------------------------------------------------------------------------


def _can_transcode(stored: str, wanted: str) -> bool:
    return wanted == EXPLICIT_VR_LITTLE_ENDIAN and (
        stored in UNCOMPRESSED_FRAME_TRANSFER_SYNTAXES or can_decode(stored)
    )


async def _transcoded(components: IngestComponents, record: ArchivedInstance) -> AsyncIterator[bytes]:
    """The instance in Explicit VR Little Endian: spooled from the archive to a temporary file (in memory
    when small), re-encoded in a worker thread."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
        async for chunk in components.archive.stream(record):
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.seek, 0)
        transcoded = await asyncio.to_thread(transcode_to_explicit_vr_little_endian, spool)
    yield transcoded


def _instance_bytes(
    components: IngestComponents, record: ArchivedInstance, wanted: str | None
) -> AsyncIterator[bytes]:
    """The instance's Part 10 bytes: streamed as stored, or transcoded to ``wanted``. Nothing is read
    before the iterator is."""
    if wanted is None or wanted == record.transfer_syntax_uid:
        return components.archive.stream(record)
    return _transcoded(components, record)


async def _whole_instance(components: IngestComponents, record: ArchivedInstance) -> bytes:
    """The instance's Part 10 bytes as stored, read whole."""
    return b"".join([chunk async for chunk in components.archive.stream(record)])


async def _retrieve_instances(
    request: Request,
    components: IngestComponents,
    records: Sequence[ArchivedInstance],
    *,
    single_instance: bool,
) -> Response:
    try:
        representation = negotiate_instances(
            _acceptable(request),
            {record.transfer_syntax_uid for record in records},
            can_transcode=_can_transcode,
            single_instance=single_instance,
        )
    except NotAcceptableError as exc:
        raise _not_acceptable(exc) from exc
    wanted = representation.transfer_syntax
    if wanted is not None and any(
        record.transfer_syntax_uid != wanted and decompressed_size(record) > MAX_DECOMPRESSED_BYTES
        for record in records
    ):
        raise HTTPException(
            406, "an instance is too large to be decompressed here; ask for transfer-syntax=*"
        )
    try:
        first = await _primed(_instance_bytes(components, records[0], wanted))
    except UndecodableFrameError as exc:
        raise HTTPException(406, f"the instance cannot be decompressed here: {exc}") from exc
    if not representation.multipart:
        syntax = wanted or records[0].transfer_syntax_uid
        return StreamingResponse(first, media_type=f"{APPLICATION_DICOM}; transfer-syntax={syntax}")

    def media_type(record: ArchivedInstance) -> str:
        return f"{APPLICATION_DICOM}; transfer-syntax={wanted or record.transfer_syntax_uid}"

    async def parts() -> AsyncIterator[tuple[str, PartContent]]:
        yield media_type(records[0]), first
        # Read ahead only once the first instance is sent: its first bytes do not wait behind other reads.
        rest = records[1:]
        whole = [
            wanted in (None, record.transfer_syntax_uid) and record.size_bytes <= READ_AHEAD_MAX_BYTES
            for record in rest
        ]
        ahead = _pipelined(
            [
                partial(_whole_instance, components, record)
                for record, read_whole in zip(rest, whole, strict=True)
                if read_whole
            ],
            READ_AHEAD_INSTANCES,
        )
        try:
            for record, read_whole in zip(rest, whole, strict=True):
                content = await anext(ahead) if read_whole else _instance_bytes(components, record, wanted)
                yield media_type(record), content
        finally:
            await ahead.aclose()

    return _multipart(parts(), APPLICATION_DICOM)


@router.get(_STUDY, summary="Retrieve a study's instances (PS3.18 §10.4)")
async def retrieve_study(request: Request, components: Components, study: str) -> Response:
    records = await _instances(components, study)
    return await _retrieve_instances(request, components, records, single_instance=False)


@router.get(_SERIES, summary="Retrieve a series' instances (PS3.18 §10.4)")
async def retrieve_series(request: Request, components: Components, study: str, series: str) -> Response:
    records = await _instances(components, study, series)
    return await _retrieve_instances(request, components, records, single_instance=False)


@router.get(_INSTANCE, summary="Retrieve an instance (PS3.18 §10.4)")
async def retrieve_instance(
    request: Request, components: Components, study: str, series: str, instance: str
) -> Response:
    record = await _instance(components, study, series, instance)
    return await _retrieve_instances(request, components, [record], single_instance=True)


# --- frames and bulk data (§10.4.1.1.2, §10.4.1.1.4) --------------------------------------------------------


async def _stored_frame(components: IngestComponents, record: ArchivedInstance, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: one ranged read of the archive, fragments joined."""
    location = record.frames[number - 1]
    try:
        span = await components.archive.read_range(record, location.offset, location.end)
    except ObjectNotFoundError as exc:
        logger.error("archive object missing for an indexed instance", extra={"error": str(exc)})
        raise HTTPException(404, "the instance's bytes are not in the archive") from exc
    return location.extract(span)


async def _frame_in(
    components: IngestComponents, record: ArchivedInstance, number: int, decode: bool
) -> bytes:
    frame = await _stored_frame(components, record, number)
    if not decode:
        return frame
    try:
        return await asyncio.to_thread(frame_as_native_octets, frame, record, record.transfer_syntax_uid)
    except UndecodableFrameError as exc:
        raise HTTPException(406, f"the frame cannot be decompressed here: {exc}") from exc


def _negotiate_pixels(
    request: Request, record: ArchivedInstance, *, allow_single_part: bool = False
) -> BulkRepresentation:
    try:
        return negotiate_pixel_data(
            _acceptable(request),
            record.transfer_syntax_uid,
            can_decode=can_decode(record.transfer_syntax_uid),
            allow_single_part=allow_single_part,
        )
    except NotAcceptableError as exc:
        raise _not_acceptable(exc) from exc


async def _frames_response(
    components: IngestComponents,
    record: ArchivedInstance,
    numbers: Sequence[int],
    representation: BulkRepresentation,
) -> Response:
    producers = [partial(_frame_in, components, record, number, representation.decode) for number in numbers]
    # The first frame is read before answering, so a missing object or undecodable frame is a clean error
    # rather than a truncated multipart body; the others are read one ahead of the client.
    first = await producers[0]()

    async def parts() -> AsyncIterator[tuple[str, PartContent]]:
        yield representation.part_content_type, first
        async for frame in _pipelined(producers[1:]):
            yield representation.part_content_type, frame

    return _multipart(parts(), representation.media_type)


@router.get(_INSTANCE + "/frames/{frame_list}", summary="Retrieve frames (PS3.18 §10.4.1.1.2)")
async def retrieve_frames(
    request: Request, components: Components, study: str, series: str, instance: str, frame_list: str
) -> Response:
    record = await _instance(components, study, series, instance)
    numbers = _frame_numbers(record, frame_list)
    if _decodable_video(record):
        return await _video_frames_response(request, components, record, numbers)
    representation = _negotiate_pixels(request, record)
    return await _frames_response(components, record, numbers, representation)


async def _video_frames_response(
    request: Request, components: IngestComponents, record: ArchivedInstance, numbers: Sequence[int]
) -> Response:
    """Frames of a video, decoded: a video bit stream has no separable frames (PS3.5 §8.2.5-§8.2.9), so each
    frame is offered only as Explicit VR Little Endian octets (RGB, PS3.18 Table 8.7.3-4), which is also
    what ``transfer-syntax=*`` gets. The whole stream is to be retrieved as bulk data or rendered video/mp4.
    """
    try:
        negotiate_pixel_data(_acceptable(request), EXPLICIT_VR_LITTLE_ENDIAN, can_decode=False)
    except NotAcceptableError as exc:
        raise HTTPException(
            406,
            f"{exc}: the frames of a video are decoded; the video itself is its bulk data or rendered "
            "resource (video/mp4)",
        ) from exc
    decoded = await _decoded_video_frames(components, record, numbers)
    part_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"

    async def parts() -> AsyncIterator[tuple[str, PartContent]]:
        for number in numbers:
            yield part_type, decoded[number].tobytes()

    return _multipart(parts(), OCTET_STREAM)


async def _decoded_video_frames(
    components: IngestComponents, record: ArchivedInstance, numbers: Sequence[int]
) -> dict[int, Rendered]:
    if decompressed_size(record) > MAX_DECOMPRESSED_BYTES:
        raise HTTPException(406, "the video is too large to be decoded here")
    pieces = _video_pieces(record)
    total = await _video_length(components, record)
    chunks = await _primed(_video_bytes(components, record, pieces, 0, total))
    video = b"".join([chunk async for chunk in chunks])
    try:
        return await asyncio.to_thread(decode_video_frames, video, numbers)
    except UndecodableFrameError as exc:
        raise HTTPException(406, f"the video cannot be decoded here: {exc}") from exc


@router.get(_INSTANCE + "/bulk/{tag}", summary="Retrieve bulk data (PS3.18 §10.4.1.1.4)")
async def retrieve_bulk_data(
    request: Request, components: Components, study: str, series: str, instance: str, tag: str
) -> Response:
    """The value a metadata ``BulkDataURI`` points to (``.../bulk/{tag}``, a top-level attribute).

    Pixel Data of an image is returned frame by frame, one part each, as :func:`retrieve_frames` would
    (compressed bulk data is "encoded as individual frames", PS3.18 §8.7.3.3.2); a video bit stream is one
    part, or single part ``video/mp4`` when that is asked (OHIF's video viewport); any other attribute is one
    ``application/octet-stream`` part.
    """
    if _TAG.fullmatch(tag) is None:
        raise HTTPException(400, "the bulk data tag is eight hexadecimal digits (group then element)")
    record = await _instance(components, study, series, instance)
    if tag.upper() == PIXEL_DATA_TAG:
        if record.transfer_syntax_uid in VIDEO_TRANSFER_SYNTAXES and record.frames:
            return await _video_bulk_data(request, components, record)
        frames = _image_frames(record)
        representation = _negotiate_pixels(request, record)
        return await _frames_response(components, record, range(1, len(frames) + 1), representation)
    return await _attribute_bulk_data(request, components, record, int(tag, 16))


async def _video_bulk_data(
    request: Request, components: IngestComponents, record: ArchivedInstance
) -> Response:
    representation = _negotiate_pixels(request, record, allow_single_part=True)
    if not representation.multipart:
        return await _video_response(request, components, record)
    pieces = _video_pieces(record)
    total = await _video_length(components, record)

    async def parts() -> AsyncIterator[tuple[str, PartContent]]:
        yield representation.part_content_type, _video_bytes(components, record, pieces, 0, total)

    return _multipart(parts(), representation.media_type)


async def _attribute_bulk_data(
    request: Request, components: IngestComponents, record: ArchivedInstance, tag: int
) -> Response:
    try:
        negotiate_pixel_data(_acceptable(request), EXPLICIT_VR_LITTLE_ENDIAN, can_decode=False)
    except NotAcceptableError as exc:
        raise _not_acceptable(exc) from exc
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
        async for chunk in await _primed(components.archive.stream(record)):
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.seek, 0)
        value = await asyncio.to_thread(bulk_data_value, spool, tag)
    if value is None:
        raise HTTPException(404, "the instance has no such bulk data attribute")

    async def parts() -> AsyncIterator[tuple[str, PartContent]]:
        yield OCTET_STREAM, value

    return _multipart(parts(), OCTET_STREAM)


# --- video (PS3.5 §8.2.8; RFC 9110 §14 ranges) --------------------------------------------------------------


def _video_pieces(record: ArchivedInstance) -> list[tuple[int, int]]:
    location = record.frames[0]
    return [(piece.offset, piece.length) for piece in location.fragments] or [
        (location.offset, location.length)
    ]


async def _is_mp4(components: IngestComponents, record: ArchivedInstance) -> bool:
    if (
        record.transfer_syntax_uid not in MPEG4_AVC_TRANSFER_SYNTAXES | HEVC_TRANSFER_SYNTAXES
        or not record.frames
    ):
        return False
    offset, length = _video_pieces(record)[0]
    head = await components.archive.read_range(record, offset, offset + min(length, 8))
    return is_iso_bmff(head)


async def _video_bytes(
    components: IngestComponents,
    record: ArchivedInstance,
    pieces: Sequence[tuple[int, int]],
    start: int,
    end: int,
) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of the video bit stream, read from the archive a few MiB at a time."""
    reads: list[tuple[int, int]] = []
    for slice_start, slice_end in stream_slices(pieces, start, end):
        reads.extend(
            (offset, min(offset + VIDEO_READ_BYTES, slice_end))
            for offset in range(slice_start, slice_end, VIDEO_READ_BYTES)
        )
    producers = [partial(components.archive.read_range, record, start, stop) for start, stop in reads]
    async for chunk in _pipelined(producers):
        yield chunk


async def _video_length(components: IngestComponents, record: ArchivedInstance) -> int:
    """Length of the MP4 file in the fragments, without the pad byte that gives the last fragment an even
    length (PS3.5 §A.4): the top-level boxes are walked, a 16-byte read each, and the result remembered."""
    pieces = _video_pieces(record)
    total = sum(length for _, length in pieces)
    known = _VIDEO_LENGTHS.get(record.sha256)
    if known is not None:
        return known
    position = 0
    for _ in range(_MAX_TOP_LEVEL_BOXES):
        if total - position < 8:
            break
        head = b"".join(
            [chunk async for chunk in _video_bytes(components, record, pieces, position, position + 16)]
        )
        size = iso_bmff_box_size(head)
        if size is None or (position == 0 and not is_iso_bmff(head)):
            return total
        position += size
    length = position if total - 1 <= position <= total else total
    if len(_VIDEO_LENGTHS) >= _MAX_REMEMBERED_VIDEOS:
        _VIDEO_LENGTHS.pop(next(iter(_VIDEO_LENGTHS)))
    _VIDEO_LENGTHS[record.sha256] = length
    return length


async def _video_response(
    request: Request, components: IngestComponents, record: ArchivedInstance
) -> Response:
    """The MP4 file that the encapsulated fragments form (PS3.5 §8.2.8), honouring a single byte range
    (RFC 9110 §14.2) so that a browser can seek; ``If-Range`` with another entity tag gets the whole file.

    PS3.5 §8.2.8 leaves the container unconstrained: a bit stream in another one (an Annex B elementary
    stream, MPEG-2 TS) is not an MP4 file and is not labelled as one.
    """
    if not await _is_mp4(components, record):
        raise HTTPException(406, "this video bit stream is not held in an MP4 container")
    pieces = _video_pieces(record)
    total = await _video_length(components, record)
    etag = f'"{record.sha256}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        range_header = None
    try:
        wanted = parse_byte_range(range_header, total)
    except RangeNotSatisfiableError as exc:
        raise HTTPException(416, str(exc), headers={"Content-Range": f"bytes */{total}"}) from exc
    start, end = wanted or (0, total)
    headers["Content-Length"] = str(end - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    body = await _primed(_video_bytes(components, record, pieces, start, end))
    return StreamingResponse(body, status_code=status, media_type=VIDEO_MP4, headers=headers)


# --- rendered and thumbnails (§10.4.1.1.3, §10.4.1.1.5) -----------------------------------------------------


def _parameters(request: Request) -> RenderingParameters:
    query = request.query_params
    try:
        return rendering_parameters(query.get("window"), query.get("viewport"), query.get("quality"))
    except RenderingParameterError as exc:
        raise HTTPException(400, str(exc)) from exc


def _renderable(record: ArchivedInstance) -> bool:
    if _decodable_video(record):
        return True
    return (
        record.number_of_frames > 0
        and bool(record.frames)
        and record.pixels is not None
        and can_decode(record.transfer_syntax_uid)
    )


async def _rendered_image(
    components: IngestComponents,
    record: ArchivedInstance,
    number: int,
    media_type: str,
    parameters: RenderingParameters,
) -> Response:
    if _decodable_video(record):
        pixels = (await _decoded_video_frames(components, record, [number]))[number]
        image = await asyncio.to_thread(render_video_frame, pixels, record, media_type, parameters)
        return Response(image, media_type=media_type)
    frame = await _stored_frame(components, record, number)
    try:
        image = await asyncio.to_thread(
            render_frame, frame, record, record.transfer_syntax_uid, media_type, parameters
        )
    except UndecodableFrameError as exc:
        raise HTTPException(406, f"the frame cannot be rendered here: {exc}") from exc
    return Response(image, media_type=media_type)


async def _render(
    request: Request, components: IngestComponents, record: ArchivedInstance, number: int | None
) -> Response:
    parameters = _parameters(request)
    offered: tuple[str, ...] = ()
    if record.transfer_syntax_uid in VIDEO_TRANSFER_SYNTAXES:
        if number is None:
            if await _is_mp4(components, record):
                offered = (VIDEO_MP4,)
        elif _decodable_video(record):
            # A frame of a video is an image: decoded, then rendered like any other.
            offered = RENDERED_IMAGE_MEDIA_TYPES
    elif _renderable(record):
        offered = RENDERED_IMAGE_MEDIA_TYPES
    if not offered:
        raise HTTPException(406, "this instance has no rendered representation here")
    try:
        media_type = negotiate_rendered(_acceptable(request), offered)
    except NotAcceptableError as exc:
        raise _not_acceptable(exc) from exc
    if media_type == VIDEO_MP4:
        return await _video_response(request, components, record)
    return await _rendered_image(components, record, number or 1, media_type, parameters)


@router.get(_INSTANCE + "/rendered", summary="Retrieve a rendered instance (PS3.18 §10.4.1.1.3)")
async def retrieve_rendered_instance(
    request: Request, components: Components, study: str, series: str, instance: str
) -> Response:
    """The first frame of an image rendered as JPEG (default), PNG or GIF; an MP4 video as ``video/mp4``."""
    record = await _instance(components, study, series, instance)
    return await _render(request, components, record, None)


@router.get(
    _INSTANCE + "/frames/{frame_list}/rendered", summary="Retrieve a rendered frame (PS3.18 §10.4.1.1.3)"
)
async def retrieve_rendered_frame(
    request: Request, components: Components, study: str, series: str, instance: str, frame_list: str
) -> Response:
    record = await _instance(components, study, series, instance)
    numbers = _frame_numbers(record, frame_list)
    if len(numbers) != 1:
        raise HTTPException(400, "frames are rendered one at a time: name a single frame")
    return await _render(request, components, record, numbers[0])


def _representative(records: Sequence[ArchivedInstance]) -> ArchivedInstance:
    """The middle renderable instance of the first series that has one (index order: series, then
    Instance Number), or 404."""
    by_series: dict[str, list[ArchivedInstance]] = {}
    for record in records:
        if _renderable(record):
            by_series.setdefault(record.series_instance_uid, []).append(record)
    if not by_series:
        raise HTTPException(404, "no instance here has an image to make a thumbnail of")
    first_series = next(iter(by_series.values()))
    return first_series[(len(first_series) - 1) // 2]


async def _thumbnail(
    request: Request, components: IngestComponents, record: ArchivedInstance, number: int | None = None
) -> Response:
    if not _renderable(record) or record.pixels is None:
        raise HTTPException(404, "the instance has no image to make a thumbnail of")
    parameters = _parameters(request)
    if parameters.viewport is None:
        parameters = RenderingParameters(
            window=parameters.window,
            viewport=thumbnail_viewport(record.pixels.rows, record.pixels.columns),
            quality=parameters.quality,
        )
    try:
        media_type = negotiate_rendered(_acceptable(request), RENDERED_IMAGE_MEDIA_TYPES)
    except NotAcceptableError as exc:
        raise _not_acceptable(exc) from exc
    middle = (record.number_of_frames + 1) // 2
    return await _rendered_image(components, record, number or middle, media_type, parameters)


@router.get(_STUDY + "/thumbnail", summary="Retrieve a study thumbnail (PS3.18 §10.4.1.1.5)")
async def retrieve_study_thumbnail(request: Request, components: Components, study: str) -> Response:
    records = await _instances(components, study)
    return await _thumbnail(request, components, _representative(records))


@router.get(_SERIES + "/thumbnail", summary="Retrieve a series thumbnail (PS3.18 §10.4.1.1.5)")
async def retrieve_series_thumbnail(
    request: Request, components: Components, study: str, series: str
) -> Response:
    records = await _instances(components, study, series)
    return await _thumbnail(request, components, _representative(records))


@router.get(_INSTANCE + "/thumbnail", summary="Retrieve an instance thumbnail (PS3.18 §10.4.1.1.5)")
async def retrieve_instance_thumbnail(
    request: Request, components: Components, study: str, series: str, instance: str
) -> Response:
    record = await _instance(components, study, series, instance)
    return await _thumbnail(request, components, record)


@router.get(
    _INSTANCE + "/frames/{frame_list}/thumbnail", summary="Retrieve a frame thumbnail (PS3.18 §10.4.1.1.5)"
)
async def retrieve_frame_thumbnail(
    request: Request, components: Components, study: str, series: str, instance: str, frame_list: str
) -> Response:
    record = await _instance(components, study, series, instance)
    numbers = _frame_numbers(record, frame_list)
    if len(numbers) != 1:
        raise HTTPException(400, "a thumbnail is of a single frame")
    return await _thumbnail(request, components, record, numbers[0])
