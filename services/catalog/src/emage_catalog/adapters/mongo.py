"""The catalog's MongoDB store: ``studies``, ``series`` and ``instances`` collections of its own database.

Each document keeps its level's dataset in the DICOM JSON Model (``dataset``) and, under ``q``, the
normalised values of every query key at its level and above (:func:`~emage_catalog.domain.model.
index_fields`): a series document repeats its study's keys and an instance document its series' and
study's, so any QIDO-RS search, hierarchical or relational, is one indexed query on one collection. When a
study's or series' keys change, the copies below it are rewritten. Beside the DICOM keywords, ``q`` holds
the study's care attributes (:class:`~emage_catalog.domain.care.CareAttributes`: owning facility, patient
key, referring physician and technicians' RPPS, in snake case so they never clash with a keyword), copied to
every series and instance of the study the same way: a search scope is one more condition of the same query,
at any level, and counts and pages see only the studies it permits.

Indexes follow the equality-sort-range rule for the searches the benchmark measures on 100,000 studies
(exact Patient ID, a name prefix, a date range with a modality, a page with its total count): the default
order (Study Date and Time, most recent first, then UID) is an index order, so a page is read in order
and stops after ``offset + limit`` keys. Each care attribute leads an index followed by that order, so a
scoped search reads each clause of its scope in order too (merged, when the scope has several).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from emage_catalog.domain.care import (
    FACILITY_FIELD,
    OPERATOR_IDENTIFICATION_SEQUENCE,
    PATIENT_FIELD,
    REFERRER_FIELD,
    TECHNICIANS_FIELD,
    CareAttributes,
    operator_rpps,
)
from emage_catalog.domain.filing import (
    Filing,
    HeldState,
    InstanceDocument,
    SeriesDocument,
    StoredInstance,
    StudyDocument,
    reclassified_series,
)
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.matching import AnyOf, Between, Equals, Matcher, Pattern, Prefix, QueryKey
from emage_catalog.domain.model import (
    IndexFields,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
    StudySnapshot,
    StudyState,
)
from emage_catalog.domain.query import SearchQuery
from emage_catalog.domain.results import Hit, ResultShape
from emage_common.access_contract import WireScopeClause, WireSearchScope
from emage_common.events import PatientIdentity
from emage_common.mongo import in_transaction

Document = dict[str, Any]
Filter = dict[str, Any]

_STUDY_ORDER: Final = [("q.StudyDate", DESCENDING), ("q.StudyTime", DESCENDING)]
SORT: Final[Mapping[QueryLevel, list[tuple[str, int]]]] = {
    QueryLevel.STUDY: [*_STUDY_ORDER, ("_id", ASCENDING)],
    QueryLevel.SERIES: [
        *_STUDY_ORDER,
        ("study_uid", ASCENDING),
        ("q.SeriesNumber", ASCENDING),
        ("_id", ASCENDING),
    ],
    QueryLevel.INSTANCE: [
        *_STUDY_ORDER,
        ("study_uid", ASCENDING),
        ("q.SeriesNumber", ASCENDING),
        ("series_uid", ASCENDING),
        ("q.InstanceNumber", ASCENDING),
        ("_id", ASCENDING),
    ],
}
"""Result order of each level: most recent study first, then series and instances by number, UIDs last
so that the order is total and a page boundary never depends on the plan MongoDB picks."""


def sort_order(query: SearchQuery) -> list[tuple[str, int]]:
    """The order of a search's results: :data:`SORT` without the keys its target resource fixes.

    Within one study (or series) those keys are constant, and leaving them out lets the study's (series')
    index deliver the results in order.
    """
    order = SORT[query.level]
    if query.study_instance_uid is not None:
        order = [key for key in order if key[0] not in ("q.StudyDate", "q.StudyTime", "study_uid")]
    if query.series_instance_uid is not None:
        order = [key for key in order if key[0] not in ("q.SeriesNumber", "series_uid")]
    return order


_WITHIN_STUDY: Final = [("q.SeriesNumber", ASCENDING), ("series_uid", ASCENDING)]
_METADATA_ORDER: Final = [*_WITHIN_STUDY, ("q.InstanceNumber", ASCENDING), ("_id", ASCENDING)]
_PENDING: Final = "announcement_pending"
_FILING_TIMEOUT_S: Final = 60
"""Bound on filing a run of events, retries of its transaction included (the consumer retries after it)."""
_FACILITY: Final = f"q.{FACILITY_FIELD}"
_PATIENT: Final = f"q.{PATIENT_FIELD}"
_REFERRER: Final = f"q.{REFERRER_FIELD}"
_TECHNICIANS: Final = f"q.{TECHNICIANS_FIELD}"


def _scope_indexes(level: QueryLevel, *fields: str) -> list[IndexModel]:
    """An index per care attribute, followed by the level's result order: one clause of a scope reads its
    matches in order and stops after a page; the clauses of a scope are merged in that order.

    Optional attributes (a referrer, technicians) are indexed only where present: an equality on them
    implies presence, so the partial index serves every clause on them.
    """
    indexes = []
    for field in fields:
        name = f"scope_{field.removeprefix('q.')}"
        optional = field not in (_FACILITY, _PATIENT)
        partial = {"partialFilterExpression": {field: {"$exists": True}}} if optional else {}
        indexes.append(IndexModel([(field, ASCENDING), *SORT[level]], name=name, **partial))
    return indexes


_STUDY_INDEXES: Final = [
    # The result order, then the keys most searched by: read in order, a page filters on index keys and
    # fetches only the studies it returns, however rare the matches are.
    IndexModel(
        [*SORT[QueryLevel.STUDY], ("q.PatientName", ASCENDING), ("q.PatientID", ASCENDING)],
        name="study_order",
    ),
    IndexModel([("q.PatientID", ASCENDING), *SORT[QueryLevel.STUDY]], name="patient_id"),
    IndexModel([("q.PatientName", ASCENDING), *SORT[QueryLevel.STUDY]], name="patient_name"),
    IndexModel([("q.ModalitiesInStudy", ASCENDING), *SORT[QueryLevel.STUDY]], name="modalities"),
    IndexModel([("q.AccessionNumber", ASCENDING)], name="accession_number"),
    IndexModel([("q.ReferringPhysicianName", ASCENDING)], name="referring_physician"),
    IndexModel([("q.PatientBirthDate", ASCENDING)], name="patient_birth_date"),
    IndexModel(
        [(_PENDING, ASCENDING)], name="announcement_pending", partialFilterExpression={_PENDING: True}
    ),
    *_scope_indexes(QueryLevel.STUDY, _FACILITY, _PATIENT, _REFERRER, _TECHNICIANS),
]
_SERIES_INDEXES: Final = [
    IndexModel([("study_uid", ASCENDING), ("q.SeriesNumber", ASCENDING), ("_id", ASCENDING)], name="study"),
    IndexModel(SORT[QueryLevel.SERIES], name="series_order"),
    IndexModel([("q.Modality", ASCENDING), *SORT[QueryLevel.SERIES]], name="modality"),
    IndexModel([("q.PatientID", ASCENDING), *SORT[QueryLevel.SERIES]], name="patient_id"),
    # Relational searches of series and instances are scoped by facility or patient mostly; a referrer's or
    # technician's clause is read through its facility (the policy always pairs them), or the study.
    *_scope_indexes(QueryLevel.SERIES, _FACILITY, _PATIENT),
]
_INSTANCE_INDEXES: Final = [
    IndexModel([("study_uid", ASCENDING), *_METADATA_ORDER], name="study"),
    IndexModel(
        [("series_uid", ASCENDING), ("q.InstanceNumber", ASCENDING), ("_id", ASCENDING)], name="series"
    ),
    IndexModel([("series_uid", ASCENDING), ("q.SOPClassUID", ASCENDING)], name="series_sop_classes"),
    IndexModel(SORT[QueryLevel.INSTANCE], name="instance_order"),
    IndexModel([("q.SOPClassUID", ASCENDING), *SORT[QueryLevel.INSTANCE]], name="sop_class"),
    IndexModel([("q.PatientID", ASCENDING), *SORT[QueryLevel.INSTANCE]], name="patient_id"),
    *_scope_indexes(QueryLevel.INSTANCE, _FACILITY, _PATIENT),
]

# The field holding each UID key in each collection: the document id, or the parent's UID.
_UID_FIELDS: Final[Mapping[tuple[QueryLevel, str], str]] = {
    (QueryLevel.STUDY, "StudyInstanceUID"): "_id",
    (QueryLevel.SERIES, "StudyInstanceUID"): "study_uid",
    (QueryLevel.SERIES, "SeriesInstanceUID"): "_id",
    (QueryLevel.INSTANCE, "StudyInstanceUID"): "study_uid",
    (QueryLevel.INSTANCE, "SeriesInstanceUID"): "series_uid",
    (QueryLevel.INSTANCE, "SOPInstanceUID"): "_id",
}


def compile_filter(query: SearchQuery) -> Filter | None:
    """The MongoDB filter of a search: the target resource's UIDs, every constraint and the search's scope,
    all required; None when the scope permits no study, so that no document can match."""
    clauses: list[Filter] = []
    if query.study_instance_uid is not None:
        clauses.append({"study_uid": query.study_instance_uid})
    if query.series_instance_uid is not None:
        clauses.append({"series_uid": query.series_instance_uid})
    for constraint in query.constraints:
        clauses.append(
            _clause(_field(query.level, constraint.key), constraint.matcher, constraint.key.multivalued)
        )
    if query.scope is not None:
        scope = compile_scope(query.scope, query.level)
        if scope is None:
            return None
        if scope:
            clauses.append(scope)
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def compile_scope(scope: WireSearchScope, level: QueryLevel) -> Filter | None:
    """The filter of the documents of ``level`` whose study ``scope`` permits: a ``$or`` of its clauses.

    None when no study is permitted (no clause, or none that any study can satisfy); ``{}`` when some clause
    has no condition at all, so every study is permitted.
    """
    branches: dict[str, Filter] = {}
    for clause in scope.clauses:
        branch = _scope_clause(clause, level)
        if branch is None:
            continue
        if not branch:
            return {}
        # A clause given twice is one branch (its lists are sorted, so equal clauses compare equal).
        branches.setdefault(json.dumps(branch, sort_keys=True), branch)
    if not branches:
        return None
    found = list(branches.values())
    return found[0] if len(found) == 1 else {"$or": found}


def _scope_clause(clause: WireScopeClause, level: QueryLevel) -> Filter | None:
    """One clause's conditions, all required (an implicit ``$and``); None when no study can satisfy them."""
    condition: Filter = {}
    if clause.facility_finess is not None:
        condition[_FACILITY] = clause.facility_finess
    study_field = _UID_FIELDS[level, "StudyInstanceUID"]
    for field, included, excluded in (
        (_PATIENT, clause.patient_keys, clause.excluded_patient_keys),
        (study_field, clause.study_instance_uids, clause.excluded_study_instance_uids),
    ):
        if included is not None:
            # Exclusions taken out of the list: one $in, which an index reads as point ranges.
            permitted = sorted(set(included) - set(excluded))
            if not permitted:
                return None
            condition[field] = permitted[0] if len(permitted) == 1 else {"$in": permitted}
        elif excluded:
            condition[field] = {"$nin": sorted(set(excluded))}
    if clause.referring_physician_rpps is not None:
        condition[_REFERRER] = clause.referring_physician_rpps
    if clause.performing_technician_rpps is not None:
        # Matches when it is one of the study's technicians (an array field).
        condition[_TECHNICIANS] = clause.performing_technician_rpps
    return condition


def _field(level: QueryLevel, key: QueryKey) -> str:
    return _UID_FIELDS.get((level, key.attribute.keyword), f"q.{key.attribute.keyword}")


def _clause(field: str, matcher: Matcher, multivalued: bool) -> Filter:
    if isinstance(matcher, AnyOf):
        exact = [alternative.value for alternative in matcher.alternatives if isinstance(alternative, Equals)]
        if len(exact) == len(matcher.alternatives):
            return {field: {"$in": exact}}
        return {"$or": [_clause(field, alternative, multivalued) for alternative in matcher.alternatives]}
    condition = _condition(matcher)
    if multivalued and isinstance(matcher, Prefix | Between):
        # Both bounds must hold for one element; only then may MongoDB intersect them on a multikey index.
        return {field: {"$elemMatch": condition}}
    return {field: condition}


def _condition(matcher: Equals | Prefix | Pattern | Between) -> Any:
    match matcher:
        case Equals(value):
            return value
        case Prefix(prefix):
            # A range rather than a regular expression: exact by construction, and always an index range scan.
            upper = matcher.upper_bound
            return {"$gte": prefix} if upper is None else {"$gte": prefix, "$lt": upper}
        case Pattern(regex):
            return {"$regex": regex}
        case Between(lower, upper):
            if lower is not None and lower == upper:
                return lower
            bounds = {}
            if lower is not None:
                bounds["$gte"] = lower
            if upper is not None:
                bounds["$lte"] = upper
            return bounds


def _replacement(fields: IndexFields, previous: IndexFields | None) -> dict[str, Any]:
    """An update setting ``fields`` under ``q`` and removing the keys ``previous`` had that it lacks."""
    update: dict[str, Any] = {"$set": {f"q.{name}": value for name, value in fields.items()}}
    removed = set(previous or {}) - set(fields)
    if removed:
        update["$unset"] = {f"q.{name}": "" for name in sorted(removed)}
    return update


def _instance_write(document: InstanceDocument) -> ReplaceOne[Document]:
    """An instance's document, replaced whole."""
    return ReplaceOne(
        {"_id": document.entry.sop_instance_uid},
        {
            "study_uid": document.entry.study_instance_uid,
            "series_uid": document.entry.series_instance_uid,
            "dataset": document.entry.instance,
            "q": document.index,
            "stored_at": document.stored_at,
        },
        upsert=True,
    )


def _series_write(document: SeriesDocument) -> UpdateOne:
    """A series' document, its fields set."""
    return UpdateOne(
        {"_id": document.series_instance_uid},
        {
            "$set": {
                "study_uid": document.study_instance_uid,
                "dataset": document.dataset,
                "q": document.index,
                "instance_count": document.totals.instance_count,
                "sop_classes": list(document.totals.sop_class_uids),
            }
        },
        upsert=True,
    )


def _study_write(document: StudyDocument) -> UpdateOne:
    """A study's document, its fields set; its owning facility written once, at creation."""
    return UpdateOne(
        {"_id": document.entry.study_instance_uid},
        {
            "$set": {
                "dataset": document.dataset,
                "q": document.index,
                "patient": document.entry.patient.model_dump(mode="json"),
                "patient_key": document.entry.patient.patient_key,
                "revision": document.revision,
                _PENDING: document.announcement_pending,
            },
            "$setOnInsert": {
                "facility_finess": document.entry.facility_finess,
                "announced_revision": 0,
            },
        },
        upsert=True,
    )


class MongoCatalogStore:
    """Study, series and instance documents in the catalog's own MongoDB database."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._database = database
        self._client = database.client
        self._studies: AsyncCollection[Document] = database["studies"]
        self._series: AsyncCollection[Document] = database["series"]
        self._instances: AsyncCollection[Document] = database["instances"]
        self._by_level: Mapping[QueryLevel, AsyncCollection[Document]] = {
            QueryLevel.STUDY: self._studies,
            QueryLevel.SERIES: self._series,
            QueryLevel.INSTANCE: self._instances,
        }

    async def ensure_indexes(self) -> None:
        """Create the indexes (a no-op for those that exist)."""
        await asyncio.gather(
            self._studies.create_indexes(_STUDY_INDEXES),
            self._series.create_indexes(_SERIES_INDEXES),
            self._instances.create_indexes(_INSTANCE_INDEXES),
        )

    # --- Writing --------------------------------------------------------------------------------------------

    async def file(self, instances: Sequence[StoredInstance], plan: Callable[[HeldState], Filing]) -> Filing:
        """Read what the catalog holds of ``instances``, write the :class:`Filing` ``plan`` makes of it, in
        one transaction: a few commands whatever the number of instances, and all or nothing.

        A conflicting concurrent write (the acquisition consumer adding a relationship to the same study)
        aborts the transaction, which is then run again from the read (the Convenient Transactions API).
        """

        async def transaction(session: AsyncClientSession) -> Filing:
            filing = plan(await self._held(instances, session))
            await self._write(filing, session)
            return filing

        with pymongo.timeout(_FILING_TIMEOUT_S):
            return await in_transaction(self._client, transaction)

    async def _held(self, instances: Sequence[StoredInstance], session: AsyncClientSession) -> HeldState:
        """What the catalog holds of the studies, series and instances ``instances`` name, read in the
        transaction's snapshot in one command (``$unionWith`` is not allowed in a transaction; ``$lookup``
        is)."""
        studies = sorted({instance.entry.study_instance_uid for instance in instances})
        series = sorted({instance.entry.series_instance_uid for instance in instances})
        sop_instances = sorted({instance.entry.sop_instance_uid for instance in instances})
        lookups = {
            "studies": (
                {"_id": {"$in": studies}},
                {"facility_finess": 1, "q": 1, "revision": 1, _PENDING: 1},
            ),
            "series": (
                {"$or": [{"_id": {"$in": series}}, {"study_uid": {"$in": studies}}]},
                {
                    "study_uid": 1,
                    "q": 1,
                    "instance_count": 1,
                    "sop_classes": 1,
                    f"dataset.{OPERATOR_IDENTIFICATION_SEQUENCE}": 1,
                },
            ),
            "instances": (
                {"_id": {"$in": sop_instances}},
                {"study_uid": 1, "series_uid": 1, "q.SOPClassUID": 1},
            ),
        }
        cursor = await self._database.aggregate(
            [
                {"$documents": [{}]},
                *(
                    {
                        "$lookup": {
                            "from": collection,
                            "pipeline": [{"$match": condition}, {"$project": projection}],
                            "as": collection,
                        }
                    }
                    for collection, (condition, projection) in lookups.items()
                ),
            ],
            session=session,
        )
        [found] = await cursor.to_list()
        placements = {
            document["_id"]: InstancePlacement(
                document["study_uid"], document["series_uid"], document.get("q", {}).get("SOPClassUID")
            )
            for document in found["instances"]
        }
        besides = {}
        for series_uid, named in reclassified_series(instances, placements).items():
            classes = await self._instances.distinct(
                "q.SOPClassUID", {"series_uid": series_uid, "_id": {"$nin": sorted(named)}}, session=session
            )
            besides[series_uid] = frozenset(classes)
        return HeldState(
            studies={
                document["_id"]: StudyState(
                    document["facility_finess"], document["q"], document["revision"], document[_PENDING]
                )
                for document in found["studies"]
            },
            series={document["_id"]: _series_state(document) for document in found["series"]},
            instances=placements,
            sop_classes_besides=besides,
        )

    async def _write(self, filing: Filing, session: AsyncClientSession) -> None:
        """Write every document of ``filing``: one bulk write per collection, plus the rare rewrites of
        keys copied below a study or series whose keys changed."""
        for copy in filing.study_keys:
            update = _replacement(copy.index, copy.previous)
            await self._series.update_many({"study_uid": copy.uid}, update, session=session)
            await self._instances.update_many({"study_uid": copy.uid}, update, session=session)
        for copy in filing.series_keys:
            update = _replacement(copy.index, copy.previous)
            await self._instances.update_many({"series_uid": copy.uid}, update, session=session)
        writes: list[tuple[AsyncCollection[Document], list[ReplaceOne[Document] | UpdateOne]]] = [
            (self._instances, [_instance_write(document) for document in filing.instances]),
            (self._series, [_series_write(document) for document in filing.series]),
            (self._studies, [_study_write(document) for document in filing.studies]),
        ]
        for collection, requests in writes:
            if requests:
                await collection.bulk_write(requests, ordered=False, session=session)

    # --- study.changed announcements ------------------------------------------------------------------------

    async def pending_announcements(self, limit: int) -> list[StudySnapshot]:
        """Up to ``limit`` studies that changed since they were last announced."""
        cursor = self._studies.find(
            {_PENDING: True},
            {"facility_finess": 1, "patient": 1, "dataset": 1, "revision": 1, "announced_revision": 1},
            limit=limit,
        )
        return [
            StudySnapshot(
                study_instance_uid=document["_id"],
                facility_finess=document["facility_finess"],
                patient=PatientIdentity.model_validate(document["patient"]),
                dataset=document["dataset"],
                revision=document["revision"],
                announced_revision=document["announced_revision"],
            )
            async for document in cursor
        ]

    async def mark_announced(self, study_instance_uid: str, revision: int) -> None:
        """Record that ``revision`` was announced; the study stays marked if it changed again meanwhile."""
        await self._studies.update_one(
            {"_id": study_instance_uid},
            [
                {
                    "$set": {
                        "announced_revision": {"$max": ["$announced_revision", revision]},
                        _PENDING: {"$cond": [{"$eq": ["$revision", revision]}, False, f"${_PENDING}"]},
                    }
                }
            ],
        )

    # --- Reading --------------------------------------------------------------------------------------------

    async def care_attributes(self, study_instance_uid: str) -> CareAttributes | None:
        """The care attributes of a catalogued study, or None when the catalog does not hold it."""
        document = await self._studies.find_one(
            {"_id": study_instance_uid},
            {"facility_finess": 1, "patient_key": 1, _REFERRER: 1, _TECHNICIANS: 1},
        )
        if document is None:
            return None
        # The owning facility and the patient as the study document records them; the care relationships
        # from their copy under ``q`` (the one searches are scoped by).
        return CareAttributes.from_fields(
            {
                **document.get("q", {}),
                FACILITY_FIELD: document["facility_finess"],
                PATIENT_FIELD: document["patient_key"],
            }
        )

    async def search(self, query: SearchQuery, shape: ResultShape) -> tuple[int, list[Hit]]:
        """The total number of matches and the requested page of them, with the documents results need."""
        collection = self._by_level[query.level]
        condition = compile_filter(query)
        if condition is None:
            return 0, []
        page_cursor = collection.find(
            condition,
            _projection(shape),
            sort=sort_order(query),
            skip=query.offset,
            limit=query.limit,
        )
        total, documents = await asyncio.gather(
            collection.count_documents(condition) if condition else collection.estimated_document_count(),
            page_cursor.to_list(),
        )
        # The count and the page are read side by side, not in one snapshot: while studies are being filed
        # the page can see one the count did not. Matches only grow between the two reads, so the total is
        # at least what the page shows — never a page that contradicts its own X-Total-Count.
        total = max(total, query.offset + len(documents)) if documents else total
        lineage = await self._lineage(query.level, shape, documents)
        hits = []
        for document in documents:
            study_uid = document["_id"] if query.level is QueryLevel.STUDY else document["study_uid"]
            series_uid = {
                QueryLevel.STUDY: None,
                QueryLevel.SERIES: document["_id"],
                QueryLevel.INSTANCE: document.get("series_uid"),
            }[query.level]
            uids = {
                QueryLevel.STUDY: study_uid,
                QueryLevel.SERIES: series_uid,
                QueryLevel.INSTANCE: document["_id"],
            }
            datasets = {level: lineage[level].get(uids[level], {}) for level in lineage}
            datasets[query.level] = document.get("dataset", {})
            hits.append(
                Hit(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=document["_id"] if query.level is QueryLevel.INSTANCE else None,
                    datasets=datasets,
                )
            )
        return total, hits

    async def _lineage(
        self, level: QueryLevel, shape: ResultShape, documents: Sequence[Document]
    ) -> dict[QueryLevel, dict[str, Any]]:
        """The datasets of the studies (and series) above a page of results, by UID, one query per level."""
        parents = {QueryLevel.STUDY: "study_uid", QueryLevel.SERIES: "series_uid"}
        wanted = [parent for parent in shape.levels if parent is not level]
        found = await asyncio.gather(
            *(
                self._by_level[parent]
                .find(
                    {"_id": {"$in": sorted({document[parents[parent]] for document in documents})}},
                    _projection(shape),
                )
                .to_list()
                for parent in wanted
            )
        )
        return {
            parent: {document["_id"]: document.get("dataset", {}) for document in documents_of_level}
            for parent, documents_of_level in zip(wanted, found, strict=True)
        }

    async def metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> AsyncIterator[Mapping[str, Any]]:
        """The datasets of a study's (series', instance's) instances, in series then instance number order."""
        condition: Filter = {"study_uid": study_instance_uid}
        if series_instance_uid is not None:
            condition["series_uid"] = series_instance_uid
        if sop_instance_uid is not None:
            condition["_id"] = sop_instance_uid
        async for document in self._instances.find(condition, {"dataset": 1}, sort=_METADATA_ORDER):
            yield document["dataset"]


def _series_state(document: Document) -> SeriesState:
    return SeriesState(
        document["study_uid"],
        document.get("q", {}),
        SeriesSummary(
            modality=document.get("q", {}).get("Modality"),
            instance_count=document.get("instance_count", 0),
            sop_class_uids=tuple(document.get("sop_classes", ())),
            operator_rpps=operator_rpps(document.get("dataset", {})),
        ),
    )


def _projection(shape: ResultShape) -> dict[str, int]:
    base = {"study_uid": 1, "series_uid": 1}
    if shape.tags is None:
        return {**base, "dataset": 1}
    return {**base, **{f"dataset.{tag}": 1 for tag in shape.tags}}
