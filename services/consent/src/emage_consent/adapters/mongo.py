"""The consent database (MongoDB db ``consent``): records, current state, per-patient order, outbox.

* ``consent_records``: one document per record, appended and never updated (unique
  ``(consent_id, revision)``); each carries ``sequence``, its rank among the patient's records.
* ``consents``: the current state of each consent (``_id`` = consent id), the fold of its records,
  rewritten in the same transaction as the record it follows; listings read it.
* ``patient_sequences``: the last ``sequence`` given per patient key. Incrementing it in every append
  orders a patient's history by commit and makes concurrent appends for one patient conflict (and retry)
  rather than interleave.
* ``outbox``: the ``consent.changed`` event of each record, stored in the same transaction, published right
  after the commit by the request or, failing that, by the relay (:class:`MongoOutbox`).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pymongo
from pydantic import TypeAdapter
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, DuplicateKeyError

from emage_common import outbox
from emage_common.events import ConsentGrantee
from emage_common.mongo import in_transaction
from emage_consent.domain.model import (
    Consent,
    ConsentRecord,
    ConsentState,
    InformationGiven,
    Period,
    Recorder,
)
from emage_consent.ports import ConcurrentChangeError, ConsentPage, ConsentQuery, OutboxEntry

RECORDS: Final = "consent_records"
CONSENTS: Final = "consents"
PATIENT_SEQUENCES: Final = "patient_sequences"
OUTBOX: Final = "outbox"

# Bounds one transaction, retries included, well below PyMongo's 120 s default.
_TRANSACTION_TIMEOUT_S: Final = 20

_GRANTEE: Final[TypeAdapter[ConsentGrantee]] = TypeAdapter(ConsentGrantee)


def _recorder_document(recorder: Recorder) -> dict[str, Any]:
    return {
        "subject": recorder.subject,
        "role": recorder.role,
        "name": recorder.name,
        "rpps": recorder.rpps,
        "facility_finess": recorder.facility_finess,
        "facility_name": recorder.facility_name,
    }


def _recorder(document: Mapping[str, Any]) -> Recorder:
    return Recorder(
        subject=document["subject"],
        role=document["role"],
        name=document.get("name"),
        rpps=document.get("rpps"),
        facility_finess=document.get("facility_finess"),
        facility_name=document.get("facility_name"),
    )


def _information_document(information: InformationGiven | None) -> dict[str, Any] | None:
    if information is None:
        return None
    return {"text": information.text, "notice_code": information.notice_code}


def _information(document: Mapping[str, Any] | None) -> InformationGiven | None:
    if document is None:
        return None
    return InformationGiven(text=document.get("text"), notice_code=document.get("notice_code"))


def _grantee(document: Mapping[str, Any] | None) -> ConsentGrantee | None:
    return None if document is None else _GRANTEE.validate_python(document)


def record_to_document(record: ConsentRecord, sequence: int) -> dict[str, Any]:
    """The ``consent_records`` document of ``record``, ``sequence``-th of its patient's records."""
    return {
        "consent_id": record.consent_id,
        "revision": record.revision,
        "sequence": sequence,
        "action": record.action,
        "patient_key": record.patient_key,
        "provision": record.provision,
        "status": record.status,
        "grantee": record.grantee.model_dump() if record.grantee is not None else None,
        "study_instance_uid": record.study_instance_uid,
        "valid_from": record.period.valid_from,
        "valid_until": record.period.valid_until,
        "recorded_at": record.recorded_at,
        "recorded_by": _recorder_document(record.recorded_by),
        "information": _information_document(record.information),
        "reason": record.reason,
    }


def record_from_document(document: Mapping[str, Any]) -> ConsentRecord:
    return ConsentRecord(
        consent_id=document["consent_id"],
        revision=int(document["revision"]),
        action=document["action"],
        patient_key=document["patient_key"],
        provision=document["provision"],
        status=document["status"],
        grantee=_grantee(document.get("grantee")),
        study_instance_uid=document.get("study_instance_uid"),
        period=Period(document.get("valid_from"), document.get("valid_until")),
        recorded_at=document["recorded_at"],
        recorded_by=_recorder(document["recorded_by"]),
        information=_information(document.get("information")),
        reason=document.get("reason"),
    )


def consent_to_document(consent: Consent) -> dict[str, Any]:
    """The ``consents`` document of ``consent`` (``_id`` = consent id)."""
    return {
        "_id": consent.consent_id,
        "patient_key": consent.patient_key,
        "provision": consent.provision,
        "grantee": consent.grantee.model_dump() if consent.grantee is not None else None,
        "study_instance_uid": consent.study_instance_uid,
        "valid_from": consent.period.valid_from,
        "valid_until": consent.period.valid_until,
        "status": consent.status,
        "revision": consent.revision,
        "created_at": consent.created_at,
        "created_by": _recorder_document(consent.created_by),
        "information": _information_document(consent.information),
        "updated_at": consent.updated_at,
        "ended_at": consent.ended_at,
        "ended_by": _recorder_document(consent.ended_by) if consent.ended_by is not None else None,
        "end_reason": consent.end_reason,
    }


def consent_from_document(document: Mapping[str, Any]) -> Consent:
    ended_by = document.get("ended_by")
    return Consent(
        consent_id=document["_id"],
        patient_key=document["patient_key"],
        provision=document["provision"],
        grantee=_grantee(document.get("grantee")),
        study_instance_uid=document.get("study_instance_uid"),
        period=Period(document.get("valid_from"), document.get("valid_until")),
        status=document["status"],
        revision=int(document["revision"]),
        created_at=document["created_at"],
        created_by=_recorder(document["created_by"]),
        information=_information(document.get("information")),
        updated_at=document["updated_at"],
        ended_at=document.get("ended_at"),
        ended_by=_recorder(ended_by) if ended_by is not None else None,
        end_reason=document.get("end_reason"),
    )


def state_filter(state: ConsentState, now: datetime) -> dict[str, Any]:
    """The ``consents`` filter of the consents whose :meth:`Consent.state` at ``now`` is ``state``."""
    if state == "revoked":
        return {"status": "inactive", "provision": "permit"}
    if state == "lifted":
        return {"status": "inactive", "provision": "deny"}
    if state == "expired":
        return {"status": "active", "valid_until": {"$lte": now}}
    not_ended = {"$or": [{"valid_until": None}, {"valid_until": {"$gt": now}}]}
    if state == "scheduled":
        return {"status": "active", "valid_from": {"$gt": now}, **not_ended}
    started = {"$or": [{"valid_from": None}, {"valid_from": {"$lte": now}}]}
    return {"status": "active", "$and": [started, not_ended]}


def query_filter(query: ConsentQuery, now: datetime) -> dict[str, Any]:
    """The ``consents`` filter of ``query`` at ``now``."""
    clauses: list[dict[str, Any]] = []
    if query.patient_keys is not None:
        clauses.append({"patient_key": {"$in": list(query.patient_keys)}})
    if query.provision is not None:
        clauses.append({"provision": query.provision})
    if query.state is not None:
        clauses.append(state_filter(query.state, now))
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class MongoConsentStore:
    """:class:`~emage_consent.ports.ConsentStore` on the service's own database."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self._records = database[RECORDS]
        self._consents = database[CONSENTS]
        self._sequences = database[PATIENT_SEQUENCES]
        self._outbox = database[OUTBOX]

    async def ensure_indexes(self) -> None:
        """Create the collections' indexes (idempotent; at start-up, so no transaction creates one)."""
        await self._records.create_index(
            [("consent_id", ASCENDING), ("revision", ASCENDING)], unique=True, name="consent_revision"
        )
        await self._records.create_index(
            [("patient_key", ASCENDING), ("sequence", ASCENDING)], unique=True, name="patient_sequence"
        )
        await self._consents.create_index(
            [("patient_key", ASCENDING), ("created_at", DESCENDING)], name="patient_created"
        )
        await self._consents.create_index([("created_at", DESCENDING)], name="created")
        with contextlib.suppress(CollectionInvalid):
            await self._database.create_collection(PATIENT_SEQUENCES)

    async def get(self, consent_id: str) -> Consent | None:
        document = await self._consents.find_one({"_id": consent_id})
        return consent_from_document(document) if document is not None else None

    async def records(self, consent_id: str) -> builtins.list[ConsentRecord]:
        cursor = self._records.find({"consent_id": consent_id}).sort("revision", ASCENDING)
        return [record_from_document(document) async for document in cursor]

    async def history(self, patient_keys: Sequence[str]) -> builtins.list[ConsentRecord]:
        if len(patient_keys) == 1:
            cursor = self._records.find({"patient_key": patient_keys[0]}).sort("sequence", ASCENDING)
        else:
            # Several records of one patient (INS and local keys): by time, each key's own order kept.
            cursor = self._records.find({"patient_key": {"$in": list(patient_keys)}}).sort(
                [("recorded_at", ASCENDING), ("patient_key", ASCENDING), ("sequence", ASCENDING)]
            )
        return [record_from_document(document) async for document in cursor]

    async def list(self, query: ConsentQuery, *, now: datetime, limit: int, offset: int) -> ConsentPage:
        where = query_filter(query, now)
        total = await self._consents.count_documents(where)
        cursor = (
            self._consents.find(where)
            .sort([("created_at", DESCENDING), ("_id", ASCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return ConsentPage([consent_from_document(document) async for document in cursor], total)

    async def append(
        self,
        record: ConsentRecord,
        consent: Consent,
        entry: OutboxEntry,
        *,
        publisher_id: str,
        publishing_lease: timedelta,
    ) -> None:
        """See :meth:`emage_consent.ports.ConsentStore.append`: one transaction, five round trips."""
        state = consent_to_document(consent)
        outboxed = outbox.entry_document(
            entry, lease_owner=publisher_id, lease_until=datetime.now(UTC) + publishing_lease
        )

        async def write(session: AsyncClientSession) -> None:
            if record.revision == 1:
                try:
                    await self._consents.insert_one(state, session=session)
                except DuplicateKeyError:
                    raise ConcurrentChangeError(f"consent {record.consent_id} exists already") from None
            else:
                replaced = await self._consents.replace_one(
                    {"_id": record.consent_id, "revision": record.revision - 1}, state, session=session
                )
                if replaced.matched_count != 1:
                    raise ConcurrentChangeError(f"consent {record.consent_id} changed meanwhile")
            counter = await self._sequences.find_one_and_update(
                {"_id": record.patient_key},
                {"$inc": {"sequence": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if counter is None:
                raise RuntimeError("an upsert returned no document")
            try:
                await self._records.insert_one(
                    record_to_document(record, int(counter["sequence"])), session=session
                )
            except DuplicateKeyError:
                raise ConcurrentChangeError(f"consent {record.consent_id} changed meanwhile") from None
            await self._outbox.insert_one(outboxed, session=session)

        with pymongo.timeout(_TRANSACTION_TIMEOUT_S):
            await in_transaction(self._database.client, write)


class MongoOutbox(outbox.MongoOutbox[OutboxEntry]):
    """Events recorded with the records they announce, until Kafka has them.

    Any number of replicas may drain it: an entry is leased (owner and expiry) before it is published, so
    at most one replica publishes it at a time; a replica that dies mid-way lets its lease expire and
    another (or itself, restarted) publishes the entry. Publication is at least once, always under the
    same event id; the gateway's view ignores a revision it already applied.
    """

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(database, OutboxEntry, OUTBOX)
