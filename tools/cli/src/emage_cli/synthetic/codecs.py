"""Compressed pixel data for the synthetic instances, each codec as PS3.5 §8.2 defines its transfer syntax.

* JPEG baseline (1.2.840.10008.1.2.4.50, §8.2.1): Pillow's libjpeg, 8 bits; colour frames in YCbCr with 4:2:2
  chroma subsampling, i.e. Photometric Interpretation ``YBR_FULL_422``.
* JPEG 2000 lossless (1.2.840.10008.1.2.4.90, §8.2.4) and RLE lossless (1.2.840.10008.1.2.5, §8.2.2,
  Annex G): pydicom's encoders (OpenJPEG and the RLE plugin).
* MPEG-4 AVC/H.264 High Profile / Level 4.1 (1.2.840.10008.1.2.4.102, §8.2.8): FFmpeg's libx264 through
  PyAV, in an MP4 file (faststart), 4:2:0, i.e. Photometric Interpretation ``YBR_PARTIAL_420``.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import JPEG2000Lossless, RLELossless

#: Frame rate of the synthetic cine loops: 30 frames/s is within every MPEG-4 AVC level DICOM allows.
VIDEO_FRAME_RATE = 30


def jpeg_baseline(pixels: NDArray[np.uint8], quality: int = 90) -> bytes:
    """One JPEG baseline (ISO/IEC 10918-1, process 1) frame of a greyscale or RGB image."""
    options: dict[str, int] = {"quality": quality}
    if pixels.ndim == 3:
        options["subsampling"] = 1  # 4:2:2, matching YBR_FULL_422
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", optimize=False, **options)
    return buffer.getvalue()


def jpeg2000_lossless(pixels: NDArray[np.uint16], bits_stored: int) -> bytes:
    """One reversible JPEG 2000 (ISO/IEC 15444-1) codestream of a single-sample unsigned image."""
    rows, columns = pixels.shape
    encoded: bytes = get_encoder(JPEG2000Lossless).encode(
        pixels,
        rows=rows,
        columns=columns,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=bits_stored,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    return encoded


def rle_lossless(pixels: NDArray[np.uint8]) -> bytes:
    """One DICOM RLE (PS3.5 Annex G) frame of an 8-bit RGB image (one segment per colour plane)."""
    rows, columns, samples = pixels.shape
    encoded: bytes = get_encoder(RLELossless).encode(
        pixels,
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="RGB",
        planar_configuration=0,
        number_of_frames=1,
    )
    return encoded


def h264_stream(frames: Iterable[NDArray[np.uint8]], width: int, height: int) -> tuple[bytes, int]:
    """An H.264 High Profile / Level 4.1 stream of RGB frames in an MP4 file, and its frame count.

    PS3.5 §8.2.8 leaves the container unconstrained; MP4 with its index first (``faststart``) is what a
    browser plays and seeks directly, as the viewer's cine of an ultrasound clip needs.
    """
    # faststart rewrites the file to move the index to the front, so it needs a real file, not a buffer.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        count = _encode_mp4(frames, width, height, path)
        return path.read_bytes(), count


def _encode_mp4(frames: Iterable[NDArray[np.uint8]], width: int, height: int, path: Path) -> int:
    count = 0
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=VIDEO_FRAME_RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.profile = "High"
        stream.options = {"level": "4.1", "preset": "veryfast", "crf": "23"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
