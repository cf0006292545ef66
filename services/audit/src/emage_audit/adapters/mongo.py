"""The audit trail in its own MongoDB database.

Collections:

* ``records`` — the chain, one document per record: ``_id`` is the sequence number, then ``prev_hash``,
  ``hash``, ``event_id`` (unique), ``type``, ``time``, ``recorded_at``, ``data``, and ``ix``, the query
  fields derived from the content (:func:`~emage_audit.domain.entries.index_fields`), indexed for the DPO's
  searches and patients' logs (each index ends with ``_id`` so a page is read in chain order).
* ``chain`` — one document, ``head``: the sequence number, hash and append time of the last record.
* ``checkpoints`` — the signed checkpoints, ``_id`` their sequence number.
* ``alerts`` — break-the-glass episodes, ``_id`` the episode's id.
* ``exams`` — what archived instances told of their exams (modality, date, description), ``_id`` the study.
* ``exports`` — per export, the last exported sequence number and the instance holding the export lease.

Appending a batch of entries is one transaction: look their event ids up (a redelivery appends nothing), read
the head, insert the new records with the next sequence numbers, move the head on only if it is still where it
was read (optimistic concurrency), and fold in the alert and exam facts: a bulk import's events cost one
transaction a poll, not one each. Two writers that read the same head conflict on the head
document (and on the record's ``_id``); MongoDB aborts one with a transient error and the transaction is run
again against the new head, so the chain never forks. Within one process appends are also serialised, so
concurrent partitions do not conflict needlessly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import pymongo
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from emage_audit.domain.chain import EMPTY_HEAD, GENESIS_HASH, ChainHead, ChainRecord, extend
from emage_audit.domain.checkpoints import Checkpoint
from emage_audit.domain.entries import AlertSighting, ExamFacts, index_fields
from emage_audit.domain.verification import StoredRecord
from emage_audit.service import Alert, Appendable, Appended, RecordQuery
from emage_common.mongo import in_transaction

Document = dict[str, Any]

HEAD: Final = "head"
_TRANSACTION_TIMEOUT_S: Final = 30

_RECORD_INDEXES: Final = [
    IndexModel([("event_id", ASCENDING)], name="event_id", unique=True),
    IndexModel([("ix.patient_key", ASCENDING), ("_id", DESCENDING)], name="patient"),
    IndexModel([("ix.studies", ASCENDING), ("_id", DESCENDING)], name="study"),
    IndexModel([("ix.subject", ASCENDING), ("_id", DESCENDING)], name="subject"),
    IndexModel([("ix.facility", ASCENDING), ("_id", DESCENDING)], name="facility"),
    IndexModel([("ix.at", DESCENDING)], name="time"),
    IndexModel([("type", ASCENDING), ("_id", DESCENDING)], name="type"),
]
_ALERT_INDEXES: Final = [
    IndexModel([("patient_key", ASCENDING), ("last_at", DESCENDING)], name="patient"),
    IndexModel([("last_at", DESCENDING)], name="recent"),
]


class ChainHeadMovedError(RuntimeError):
    """The head moved between reading it and appending after it (another writer won): try again."""


def _record_document(record: ChainRecord) -> Document:
    return {
        "_id": record.seq,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "event_id": record.event_id,
        "type": record.type,
        "time": record.time,
        "recorded_at": record.recorded_at,
        "data": dict(record.data),
        "ix": index_fields(record.type, record.data, record.time),
    }


def _record(document: Mapping[str, Any]) -> ChainRecord:
    return ChainRecord(
        seq=document["_id"],
        prev_hash=document["prev_hash"],
        event_id=document["event_id"],
        type=document["type"],
        time=document["time"],
        recorded_at=document["recorded_at"],
        data=document["data"],
        hash=document["hash"],
    )


def _checkpoint(document: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(
        seq=document["_id"],
        hash=document["hash"],
        recorded_at=document["recorded_at"],
        signed_at=document["signed_at"],
        key_id=document["key_id"],
        signature=document["signature"],
    )


def _alert(document: Mapping[str, Any]) -> Alert:
    return Alert(
        alert_id=document["_id"],
        patient_key=document.get("patient_key"),
        study_instance_uid=document.get("study_instance_uid"),
        principal=document["principal"],
        justification=document.get("justification"),
        first_at=document["first_at"],
        last_at=document["last_at"],
        first_seq=document["first_seq"],
        last_seq=document["last_seq"],
        records=document["records"],
    )


def _alert_update(alert: AlertSighting, seq: int) -> UpdateOne:
    """Open the break-the-glass episode at record ``seq``, or add the record to it."""
    return UpdateOne(
        {"_id": alert.alert_id},
        {
            "$setOnInsert": {
                "patient_key": alert.patient_key,
                "study_instance_uid": alert.study_instance_uid,
                "principal": dict(alert.principal),
                "justification": alert.justification,
                "first_at": alert.at,
                "first_seq": seq,
            },
            "$max": {"last_at": alert.at, "last_seq": seq},
            "$inc": {"records": 1},
        },
        upsert=True,
    )


def _exam_update(exam: ExamFacts) -> UpdateOne:
    """Note what an archived instance told of its exam."""
    facts = {"modality": exam.modality}
    if exam.study_date is not None:
        facts["study_date"] = exam.study_date
    if exam.study_description is not None:
        facts["study_description"] = exam.study_description
    return UpdateOne({"_id": exam.study_instance_uid}, {"$set": facts}, upsert=True)


def record_filter(query: RecordQuery) -> Document:
    """The MongoDB filter of a search on the query fields (``ix``)."""
    clauses: list[Document] = []
    if query.patient_keys is not None:
        clauses.append({"ix.patient_key": {"$in": list(query.patient_keys)}})
    for field, value in (
        ("ix.patient_key", query.patient_key),
        ("ix.studies", query.study),
        ("ix.subject", query.subject),
        ("ix.facility", query.facility),
        ("ix.decision", query.decision),
        ("ix.action", query.action),
        ("ix.break_glass", query.break_glass),
        ("type", query.type),
    ):
        if value is not None:
            clauses.append({field: value})
    period: Document = {}
    if query.since is not None:
        period["$gte"] = query.since
    if query.until is not None:
        period["$lt"] = query.until
    if period:
        clauses.append({"ix.at": period})
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class MongoAuditStore:
    """The :class:`~emage_audit.service.AuditStore` in the audit service's own database."""

    def __init__(self, client: AsyncMongoClient[Document], database: AsyncDatabase[Document]) -> None:
        self._client = client
        self._records: AsyncCollection[Document] = database["records"]
        self._chain: AsyncCollection[Document] = database["chain"]
        self._checkpoints: AsyncCollection[Document] = database["checkpoints"]
        self._alerts: AsyncCollection[Document] = database["alerts"]
        self._exams: AsyncCollection[Document] = database["exams"]
        self._exports: AsyncCollection[Document] = database["exports"]
        self._append_lock = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        """Create the indexes and the empty chain's head (no-ops when they exist)."""
        await asyncio.gather(
            self._records.create_indexes(_RECORD_INDEXES), self._alerts.create_indexes(_ALERT_INDEXES)
        )
        # DuplicateKeyError: another instance created it at the same moment.
        with contextlib.suppress(DuplicateKeyError):
            await self._chain.update_one(
                {"_id": HEAD}, {"$setOnInsert": {"seq": 0, "hash": GENESIS_HASH}}, upsert=True
            )

    # --- Appending ----------------------------------------------------------------------------------------

    async def append(self, items: Sequence[Appendable], *, now: datetime) -> list[Appended]:
        async def transaction(session: AsyncClientSession) -> list[Appended]:
            event_ids = list({item.entry.event_id for item in items})
            known: dict[str, ChainRecord] = {
                document["event_id"]: _record(document)
                async for document in self._records.find({"event_id": {"$in": event_ids}}, session=session)
            }
            start = await self._head(session)
            extended, head = extend(start, [item.entry for item in items], known=known, now=now)
            documents: list[Document] = []
            alerts: list[UpdateOne] = []
            exams: list[UpdateOne] = []
            for item, (record, created) in zip(items, extended, strict=True):
                if not created:
                    continue
                documents.append(_record_document(record))
                if item.alert is not None:
                    alerts.append(_alert_update(item.alert, record.seq))
                if item.exam is not None:
                    exams.append(_exam_update(item.exam))
            results = [Appended(record, created) for record, created in extended]
            if not documents:
                return results
            await self._records.insert_many(documents, session=session)
            moved = await self._chain.update_one(
                {"_id": HEAD, "seq": start.seq, "hash": start.hash},
                {"$set": {"seq": head.seq, "hash": head.hash, "recorded_at": head.recorded_at}},
                session=session,
            )
            if moved.matched_count != 1:
                raise ChainHeadMovedError(f"the chain head moved from {start.seq} while appending")
            # In order: an episode's first sighting in the batch opens it, the later ones add to it.
            if alerts:
                await self._alerts.bulk_write(alerts, session=session)
            if exams:
                await self._exams.bulk_write(exams, session=session)
            return results

        if not items:
            return []
        async with self._append_lock:
            for attempt in range(5):
                try:
                    with pymongo.timeout(_TRANSACTION_TIMEOUT_S):
                        return await in_transaction(self._client, transaction)
                except (ChainHeadMovedError, DuplicateKeyError):
                    # A writer elsewhere appended at the same sequence number first: read the new head.
                    await asyncio.sleep(0.01 * 2**attempt)
            with pymongo.timeout(_TRANSACTION_TIMEOUT_S):
                return await in_transaction(self._client, transaction)

    async def _head(self, session: AsyncClientSession | None = None) -> ChainHead:
        document = await self._chain.find_one({"_id": HEAD}, session=session)
        if document is None:
            return EMPTY_HEAD
        return ChainHead(seq=document["seq"], hash=document["hash"], recorded_at=document.get("recorded_at"))

    # --- Chain and checkpoints ----------------------------------------------------------------------------

    async def head(self) -> ChainHead:
        return await self._head()

    async def stored_records(self, through_seq: int) -> AsyncIterator[StoredRecord]:
        cursor = self._records.find({"_id": {"$lte": through_seq}}).sort("_id", ASCENDING).batch_size(1000)
        async for document in cursor:
            yield StoredRecord(_record(document), document.get("ix", {}))

    async def checkpoints(self) -> dict[int, Checkpoint]:
        return {document["_id"]: _checkpoint(document) async for document in self._checkpoints.find({})}

    async def latest_checkpoint(self) -> Checkpoint | None:
        document = await self._checkpoints.find_one({}, sort=[("_id", DESCENDING)])
        return None if document is None else _checkpoint(document)

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        # DuplicateKeyError: another instance signed the same head; one checkpoint is enough.
        with contextlib.suppress(DuplicateKeyError):
            await self._checkpoints.insert_one(
                {
                    "_id": checkpoint.seq,
                    "hash": checkpoint.hash,
                    "recorded_at": checkpoint.recorded_at,
                    "signed_at": checkpoint.signed_at,
                    "key_id": checkpoint.key_id,
                    "signature": checkpoint.signature,
                }
            )

    async def first_seq(self) -> int | None:
        document = await self._records.find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
        return None if document is None else int(document["_id"])

    async def count_through(self, seq: int) -> int:
        return await self._records.count_documents({"_id": {"$lte": seq}})

    async def delete_through(self, seq: int) -> int:
        """Delete the records up to ``seq`` and the alerts that only they held (a retention purge)."""
        deleted = await self._records.delete_many({"_id": {"$lte": seq}})
        await self._alerts.delete_many({"last_seq": {"$lte": seq}})
        return deleted.deleted_count

    # --- Reading ------------------------------------------------------------------------------------------

    async def search(self, query: RecordQuery, *, offset: int, limit: int) -> tuple[int, list[ChainRecord]]:
        """The matching records, most recent first, and how many match on all pages."""
        found = record_filter(query)
        total, documents = await asyncio.gather(
            self._records.count_documents(found),
            self._records.find(found).sort("_id", DESCENDING).skip(offset).limit(limit).to_list(),
        )
        return total, [_record(document) for document in documents]

    async def records_after(self, seq: int, limit: int) -> list[ChainRecord]:
        cursor = self._records.find({"_id": {"$gt": seq}}).sort("_id", ASCENDING).limit(limit)
        return [_record(document) async for document in cursor]

    async def exams(self, study_instance_uids: Sequence[str]) -> dict[str, ExamFacts]:
        cursor = self._exams.find({"_id": {"$in": list(study_instance_uids)}})
        return {
            document["_id"]: ExamFacts(
                study_instance_uid=document["_id"],
                modality=document["modality"],
                study_date=document.get("study_date"),
                study_description=document.get("study_description"),
            )
            async for document in cursor
        }

    async def alerts(
        self, patient_keys: tuple[str, ...] | None, *, offset: int, limit: int
    ) -> tuple[int, list[Alert]]:
        found: Document = {} if patient_keys is None else {"patient_key": {"$in": list(patient_keys)}}
        total, documents = await asyncio.gather(
            self._alerts.count_documents(found),
            self._alerts.find(found)
            .sort([("last_at", DESCENDING), ("_id", ASCENDING)])
            .skip(offset)
            .limit(limit)
            .to_list(),
        )
        return total, [_alert(document) for document in documents]

    # --- Exports ------------------------------------------------------------------------------------------

    async def export_position(self, name: str) -> int | None:
        document = await self._exports.find_one({"_id": name}, {"last_seq": 1})
        return None if document is None else int(document.get("last_seq", 0))

    async def claim_export(self, name: str, owner: str, *, now: datetime, lease: timedelta) -> int | None:
        """Take (or renew) the export's lease; the last exported sequence number, or None if another instance
        holds the lease."""
        try:
            document = await self._exports.find_one_and_update(
                {"_id": name, "$or": [{"owner": owner}, {"lease_until": {"$lt": now}}, {"owner": None}]},
                {"$set": {"owner": owner, "lease_until": now + lease}, "$setOnInsert": {"last_seq": 0}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None  # The export exists and another instance holds its lease.
        return None if document is None else int(document["last_seq"])

    async def advance_export(self, name: str, owner: str, last_seq: int) -> bool:
        """Record that every record up to ``last_seq`` was exported, if ``owner`` still holds the lease."""
        moved = await self._exports.update_one(
            {"_id": name, "owner": owner, "last_seq": {"$lt": last_seq}}, {"$set": {"last_seq": last_seq}}
        )
        return moved.matched_count == 1
