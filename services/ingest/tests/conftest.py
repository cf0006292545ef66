"""Synthetic DICOM Part 10 objects for the ingest unit tests, made with pydicom."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
H264 = "1.2.840.10008.1.2.4.102"


def _base(sop_class: str, transfer_syntax: str, *, Modality: str = "CT") -> Dataset:  # noqa: N803
    meta = FileMetaDataset()
    sop_instance = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = sop_instance
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = Modality
    dataset.PatientID = "IPP-0001"
    dataset.PatientName = "DUPONT^JEANNE"
    dataset.InstanceNumber = 1
    return dataset


def _apply(dataset: Dataset, attributes: dict[str, Any]) -> Dataset:
    """Set (``None``: delete) attributes after the defaults, so a test can break any of them."""
    for keyword, value in attributes.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


def _image(dataset: Dataset, rows: int, columns: int, samples: int = 1, bits: int = 16) -> None:
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits if bits == 8 else 12
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0


def to_part10(dataset: Dataset, *, implicit: bool = False) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


class DicomFactory:
    """Builds Part 10 bytes: ``ct_slice``, ``native_multiframe``, ``encapsulated`` and ``video``."""

    def ct_slice(self, *, size: int = 64, transfer_syntax: str = EXPLICIT_VR_LE, **attributes: Any) -> bytes:
        dataset = _base(attributes.pop("SOPClassUID", CT_IMAGE_STORAGE), transfer_syntax)
        if "SOPInstanceUID" in attributes:
            dataset.file_meta.MediaStorageSOPInstanceUID = attributes["SOPInstanceUID"]
        _image(dataset, size, size)
        dataset.RescaleSlope = 1
        dataset.RescaleIntercept = -1024
        dataset.WindowCenter = [40, 400]
        dataset.WindowWidth = [400, 2000]
        dataset.PixelData = os.urandom(size * size * 2)
        dataset["PixelData"].VR = "OW"
        _apply(dataset, attributes)
        return to_part10(dataset, implicit=transfer_syntax == IMPLICIT_VR_LE)

    def part10_as_is(self, dataset: Dataset) -> bytes:
        """Part 10 bytes with the File Meta Information exactly as set (pydicom does not fix it up)."""
        dataset.preamble = bytes(128)
        dataset.file_meta.FileMetaInformationVersion = b"\x00\x01"
        dataset.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
        return buffer.getvalue()

    def dataset(self, **attributes: Any) -> Dataset:
        dataset = _base(attributes.pop("SOPClassUID", CT_IMAGE_STORAGE), EXPLICIT_VR_LE)
        _image(dataset, 8, 8)
        dataset.PixelData = bytes(8 * 8 * 2)
        dataset["PixelData"].VR = "OW"
        return _apply(dataset, attributes)

    def native_multiframe(self, frames: int, *, size: int = 16, **attributes: Any) -> bytes:
        dataset = _base(US_MULTIFRAME_STORAGE, EXPLICIT_VR_LE, Modality="US")
        _image(dataset, size, size, bits=8)
        dataset.NumberOfFrames = frames
        dataset.PixelData = b"".join(bytes([index]) * size * size for index in range(frames))
        dataset["PixelData"].VR = "OB"
        return to_part10(_apply(dataset, attributes))

    def encapsulated(
        self,
        fragments_per_frame: Sequence[Sequence[bytes]],
        *,
        transfer_syntax: str = JPEG_BASELINE,
        offset_table: str = "basic",
        **attributes: Any,
    ) -> bytes:
        """``offset_table``: ``basic`` (filled BOT), ``empty`` or ``extended`` (EOT, empty BOT)."""
        dataset = _base(US_MULTIFRAME_STORAGE, transfer_syntax, Modality="US")
        _image(dataset, 16, 16, bits=8)
        dataset.NumberOfFrames = len(fragments_per_frame)
        items = b""
        offsets = []
        for frame in fragments_per_frame:
            offsets.append(len(items))
            for fragment in frame:
                items += b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment
        bot = b"".join(offset.to_bytes(4, "little") for offset in offsets) if offset_table == "basic" else b""
        if offset_table == "extended":
            dataset.ExtendedOffsetTable = b"".join(offset.to_bytes(8, "little") for offset in offsets)
            dataset.ExtendedOffsetTableLengths = b"".join(
                sum(len(f) for f in frame).to_bytes(8, "little") for frame in fragments_per_frame
            )
        value = (
            b"\xfe\xff\x00\xe0"
            + len(bot).to_bytes(4, "little")
            + bot
            + items
            + b"\xfe\xff\xdd\xe0"
            + bytes(4)
        )
        dataset.PixelData = value
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
        return to_part10(_apply(dataset, attributes))

    def video(self, stream: bytes, *, frames: int = 30) -> bytes:
        dataset = _base(US_MULTIFRAME_STORAGE, H264, Modality="US")
        _image(dataset, 16, 16, samples=3, bits=8)
        dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
        dataset.NumberOfFrames = frames
        dataset.PixelData = encapsulate([stream[: len(stream) // 2], stream[len(stream) // 2 :]])
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
        return to_part10(dataset)


@pytest.fixture
def dicom() -> DicomFactory:
    return DicomFactory()


@pytest.fixture
def write_file(tmp_path: Any) -> Callable[[bytes], Any]:
    counter = iter(range(1_000_000))

    def write(data: bytes) -> Any:
        path = tmp_path / f"object-{next(counter)}.dcm"
        path.write_bytes(data)
        return path

    return write


# --- In-memory adapters for the service layer -------------------------------------------------------------


class MemoryRecords:
    """InstanceIndex's store-side methods, over dicts; ``fail_record`` simulates MongoDB failing."""

    def __init__(self) -> None:
        from emage_ingest.adapters.repository import OutboxEntry

        self.instances: dict[str, Any] = {}
        self.claims: dict[str, str] = {}
        self.outbox: dict[str, tuple[OutboxEntry, str]] = {}
        self.fail_record: Exception | None = None
        self.fail_after_commit: Exception | None = None

    async def get(self, sop_instance_uid: str) -> Any:
        return self.instances.get(sop_instance_uid)

    async def claim(self, sop_instance_uid: str, token: str, lease: Any) -> bool:
        return self.claims.setdefault(sop_instance_uid, token) == token

    async def release(self, sop_instance_uid: str, token: str) -> None:
        if self.claims.get(sop_instance_uid) == token:
            del self.claims[sop_instance_uid]

    async def record(
        self, instance: Any, entry: Any, *, claim_token: str, replaces_sha256: str | None, **_: Any
    ) -> None:
        if self.fail_record is not None:
            raise self.fail_record
        current = self.instances.get(instance.sop_instance_uid)
        assert (current.sha256 if current else None) == replaces_sha256
        assert self.claims.pop(instance.sop_instance_uid) == claim_token  # released with the record
        self.instances[instance.sop_instance_uid] = instance
        self.outbox[entry.event_id] = (entry, "pending")
        if self.fail_after_commit is not None:
            raise self.fail_after_commit


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_put: Exception | None = None

    async def put(self, key: str, study_uid: str, source_file: Any) -> None:
        if self.fail_put is not None:
            raise self.fail_put
        self.objects[key] = source_file.read_bytes()

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class MemoryEvents:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    async def publish(self, topic: str, event: Any, key: str | None = None) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, event))


class MemoryOutboxMarks:
    def __init__(self, records: MemoryRecords) -> None:
        self.records = records
        self.retried: list[str] = []

    async def mark_published(self, event_id: str, owner: str) -> None:
        entry, _ = self.records.outbox[event_id]
        self.records.outbox[event_id] = (entry, "published")

    async def retry_after(self, event_id: str, owner: str, delay: Any) -> None:
        self.retried.append(event_id)


class MemoryIngest:
    """An IngestService wired to in-memory adapters, with the adapters exposed for assertions."""

    def __init__(self, policy: str = "reject") -> None:
        from datetime import timedelta

        from emage_ingest.domain.conflict import ConflictPolicy
        from emage_ingest.service import IngestService

        self.records = MemoryRecords()
        self.archive = MemoryArchive()
        self.events = MemoryEvents()
        self.outbox = MemoryOutboxMarks(self.records)
        self.wakeups = 0
        self.service = IngestService(
            records=self.records,
            archive=self.archive,
            events=self.events,
            outbox=self.outbox,
            conflict_policy=ConflictPolicy(policy),
            replica_id="test",
            publish_timeout=0.5,
            outbox_lease=timedelta(seconds=30),
            wake_relay=self._wake,
        )

    def _wake(self) -> None:
        self.wakeups += 1


@pytest.fixture
def ingest() -> MemoryIngest:
    return MemoryIngest()


@pytest.fixture
def replacing_ingest() -> MemoryIngest:
    return MemoryIngest("replace")
