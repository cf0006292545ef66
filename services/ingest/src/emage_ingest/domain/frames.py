"""Frames, transfer syntaxes and media types of WADO-RS responses: the pure rules, no I/O.

What a retrieve answers is decided here from the request's acceptable media types (PS3.18 §8.7.5, with the
``accept`` query parameter of §8.3.3.1 taking the place of the ``Accept`` header) and what was stored:

- DICOM instances (Table 8.7.3-2): ``multipart/related; type="application/dicom"``, in the stored transfer
  syntax unless a ``transfer-syntax`` parameter names another one we can produce (Explicit VR Little
  Endian, by decompressing).
- Bulk data and frames (Tables 8.7.3-4 and 8.7.3-5): uncompressed pixel data as
  ``application/octet-stream`` in Explicit VR Little Endian; encapsulated pixel data as its compressed
  media type (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/dicom-rle``,
  ``video/mpeg2``, ``video/mp4``, ``video/H265``) with the stored transfer syntax, or decompressed to
  ``application/octet-stream`` when asked.
- Rendered resources (§8.7.4, Table 8.7.4-1): ``image/jpeg`` by default, ``image/png``, ``image/gif``, and
  ``video/mp4`` for video instances.

Also here: the frame list of §10.4.1.1.2 (``frames/{frameList}``) and the ``multipart/related`` framing of
RFC 2387 / RFC 2046 §5.1 that every multipart payload of §8.6.1 uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.98"

APPLICATION_DICOM: Final = "application/dicom"
OCTET_STREAM: Final = "application/octet-stream"
MULTIPART_RELATED: Final = "multipart/related"
IMAGE_JPEG: Final = "image/jpeg"
IMAGE_PNG: Final = "image/png"
IMAGE_GIF: Final = "image/gif"
VIDEO_MP4: Final = "video/mp4"

UNCOMPRESSED_FRAME_TRANSFER_SYNTAXES: Final = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)
"""Transfer syntaxes whose stored frame bytes already are Explicit VR Little Endian bulk data: the value of
native Pixel Data is the same byte for byte in Implicit and Explicit VR Little Endian (PS3.5 §8.2), and each
fragment of Encapsulated Uncompressed is one such frame (PS3.5 §A.4.11). Ingest stores no other native
syntax (big endian is retired, deflate hides frame offsets)."""

MPEG4_AVC_TRANSFER_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
        "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
        "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
        "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
        "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    }
)
HEVC_TRANSFER_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
        "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    }
)
MPEG2_TRANSFER_SYNTAXES: Final = frozenset({"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"})
VIDEO_TRANSFER_SYNTAXES: Final = (
    MPEG2_TRANSFER_SYNTAXES | MPEG4_AVC_TRANSFER_SYNTAXES | HEVC_TRANSFER_SYNTAXES
)
"""Transfer syntaxes whose encapsulated Pixel Data is one video bit stream, not frame-addressable
(PS3.5 §8.2.5-§8.2.9, §A.4.5-§A.4.7): frames cannot be cut out of it without decoding the stream."""

COMPRESSED_MEDIA_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "1.2.840.10008.1.2.4.50": IMAGE_JPEG,  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51": IMAGE_JPEG,  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57": IMAGE_JPEG,  # JPEG Lossless, Non-Hierarchical (Process 14)
        "1.2.840.10008.1.2.4.70": IMAGE_JPEG,  # JPEG Lossless, First-Order Prediction (SV1)
        "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
        "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
        "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2 Multi-component
        "1.2.840.10008.1.2.4.201": "image/jphc",  # High-Throughput JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.202": "image/jphc",  # High-Throughput JPEG 2000 with RPCL (Lossless Only)
        "1.2.840.10008.1.2.4.203": "image/jphc",  # High-Throughput JPEG 2000
        "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
        **dict.fromkeys(MPEG2_TRANSFER_SYNTAXES, "video/mpeg2"),
        **dict.fromkeys(MPEG4_AVC_TRANSFER_SYNTAXES, VIDEO_MP4),
        **dict.fromkeys(HEVC_TRANSFER_SYNTAXES, "video/H265"),
    }
)
"""Compressed bulk data media type of each encapsulated transfer syntax, PS3.18 Table 8.7.3-5."""

RENDERED_IMAGE_MEDIA_TYPES: Final = (IMAGE_JPEG, IMAGE_PNG, IMAGE_GIF)
"""Rendered media types of single-frame and multi-frame images, default first (PS3.18 Table 8.7.4-1)."""

_RFC9110_TCHARS: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_RANGE: Final = re.compile(rf"\s*({_RFC9110_TCHARS})/({_RFC9110_TCHARS})\s*")
_PARAMETER: Final = re.compile(
    # Unquoted values are read up to the next ";" or "," rather than as strict tokens: user agents send
    # ``type=application/octet-stream`` unquoted although "/" is no token character.
    rf"\s*;\s*({_RFC9110_TCHARS})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;,\s]+)\s*"
)
_QUALITY: Final = re.compile(r"(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)")
_FRAME_NUMBER: Final = re.compile(r"[1-9][0-9]{0,8}")


class MalformedAcceptError(ValueError):
    """The ``Accept`` header (or ``accept`` query parameter) is not a list of media ranges (RFC 9110)."""


class NotAcceptableError(LookupError):
    """No representation of the resource matches the acceptable media types (PS3.18 §8.7.5: 406)."""


class InvalidFrameListError(ValueError):
    """The frame list is not a comma-separated list of distinct positive frame numbers (400)."""


class FrameOutOfRangeError(LookupError):
    """A frame number is beyond the instance's Number of Frames: no such frame resource (404)."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an ``Accept`` field: ``type/subtype``, its parameters (names lower-cased) and weight."""

    type: str
    subtype: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    def matches(self, media_type: str) -> bool:
        """Whether this range covers ``media_type`` (``*/*``, ``type/*`` or the exact type)."""
        kind, _, subtype = media_type.lower().partition("/")
        if self.type == "*":
            return True
        return self.type == kind and self.subtype in ("*", subtype)

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter (``*`` meaning any), or ``None`` when absent."""
        return self.parameters.get("transfer-syntax")


WILDCARD: Final = MediaRange("*", "*")


def parse_accept(values: Iterable[str]) -> tuple[MediaRange, ...]:
    """The media ranges of ``Accept`` field values (RFC 9110 §12.5.1), best first, ``q=0`` ones dropped.

    Ranges of equal weight keep their order: the client's first choice wins a tie. An empty or absent
    field means any media type (RFC 9110 §12.5.1: "*/*").
    """
    ranges: list[MediaRange] = []
    for value in values:
        ranges.extend(_parse_accept_value(value))
    if not ranges:
        return (WILDCARD,)
    ordered = sorted(ranges, key=lambda media_range: -media_range.quality)
    return tuple(media_range for media_range in ordered if media_range.quality > 0)


def _parse_accept_value(value: str) -> list[MediaRange]:
    ranges: list[MediaRange] = []
    position = 0
    while position < len(value):
        if value[position] in " \t,":
            position += 1
            continue
        match = _MEDIA_RANGE.match(value, position)
        if match is None:
            raise MalformedAcceptError(f"not a media range at offset {position}")
        kind, subtype = match.group(1).lower(), match.group(2).lower()
        if kind == "*" and subtype != "*":
            raise MalformedAcceptError(f"'*/{subtype}' is not a media range")
        position = match.end()
        parameters: dict[str, str] = {}
        quality = 1.0
        while (parameter := _PARAMETER.match(value, position)) is not None:
            name, raw = parameter.group(1).lower(), parameter.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            if name == "q":
                if _QUALITY.fullmatch(raw) is None:
                    raise MalformedAcceptError(f"{raw!r} is not a weight between 0 and 1")
                quality = float(raw)
            else:
                parameters[name] = raw.strip()
            position = parameter.end()
        if position < len(value) and value[position] != ",":
            raise MalformedAcceptError(f"unexpected character at offset {position}")
        ranges.append(MediaRange(kind, subtype, MappingProxyType(parameters), quality))
    return ranges


def _unwrap_multipart(media_range: MediaRange, default_type: str) -> tuple[MediaRange, bool] | None:
    """The part-level range a range asks for, and whether it asked for ``multipart/related`` explicitly.

    ``multipart/related; type="X"; transfer-syntax=Y`` asks for parts of media type X in Y (PS3.18
    §8.7.3.4-§8.7.3.5); without ``type`` the parts are of the resource's default type. ``*/*`` stands for
    the default type too. Any other ``multipart/...`` range is answered by nothing we make.
    """
    if media_range.type == "multipart":
        if media_range.subtype not in ("related", "*"):
            return None
        part_type = media_range.parameters.get("type", default_type).lower()
        kind, _, subtype = part_type.partition("/")
        if not kind or not subtype:
            return None
        parameters = {
            name: value for name, value in media_range.parameters.items() if name == "transfer-syntax"
        }
        return MediaRange(kind, subtype, MappingProxyType(parameters), media_range.quality), True
    return media_range, False


@dataclass(frozen=True, slots=True)
class InstanceRepresentation:
    """How to send DICOM instances: in one ``multipart/related`` payload or (one instance) single part,
    each instance in ``transfer_syntax`` or, when it is ``None``, in the transfer syntax it was stored in."""

    multipart: bool
    transfer_syntax: str | None


def negotiate_instances(
    ranges: Sequence[MediaRange],
    stored_transfer_syntaxes: Collection[str],
    *,
    can_transcode: Callable[[str, str], bool],
    single_instance: bool,
) -> InstanceRepresentation:
    """The representation of a study, series or instance retrieve (PS3.18 §10.4.1.1.1, Table 8.7.3-2).

    Without a ``transfer-syntax`` parameter (or with ``*``) instances go out as stored: what was received is
    returned byte for byte, which keeps lossy compressed pixel data from being re-encoded (the exception
    §8.7.3 makes to the Explicit VR Little Endian default), and each part's ``Content-Type`` names its
    transfer syntax. A named transfer syntax is honoured only if every instance is stored in it or
    ``can_transcode(stored, wanted)``; a single-part ``application/dicom`` only for one instance.
    """
    for media_range in ranges:
        unwrapped = _unwrap_multipart(media_range, APPLICATION_DICOM)
        if unwrapped is None:
            continue
        part_range, explicit_multipart = unwrapped
        if not part_range.matches(APPLICATION_DICOM):
            continue
        if part_range.type == "*":
            # A bare */* (or type="*/*"): the default, multipart in the stored transfer syntaxes.
            return InstanceRepresentation(multipart=True, transfer_syntax=None)
        if not explicit_multipart and not single_instance:
            continue
        wanted = part_range.transfer_syntax
        if wanted is None or wanted == "*":
            return InstanceRepresentation(multipart=explicit_multipart, transfer_syntax=None)
        if all(stored == wanted or can_transcode(stored, wanted) for stored in stored_transfer_syntaxes):
            return InstanceRepresentation(multipart=explicit_multipart, transfer_syntax=wanted)
    raise NotAcceptableError(
        'this resource is available as multipart/related; type="application/dicom" in its stored '
        f"transfer syntax or in {EXPLICIT_VR_LITTLE_ENDIAN} when it can be decompressed"
    )


@dataclass(frozen=True, slots=True)
class BulkRepresentation:
    """How to send pixel data: each part's media type and transfer syntax, whether the stored bytes must be
    decoded (decompressed, or re-ordered from big endian) rather than copied, and multipart or not."""

    media_type: str
    transfer_syntax: str
    decode: bool
    multipart: bool = True

    @property
    def part_content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def stored_bulk_media_type(transfer_syntax: str) -> str:
    """The media type of pixel data as stored: its compressed type, else octet-stream (Table 8.7.3-5)."""
    return COMPRESSED_MEDIA_TYPES.get(transfer_syntax, OCTET_STREAM)


def negotiate_pixel_data(
    ranges: Sequence[MediaRange],
    stored_transfer_syntax: str,
    *,
    can_decode: bool,
    allow_single_part: bool = False,
) -> BulkRepresentation:
    """The representation of frames or Pixel Data bulk data (PS3.18 §10.4.1.1.2, §8.7.3.3).

    - ``*/*`` or ``type="*/*"``: as stored (the compressed media type for encapsulated data).
    - ``application/octet-stream`` with ``transfer-syntax=*``: the stored bytes, labelled as octet-stream
      with their transfer syntax (what OHIF/Cornerstone ask for, then decode by that label).
    - ``application/octet-stream`` otherwise: Explicit VR Little Endian, decompressing if need be.
    - a compressed media type (or ``image/*``): the stored bytes if they are of that type and, when one is
      named, that transfer syntax; nothing is ever re-encoded into another compressed syntax.

    ``allow_single_part`` admits a single-part range (bulk data of one value, e.g. ``video/mp4`` for the
    OHIF video viewport); frames are multipart only (§8.6.1).
    """
    stored_media_type = stored_bulk_media_type(stored_transfer_syntax)
    native = stored_transfer_syntax not in COMPRESSED_MEDIA_TYPES
    for media_range in ranges:
        unwrapped = _unwrap_multipart(media_range, OCTET_STREAM)
        if unwrapped is None:
            continue
        part_range, explicit_multipart = unwrapped
        wanted = part_range.transfer_syntax
        if part_range.type == "*":
            if wanted in (None, "*", stored_transfer_syntax):
                return _as_stored(stored_media_type, stored_transfer_syntax, native=native)
            continue
        if not explicit_multipart and not allow_single_part:
            continue
        if part_range.media_type == OCTET_STREAM:
            if native and wanted in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
                return _as_stored(
                    OCTET_STREAM, stored_transfer_syntax, native=True, multipart=explicit_multipart
                )
            if not native and wanted == "*":
                return BulkRepresentation(OCTET_STREAM, stored_transfer_syntax, False, explicit_multipart)
            if not native and wanted in (None, EXPLICIT_VR_LITTLE_ENDIAN) and can_decode:
                return BulkRepresentation(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True, explicit_multipart)
            continue
        if (
            not native
            and part_range.matches(stored_media_type)
            and wanted in (None, "*", stored_transfer_syntax)
        ):
            return BulkRepresentation(stored_media_type, stored_transfer_syntax, False, explicit_multipart)
    if native:
        offer = f"{OCTET_STREAM} ({EXPLICIT_VR_LITTLE_ENDIAN})"
    else:
        offer = f"{stored_media_type} ({stored_transfer_syntax})"
        if can_decode:
            offer += f" or {OCTET_STREAM} ({EXPLICIT_VR_LITTLE_ENDIAN})"
    raise NotAcceptableError(f"the pixel data of this instance is available as multipart/related {offer}")


def _as_stored(
    media_type: str, transfer_syntax: str, *, native: bool, multipart: bool = True
) -> BulkRepresentation:
    if native:
        # Uncompressed frames leave as Explicit VR Little Endian octets, the only uncompressed bulk data
        # transfer syntax of PS3.18 Table 8.7.3-4 (and what they are, byte for byte, in storage).
        return BulkRepresentation(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, False, multipart)
    return BulkRepresentation(media_type, transfer_syntax, False, multipart)


def negotiate_rendered(ranges: Sequence[MediaRange], offered: Sequence[str]) -> str:
    """The rendered media type to produce: the best-weighted range that ``offered`` can satisfy.

    ``offered`` lists what this resource can be rendered as, its default first (PS3.18 §8.7.4: the
    default of images is ``image/jpeg``); a wildcard range picks the first offered type it covers.
    Rendered resources are single part (PS3.18 §10.4.1.1.3); ``multipart/related`` ranges are skipped.
    """
    for media_range in ranges:
        for media_type in offered:
            if media_range.type != "multipart" and media_range.matches(media_type):
                return media_type
    raise NotAcceptableError(f"this resource can be rendered as {', '.join(offered)}")


def parse_frame_list(frame_list: str, number_of_frames: int) -> tuple[int, ...]:
    """The frame numbers of a ``frames/{frameList}`` path segment, in the order asked (PS3.18 §10.4.1.1.2).

    The list is one or more comma-separated, non-duplicate, 1-based frame numbers. A malformed list raises
    :class:`InvalidFrameListError` (400); a frame beyond ``number_of_frames`` raises
    :class:`FrameOutOfRangeError` (404: that frame resource does not exist).
    """
    items = frame_list.split(",")
    if len(items) > max(number_of_frames, 1):
        raise InvalidFrameListError("the frame list names more frames than the instance has")
    frames: list[int] = []
    for item in items:
        text = item.strip()
        if _FRAME_NUMBER.fullmatch(text) is None:
            raise InvalidFrameListError(f"{text!r} is not a frame number (1, 2, 3 ...)")
        frames.append(int(text))
    if len(set(frames)) != len(frames):
        raise InvalidFrameListError("the frame list repeats a frame number")
    beyond = [number for number in frames if number > number_of_frames]
    if beyond:
        raise FrameOutOfRangeError(
            f"frame {beyond[0]} is beyond the {number_of_frames} frame(s) of the instance"
        )
    return tuple(frames)


def multipart_content_type(part_media_type: str, boundary: str) -> str:
    """The ``Content-Type`` of a ``multipart/related`` payload of ``part_media_type`` parts (RFC 2387 §3)."""
    return f'{MULTIPART_RELATED}; type="{part_media_type}"; boundary={boundary}'


def part_preamble(boundary: str, content_type: str, *, first: bool, location: str | None = None) -> bytes:
    """The delimiter and header fields that open one body part (RFC 2046 §5.1.1).

    Every delimiter but the first is preceded by CRLF, which belongs to the delimiter, not to the previous
    part's content: a part's bytes are exactly what follows the blank line up to that CRLF.
    """
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location is not None:
        lines.append(f"Content-Location: {location}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("ascii") if first else b"\r\n" + head.encode("ascii")


def close_delimiter(boundary: str) -> bytes:
    """The close delimiter ending a multipart body (RFC 2046 §5.1.1)."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def is_iso_bmff(head: bytes) -> bool:
    """Whether a video bit stream starts as an MP4 (ISO/IEC 14496-12) file, with an ``ftyp`` box.

    PS3.5 §8.2.8 allows the H.264/HEVC bit stream to be contained in MPEG-2 Transport Stream or in MP4;
    only the latter plays in a browser's ``<video>`` as ``video/mp4``.
    """
    return len(head) >= 8 and head[4:8] == b"ftyp"


class RangeNotSatisfiableError(ValueError):
    """A ``Range`` request none of whose ranges overlaps the representation (RFC 9110 §15.5.17: 416)."""


_BYTE_RANGE: Final = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """The single byte range ``[start, end)`` a ``Range`` header asks of ``total`` bytes (RFC 9110 §14.1.2).

    ``None`` means "send the whole representation": no header, another range unit, several ranges (a
    server may ignore Range, §14.2; browsers seeking a video ask one at a time) or a syntax we do not
    recognise. A first byte at or beyond ``total`` raises :class:`RangeNotSatisfiableError`.
    """
    if header is None:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        # A suffix range: the last N bytes.
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise RangeNotSatisfiableError("an empty suffix range")
        return max(total - suffix, 0), total
    start = int(first)
    end = total if not last else min(int(last) + 1, total)
    if last and int(last) < start:
        return None
    if start >= total:
        raise RangeNotSatisfiableError(f"byte {start} is beyond the {total} bytes of the representation")
    return start, end


def stream_slices(pieces: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The file ranges ``(offset, end)`` holding bytes ``[start, end)`` of the stream made by concatenating
    ``pieces`` (each ``(offset, length)`` in the file), e.g. the fragments of an encapsulated video bit
    stream (PS3.5 §A.4: item headers between fragments are not part of the stream)."""
    slices: list[tuple[int, int]] = []
    position = 0
    for offset, length in pieces:
        piece_start, piece_end = max(start, position), min(end, position + length)
        if piece_start < piece_end:
            slices.append((offset + piece_start - position, offset + piece_end - position))
        position += length
        if position >= end:
            break
    return slices


def iso_bmff_box_size(header: bytes) -> int | None:
    """The size of the ISO/IEC 14496-12 box whose header starts ``header`` (8 bytes, 16 with a 64-bit
    ``largesize``), or ``None`` when it runs to the end of the file (size 0) or is not a box header."""
    if len(header) < 8:
        return None
    size = int.from_bytes(header[:4], "big")
    if size == 1:
        if len(header) < 16:
            return None
        size = int.from_bytes(header[8:16], "big")
        return size if size >= 16 else None
    return size if size >= 8 else None
