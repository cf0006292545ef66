"""Envelope encryption and the archive's streaming and ranged reads, against an in-memory S3 and key store."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from emage_ingest.adapters.archive import InstanceArchive
from emage_ingest.adapters.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    DataKey,
    EnvelopeError,
    EnvelopeHeader,
    KeyEncryptionKey,
    KeyRing,
    SegmentCipher,
    StudyKeyStore,
)
from emage_ingest.bootstrap import keyring_from
from emage_ingest.domain.model import ArchivedInstance
from emage_ingest.settings import Settings

SEGMENT = 64 * 1024
STUDY = "1.2.826.0.1.3680043.8.498.1"


class MemoryCollection:
    """The part of an async MongoDB collection the key store uses."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}

    async def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        document = self.documents.get(query["_id"])
        return dict(document) if document is not None else None

    async def insert_one(self, document: dict[str, Any]) -> None:
        if document["_id"] in self.documents:
            raise DuplicateKeyError("duplicate")
        self.documents[document["_id"]] = dict(document)

    async def update_one(self, query: dict[str, Any], update: dict[str, Any]) -> None:
        document = self.documents.get(query["_id"])
        if document is not None and all(document.get(k) == v for k, v in query.items()):
            document.update(update["$set"])


class Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def iter_chunks(self, size: int) -> Any:
        for start in range(0, len(self._data), 1000):  # small chunks: exercise reassembly
            yield self._data[start : start + 1000]

    async def __aexit__(self, *args: object) -> None:
        return None


class MemoryS3:
    """put_object / multipart upload / ranged get_object / delete_object, as aiobotocore answers them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.range_requests: list[str] = []

    async def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.objects[Key] = Body
        return {"ETag": '"etag"'}

    async def create_multipart_upload(self, *, Key: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.uploads[Key] = {}
        return {"UploadId": Key}

    async def upload_part(self, *, UploadId: str, PartNumber: int, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.uploads[UploadId][PartNumber] = Body
        return {"ETag": f'"{PartNumber}"'}

    async def complete_multipart_upload(self, *, Key: str, UploadId: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        parts = self.uploads.pop(UploadId)
        self.objects[Key] = b"".join(parts[number] for number in sorted(parts))
        return {"ETag": '"etag"'}

    async def abort_multipart_upload(self, *, UploadId: str, **_: Any) -> None:  # noqa: N803
        self.uploads.pop(UploadId, None)

    async def get_object(self, *, Key: str, Range: str | None = None, **_: Any) -> dict[str, Any]:  # noqa: N803
        data = self.objects[Key]
        if Range is not None:
            self.range_requests.append(Range)
            first, last = Range.removeprefix("bytes=").split("-")
            data = data[int(first) : int(last) + 1]
        return {"Body": Body(data), "ContentLength": len(data)}

    async def delete_object(self, *, Key: str, **_: Any) -> None:  # noqa: N803
        self.objects.pop(Key, None)


def keyring() -> KeyRing:
    return KeyRing(KeyEncryptionKey("kek-test", os.urandom(32)))


@pytest.fixture
def s3() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
def archive(s3: MemoryS3) -> InstanceArchive:
    keys = StudyKeyStore(MemoryCollection(), keyring())  # type: ignore[arg-type]
    return InstanceArchive(s3, "bucket", keys, segment_size=SEGMENT, part_size=5 * 1024 * 1024)  # type: ignore[arg-type]


def record(key: str, data: bytes) -> ArchivedInstance:
    return ArchivedInstance(
        study_instance_uid=STUDY,
        series_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=key,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        stored_at=datetime.now(UTC),
        facility_finess="750000001",
        modality="CT",
        instance_number=1,
        number_of_frames=0,
        frames=(),
    )


async def stored(archive: InstanceArchive, tmp_path: Path, data: bytes, key: str = "k") -> ArchivedInstance:
    source = tmp_path / "source"
    source.write_bytes(data)
    await archive.put(key, STUDY, source)
    return record(key, data)


async def read_all(archive: InstanceArchive, instance: ArchivedInstance) -> bytes:
    return b"".join([chunk async for chunk in archive.stream(instance, chunk_size=10_000)])


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 17, 6 * 1024 * 1024])
async def test_round_trip_is_byte_identical_and_the_object_is_ciphertext(
    archive: InstanceArchive, s3: MemoryS3, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    instance = await stored(archive, tmp_path, data)
    assert await read_all(archive, instance) == data
    sealed = s3.objects["k"]
    header = EnvelopeHeader.from_bytes(sealed)
    assert len(sealed) == header.object_size == HEADER_SIZE + size + header.segment_count * TAG_SIZE
    if size >= 64:
        assert data[:64] not in sealed


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (0, SEGMENT),
        (SEGMENT - 1, SEGMENT + 1),
        (SEGMENT, 2 * SEGMENT),
        (5, 3 * SEGMENT + 17),
        (100, 100),
    ],
)
async def test_range_reads_fetch_only_the_covering_segments(
    archive: InstanceArchive, s3: MemoryS3, tmp_path: Path, start: int, end: int
) -> None:
    data = os.urandom(3 * SEGMENT + 17)
    instance = await stored(archive, tmp_path, data)
    assert await archive.read_range(instance, start, end) == data[start:end]
    if end > start:
        first, last = start // SEGMENT, (end - 1) // SEGMENT
        stride = SEGMENT + TAG_SIZE
        if first == 0:
            # The header and the first segments are contiguous: one request.
            assert s3.range_requests == [f"bytes=0-{HEADER_SIZE + (last + 1) * stride - 1}"]
        else:
            assert sorted(s3.range_requests) == sorted(
                [
                    f"bytes=0-{HEADER_SIZE - 1}",
                    f"bytes={HEADER_SIZE + first * stride}-{HEADER_SIZE + (last + 1) * stride - 1}",
                ]
            )


@pytest.mark.parametrize(("start", "end"), [(0, 10), (5, SEGMENT + 9), (SEGMENT + 3, 2 * SEGMENT + 1)])
@pytest.mark.parametrize("reading_segment", [SEGMENT // 2, 2 * SEGMENT])
async def test_an_object_written_with_another_segment_size_reads_right(
    s3: MemoryS3, tmp_path: Path, start: int, end: int, reading_segment: int
) -> None:
    # Written with SEGMENT, read by an archive configured otherwise (the setting changed since): the header
    # says which segments to fetch, whether the first request guessed them in one range or two.
    keys = StudyKeyStore(MemoryCollection(), keyring())  # type: ignore[arg-type]
    writer = InstanceArchive(s3, "bucket", keys, segment_size=SEGMENT)  # type: ignore[arg-type]
    reader = InstanceArchive(s3, "bucket", keys, segment_size=reading_segment)  # type: ignore[arg-type]
    data = os.urandom(3 * SEGMENT + 17)
    instance = await stored(writer, tmp_path, data)
    assert await reader.read_range(instance, start, end) == data[start:end]


async def test_a_range_outside_the_file_is_refused(archive: InstanceArchive, tmp_path: Path) -> None:
    instance = await stored(archive, tmp_path, b"x" * 10)
    with pytest.raises(ValueError, match="outside"):
        await archive.read_range(instance, 5, 11)


async def test_a_flipped_bit_is_detected(archive: InstanceArchive, s3: MemoryS3, tmp_path: Path) -> None:
    data = os.urandom(2 * SEGMENT)
    instance = await stored(archive, tmp_path, data)
    sealed = bytearray(s3.objects["k"])
    sealed[HEADER_SIZE + SEGMENT + 100] ^= 0x01
    s3.objects["k"] = bytes(sealed)
    with pytest.raises(EnvelopeError, match="segment 1"):
        await read_all(archive, instance)
    with pytest.raises(EnvelopeError):
        await archive.read_range(instance, SEGMENT - 10, SEGMENT + 10)
    assert await archive.read_range(instance, 0, 10) == data[:10]  # the untouched segment still reads


async def test_a_truncated_object_is_detected(archive: InstanceArchive, s3: MemoryS3, tmp_path: Path) -> None:
    instance = await stored(archive, tmp_path, os.urandom(2 * SEGMENT + 5))
    whole = s3.objects["k"]
    s3.objects["k"] = whole[: -(5 + TAG_SIZE)]  # the final segment dropped
    with pytest.raises(EnvelopeError, match="truncated"):
        await read_all(archive, instance)
    s3.objects["k"] = whole[:-1]
    with pytest.raises(EnvelopeError):
        await read_all(archive, instance)


async def test_swapped_segments_are_detected(archive: InstanceArchive, s3: MemoryS3, tmp_path: Path) -> None:
    instance = await stored(archive, tmp_path, os.urandom(3 * SEGMENT))
    sealed = s3.objects["k"]
    stride = SEGMENT + TAG_SIZE
    first, second = (sealed[HEADER_SIZE + i * stride : HEADER_SIZE + (i + 1) * stride] for i in (0, 1))
    s3.objects["k"] = sealed[:HEADER_SIZE] + second + first + sealed[HEADER_SIZE + 2 * stride :]
    with pytest.raises(EnvelopeError):
        await read_all(archive, instance)


async def test_an_object_moved_to_another_key_is_detected(
    archive: InstanceArchive, s3: MemoryS3, tmp_path: Path
) -> None:
    data = os.urandom(100)
    await stored(archive, tmp_path, data, key="studies/a")
    s3.objects["studies/b"] = s3.objects["studies/a"]
    with pytest.raises(EnvelopeError):
        await read_all(archive, record("studies/b", data))


async def test_a_header_claiming_another_size_is_detected(
    archive: InstanceArchive, s3: MemoryS3, tmp_path: Path
) -> None:
    data = os.urandom(SEGMENT + 10)
    instance = await stored(archive, tmp_path, data)
    sealed = s3.objects["k"]
    header = EnvelopeHeader.from_bytes(sealed)
    forged = EnvelopeHeader(header.segment_size, SEGMENT, header.nonce_prefix, header.data_key_id)
    s3.objects["k"] = forged.to_bytes() + sealed[HEADER_SIZE : HEADER_SIZE + SEGMENT + TAG_SIZE]
    with pytest.raises(EnvelopeError):
        await read_all(archive, record("k", data[:SEGMENT]))
    assert instance.size_bytes == SEGMENT + 10


def test_a_segment_of_the_last_position_without_final_flag_fails() -> None:
    key = os.urandom(32)
    header = EnvelopeHeader.new(2 * SEGMENT, os.urandom(16), SEGMENT)
    cipher = SegmentCipher(key, header, "k")
    sealed_first = cipher.seal(0, bytes(SEGMENT))
    shorter = EnvelopeHeader(SEGMENT, SEGMENT, header.nonce_prefix, header.data_key_id)
    with pytest.raises(EnvelopeError):
        SegmentCipher(key, shorter, "k").open(0, sealed_first)


async def test_study_keys_are_created_once_wrapped_and_rotated() -> None:
    collection = MemoryCollection()
    old = KeyEncryptionKey("old", os.urandom(32))
    first = await StudyKeyStore(collection, KeyRing(old)).key_for_writing(STUDY)  # type: ignore[arg-type]
    document = collection.documents[STUDY]
    assert document["kek_id"] == "old"
    assert first.key not in document["wrapped"]
    # Another replica racing to create the same study's key gets the winner's.
    assert (await StudyKeyStore(collection, KeyRing(old)).key_for_writing(STUDY)).key == first.key  # type: ignore[arg-type]
    new = KeyEncryptionKey("new", os.urandom(32))
    rotated = StudyKeyStore(collection, KeyRing(new, {"old": old}))  # type: ignore[arg-type]
    assert (await rotated.key_for_reading(STUDY, first.key_id)).key == first.key
    assert collection.documents[STUDY]["kek_id"] == "new"
    with pytest.raises(EnvelopeError, match="not configured"):
        await StudyKeyStore(collection, KeyRing(old)).key_for_reading(STUDY, first.key_id)  # type: ignore[arg-type]


def test_a_wrapped_key_is_bound_to_its_study() -> None:
    ring = keyring()
    wrapped = ring.wrap(STUDY, DataKey(os.urandom(16), os.urandom(32)))
    with pytest.raises(EnvelopeError):
        ring.unwrap("1.2.3.999", wrapped)


def test_the_kek_setting_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Settings(archive_kek=base64.b64encode(b"short").decode())
    with pytest.raises(RuntimeError, match="ARCHIVE_KEK"):
        keyring_from(Settings())
    settings = Settings(archive_kek=base64.b64encode(bytes(32)).decode(), archive_kek_id="k2")
    assert keyring_from(settings).current.key_id == "k2"
