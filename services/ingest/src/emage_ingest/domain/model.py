"""What the archive knows about a stored SOP instance: where its bytes are and how to read its pixels.

Pure values, no I/O. Offsets are plaintext byte offsets within the archived DICOM Part 10 file (PS3.10 §7),
so a reader fetches a frame with one ranged read of the decrypted object
(:meth:`emage_ingest.adapters.archive.InstanceArchive.read_range`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``length`` bytes starting at ``offset`` of the Part 10 file."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        """The offset just past the last byte (exclusive end)."""
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class FrameLocation:
    """Where the pixel bytes of one frame are in the Part 10 file (PS3.5 §8.1.1 native, §A.4 encapsulated).

    ``offset``/``length`` span the whole frame. For native pixel data and for an encapsulated frame held in
    one fragment that span is exactly the frame's bytes and ``fragments`` is empty. A frame encapsulated in
    several fragments spans from the first byte of its first fragment's value to the last byte of its last
    fragment, item tags in between; ``fragments`` then lists the value of each fragment, in order, and the
    frame is their concatenation (PS3.5 §A.4: item tags and lengths are not part of the frame).
    """

    offset: int
    length: int
    fragments: tuple[ByteRange, ...] = ()

    @property
    def end(self) -> int:
        """The offset just past the frame's last byte (exclusive end)."""
        return self.offset + self.length

    def extract(self, span: bytes) -> bytes:
        """The frame's bytes from ``span``, the file's bytes ``[offset, end)`` read in one go."""
        if not self.fragments:
            return span
        return b"".join(
            span[piece.offset - self.offset : piece.end - self.offset] for piece in self.fragments
        )


@dataclass(frozen=True, slots=True)
class PixelAttributes:
    """The attributes a renderer needs (PS3.3 §C.7.6.3 Image Pixel, §C.11.1 Modality LUT, §C.11.2 VOI LUT)."""

    rows: int
    columns: int
    samples_per_pixel: int
    photometric_interpretation: str
    planar_configuration: int | None
    bits_allocated: int
    bits_stored: int | None
    high_bit: int | None
    pixel_representation: int | None
    rescale_slope: float | None
    rescale_intercept: float | None
    window_center: float | None
    """The first Window Center (0028,1050): PS3.3 §C.11.2.1.2 makes the first pair the default."""
    window_width: float | None


@dataclass(frozen=True, slots=True)
class ArchivedInstance:
    """One SOP instance in the archive, as ingest's ``instances`` collection records it.

    Pixel attributes are those of the Image Pixel Module (PS3.3 §C.7.6.3) and of the Modality and VOI LUT
    modules (PS3.3 §C.11.1, §C.11.2), taken from the top-level dataset or, for enhanced multi-frame objects,
    from the Shared (else first Per-Frame) Functional Groups (PS3.3 §C.7.6.16).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size_bytes: int
    """Size of the Part 10 file as received (before envelope encryption)."""
    sha256: str
    """SHA-256 of the Part 10 file as received, lowercase hex."""
    stored_at: datetime
    facility_finess: str
    modality: str
    instance_number: int | None
    number_of_frames: int
    """Number of Frames (0028,0008); 1 for single-frame images, 0 without pixel data."""
    frames: tuple[FrameLocation, ...]
    """One location per frame, in frame order. For video transfer syntaxes (PS3.5 §8.2.5-8.2.8) a single
    location: the whole bitstream."""
    pixels: PixelAttributes | None = None
    """None for instances without pixel data (encapsulated PDF, structured reports)."""
