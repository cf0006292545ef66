"""Ingest's MongoDB collections: the instance index, the transactional outbox and store claims.

* ``instances``: one document per SOP instance, ``_id`` = SOP Instance UID (:class:`InstanceIndex`).
* ``outbox``: events recorded in the same transaction as the instance they announce, published by the
  service right after the commit or, if that fails, by the relay (:class:`Outbox`).
* ``store_claims``: a short lease per SOP Instance UID held while one request archives it, so two
  concurrent stores of the same instance never write the same object key at once.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pymongo
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from emage_common.mongo import in_transaction
from emage_common.outbox import MongoOutbox, entry_document
from emage_common.outbox import OutboxEntry as OutboxEntry
from emage_ingest.domain.model import ArchivedInstance, ByteRange, FrameLocation, PixelAttributes

INSTANCES: Final = "instances"
OUTBOX: Final = "outbox"
STORE_CLAIMS: Final = "store_claims"
STUDY_KEYS: Final = "study_keys"

# Bounds one transaction, retries included, well below PyMongo's 120 s default.
_TRANSACTION_TIMEOUT_S: Final = 20


class ConcurrentStoreError(RuntimeError):
    """The instance changed, or this request's claim on it lapsed, between the check and the commit."""


def _frame_to_document(frame: FrameLocation) -> list[Any]:
    if not frame.fragments:
        return [frame.offset, frame.length]
    return [frame.offset, frame.length, [[piece.offset, piece.length] for piece in frame.fragments]]


def _frame_from_document(value: Sequence[Any]) -> FrameLocation:
    fragments = tuple(ByteRange(int(o), int(n)) for o, n in value[2]) if len(value) > 2 else ()
    return FrameLocation(int(value[0]), int(value[1]), fragments)


def instance_to_document(instance: ArchivedInstance) -> dict[str, Any]:
    """The ``instances`` document of ``instance``."""
    return {
        "_id": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "object_key": instance.object_key,
        "size_bytes": instance.size_bytes,
        "sha256": instance.sha256,
        "stored_at": instance.stored_at,
        "facility_finess": instance.facility_finess,
        "modality": instance.modality,
        "instance_number": instance.instance_number,
        "number_of_frames": instance.number_of_frames,
        "frames": [_frame_to_document(frame) for frame in instance.frames],
        "pixel": dataclasses.asdict(instance.pixels) if instance.pixels is not None else None,
    }


def instance_from_document(document: Mapping[str, Any]) -> ArchivedInstance:
    """The :class:`ArchivedInstance` an ``instances`` document records."""
    pixel = document.get("pixel")
    stored_at: datetime = document["stored_at"]
    return ArchivedInstance(
        study_instance_uid=document["study_instance_uid"],
        series_instance_uid=document["series_instance_uid"],
        sop_instance_uid=document["_id"],
        sop_class_uid=document["sop_class_uid"],
        transfer_syntax_uid=document["transfer_syntax_uid"],
        object_key=document["object_key"],
        size_bytes=int(document["size_bytes"]),
        sha256=document["sha256"],
        stored_at=stored_at if stored_at.tzinfo else stored_at.replace(tzinfo=UTC),
        facility_finess=document["facility_finess"],
        modality=document["modality"],
        instance_number=document.get("instance_number"),
        number_of_frames=int(document["number_of_frames"]),
        frames=tuple(_frame_from_document(frame) for frame in document["frames"]),
        pixels=PixelAttributes(**pixel) if pixel else None,
    )


class InstanceIndex:
    """The archived instances: what is stored, where, and how to read its frames."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self._instances = database[INSTANCES]
        self._claims = database[STORE_CLAIMS]
        self._outbox = database[OUTBOX]

    async def ensure_indexes(self) -> None:
        """Create the indexes the queries need (idempotent; run at start-up)."""
        await self._instances.create_index(
            [
                ("study_instance_uid", ASCENDING),
                ("series_instance_uid", ASCENDING),
                ("instance_number", ASCENDING),
            ],
            name="study_series_number",
        )
        await self._claims.create_index("expires_at", expireAfterSeconds=0, name="claim_expiry")

    async def get(self, sop_instance_uid: str) -> ArchivedInstance | None:
        """The instance with this SOP Instance UID, or ``None``."""
        document = await self._instances.find_one({"_id": sop_instance_uid})
        return instance_from_document(document) if document is not None else None

    async def list(self, study_uid: str, series_uid: str | None = None) -> builtins.list[ArchivedInstance]:
        """The instances of a study (or of one of its series), by series, then Instance Number, then UID."""
        query: dict[str, Any] = {"study_instance_uid": study_uid}
        if series_uid is not None:
            query["series_instance_uid"] = series_uid
        cursor = self._instances.find(query).sort(
            [("series_instance_uid", ASCENDING), ("instance_number", ASCENDING), ("_id", ASCENDING)]
        )
        return [instance_from_document(document) async for document in cursor]

    async def claim(self, sop_instance_uid: str, token: str, lease: timedelta) -> bool:
        """Take the store lease on an instance; ``False`` while another request holds an unexpired one."""
        now = datetime.now(UTC)
        try:
            await self._claims.insert_one(
                {"_id": sop_instance_uid, "token": token, "expires_at": now + lease}
            )
            return True
        except DuplicateKeyError:
            taken = await self._claims.find_one_and_update(
                {"_id": sop_instance_uid, "expires_at": {"$lt": now}},
                {"$set": {"token": token, "expires_at": now + lease}},
            )
            return taken is not None

    async def release(self, sop_instance_uid: str, token: str) -> None:
        """Give the lease back (only if it is still ``token``'s)."""
        await self._claims.delete_one({"_id": sop_instance_uid, "token": token})

    async def record(
        self,
        instance: ArchivedInstance,
        entry: OutboxEntry,
        *,
        claim_token: str,
        replaces_sha256: str | None,
        publishing_lease: timedelta,
        publisher_id: str,
    ) -> None:
        """Record ``instance`` and its outbox ``entry``, and release the claim, in one transaction.

        ``replaces_sha256`` is the digest of the version being replaced (``None`` for a first store); if
        the recorded state is not that any more, or the claim lapsed, nothing is written and
        :class:`ConcurrentStoreError` is raised. The entry is leased to ``publisher_id`` for
        ``publishing_lease``, so the relay leaves it to the direct publication meanwhile. Each statement
        both acts and checks, so the transaction costs four round trips with its commit.
        """
        document = instance_to_document(instance)
        outboxed = entry_document(
            entry, lease_owner=publisher_id, lease_until=datetime.now(UTC) + publishing_lease
        )

        async def write(session: AsyncClientSession) -> None:
            released = await self._claims.delete_one(
                {"_id": instance.sop_instance_uid, "token": claim_token}, session=session
            )
            if released.deleted_count != 1:
                raise ConcurrentStoreError("the store lease on this instance lapsed")
            if replaces_sha256 is None:
                try:
                    await self._instances.insert_one(document, session=session)
                except DuplicateKeyError:
                    raise ConcurrentStoreError("the instance was stored meanwhile") from None
            else:
                replaced = await self._instances.replace_one(
                    {"_id": instance.sop_instance_uid, "sha256": replaces_sha256}, document, session=session
                )
                if replaced.matched_count != 1:
                    raise ConcurrentStoreError("the instance changed while it was being stored")
            await self._outbox.insert_one(outboxed, session=session)

        with pymongo.timeout(_TRANSACTION_TIMEOUT_S):
            await in_transaction(self._database.client, write)


class Outbox(MongoOutbox[OutboxEntry]):
    """Events recorded with the state change they announce, until Kafka has them.

    Any number of replicas may drain it: an entry is leased (owner and expiry) before it is published, so
    at most one replica publishes it at a time; a replica that dies mid-way lets its lease expire and
    another publishes the entry. Publication is at least once; consumers deduplicate by event id, which
    stays the same however often the entry is published.
    """

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(database, OutboxEntry, OUTBOX)
