"""The encrypted S3 archive of DICOM Part 10 objects (format and keys: :mod:`emage_ingest.adapters.crypto`).

Writes stream from a local file through encryption into a multipart upload; reads stream the object back
through decryption, or fetch only the segments that cover a plaintext byte range. Nothing here holds a
whole object in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from emage_common.s3 import DEFAULT_PART_SIZE, open_object, put_object_stream
from emage_ingest.adapters.crypto import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    EnvelopeDecryptor,
    EnvelopeError,
    EnvelopeHeader,
    SegmentCipher,
    StudyKeyStore,
)
from emage_ingest.domain.model import ArchivedInstance

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

ENVELOPE_CONTENT_TYPE: Final = "application/octet-stream"
ENVELOPE_METADATA: Final = {"emage-envelope": "aes-256-gcm-segmented-v1"}
# Segments sealed per worker-thread hop: amortises the hop, bounds the memory of one write.
_SEGMENTS_PER_BATCH: Final = 8


class InstanceArchive:
    """Encrypted objects in one bucket: :meth:`put`, :meth:`stream`, :meth:`read_range`, :meth:`delete`."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        keys: StudyKeyStore,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._keys = keys
        self._segment_size = segment_size
        self._part_size = part_size

    async def put(self, key: str, study_uid: str, source_file: Path) -> None:
        """Encrypt ``source_file`` under the study's data key and store it at ``key``.

        Returns once the object is durable in S3 (the upload completed); on any failure no object is left
        under ``key`` (see :func:`emage_common.s3.put_object_stream`).
        """
        data_key = await self._keys.key_for_writing(study_uid)
        size = (await asyncio.to_thread(source_file.stat)).st_size
        header = EnvelopeHeader.new(size, data_key.key_id, self._segment_size)
        cipher = SegmentCipher(data_key.key, header, key)

        async def sealed_chunks() -> AsyncIterator[bytes]:
            yield header.to_bytes()
            source = await asyncio.to_thread(source_file.open, "rb")
            try:
                for first in range(0, header.segment_count, _SEGMENTS_PER_BATCH):
                    yield await asyncio.to_thread(_read_and_seal, source, cipher, first)
            finally:
                await asyncio.to_thread(source.close)

        await put_object_stream(
            self._s3,
            self._bucket,
            key,
            sealed_chunks(),
            part_size=self._part_size,
            content_type=ENVELOPE_CONTENT_TYPE,
            metadata=ENVELOPE_METADATA,
        )

    async def stream(
        self, record: ArchivedInstance, chunk_size: int = DEFAULT_SEGMENT_SIZE
    ) -> AsyncIterator[bytes]:
        """The decrypted Part 10 bytes of ``record``'s object, in chunks of at most ``chunk_size``.

        Every byte yielded has been authenticated; an altered or truncated object raises
        :class:`~emage_ingest.adapters.crypto.EnvelopeError` (after the authentic bytes before the damage).
        Raises :class:`emage_common.s3.ObjectNotFoundError` when the object is missing.
        """
        body = await open_object(self._s3, self._bucket, record.object_key)
        async with body:
            pending = bytearray()
            decryptor: EnvelopeDecryptor | None = None
            async for chunk in body.chunks():
                if decryptor is None:
                    pending += chunk
                    if len(pending) < HEADER_SIZE:
                        continue
                    header = EnvelopeHeader.from_bytes(bytes(pending[:HEADER_SIZE]))
                    if header.plaintext_size != record.size_bytes:
                        raise EnvelopeError("the object's size differs from its record")
                    data_key = await self._keys.key_for_reading(record.study_instance_uid, header.data_key_id)
                    decryptor = EnvelopeDecryptor(data_key.key, header, record.object_key)
                    chunk = bytes(pending[HEADER_SIZE:])
                    pending.clear()
                for plaintext in decryptor.feed(chunk):
                    for start in range(0, len(plaintext), chunk_size):
                        yield plaintext[start : start + chunk_size]
            if decryptor is None:
                raise EnvelopeError("object is shorter than an envelope header")
            decryptor.finish()

    async def read_range(self, record: ArchivedInstance, start: int, end: int) -> bytes:
        """Plaintext bytes ``[start, end)`` of ``record``'s Part 10 file (``end`` exclusive, like a slice).

        Fetches the header and just the segments covering the range (one round trip: a single request
        when the range starts in the first segment, which sits right after the header — a frame of most
        single-frame images — else two concurrent ones), and authenticates them. Raises
        :class:`ValueError` for a range outside the file.
        """
        if not 0 <= start <= end <= record.size_bytes:
            raise ValueError(f"byte range [{start}, {end}) is outside a file of {record.size_bytes} bytes")
        if start == end:
            return b""
        if start < self._segment_size:
            both = await self._get(record.object_key, 0, _sealed_end(self._segment_size, end))
            header_bytes, sealed = both[:HEADER_SIZE], both[HEADER_SIZE:]
        else:
            header_bytes, sealed = await asyncio.gather(
                self._get(record.object_key, 0, HEADER_SIZE),
                self._get_segments(record.object_key, self._segment_size, start, end),
            )
        header = EnvelopeHeader.from_bytes(header_bytes)
        if header.plaintext_size != record.size_bytes:
            raise EnvelopeError("the object's size differs from its record")
        if header.segment_size != self._segment_size:
            # Written with another segment size: fetch the right segments now that it is known.
            sealed = await self._get_segments(record.object_key, header.segment_size, start, end)
        data_key = await self._keys.key_for_reading(record.study_instance_uid, header.data_key_id)
        cipher = SegmentCipher(data_key.key, header, record.object_key)
        indices = header.segments_covering(start, end)
        plaintext = bytearray()
        position = 0
        for index in indices:
            size = header.segment_plaintext_size(index) + TAG_SIZE
            plaintext += cipher.open(index, sealed[position : position + size])
            position += size
        first = indices.start * header.segment_size
        return bytes(plaintext[start - first : end - first])

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (no error if it is already gone)."""
        await self._s3.delete_object(Bucket=self._bucket, Key=key)

    async def _get_segments(self, key: str, segment_size: int, start: int, end: int) -> bytes:
        first = start // segment_size
        return await self._get(
            key, HEADER_SIZE + first * (segment_size + TAG_SIZE), _sealed_end(segment_size, end)
        )

    async def _get(self, key: str, start: int, end: int) -> bytes:
        body = await open_object(self._s3, self._bucket, key, byte_range=f"bytes={start}-{end - 1}")
        parts = [chunk async for chunk in body.chunks()]
        return b"".join(parts)


def _sealed_end(segment_size: int, end: int) -> int:
    """The object offset just past the sealed segment holding plaintext byte ``end - 1``. The last segment
    may be shorter: a range past the object's end is clipped by S3 (RFC 9110 §14.1.2)."""
    return HEADER_SIZE + ((end - 1) // segment_size + 1) * (segment_size + TAG_SIZE)


def _read_and_seal(source: IO[bytes], cipher: SegmentCipher, first: int) -> bytes:
    header = cipher.header
    sealed = []
    for index in range(first, min(first + _SEGMENTS_PER_BATCH, header.segment_count)):
        size = header.segment_plaintext_size(index)
        plaintext = source.read(size)
        if len(plaintext) != size:
            raise OSError("the source file changed size while it was being archived")
        sealed.append(cipher.seal(index, plaintext))
    return b"".join(sealed)
