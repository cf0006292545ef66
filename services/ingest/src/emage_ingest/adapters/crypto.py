"""Envelope encryption of archived objects: AES-256-GCM in fixed-size segments under a per-study data key,
itself wrapped by a key-encryption key (KEK).

Object format (all integers big-endian)::

    header   magic "EMGE" | version (1) | 3 zero bytes | segment size (u32) | plaintext size (u64)
             | nonce prefix (8 random bytes) | data key id (16 bytes)                     = 44 bytes
    segment  AES-256-GCM(data key, nonce = prefix || index (u32), plaintext segment, AAD) || tag (16)

Every segment holds ``segment size`` plaintext bytes except the last (an empty object has one empty
segment). The AAD of a segment is the whole header, the object key, the segment index and a final-segment
flag, so that any change is detected when the segment is opened: a flipped bit (the tag), a segment moved
to another place or another object (index, object key), a truncated object (the last segment present no
longer carries the final flag, and the header's plaintext size, authenticated by every segment, no longer
matches) or a header edited to say otherwise. Fixed-size segments make a plaintext byte range map to a
ciphertext byte range, so a frame is read with one ranged GET of the segments that cover it.

Data keys: one random 256-bit key per study, created on the study's first instance and stored in ingest's
``study_keys`` collection wrapped (AES-256-GCM, AAD = study UID and data key id) by the current KEK, with
the KEK's id. Rotating the KEK is configuring a new current KEK and keeping the old one as retired: a data
key wrapped by a retired KEK is re-wrapped by the current one the next time it is used. Only wrapped keys
are ever written to the database.
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

MAGIC: Final = b"EMGE"
VERSION: Final = 1
_HEADER = struct.Struct(">4sB3xIQ8s16s")
HEADER_SIZE: Final = _HEADER.size
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
DEFAULT_SEGMENT_SIZE: Final = 1024 * 1024
# The nonce is prefix (8 bytes) || segment index (4 bytes): at most 2**32 segments per object.
MAX_SEGMENTS: Final = 2**32
_SEGMENT_AAD = struct.Struct(">QB")
_KEY_WRAP_CONTEXT: Final = b"emage/study-data-key/v1"


class EnvelopeError(ValueError):
    """An archived object is not a valid envelope or was altered: authentication failed."""


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The fixed-size header at the start of every archived object."""

    segment_size: int
    plaintext_size: int
    nonce_prefix: bytes
    data_key_id: bytes

    @classmethod
    def new(
        cls, plaintext_size: int, data_key_id: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE
    ) -> EnvelopeHeader:
        """A header for a new object, with a fresh random nonce prefix."""
        header = cls(segment_size, plaintext_size, os.urandom(8), data_key_id)
        if header.segment_count > MAX_SEGMENTS:
            raise ValueError(f"an object of {plaintext_size} bytes needs more than {MAX_SEGMENTS} segments")
        return header

    def __post_init__(self) -> None:
        if self.segment_size <= 0 or self.plaintext_size < 0:
            raise EnvelopeError("envelope header: invalid segment or plaintext size")
        if len(self.nonce_prefix) != 8 or len(self.data_key_id) != 16:
            raise EnvelopeError("envelope header: invalid nonce prefix or data key id")

    @classmethod
    def from_bytes(cls, raw: bytes) -> EnvelopeHeader:
        """Parse a header; raises :class:`EnvelopeError` if ``raw`` is not one."""
        if len(raw) < HEADER_SIZE:
            raise EnvelopeError("envelope header is truncated")
        magic, version, segment_size, plaintext_size, prefix, key_id = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != VERSION:
            raise EnvelopeError("not an e-mage envelope (bad magic or version)")
        return cls(segment_size, plaintext_size, prefix, key_id)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, self.segment_size, self.plaintext_size, self.nonce_prefix, self.data_key_id
        )

    @property
    def segment_count(self) -> int:
        return max(1, math.ceil(self.plaintext_size / self.segment_size))

    @property
    def object_size(self) -> int:
        """Size of the whole encrypted object."""
        return HEADER_SIZE + self.plaintext_size + self.segment_count * TAG_SIZE

    def segment_plaintext_size(self, index: int) -> int:
        if index < self.segment_count - 1:
            return self.segment_size
        return self.plaintext_size - (self.segment_count - 1) * self.segment_size

    def segment_offset(self, index: int) -> int:
        """Offset of segment ``index`` in the encrypted object."""
        return HEADER_SIZE + index * (self.segment_size + TAG_SIZE)

    def segments_covering(self, start: int, end: int) -> range:
        """Indices of the segments holding plaintext bytes ``[start, end)`` (``end > start``)."""
        return range(start // self.segment_size, (end - 1) // self.segment_size + 1)


class SegmentCipher:
    """Seals and opens the segments of one object (one header, one data key, one object key)."""

    def __init__(self, data_key: bytes, header: EnvelopeHeader, object_key: str) -> None:
        self._aead = AESGCM(data_key)
        self.header = header
        header_bytes = header.to_bytes()
        key_bytes = object_key.encode()
        self._aad_prefix = header_bytes + struct.pack(">I", len(key_bytes)) + key_bytes

    def _nonce_and_aad(self, index: int) -> tuple[bytes, bytes]:
        if not 0 <= index < self.header.segment_count:
            raise EnvelopeError(f"segment {index} is outside the object")
        final = 1 if index == self.header.segment_count - 1 else 0
        nonce = self.header.nonce_prefix + struct.pack(">I", index)
        return nonce, self._aad_prefix + _SEGMENT_AAD.pack(index, final)

    def seal(self, index: int, plaintext: bytes) -> bytes:
        """Encrypt segment ``index``; its plaintext must have exactly the size the header implies."""
        if len(plaintext) != self.header.segment_plaintext_size(index):
            raise ValueError(f"segment {index} has {len(plaintext)} bytes, the header implies otherwise")
        nonce, aad = self._nonce_and_aad(index)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, index: int, sealed: bytes) -> bytes:
        """Decrypt and authenticate segment ``index``; raises :class:`EnvelopeError` if it was altered."""
        if len(sealed) != self.header.segment_plaintext_size(index) + TAG_SIZE:
            raise EnvelopeError(f"segment {index} has the wrong length (truncated object?)")
        nonce, aad = self._nonce_and_aad(index)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise EnvelopeError(f"segment {index} failed authentication (altered or misplaced)") from None


class EnvelopeDecryptor:
    """Decrypts a whole object fed in arbitrary chunks, as it streams from the store.

    :meth:`feed` returns the plaintext of every segment completed by the chunk; :meth:`finish` checks that
    the object ended exactly after its last segment.
    """

    def __init__(self, data_key: bytes, header: EnvelopeHeader, object_key: str) -> None:
        self._cipher = SegmentCipher(data_key, header, object_key)
        self._header = header
        self._buffer = bytearray()
        self._next = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        plaintexts: list[bytes] = []
        while self._next < self._header.segment_count:
            size = self._header.segment_plaintext_size(self._next) + TAG_SIZE
            if len(self._buffer) < size:
                break
            plaintexts.append(self._cipher.open(self._next, bytes(self._buffer[:size])))
            del self._buffer[:size]
            self._next += 1
        if self._next == self._header.segment_count and self._buffer:
            raise EnvelopeError("bytes follow the final segment")
        return plaintexts

    def finish(self) -> None:
        if self._next != self._header.segment_count:
            raise EnvelopeError(
                f"object ends after {self._next} of {self._header.segment_count} segments (truncated)"
            )


# --- Data keys and key-encryption keys ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyEncryptionKey:
    """A 256-bit AES key that wraps data keys, named by an id so a wrapped key says which KEK wrapped it."""

    key_id: str
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"KEK {self.key_id!r} must be {KEY_SIZE} bytes, not {len(self.key)}")
        if not self.key_id:
            raise ValueError("a KEK needs a non-empty id")

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"


@dataclass(frozen=True, slots=True)
class DataKey:
    """A study's data key in the clear (memory only) and its id."""

    key_id: bytes
    key: bytes

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()!r})"


def _wrap_aad(study_instance_uid: str, data_key_id: bytes) -> bytes:
    return b"\0".join((_KEY_WRAP_CONTEXT, study_instance_uid.encode(), data_key_id))


class KeyRing:
    """The current KEK (wraps new and re-wrapped keys) and retired ones (unwrap only)."""

    def __init__(
        self, current: KeyEncryptionKey, retired: Mapping[str, KeyEncryptionKey] | None = None
    ) -> None:
        self.current = current
        self._by_id = {**(retired or {}), current.key_id: current}

    def wrap(self, study_instance_uid: str, data_key: DataKey) -> dict[str, Any]:
        """The wrapped form of ``data_key`` under the current KEK (fields of a ``study_keys`` document)."""
        nonce = os.urandom(12)
        wrapped = AESGCM(self.current.key).encrypt(
            nonce, data_key.key, _wrap_aad(study_instance_uid, data_key.key_id)
        )
        return {"key_id": data_key.key_id, "kek_id": self.current.key_id, "nonce": nonce, "wrapped": wrapped}

    def unwrap(self, study_instance_uid: str, document: Mapping[str, Any]) -> DataKey:
        """The data key of a ``study_keys`` document; raises :class:`EnvelopeError` if it cannot be."""
        kek = self._by_id.get(str(document["kek_id"]))
        if kek is None:
            raise EnvelopeError(
                f"the KEK {document['kek_id']!r} that wrapped this study's key is not configured"
            )
        key_id = bytes(document["key_id"])
        try:
            key = AESGCM(kek.key).decrypt(
                bytes(document["nonce"]), bytes(document["wrapped"]), _wrap_aad(study_instance_uid, key_id)
            )
        except InvalidTag:
            raise EnvelopeError("a wrapped study data key failed authentication") from None
        return DataKey(key_id, key)


class StudyKeyStore:
    """Per-study data keys, wrapped in the ``study_keys`` collection, unwrapped copies cached in memory.

    A study's key is created once, race-free: the document's ``_id`` is the Study Instance UID, so of two
    replicas creating it at once one insert wins and the other reads the winner's key.
    """

    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], keyring: KeyRing, *, cache_size: int = 10_000
    ) -> None:
        self._collection = collection
        self._keyring = keyring
        self._cache: OrderedDict[str, DataKey] = OrderedDict()
        self._cache_size = cache_size

    async def key_for_writing(self, study_instance_uid: str) -> DataKey:
        """The study's data key, created if the study has none yet."""
        cached = self._cached(study_instance_uid)
        if cached is not None:
            return cached
        document = await self._collection.find_one({"_id": study_instance_uid})
        if document is None:
            data_key = DataKey(os.urandom(16), os.urandom(KEY_SIZE))
            document = {
                "_id": study_instance_uid,
                **self._keyring.wrap(study_instance_uid, data_key),
                "created_at": datetime.now(UTC),
            }
            try:
                await self._collection.insert_one(document)
            except DuplicateKeyError:
                document = await self._collection.find_one({"_id": study_instance_uid})
                if document is None:
                    raise
        return await self._remember(study_instance_uid, document)

    async def key_for_reading(self, study_instance_uid: str, data_key_id: bytes) -> DataKey:
        """The study's data key with id ``data_key_id``; raises :class:`EnvelopeError` if there is none."""
        cached = self._cached(study_instance_uid)
        if cached is None:
            document = await self._collection.find_one({"_id": study_instance_uid})
            if document is None:
                raise EnvelopeError("no data key is recorded for this study")
            cached = await self._remember(study_instance_uid, document)
        if cached.key_id != data_key_id:
            raise EnvelopeError("the object was sealed with another data key than its study's")
        return cached

    def _cached(self, study_instance_uid: str) -> DataKey | None:
        data_key = self._cache.get(study_instance_uid)
        if data_key is not None:
            self._cache.move_to_end(study_instance_uid)
        return data_key

    async def _remember(self, study_instance_uid: str, document: Mapping[str, Any]) -> DataKey:
        data_key = self._keyring.unwrap(study_instance_uid, document)
        if document["kek_id"] != self._keyring.current.key_id:
            # Rotation: re-wrap under the current KEK, unless another replica already did.
            await self._collection.update_one(
                {"_id": study_instance_uid, "kek_id": document["kek_id"]},
                {
                    "$set": {
                        **self._keyring.wrap(study_instance_uid, data_key),
                        "rewrapped_at": datetime.now(UTC),
                    }
                },
            )
        self._cache[study_instance_uid] = data_key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data_key
