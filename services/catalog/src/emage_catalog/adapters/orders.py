"""The care relationships facilities announce on ``emage.acquisition.v1``, in the catalog's own database.

* ``acquisitions``: one document per imaging order, ``_id`` = ``<FINESS>/<accession number>``, holding the
  latest announcement of that order (:class:`~emage_catalog.domain.care.OrderedCare`), whichever order the
  events are consumed in.
* The announced care is merged into the study's care attributes under ``q`` of its study, series and
  instance documents (:mod:`emage_catalog.adapters.mongo`), where the access attributes and the search
  scopes read them.

Adding an announced relationship to a study is an update that does not depend on what the documents held
(the referrer set, the technician added to the sorted set of technicians, in a pipeline update): it
commutes with the instance consumer's own writes of the study, so the two consumers never lose each other's
effect, and applying it twice changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from emage_catalog.domain.care import (
    OPERATOR_IDENTIFICATION_SEQUENCE,
    REFERRER_FIELD,
    TECHNICIANS_FIELD,
    CareAttributes,
    OrderedCare,
    OrderLookup,
    StudyOwner,
    operator_rpps,
    referring_physician_rpps,
    union_of,
)
from emage_common.events import PatientIdentity

Document = dict[str, Any]

ACQUISITIONS: Final = "acquisitions"
_REFERRER: Final = f"q.{REFERRER_FIELD}"
_TECHNICIANS: Final = f"q.{TECHNICIANS_FIELD}"


def _document(ordered: OrderedCare) -> Document:
    fields: Document = {
        "facility_finess": ordered.facility_finess,
        "accession_number": ordered.accession_number,
        "patient_id": ordered.patient_id,
        "issuer_of_patient_id": ordered.issuer_of_patient_id,
        "referring_physician_rpps": ordered.referring_physician_rpps,
        "performing_technician_rpps": ordered.performing_technician_rpps,
        "event_id": ordered.event_id,
        "announced_at": ordered.announced_at,
        "recorded_at": datetime.now(UTC),
    }
    if ordered.study_instance_uid is not None:
        # A later announcement without the UID keeps the one an earlier announcement gave.
        fields["study_uid"] = ordered.study_instance_uid
    return fields


def _ordered(document: Document) -> OrderedCare:
    announced_at: datetime = document["announced_at"]
    return OrderedCare(
        facility_finess=document["facility_finess"],
        accession_number=document["accession_number"],
        patient_id=document["patient_id"],
        issuer_of_patient_id=document["issuer_of_patient_id"],
        study_instance_uid=document.get("study_uid"),
        referring_physician_rpps=document.get("referring_physician_rpps"),
        performing_technician_rpps=document.get("performing_technician_rpps"),
        event_id=document["event_id"],
        announced_at=announced_at if announced_at.tzinfo else announced_at.replace(tzinfo=UTC),
    )


def _order_key(lookup: OrderLookup) -> str | None:
    if lookup.accession_number is None:
        return None
    return f"{lookup.facility_finess}/{lookup.accession_number}"


def _latest(documents: list[Document]) -> OrderedCare | None:
    found = [_ordered(document) for document in documents]
    return max(found, key=lambda ordered: (ordered.announced_at, ordered.event_id), default=None)


def _absorb_pipeline(ordered: OrderedCare) -> list[Document]:
    """The update adding ``ordered``'s relationships to a document's care fields, whatever they hold."""
    stages: list[Document] = []
    if ordered.referring_physician_rpps is not None:
        stages.append({"$set": {_REFERRER: ordered.referring_physician_rpps}})
    if ordered.performing_technician_rpps is not None:
        union = {"$setUnion": [{"$ifNull": [f"${_TECHNICIANS}", []]}, [ordered.performing_technician_rpps]]}
        stages.append({"$set": {_TECHNICIANS: {"$sortArray": {"input": union, "sortBy": 1}}}})
    return stages


class MongoOrderStore:
    """Announced orders, and their care relationships applied to the studies they concern."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._acquisitions: AsyncCollection[Document] = database[ACQUISITIONS]
        self._studies: AsyncCollection[Document] = database["studies"]
        self._series: AsyncCollection[Document] = database["series"]
        self._instances: AsyncCollection[Document] = database["instances"]

    async def ensure_indexes(self) -> None:
        """Orders are found by ``_id`` (facility and accession number) or by the study they name."""
        await self._acquisitions.create_indexes(
            [
                IndexModel(
                    [("study_uid", ASCENDING)],
                    name="study",
                    partialFilterExpression={"study_uid": {"$exists": True}},
                )
            ]
        )

    async def record_order(self, ordered: OrderedCare) -> tuple[OrderedCare, OrderedCare | None]:
        """Keep ``ordered`` if it is the order's latest announcement.

        Returns the order's latest announcement now, and the one ``ordered`` replaced (``None`` when it
        replaced none: a first announcement, an older or a repeated one).
        """
        later_than_stored = {
            "$or": [
                {"announced_at": {"$lt": ordered.announced_at}},
                {"announced_at": ordered.announced_at, "event_id": {"$lt": ordered.event_id}},
            ]
        }
        try:
            before = await self._acquisitions.find_one_and_update(
                {"_id": ordered.order_key, **later_than_stored},
                {"$set": _document(ordered)},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:
            # The stored announcement is as late or later: it stands.
            stored = await self._acquisitions.find_one({"_id": ordered.order_key})
            return (ordered if stored is None else _ordered(stored)), None
        if before is None:
            return ordered, None
        superseded = _ordered(before)
        if ordered.study_instance_uid is None and superseded.study_instance_uid is not None:
            ordered = dataclasses.replace(ordered, study_instance_uid=superseded.study_instance_uid)
        return ordered, superseded

    async def ordered_care(self, lookups: Collection[OrderLookup]) -> dict[OrderLookup, OrderedCare]:
        """The latest announcement of the order of each study ``lookups`` name, for those that have one: the
        one naming its UID, else its facility's order with its accession number (unless that order names
        another study). One query for all."""
        if not lookups:
            return {}
        keys = {lookup: _order_key(lookup) for lookup in lookups}
        studies = sorted({lookup.study_instance_uid for lookup in lookups})
        clauses: list[Document] = [{"study_uid": {"$in": studies}}]
        order_keys = sorted({key for key in keys.values() if key is not None})
        if order_keys:
            clauses.append({"_id": {"$in": order_keys}})
        documents = await self._acquisitions.find({"$or": clauses}).to_list()
        found = {}
        for lookup, order_key in keys.items():
            naming_it = [
                document for document in documents if document.get("study_uid") == lookup.study_instance_uid
            ]
            latest = _latest(
                naming_it
                or [
                    document
                    for document in documents
                    if document["_id"] == order_key and document.get("study_uid") is None
                ]
            )
            if latest is not None:
                found[lookup] = latest
        return found

    async def studies_of_order(self, ordered: OrderedCare) -> list[StudyOwner]:
        """The catalogued studies an order names: by UID, else the facility's with its accession number."""
        if ordered.study_instance_uid is not None:
            condition: Document = {"_id": ordered.study_instance_uid}
        else:
            condition = {
                "facility_finess": ordered.facility_finess,
                "q.AccessionNumber": ordered.accession_number,
            }
        cursor = self._studies.find(condition, {"facility_finess": 1, "patient": 1})
        return [
            StudyOwner(
                document["_id"],
                document["facility_finess"],
                PatientIdentity.model_validate(document["patient"]),
            )
            async for document in cursor
        ]

    async def absorb_ordered_care(self, study_instance_uid: str, ordered: OrderedCare) -> None:
        """Add ``ordered``'s relationships to the study and the copies of its keys in its series and
        instances."""
        pipeline = _absorb_pipeline(ordered)
        if not pipeline:
            return
        below: Document = {"study_uid": study_instance_uid}
        await asyncio.gather(
            self._studies.update_one({"_id": study_instance_uid}, pipeline),
            self._series.update_many(below, pipeline),
            self._instances.update_many(below, pipeline),
        )

    async def dicom_care(self, study_instance_uid: str) -> CareAttributes | None:
        """The study's care attributes as its DICOM headers alone name them (None: not catalogued)."""
        study = await self._studies.find_one(
            {"_id": study_instance_uid}, {"facility_finess": 1, "patient_key": 1, "dataset": 1}
        )
        if study is None:
            return None
        cursor = self._series.find(
            {"study_uid": study_instance_uid}, {f"dataset.{OPERATOR_IDENTIFICATION_SEQUENCE}": 1}
        )
        operators = [operator_rpps(document.get("dataset", {})) async for document in cursor]
        return CareAttributes(
            facility_finess=study["facility_finess"],
            patient_key=study["patient_key"],
            referring_physician_rpps=referring_physician_rpps(study.get("dataset", {})),
            performing_technician_rpps=union_of(operators),
        )

    async def replace_care(self, study_instance_uid: str, care: CareAttributes) -> None:
        """Set the study's referrer and technicians to ``care``'s, in the study and below it."""
        fields = care.fields()
        update: Document = {}
        present = {
            f"q.{name}": fields[name] for name in (REFERRER_FIELD, TECHNICIANS_FIELD) if name in fields
        }
        absent = {f"q.{name}": "" for name in (REFERRER_FIELD, TECHNICIANS_FIELD) if name not in fields}
        if present:
            update["$set"] = present
        if absent:
            update["$unset"] = absent
        below: Document = {"study_uid": study_instance_uid}
        await asyncio.gather(
            self._studies.update_one({"_id": study_instance_uid}, update),
            self._series.update_many(below, update),
            self._instances.update_many(below, update),
        )
