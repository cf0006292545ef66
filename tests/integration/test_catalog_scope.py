"""The catalog's side of access control on the real stack: study access attributes and scoped QIDO-RS.

``instance.stored`` events whose instances name their referring physician (Referring Physician
Identification Sequence) and operators (Operator Identification Sequence) by RPPS are published on the real
topic; the catalog process answers the gateway's internal route and QIDO-RS searches carrying an
``X-Emage-Search-Scope``: results, ``X-Total-Count`` and pages see only the permitted studies, at every level.

The last test measures, with ``explain()`` on a few thousand documents the catalog's own code wrote, that a
scope is read through indexes (no collection scan), in the result order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from catalog_events import SyntheticInstances, eventually, ingest_publisher
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pymongo import AsyncMongoClient

from emage_catalog.adapters.mongo import MongoCatalogStore, compile_filter, sort_order
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.query import SearchQuery, parse_search
from emage_catalog.service import CatalogService
from emage_common.access_contract import (
    SEARCH_SCOPE_HEADER,
    STUDY_ACCESS_ATTRIBUTES_PATH,
    StudyAccessAttributes,
    WireScopeClause,
    WireSearchScope,
)
from emage_common.events import INSTANCE_STORED_TOPIC, InstanceStored, PatientIdentity, make_event
from emage_common.kafka import EventPublisher
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.8.498.7303"
# Facilities of this module only, so that other modules' studies never fall within a scope here.
F1, F2, F3 = "130000013", "330000024", "590000035"
REFERRER, OTHER_REFERRER = "10100000107", "10100000065"
TECHNICIAN, OTHER_TECHNICIAN, NEW_TECHNICIAN = "10100000115", "10100000073", "10100000081"
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    # No MR: another module searches all MR series of the catalog.
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}


@dataclass(frozen=True)
class Series:
    modality: str
    instances: int
    operators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exam:
    key: str
    facility: str
    patient_id: str
    study_date: str
    series: tuple[Series, ...]
    referrer: str | None = None

    @property
    def study_uid(self) -> str:
        return f"{ROOT}.{self.key}"

    def series_uid(self, number: int) -> str:
        return f"{self.study_uid}.{number}"

    def sop_uid(self, series: int, instance: int) -> str:
        return f"{self.series_uid(series)}.{instance}"

    @property
    def patient_key(self) -> str:
        return PatientIdentity(patient_id=self.patient_id, issuer_of_patient_id=self.facility).patient_key

    @property
    def instance_count(self) -> int:
        return sum(series.instances for series in self.series)

    def series_uids(self) -> list[str]:
        return [self.series_uid(number) for number in range(1, len(self.series) + 1)]

    def sop_uids(self) -> list[str]:
        return [
            self.sop_uid(number, instance)
            for number, series in enumerate(self.series, start=1)
            for instance in range(1, series.instances + 1)
        ]


A1 = Exam(
    "1",
    F1,
    "IPP-S1",
    "20240105",
    (Series("CT", 2, (TECHNICIAN,)), Series("CT", 1, (OTHER_TECHNICIAN, TECHNICIAN))),
    referrer=REFERRER,
)
A2 = Exam("2", F1, "IPP-S2", "20240210", (Series("XA", 2, (TECHNICIAN,)),))
A3 = Exam("3", F1, "IPP-S1", "20231120", (Series("XA", 1),), referrer=OTHER_REFERRER)
# The same Patient ID at another facility: another patient, another key.
B1 = Exam("4", F2, "IPP-S1", "20240301", (Series("US", 1),), referrer=REFERRER)
# A malformed RPPS (not 11 digits) is no referrer.
B2 = Exam("5", F2, "IPP-S3", "20220615", (Series("CR", 1, (OTHER_TECHNICIAN,)),), referrer="12345")
EXAMS = (A1, A2, A3, B1, B2)
# A study whose technicians change after the others are catalogued.
GROWING = Exam(
    "6", F3, "IPP-S6", "20210101", (Series("CT", 2, (TECHNICIAN,)), Series("CT", 1, (NEW_TECHNICIAN,)))
)


def _person(rpps: str, facility: str) -> Dataset:
    """A Person Identification Macro item (PS3.3 Table 10-1) coding an RPPS number."""
    code = Dataset()
    code.CodeValue = rpps
    code.CodingSchemeDesignator = "RPPS"
    code.CodeMeaning = f"Professional {rpps}"
    person = Dataset()
    person.PersonIdentificationCodeSequence = Sequence([code])
    person.InstitutionName = f"Facility {facility}"
    return person


INSTANCES = SyntheticInstances(
    ROOT,
    rows=16,
    size_bytes=512,
    sha256="ef" * 32,
    stored_at=datetime(2024, 6, 1, tzinfo=UTC),
    bulk_data_threshold=256,
)


def instance_stored(exam: Exam, series: int, instance: int) -> InstanceStored:
    described = exam.series[series - 1]
    care: dict[str, Any] = {"ReferringPhysicianName": "Referrer^Some"}
    if exam.referrer is not None:
        care["ReferringPhysicianIdentificationSequence"] = Sequence([_person(exam.referrer, exam.facility)])
    care["OperatorsName"] = [f"Operator^{rpps}" for rpps in described.operators]
    if described.operators:
        care["OperatorIdentificationSequence"] = Sequence(
            [_person(rpps, exam.facility) for rpps in described.operators]
        )
    return INSTANCES.event(
        exam.key,
        series,
        instance,
        modality=described.modality,
        sop_class=SOP_CLASSES[described.modality],
        facility=exam.facility,
        patient_id=exam.patient_id,
        patient_name=f"Scope^{exam.patient_id}",
        study_date=exam.study_date,
        study_time="120000",
        accession=f"SCP-{exam.key}",
        **care,
    )


def events_of(exam: Exam, *, series: tuple[int, ...] | None = None) -> Iterator[InstanceStored]:
    for number, described in enumerate(exam.series, start=1):
        if series is None or number in series:
            for instance in range(1, described.instances + 1):
                yield instance_stored(exam, number, instance)


def scope(*clauses: WireScopeClause) -> dict[str, str]:
    """The header of a search within ``clauses``."""
    return {SEARCH_SCOPE_HEADER: WireSearchScope(clauses=clauses).encode()}


async def search(
    client: httpx.AsyncClient, path: str, headers: Mapping[str, str] | None = None, **params: Any
) -> tuple[int, list[dict[str, Any]]]:
    """(X-Total-Count, results) of a successful search."""
    response = await client.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    return int(response.headers["X-Total-Count"]), response.json()


def uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return [result[tag]["Value"][0] for result in results]


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@pytest.fixture(scope="module")
def catalog_url(stack: Stack) -> str:
    if "catalog" not in stack.services:
        stack.start_services(("catalog",))
    return stack.service_url("catalog")


@pytest.fixture(scope="module")
async def client(catalog_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=catalog_url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
async def publisher(kafka_bootstrap: str) -> AsyncIterator[EventPublisher]:
    async with ingest_publisher(kafka_bootstrap) as started:
        yield started


ALL_MINE = scope(WireScopeClause(facility_finess=F1), WireScopeClause(facility_finess=F2))


@pytest.fixture(scope="module")
async def catalogued(client: httpx.AsyncClient, publisher: EventPublisher) -> None:
    """Every exam published and catalogued, the copies of the care attributes included."""
    for exam in EXAMS:
        for stored in events_of(exam):
            await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))

    async def complete() -> bool:
        # The scoped searches count only documents that hold their study's care attributes; the last one of
        # A1 changes its technicians, so every copy in A1 must have been rewritten.
        instances, _ = await search(client, "/instances", ALL_MINE)
        series, _ = await search(client, "/series", ALL_MINE)
        studies, _ = await search(client, "/studies", ALL_MINE)
        rewritten, _ = await search(
            client,
            "/instances",
            scope(WireScopeClause(facility_finess=F1, performing_technician_rpps=OTHER_TECHNICIAN)),
        )
        return (studies, series, instances, rewritten) == (
            len(EXAMS),
            sum(len(exam.series) for exam in EXAMS),
            sum(exam.instance_count for exam in EXAMS),
            A1.instance_count,
        )

    await eventually(complete)


# --- Access attributes ------------------------------------------------------------------------------------


def attributes_path(study: str) -> str:
    return STUDY_ACCESS_ATTRIBUTES_PATH.format(study=study)


@pytest.mark.parametrize(
    ("exam", "referrer", "technicians"),
    [
        (A1, REFERRER, tuple(sorted((TECHNICIAN, OTHER_TECHNICIAN)))),
        (A2, None, (TECHNICIAN,)),
        (A3, OTHER_REFERRER, ()),
        (B1, REFERRER, ()),
        (B2, None, (OTHER_TECHNICIAN,)),
    ],
    ids=lambda value: value.key if isinstance(value, Exam) else None,
)
async def test_access_attributes_of_a_catalogued_study(
    client: httpx.AsyncClient,
    catalogued: None,
    exam: Exam,
    referrer: str | None,
    technicians: tuple[str, ...],
) -> None:
    response = await client.get(attributes_path(exam.study_uid))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert StudyAccessAttributes.model_validate_json(response.content) == StudyAccessAttributes(
        study_instance_uid=exam.study_uid,
        facility_finess=exam.facility,
        patient_key=exam.patient_key,
        referring_physician_rpps=referrer,
        performing_technician_rpps=technicians,
    )


async def test_access_attributes_of_an_unknown_or_invalid_study(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    unknown = await client.get(attributes_path(f"{ROOT}.404"))
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    invalid = await client.get(attributes_path("1.2.03"))
    assert invalid.status_code == 400
    assert invalid.headers["content-type"] == "application/problem+json"
    assert "leading zero" in invalid.json()["detail"]
    openapi = (await client.get("/openapi.json")).json()
    assert openapi["paths"][STUDY_ACCESS_ATTRIBUTES_PATH]["get"]["tags"] == ["internal"]


# --- Scoped searches --------------------------------------------------------------------------------------

# Most recent study first: B1 (2024-03-01), A2 (2024-02-10), A1 (2024-01-05), A3 (2023-11-20),
# B2 (2022-06-15).
ORDER = (B1, A2, A1, A3, B2)


def ordered(*exams: Exam) -> list[Exam]:
    return [exam for exam in ORDER if exam in exams]


STUDY_SCOPES = [
    pytest.param(scope(WireScopeClause(facility_finess=F1)), (A1, A2, A3), id="facility"),
    pytest.param(
        scope(WireScopeClause(facility_finess=F1, referring_physician_rpps=REFERRER)), (A1,), id="referrer"
    ),
    pytest.param(
        scope(WireScopeClause(facility_finess=F1, performing_technician_rpps=TECHNICIAN)),
        (A1, A2),
        id="technician",
    ),
    pytest.param(
        scope(WireScopeClause(performing_technician_rpps=OTHER_TECHNICIAN)),
        (A1, B2),
        id="technician-anywhere",
    ),
    pytest.param(
        scope(WireScopeClause(facility_finess=F2), WireScopeClause(patient_keys=(A1.patient_key,))),
        (B1, A1, A3, B2),
        id="facility-or-patient",
    ),
    pytest.param(
        scope(
            WireScopeClause(patient_keys=(A1.patient_key,), study_instance_uids=(A3.study_uid, B1.study_uid))
        ),
        (A3,),
        id="patient-and-studies",
    ),
    pytest.param(
        scope(WireScopeClause(facility_finess=F1, excluded_patient_keys=(A1.patient_key,))),
        (A2,),
        id="excluded-patient",
    ),
    pytest.param(
        scope(WireScopeClause(facility_finess=F1, excluded_study_instance_uids=(A2.study_uid,))),
        (A1, A3),
        id="excluded-study",
    ),
    pytest.param(
        scope(
            WireScopeClause(facility_finess=F1, excluded_patient_keys=(A1.patient_key, A2.patient_key)),
            WireScopeClause(study_instance_uids=(B2.study_uid, A1.study_uid)),
        ),
        (A1, B2),
        id="excluded-yet-granted-by-another-clause",
    ),
    pytest.param(scope(WireScopeClause(study_instance_uids=(B1.study_uid,))), (B1,), id="studies"),
    pytest.param(scope(WireScopeClause(referring_physician_rpps="10100000099")), (), id="nobody"),
]


@pytest.mark.parametrize(("headers", "permitted"), STUDY_SCOPES)
async def test_a_scoped_study_search_counts_and_pages_only_permitted_studies(
    client: httpx.AsyncClient, catalogued: None, headers: dict[str, str], permitted: tuple[Exam, ...]
) -> None:
    expected = [exam.study_uid for exam in ordered(*permitted)]
    total, results = await search(client, "/studies", headers, AccessionNumber="SCP-*")
    assert (total, uids(results, STUDY_UID)) == (len(expected), expected)
    # Every page counts the permitted studies only, and the pages add up to them in order.
    pages: list[str] = []
    for offset in range(0, len(expected) + 2, 2):
        total, page = await search(
            client, "/studies", headers, AccessionNumber="SCP-*", limit=2, offset=offset
        )
        assert total == len(expected)
        pages += uids(page, STUDY_UID)
    assert pages == expected


@pytest.mark.parametrize(("headers", "permitted"), STUDY_SCOPES)
async def test_scoped_series_and_instance_searches_see_only_permitted_studies(
    client: httpx.AsyncClient, catalogued: None, headers: dict[str, str], permitted: tuple[Exam, ...]
) -> None:
    exams = ordered(*permitted)
    series = [uid for exam in exams for uid in exam.series_uids()]
    total, results = await search(client, "/series", headers, AccessionNumber="SCP-*")
    assert (total, uids(results, SERIES_UID)) == (len(series), series)
    instances = [uid for exam in exams for uid in exam.sop_uids()]
    total, results = await search(client, "/instances", headers, AccessionNumber="SCP-*")
    assert (total, uids(results, SOP_UID)) == (len(instances), instances)
    # A page in the middle.
    total, page = await search(client, "/instances", headers, AccessionNumber="SCP-*", limit=2, offset=1)
    assert (total, uids(page, SOP_UID)) == (len(instances), instances[1:3])


async def test_a_scope_applies_within_a_study_and_a_series(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    permitted = scope(WireScopeClause(facility_finess=F1, performing_technician_rpps=OTHER_TECHNICIAN))
    forbidden = scope(WireScopeClause(facility_finess=F1, excluded_study_instance_uids=(A1.study_uid,)))
    within_study = f"/studies/{A1.study_uid}"
    within_series = f"{within_study}/series/{A1.series_uid(1)}/instances"

    total, results = await search(client, f"{within_study}/series", permitted)
    assert (total, uids(results, SERIES_UID)) == (2, A1.series_uids())
    total, results = await search(client, f"{within_study}/instances", permitted, limit=2, offset=1)
    assert (total, uids(results, SOP_UID)) == (3, A1.sop_uids()[1:3])
    total, results = await search(client, within_series, permitted)
    assert (total, uids(results, SOP_UID)) == (2, A1.sop_uids()[:2])
    for path in (f"{within_study}/series", f"{within_study}/instances", within_series):
        assert await search(client, path, forbidden) == (0, [])
        # Unscoped: an internal caller sees them.
        total, _ = await search(client, path)
        assert total > 0


@pytest.mark.parametrize(
    "path",
    [
        "/studies",
        "/series",
        "/instances",
        f"/studies/{A1.study_uid}/series",
        f"/studies/{A1.study_uid}/instances",
    ],
)
async def test_a_scope_without_clause_permits_nothing(
    client: httpx.AsyncClient, catalogued: None, path: str
) -> None:
    response = await client.get(path, params={"limit": 5}, headers=scope())
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["X-Total-Count"] == "0"
    assert "Warning" not in response.headers


async def test_without_a_scope_a_search_is_unscoped(client: httpx.AsyncClient, catalogued: None) -> None:
    mine = ",".join(exam.study_uid for exam in EXAMS)
    total, results = await search(client, "/studies", StudyInstanceUID=mine)
    assert (total, uids(results, STUDY_UID)) == (len(ORDER), [exam.study_uid for exam in ORDER])


@pytest.mark.parametrize(
    "headers",
    [
        {SEARCH_SCOPE_HEADER: "this is not a scope"},
        {SEARCH_SCOPE_HEADER: "eJyrVipLLSrOzM9TsjKqBQAiOASv"},  # deflated {"version":2}
    ],
)
async def test_an_invalid_scope_is_refused(
    client: httpx.AsyncClient, catalogued: None, headers: dict[str, str]
) -> None:
    for path in ("/studies", "/series", f"/studies/{A1.study_uid}/series/{A1.series_uid(1)}/instances"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert "invalid search scope" in response.json()["detail"]


async def test_a_new_series_with_a_new_operator_extends_the_studys_technicians(
    client: httpx.AsyncClient, publisher: EventPublisher, catalogued: None
) -> None:
    for stored in events_of(GROWING, series=(1,)):
        await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))
    newcomer = scope(WireScopeClause(facility_finess=F3, performing_technician_rpps=NEW_TECHNICIAN))

    async def technicians() -> tuple[str, ...]:
        response = await client.get(attributes_path(GROWING.study_uid))
        if response.status_code != 200:
            return ()
        return StudyAccessAttributes.model_validate_json(response.content).performing_technician_rpps

    assert await eventually(technicians) == (TECHNICIAN,)
    assert await search(client, "/instances", newcomer) == (0, [])

    for stored in events_of(GROWING, series=(2,)):
        await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))

    async def extended() -> bool:
        # The earlier series' documents are rewritten too: the new technician finds the whole study.
        found, _ = await search(client, "/instances", newcomer)
        grown = tuple(sorted((TECHNICIAN, NEW_TECHNICIAN)))
        return await technicians() == grown and found == GROWING.instance_count

    await eventually(extended)
    total, results = await search(client, "/series", newcomer)
    assert (total, uids(results, SERIES_UID)) == (2, GROWING.series_uids())


# --- Query plans ------------------------------------------------------------------------------------------

PLAN_STUDIES = 1200
PLAN_FACILITIES = [f"{number:02d}0000{number:03d}" for number in range(10, 22)]


def plan_exam(number: int) -> Exam:
    """Study ``number`` of the plan set: 12 facilities, 400 patients, 2 instances in one series each."""
    facility = PLAN_FACILITIES[number % len(PLAN_FACILITIES)]
    return Exam(
        f"9{number}",
        facility,
        f"IPP-P{number % 400}",
        f"{2015 + number % 10}{number % 12 + 1:02d}{number % 28 + 1:02d}",
        (Series("CT", 2, (f"{10200000000 + number % 20}",)),),
        referrer=f"{10300000000 + number % 30}",
    )


def plan_stages(explained: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """The stages and the index names of the winning plan(s) of an explain() output, depth first."""
    stages: list[str] = []
    indexes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("stage"), str):
                stages.append(node["stage"])
            if isinstance(node.get("indexName"), str):
                indexes.add(node["indexName"])
            for key, value in node.items():
                if key != "rejectedPlans":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    def find_winning(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "winningPlan":
                    walk(value)
                elif key not in ("rejectedPlans", "allPlansExecution"):
                    find_winning(value)
        elif isinstance(node, list):
            for item in node:
                find_winning(item)

    find_winning(explained)
    return stages, indexes


@pytest.fixture(scope="module")
async def plan_store(
    mongo_uri: str,
) -> AsyncIterator[tuple[MongoCatalogStore, AsyncMongoClient[dict[str, Any]], str]]:
    """A scratch catalog database filled by the catalog's own code with a few thousand documents."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    name = f"catalog_plans_{uuid.uuid4().hex[:8]}"
    try:
        store = MongoCatalogStore(client[name])
        await store.ensure_indexes()
        service = CatalogService(store, on_study_changed=lambda: None)
        gate = asyncio.Semaphore(16)

        async def record(exam: Exam) -> None:
            async with gate:
                for revision, stored in enumerate(events_of(exam), start=1):
                    await service.record_instance(stored, revision=revision)

        await asyncio.gather(*(record(plan_exam(number)) for number in range(PLAN_STUDIES)))
        yield store, client, name
    finally:
        await client.drop_database(name)
        await client.close()


def plan_query(level: QueryLevel, search_scope: WireSearchScope, query: str = "", **uids: str) -> SearchQuery:
    pairs = [tuple(part.split("=", 1)) for part in query.split("&")] if query else []
    parsed = parse_search(pairs, level=level, max_limit=25, **uids)  # type: ignore[arg-type]
    return replace(parsed, scope=search_scope)


COLLECTIONS = {QueryLevel.STUDY: "studies", QueryLevel.SERIES: "series", QueryLevel.INSTANCE: "instances"}
FACILITY_OR_PATIENTS = WireSearchScope(
    clauses=(
        WireScopeClause(
            facility_finess=PLAN_FACILITIES[3], excluded_patient_keys=(plan_exam(3).patient_key,)
        ),
        WireScopeClause(patient_keys=tuple(plan_exam(number).patient_key for number in (4, 5, 7))),
    )
)


async def explain(
    client: AsyncMongoClient[dict[str, Any]], database: str, query: SearchQuery
) -> tuple[dict[str, Any], dict[str, Any]]:
    """explain() of the page and of the count the catalog runs for ``query``."""
    condition = compile_filter(query)
    assert condition is not None
    collection = client[database][COLLECTIONS[query.level]]
    page = await collection.find(
        condition, sort=sort_order(query), skip=query.offset, limit=query.limit
    ).explain()
    count = await client[database].command(
        {
            "explain": {
                "aggregate": COLLECTIONS[query.level],
                "pipeline": [{"$match": condition}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
                "cursor": {},
            },
            "verbosity": "executionStats",
        }
    )
    return page, count


@pytest.mark.parametrize("level", list(QueryLevel))
async def test_a_scope_of_facility_or_patients_is_read_in_order_through_the_scope_indexes(
    plan_store: tuple[MongoCatalogStore, AsyncMongoClient[dict[str, Any]], str], level: QueryLevel
) -> None:
    _, client, database = plan_store
    documents = await client[database][COLLECTIONS[level]].count_documents({})
    assert documents == {QueryLevel.INSTANCE: 2 * PLAN_STUDIES}.get(level, PLAN_STUDIES)

    page, count = await explain(client, database, plan_query(level, FACILITY_OR_PATIENTS))
    stages, indexes = plan_stages(page)
    assert "COLLSCAN" not in stages, stages
    # Each clause is read through the index it leads, already in the result order, and the clauses merged:
    # no blocking sort, and only about a page of documents fetched.
    assert indexes == {"scope_facility_finess", "scope_patient_key"}, indexes
    assert "SORT" not in stages, stages
    assert "SORT_MERGE" in stages, stages
    limit = 25
    assert page["executionStats"]["nReturned"] == limit
    assert page["executionStats"]["totalDocsExamined"] <= 2 * limit, page["executionStats"]

    count_stages, count_indexes = plan_stages(count)
    assert "COLLSCAN" not in count_stages, count_stages
    assert count_indexes, count_stages
    assert count_indexes <= {"scope_facility_finess", "scope_patient_key"}, count_indexes


@pytest.mark.parametrize(
    ("level", "search_scope", "query", "used"),
    [
        (
            QueryLevel.STUDY,
            WireSearchScope(
                clauses=(
                    WireScopeClause(
                        facility_finess=PLAN_FACILITIES[1], referring_physician_rpps="10300000001"
                    ),
                )
            ),
            "",
            {"scope_referring_physician_rpps", "scope_facility_finess"},
        ),
        (
            QueryLevel.STUDY,
            WireSearchScope(
                clauses=(
                    WireScopeClause(
                        facility_finess=PLAN_FACILITIES[1], performing_technician_rpps="10200000001"
                    ),
                )
            ),
            "",
            {"scope_performing_technician_rpps", "scope_facility_finess"},
        ),
        (QueryLevel.STUDY, FACILITY_OR_PATIENTS, "StudyDate=20180101-20201231", None),
        (QueryLevel.STUDY, FACILITY_OR_PATIENTS, "PatientName=scope^ipp-p1*", None),
        (QueryLevel.SERIES, FACILITY_OR_PATIENTS, "Modality=CT", None),
        (QueryLevel.INSTANCE, FACILITY_OR_PATIENTS, "SOPClassUID=1.2.840.10008.5.1.4.1.1.2", None),
        (
            QueryLevel.STUDY,
            WireSearchScope(
                clauses=(
                    WireScopeClause(study_instance_uids=(plan_exam(1).study_uid, plan_exam(2).study_uid)),
                )
            ),
            "",
            {"_id_"},
        ),
    ],
)
async def test_scoped_searches_never_scan_a_collection(
    plan_store: tuple[MongoCatalogStore, AsyncMongoClient[dict[str, Any]], str],
    level: QueryLevel,
    search_scope: WireSearchScope,
    query: str,
    used: set[str] | None,
) -> None:
    _, client, database = plan_store
    page, count = await explain(client, database, plan_query(level, search_scope, query))
    for explained in (page, count):
        stages, indexes = plan_stages(explained)
        assert "COLLSCAN" not in stages, stages
        assert "IXSCAN" in stages or "COUNT_SCAN" in stages, stages
        if used is not None:
            assert indexes, stages
            assert indexes <= used, indexes
