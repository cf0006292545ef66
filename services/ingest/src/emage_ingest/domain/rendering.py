"""Rendering a frame for display: the pixel pipeline of PS3.18 §9.5 / §10.4.1.1.3, as pure functions.

Stored pixel values become presentation values in the order of the grayscale pipeline of PS3.4 §N.2:
Modality LUT (PS3.3 §C.11.1: Rescale Slope and Intercept), then VOI LUT (PS3.3 §C.11.2: the window of the
request's ``window`` parameter, else the first window of the dataset, else the full range of the frame),
then MONOCHROME1 inversion (PS3.3 §C.7.6.3.1.2) so that the output is always "bright means high".
Color images (RGB, YBR_* decoded to RGB) skip the grayscale stages. The source region and viewport of the
``viewport`` parameter (PS3.18 §8.3.5.1.3) are applied to the 8-bit result, which is then encoded as
JPEG, PNG or GIF (PS3.18 §8.7.4, ``quality`` per §8.3.5.1.4).

Decoding compressed frames goes through pydicom's pixel decoders (with the pylibjpeg plugins for JPEG,
JPEG-LS, JPEG 2000 and RLE); nothing here reads or writes anything but memory.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Literal, cast

import av
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from emage_ingest.domain.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMAGE_GIF,
    IMAGE_JPEG,
    IMAGE_PNG,
    UNCOMPRESSED_FRAME_TRANSFER_SYNTAXES,
    VIDEO_TRANSFER_SYNTAXES,
)
from emage_ingest.domain.model import ArchivedInstance

VoiLutFunction = Literal["linear", "linear-exact", "sigmoid"]

DEFAULT_JPEG_QUALITY: Final = 90
THUMBNAIL_SIZE: Final = 128
PIXEL_DATA_TAG: Final = 0x7FE00010
MAX_VIEWPORT_SIDE: Final = 4096
"""Largest rendered side we produce: a bound on the memory a single request can make us allocate."""

_NUMBER: Final = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_INTEGER: Final = re.compile(r"[-+]?\d{1,9}")

Pixels = npt.NDArray[np.generic]
Rendered = npt.NDArray[np.uint8]


class RenderingParameterError(ValueError):
    """A ``window``, ``viewport`` or ``quality`` query parameter is malformed or out of range (400)."""


class UndecodableFrameError(ValueError):
    """The frame's transfer syntax or pixel attributes are beyond what the decoders here support."""


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center and width in modality units, and the VOI LUT Function (PS3.3 §C.11.2.1.2-3)."""

    center: float
    width: float
    function: VoiLutFunction = "linear"


@dataclass(frozen=True, slots=True)
class Viewport:
    """The ``viewport`` parameter, PS3.18 §8.3.5.1.3: ``vw,vh`` and an optional source region.

    ``source_width``/``source_height`` of ``None`` mean "to the right/bottom edge"; negative ones select the
    region to the left of/above the source origin and flip the image horizontally/vertically.
    """

    width: int
    height: int
    source_x: int = 0
    source_y: int = 0
    source_width: int | None = None
    source_height: int | None = None


@dataclass(frozen=True, slots=True)
class RenderingParameters:
    """The rendering query parameters of PS3.18 §8.3.5.1 that apply to images."""

    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_JPEG_QUALITY


def parse_window(text: str) -> Window:
    """``window=center,width[,function]`` (PS3.18 §8.3.5.1.2); function ``linear`` (default),
    ``linear-exact`` or ``sigmoid``. The width must be at least 1 for ``linear`` and above 0 otherwise
    (PS3.3 §C.11.2.1.2.1, §C.11.2.1.3)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3) or not all(re.fullmatch(_NUMBER, part) for part in parts[:2]):
        raise RenderingParameterError("window is center,width[,function] with numeric center and width")
    center, width = float(parts[0]), float(parts[1])
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in ("linear", "linear-exact", "sigmoid"):
        raise RenderingParameterError("the window function is linear, linear-exact or sigmoid")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise RenderingParameterError("window center and width are finite numbers")
    if function == "linear" and width < 1:
        raise RenderingParameterError("a linear window has a width of at least 1")
    if width <= 0:
        raise RenderingParameterError(f"a {function} window has a positive width")
    return Window(center, width, cast("VoiLutFunction", function))


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3); empty source fields take their defaults."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 6):
        raise RenderingParameterError("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    values: list[int | None] = []
    for part in parts:
        if part == "" and len(values) >= 2:
            values.append(None)
        elif _INTEGER.fullmatch(part):
            values.append(int(part))
        else:
            raise RenderingParameterError("viewport values are integers")
    width, height = values[0], values[1]
    if (
        width is None
        or height is None
        or not (1 <= width <= MAX_VIEWPORT_SIDE and 1 <= height <= MAX_VIEWPORT_SIDE)
    ):
        raise RenderingParameterError(f"viewport width and height are between 1 and {MAX_VIEWPORT_SIDE}")
    if len(values) == 2:
        return Viewport(width, height)
    source_x, source_y, source_width, source_height = values[2:]
    if (source_x or 0) < 0 or (source_y or 0) < 0 or source_width == 0 or source_height == 0:
        raise RenderingParameterError("the source region starts inside the image and is not empty")
    return Viewport(width, height, source_x or 0, source_y or 0, source_width, source_height)


def parse_quality(text: str) -> int:
    """``quality`` of a lossy rendered image, an integer from 1 to 100 (PS3.18 §8.3.5.1.4)."""
    if _INTEGER.fullmatch(text.strip()) is None or not 1 <= int(text) <= 100:
        raise RenderingParameterError("quality is an integer from 1 to 100")
    return int(text)


def rendering_parameters(
    window: str | None = None, viewport: str | None = None, quality: str | None = None
) -> RenderingParameters:
    """The parsed rendering query parameters (absent ones take their defaults)."""
    return RenderingParameters(
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else None,
        quality=parse_quality(quality) if quality is not None else DEFAULT_JPEG_QUALITY,
    )


def can_decode(transfer_syntax: str) -> bool:
    """Whether frames stored in ``transfer_syntax`` can be decoded here (a pydicom decoder with a plugin).

    Video bit streams are not frame-addressable (PS3.5 §8.2.5-§8.2.9) and are never decoded here.
    """
    if transfer_syntax in VIDEO_TRANSFER_SYNTAXES:
        return False
    try:
        return get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        return False


def decode_frame(frame: bytes, instance: ArchivedInstance, transfer_syntax: str) -> Pixels:
    """The pixel values of one frame: ``(rows, columns)`` or, for color, ``(rows, columns, samples)``.

    ``frame`` is the frame as stored: native bytes in ``transfer_syntax`` byte order, or the compressed
    bit stream of an encapsulated frame (PS3.5 §A.4). YBR color is converted to RGB (PS3.3 §C.7.6.3.1.2).
    """
    description = instance.pixels
    if description is None:
        raise UndecodableFrameError("the instance has no image pixel description")
    if not can_decode(transfer_syntax):
        raise UndecodableFrameError(f"no decoder here for transfer syntax {transfer_syntax}")
    native = transfer_syntax in UNCOMPRESSED_FRAME_TRANSFER_SYNTAXES
    decoder_syntax = EXPLICIT_VR_LITTLE_ENDIAN if native else transfer_syntax
    # pydicom decodes an encapsulated value (items), so the frame's bit stream is wrapped as one fragment.
    source = frame if native else encapsulate([frame])
    # pydicom annotates the options as ``**kwargs: DecodeOptions`` rather than ``Unpack[...]``.
    options: dict[str, Any] = {
        "rows": description.rows,
        "columns": description.columns,
        "samples_per_pixel": description.samples_per_pixel,
        "bits_allocated": description.bits_allocated,
        "bits_stored": description.bits_stored or description.bits_allocated,
        "pixel_representation": description.pixel_representation or 0,
        "photometric_interpretation": description.photometric_interpretation,
        "planar_configuration": description.planar_configuration or 0,
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    try:
        pixels, _ = get_decoder(decoder_syntax).as_array(source, **options)
    except (ValueError, RuntimeError, NotImplementedError, TypeError) as exc:
        raise UndecodableFrameError(f"the frame could not be decoded: {exc}") from exc
    return cast("Pixels", pixels)


def frame_as_native_octets(frame: bytes, instance: ArchivedInstance, transfer_syntax: str) -> bytes:
    """A stored frame decompressed to Explicit VR Little Endian octets (PS3.18 Table 8.7.3-4): pixel
    interleaved, ``Bits Allocated`` per sample, color as RGB."""
    pixels = decode_frame(frame, instance, transfer_syntax)
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def decompressed_size(instance: ArchivedInstance) -> int:
    """Bytes of the instance's pixel data once uncompressed: what a decompression must hold in memory."""
    description = instance.pixels
    if description is None:
        return 0
    samples = description.rows * description.columns * description.samples_per_pixel
    return samples * max(description.bits_allocated // 8, 1) * max(instance.number_of_frames, 1)


def transcode_to_explicit_vr_little_endian(source: IO[bytes]) -> bytes:
    """The Part 10 file read from ``source`` re-encoded in Explicit VR Little Endian (PS3.5 §A.2).

    Compressed pixel data is decompressed (pydicom updates Photometric Interpretation when YBR becomes
    RGB, and the File Meta Information's Transfer Syntax UID); every other attribute is kept as is.
    """
    try:
        dataset = dcmread(source)
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            dataset.decompress()
        else:
            dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        output = io.BytesIO()
        dataset.save_as(output, enforce_file_format=True)
    except (InvalidDicomError, ValueError, RuntimeError, NotImplementedError, TypeError) as exc:
        raise UndecodableFrameError(f"the instance could not be decompressed: {exc}") from exc
    return output.getvalue()


def bulk_data_value(source: IO[bytes], tag: int) -> bytes | None:
    """The raw value of the top-level binary attribute ``tag`` of the Part 10 file in ``source`` (what a
    metadata ``BulkDataURI`` points to, PS3.18 §F.2.6), or ``None`` when absent or not binary.

    Large values are read lazily and Pixel Data is skipped unless asked for, so only the attribute's own
    bytes are loaded.
    """
    try:
        dataset = dcmread(source, defer_size=4096, stop_before_pixels=tag < PIXEL_DATA_TAG)
        element = dataset.get(tag)
        value = None if element is None else element.value
    except (InvalidDicomError, ValueError, OSError) as exc:
        raise UndecodableFrameError(f"the instance could not be read: {exc}") from exc
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def modality_values(pixels: Pixels, slope: float | None, intercept: float | None) -> npt.NDArray[np.float32]:
    """Stored values to modality values (e.g. Hounsfield units): ``slope * value + intercept``, PS3.3
    §C.11.1.1.2. Absent attributes mean the identity."""
    values = pixels.astype(np.float32)
    if slope is not None and slope != 1:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def apply_window(values: npt.NDArray[np.float32], window: Window) -> Rendered:
    """The VOI LUT of ``window`` mapped to 0..255, PS3.3 §C.11.2.1.2.1 (linear), §C.11.2.1.3.2
    (linear-exact) and §C.11.2.1.3.1 (sigmoid)."""
    center, width = window.center, window.width
    output: npt.NDArray[np.float32]
    if window.function == "linear":
        lower = center - 0.5 - (width - 1) / 2
        upper = center - 0.5 + (width - 1) / 2
        # width == 1 is a threshold: everything at or below the lower bound is black, the rest white.
        scaled = ((values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255
        output = np.where(values <= lower, 0, np.where(values > upper, 255, scaled)).astype(np.float32)
    elif window.function == "linear-exact":
        lower, upper = center - width / 2, center + width / 2
        scaled = ((values - center) / width + 0.5) * 255
        output = np.where(values <= lower, 0, np.where(values > upper, 255, scaled)).astype(np.float32)
    else:
        # Clipped so that exp stays finite far from the center, where the curve is flat at 0 or 255 anyway.
        exponent = np.clip(-4 * (values - center) / width, -60, 60)
        output = (255 / (1 + np.exp(exponent))).astype(np.float32)
    return np.clip(np.rint(output), 0, 255).astype(np.uint8)


def full_range_window(values: npt.NDArray[np.float32]) -> Window:
    """A window spanning the frame's minimum to maximum (linear-exact), for images without one."""
    low, high = float(values.min()), float(values.max())
    return Window(center=(low + high) / 2, width=max(high - low, 1e-6), function="linear-exact")


def render_pixels(pixels: Pixels, instance: ArchivedInstance, window: Window | None = None) -> Rendered:
    """Decoded pixels to an 8-bit presentation image: grayscale ``(rows, columns)`` or RGB.

    Grayscale: Modality LUT, VOI window (``window``, else the dataset's first, else full range), then
    MONOCHROME1 inversion. Color: scaled from Bits Stored to 8 bits; windows do not apply (PS3.18
    §8.3.5.1.2 applies the window to grayscale only).
    """
    description = instance.pixels
    if description is None:
        raise UndecodableFrameError("the instance has no image pixel description")
    photometric = description.photometric_interpretation.upper()
    if pixels.ndim == 3:
        if pixels.dtype == np.uint8:
            return cast("Rendered", pixels)
        bits = description.bits_stored or description.bits_allocated
        scaled: npt.NDArray[np.float32] = pixels.astype(np.float32) * np.float32(255 / ((1 << bits) - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    values = modality_values(pixels, description.rescale_slope, description.rescale_intercept)
    if window is None and description.window_center is not None and description.window_width:
        window = Window(description.window_center, max(description.window_width, 1.0))
    rendered = apply_window(values, window or full_range_window(values))
    if photometric == "MONOCHROME1":
        rendered = np.subtract(255, rendered, dtype=np.uint8)
    return rendered


def apply_viewport(image: Rendered, viewport: Viewport) -> Rendered:
    """Crop to the viewport's source region, flip for negative extents, and scale to fit ``vw`` x ``vh``
    keeping the aspect ratio (PS3.18 §8.3.5.1.3)."""
    rows, columns = image.shape[0], image.shape[1]
    x_start, x_end, flip_x = _source_span(viewport.source_x, viewport.source_width, columns)
    y_start, y_end, flip_y = _source_span(viewport.source_y, viewport.source_height, rows)
    if x_end <= x_start or y_end <= y_start:
        raise RenderingParameterError("the viewport's source region lies outside the image")
    region = image[y_start:y_end, x_start:x_end]
    if flip_x:
        region = region[:, ::-1]
    if flip_y:
        region = region[::-1, :]
    height, width = region.shape[0], region.shape[1]
    scale = min(viewport.width / width, viewport.height / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return np.ascontiguousarray(region)
    resized = Image.fromarray(np.ascontiguousarray(region)).resize(
        size, Image.Resampling.BICUBIC, reducing_gap=2.0
    )
    return cast("Rendered", np.asarray(resized, dtype=np.uint8))


def _source_span(start: int, extent: int | None, size: int) -> tuple[int, int, bool]:
    if extent is None:
        return min(start, size), size, False
    if extent < 0:
        return max(start + extent, 0), min(start, size), True
    return min(start, size), min(start + extent, size), False


def thumbnail_viewport(rows: int, columns: int, side: int = THUMBNAIL_SIZE) -> Viewport:
    """A viewport that fits the whole image in ``side`` x ``side`` without enlarging a smaller one."""
    return Viewport(min(side, columns), min(side, rows))


def encode_image(image: Rendered, media_type: str, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """``image`` encoded as ``image/jpeg`` (baseline, ``quality``), ``image/png`` or ``image/gif``."""
    picture = Image.fromarray(image)
    buffer = io.BytesIO()
    if media_type == IMAGE_JPEG:
        picture.save(buffer, format="JPEG", quality=quality)
    elif media_type == IMAGE_PNG:
        # Level 3 of 9: most of level 6's size at a fraction of its time, for interactive viewing.
        picture.save(buffer, format="PNG", compress_level=3)
    elif media_type == IMAGE_GIF:
        palette = picture if picture.mode == "L" else picture.quantize(colors=256)
        palette.save(buffer, format="GIF")
    else:
        raise ValueError(f"{media_type} is not a rendered image media type")
    return buffer.getvalue()


def render_frame(
    frame: bytes,
    instance: ArchivedInstance,
    transfer_syntax: str,
    media_type: str,
    parameters: RenderingParameters,
) -> bytes:
    """One stored frame to an encoded rendered image: decode, present, viewport, encode."""
    image = render_pixels(decode_frame(frame, instance, transfer_syntax), instance, parameters.window)
    if parameters.viewport is not None:
        image = apply_viewport(image, parameters.viewport)
    return encode_image(image, media_type, parameters.quality)


def decode_video_frames(video: bytes, numbers: Sequence[int]) -> dict[int, Rendered]:
    """Frames ``numbers`` (1-based) of a video bit stream (an MP4 file or another container FFmpeg reads) as
    RGB arrays ``(rows, columns, 3)``, the stream decoded from its start up to the last frame asked.

    A video's frames are not separable in storage (PS3.5 §8.2.5-§8.2.9): a frame, a thumbnail or a rendered
    frame of it is made by decoding (PyAV, FFmpeg's decoders). A frame beyond the stream raises
    :class:`UndecodableFrameError`.
    """
    wanted = set(numbers)
    last = max(wanted, default=0)
    found: dict[int, Rendered] = {}
    try:
        with av.open(io.BytesIO(video), mode="r") as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream), start=1):
                if index in wanted:
                    found[index] = cast("Rendered", frame.to_ndarray(format="rgb24"))
                if index >= last:
                    break
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise UndecodableFrameError(f"the video could not be decoded: {exc}") from exc
    missing = wanted - found.keys()
    if missing:
        raise UndecodableFrameError(f"the video has no frame {min(missing)}")
    return found


def render_video_frame(
    pixels: Rendered, instance: ArchivedInstance, media_type: str, parameters: RenderingParameters
) -> bytes:
    """A decoded video frame (RGB) to an encoded rendered image: present, viewport, encode."""
    image = render_pixels(pixels, instance, parameters.window)
    if parameters.viewport is not None:
        image = apply_viewport(image, parameters.viewport)
    return encode_image(image, media_type, parameters.quality)
