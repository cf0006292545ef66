"""Where each frame's bytes are in a Part 10 file: the frame index the archive records for frame retrieval.

Native pixel data (PS3.5 §8.1.1) is the frames one after the other, each Rows x Columns x Samples per Pixel
x Bits Allocated / 8 bytes. Encapsulated pixel data (PS3.5 §A.4) is a sequence of items: the Basic Offset
Table, then the fragments. Which fragments make which frame comes, in order of preference, from the
Extended Offset Table (7FE0,0001), the Basic Offset Table, one fragment per frame when the counts agree, a
single frame owning every fragment, and finally the JPEG / JPEG 2000 start markers of the fragments. The
fragments of a video transfer syntax are one bitstream (PS3.5 §A.4.5-A.4.7).

The file is read through a seekable binary stream: only item headers (and, for markers, two bytes per
fragment) are read, never the pixel bytes themselves.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

from emage_ingest.domain.model import ByteRange, FrameLocation
from emage_ingest.domain.status import FailureReason, StoreRejectedError

ITEM_TAG: Final = 0xFFFEE000
SEQUENCE_DELIMITER_TAG: Final = 0xFFFEE0DD
UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_ITEM_HEADER = struct.Struct("<HHI")

_JPEG_TRANSFER_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)
_JPEG_2000_TRANSFER_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
_JPEG_SOI: Final = b"\xff\xd8"  # ISO/IEC 10918-1 Start Of Image (also JPEG-LS, ISO/IEC 14495-1)
_J2K_SOC: Final = b"\xff\x4f"  # ISO/IEC 15444-1 Start Of Codestream
_JP2_SIGNATURE_BOX: Final = b"\x00\x00"  # a JP2 file starts with the 12-byte signature box


@dataclass(frozen=True, slots=True)
class PixelDataElement:
    """The Pixel Data (7FE0,0010) element: where its value starts, its length (undefined: encapsulated)."""

    value_offset: int
    length: int
    vr: str

    @property
    def encapsulated(self) -> bool:
        return self.length == UNDEFINED_LENGTH


@dataclass(frozen=True, slots=True)
class _Fragment:
    item_offset: int
    """Offset of the item tag, relative to the first fragment's item tag (what offset tables count in)."""
    value: ByteRange


def _cannot_understand(detail: str) -> StoreRejectedError:
    return StoreRejectedError(FailureReason.CANNOT_UNDERSTAND, detail)


def read_pixel_data_element(
    fp: BinaryIO, position: int, file_size: int, *, implicit_vr: bool, little_endian: bool
) -> PixelDataElement | None:
    """The element header at ``position`` if it is Pixel Data (7FE0,0010) (PS3.5 §7.1), else ``None``."""
    fp.seek(position)
    head = fp.read(12)
    if len(head) < 8:
        return None
    order = "<" if little_endian else ">"
    group, element = struct.unpack(order + "HH", head[:4])
    if (group, element) != (0x7FE0, 0x0010):
        return None
    if implicit_vr:
        (length,) = struct.unpack(order + "I", head[4:8])
        vr, value_offset = "OW", position + 8
    else:
        if len(head) < 12:
            raise _cannot_understand("the file ends inside the Pixel Data element header")
        vr = head[4:6].decode("ascii", "replace")
        (length,) = struct.unpack(order + "I", head[8:12])
        value_offset = position + 12
    if length != UNDEFINED_LENGTH and value_offset + length > file_size:
        raise _cannot_understand(
            f"Pixel Data (7FE0,0010) declares {length} bytes but the file ends {file_size - value_offset} "
            "bytes after its start (truncated file)"
        )
    return PixelDataElement(value_offset, length, vr)


def native_frames(
    element: PixelDataElement,
    *,
    number_of_frames: int,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
) -> tuple[FrameLocation, ...]:
    """Frame locations of native pixel data (PS3.5 §8.1.1); frames are contiguous and unpadded."""
    frame_bits = rows * columns * samples_per_pixel * bits_allocated
    if frame_bits % 8 and number_of_frames > 1:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND,
            "bit-packed frames that do not end on a byte boundary cannot be located individually",
        )
    frame_length = (frame_bits + 7) // 8
    needed = frame_length * number_of_frames
    if element.length < needed:
        raise StoreRejectedError(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data (7FE0,0010) holds {element.length} bytes; {number_of_frames} frame(s) of "
            f"{rows}x{columns}x{samples_per_pixel} samples at {bits_allocated} bits need {needed}",
        )
    return tuple(
        FrameLocation(element.value_offset + index * frame_length, frame_length)
        for index in range(number_of_frames)
    )


def _read_fragments(fp: BinaryIO, element: PixelDataElement, file_size: int) -> tuple[bytes, list[_Fragment]]:
    """The Basic Offset Table's bytes and every fragment, from the item headers (PS3.5 §A.4, Table A.4-1)."""
    position = element.value_offset
    fp.seek(position)
    head = fp.read(8)
    if len(head) < 8:
        raise _cannot_understand("the file ends before the Basic Offset Table item")
    group, elem, length = _ITEM_HEADER.unpack(head)
    if (group << 16 | elem) != ITEM_TAG or length == UNDEFINED_LENGTH:
        raise _cannot_understand("encapsulated Pixel Data does not start with a Basic Offset Table item")
    offset_table = fp.read(length)
    if len(offset_table) != length:
        raise _cannot_understand("the file ends inside the Basic Offset Table")
    position += 8 + length
    first_item = position
    fragments: list[_Fragment] = []
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            raise _cannot_understand(
                "encapsulated Pixel Data has no Sequence Delimitation Item (truncated file)"
            )
        group, elem, length = _ITEM_HEADER.unpack(head)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITER_TAG:
            break
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH:
            raise _cannot_understand(f"unexpected ({group:04X},{elem:04X}) among the pixel data fragments")
        if position + 8 + length > file_size:
            raise _cannot_understand("a pixel data fragment runs past the end of the file (truncated file)")
        fragments.append(_Fragment(position - first_item, ByteRange(position + 8, length)))
        position += 8 + length
    if not fragments:
        raise _cannot_understand("encapsulated Pixel Data has no fragment")
    return offset_table, fragments


def _location(fragments: Sequence[_Fragment]) -> FrameLocation:
    first, last = fragments[0].value, fragments[-1].value
    if len(fragments) == 1:
        return FrameLocation(first.offset, first.length)
    return FrameLocation(
        first.offset, last.end - first.offset, tuple(fragment.value for fragment in fragments)
    )


def _split_at(
    fragments: Sequence[_Fragment], offsets: Sequence[int], table: str
) -> tuple[FrameLocation, ...]:
    starts = {fragment.item_offset: index for index, fragment in enumerate(fragments)}
    try:
        indices = [starts[offset] for offset in offsets]
    except KeyError:
        raise _cannot_understand(f"the {table} points between pixel data fragments") from None
    if indices[0] != 0 or indices != sorted(set(indices)):
        raise _cannot_understand(f"the {table} is not increasing from the first fragment")
    bounds = [*indices, len(fragments)]
    return tuple(_location(fragments[bounds[i] : bounds[i + 1]]) for i in range(len(indices)))


def _split_at_markers(
    fp: BinaryIO, fragments: Sequence[_Fragment], transfer_syntax_uid: str
) -> tuple[FrameLocation, ...] | None:
    if transfer_syntax_uid in _JPEG_TRANSFER_SYNTAXES:
        markers: tuple[bytes, ...] = (_JPEG_SOI,)
    elif transfer_syntax_uid in _JPEG_2000_TRANSFER_SYNTAXES:
        markers = (_J2K_SOC, _JP2_SIGNATURE_BOX)
    else:
        return None
    starts: list[int] = []
    for index, fragment in enumerate(fragments):
        fp.seek(fragment.value.offset)
        if fp.read(2) in markers:
            starts.append(index)
    if not starts or starts[0] != 0:
        return None
    bounds = [*starts, len(fragments)]
    return tuple(_location(fragments[bounds[i] : bounds[i + 1]]) for i in range(len(starts)))


def encapsulated_frames(
    fp: BinaryIO,
    element: PixelDataElement,
    file_size: int,
    *,
    number_of_frames: int,
    transfer_syntax_uid: str,
    video: bool,
    extended_offsets: Sequence[int] | None,
) -> tuple[FrameLocation, ...]:
    """Frame locations of encapsulated pixel data (PS3.5 §A.4); one location for a video bitstream."""
    offset_table, fragments = _read_fragments(fp, element, file_size)
    if video:
        return (_location(fragments),)
    frames: tuple[FrameLocation, ...] | None
    if extended_offsets:
        frames = _split_at(fragments, extended_offsets, "Extended Offset Table (7FE0,0001)")
    elif offset_table:
        if len(offset_table) % 4:
            raise _cannot_understand("the Basic Offset Table length is not a multiple of 4")
        offsets = struct.unpack(f"<{len(offset_table) // 4}I", offset_table)
        frames = _split_at(fragments, offsets, "Basic Offset Table")
    elif number_of_frames == 1:
        frames = (_location(fragments),)
    elif len(fragments) == number_of_frames:
        frames = tuple(_location([fragment]) for fragment in fragments)
    else:
        frames = _split_at_markers(fp, fragments, transfer_syntax_uid)
        if frames is None:
            raise _cannot_understand(
                f"{len(fragments)} fragments for {number_of_frames} frames without an offset table or "
                "frame start markers: frame boundaries cannot be found"
            )
    if len(frames) != number_of_frames:
        raise StoreRejectedError(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"Number of Frames (0028,0008) is {number_of_frames} "
            f"but the pixel data holds {len(frames)} frames",
        )
    return frames
