"""The catalog service as a process on the real stack: ``instance.stored`` events in, QIDO-RS and WADO-RS out.

Events are built as ingest builds them: pydicom datasets of five exam types (CT, MR, US multi-frame, MG, CR)
turned into the DICOM JSON Model with bulk data referenced, published on the real topic with the real
publisher. The catalog is queried over HTTP like a DICOMweb client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from emage_common.events import (
    INSTANCE_STORED_TOPIC,
    STUDY_CHANGED_TOPIC,
    CloudEvent,
    InstanceStored,
    PatientIdentity,
    StudyChanged,
    dlq_topic,
    make_event,
)
from emage_common.kafka import DLQ_ERROR_MESSAGE, EventPublisher, build_kafka_config
from emage_common.settings import ServiceSettings
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.8.498.7301"
FACILITY_A = "750000001"
FACILITY_B = "690000002"
WAIT_S = 30
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.3.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}


@dataclass(frozen=True)
class Exam:
    """One synthetic study: who, where, when, and its series as (modality, number of instances)."""

    key: str
    facility: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    accession: str
    series: tuple[tuple[str, int], ...]
    issuer: str | None = None

    @property
    def study_uid(self) -> str:
        return f"{ROOT}.{self.key}"

    def series_uid(self, number: int) -> str:
        return f"{self.study_uid}.{number}"

    def sop_uid(self, series: int, instance: int) -> str:
        return f"{self.series_uid(series)}.{instance}"

    @property
    def instance_count(self) -> int:
        return sum(count for _, count in self.series)


EXAMS = (
    Exam(
        "1", FACILITY_A, "IPP-1", "Doe^John", "20240115", "101500", "ACC-1", (("CT", 3),), issuer=FACILITY_A
    ),
    Exam("2", FACILITY_A, "IPP-2", "DOE^Jane", "20230610", "083000", "ACC-2", (("MR", 2), ("MR", 2))),
    # The same Patient ID and name at another facility: another patient, never merged with exam 1's.
    Exam("3", FACILITY_B, "IPP-1", "Doe^John", "20220301", "140000", "ACC-3", (("US", 1),)),
    Exam("4", FACILITY_A, "IPP-4", "Martin^Claire", "20240301", "090000", "ACC-4", (("MG", 2),)),
    Exam("5", FACILITY_A, "IPP-5", "O'Brien^Sean", "20240301", "160000", "ACC-5", (("CR", 1),)),
)
BY_KEY = {exam.key: exam for exam in EXAMS}


def dicom_json(exam: Exam, series: int, instance: int, modality: str) -> dict[str, Any]:
    """A realistic instance of ``exam`` in the DICOM JSON Model, pixel data as a BulkDataURI."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = exam.sop_uid(series, instance)
    ds.StudyDate = exam.study_date
    ds.StudyTime = exam.study_time
    ds.AccessionNumber = exam.accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDescription = f"{modality} exam {exam.key}"
    ds.SeriesDescription = f"{modality} series {series}"
    ds.PatientName = exam.patient_name
    ds.PatientID = exam.patient_id
    if exam.issuer is not None:
        ds.IssuerOfPatientID = exam.issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = exam.study_uid
    ds.SeriesInstanceUID = exam.series_uid(series)
    ds.StudyID = exam.key
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.AcquisitionDateTime = f"{exam.study_date}{exam.study_time}.000000"
    ds.Rows = 32
    ds.Columns = 32
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    frames = 4 if modality == "US" else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.add(DataElement(0x7FE00010, "OW", b"\x00\x01" * 32 * 32 * frames))

    def bulk_data_uri(element: DataElement) -> str:
        instance_path = (
            f"studies/{exam.study_uid}/series/{exam.series_uid(series)}/instances/{ds.SOPInstanceUID}"
        )
        return f"{instance_path}/bulk/{element.tag:08X}"

    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk_data_uri)


def instance_stored(exam: Exam, series: int, instance: int, *, facility: str | None = None) -> InstanceStored:
    modality = exam.series[series - 1][0]
    sop_uid = exam.sop_uid(series, instance)
    return InstanceStored(
        study_instance_uid=exam.study_uid,
        series_instance_uid=exam.series_uid(series),
        sop_instance_uid=sop_uid,
        sop_class_uid=SOP_CLASSES[modality],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{exam.study_uid}/series/{exam.series_uid(series)}/instances/{sop_uid}",
        size_bytes=2048,
        sha256="ab" * 32,
        facility_finess=facility or exam.facility,
        patient=PatientIdentity(
            patient_id=exam.patient_id, issuer_of_patient_id=exam.issuer or exam.facility
        ),
        modality=modality,
        stored_at=datetime(2024, 1, 1, tzinfo=UTC),
        dicom_json=dicom_json(exam, series, instance, modality),
    )


def all_events(exams: tuple[Exam, ...] = EXAMS) -> Iterator[InstanceStored]:
    for exam in exams:
        for series, (_, count) in enumerate(exam.series, start=1):
            for instance in range(1, count + 1):
                yield instance_stored(exam, series, instance)


@pytest.fixture(scope="module")
def catalog_url(stack: Stack) -> str:
    if "catalog" not in stack.services:
        stack.start_services(("catalog",))
    return stack.service_url("catalog")


@pytest.fixture(scope="module")
async def publisher(kafka_bootstrap: str) -> AsyncIterator[EventPublisher]:
    config = build_kafka_config(
        ServiceSettings(service_name="ingest", http_port=8081, kafka_bootstrap_servers=kafka_bootstrap)
    )
    async with EventPublisher(config) as started:
        yield started


@pytest.fixture(scope="module")
async def client(catalog_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=catalog_url, timeout=10) as http:
        yield http


async def eventually(check: Callable[[], Any]) -> Any:
    """Poll ``check`` (an async callable returning a truthy value when done) until it succeeds."""
    async with asyncio.timeout(WAIT_S):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.1)


async def qido(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body: list[dict[str, Any]] = response.json()
    assert int(response.headers["X-Total-Count"]) >= len(body)
    return body


def value(result: dict[str, Any], tag: str) -> Any:
    return result[tag]["Value"][0] if "Value" in result.get(tag, {}) else None


def study_uids(results: list[dict[str, Any]]) -> list[str]:
    return [value(result, "0020000D") for result in results]


@pytest.fixture(scope="module")
async def catalogued(client: httpx.AsyncClient, publisher: EventPublisher) -> None:
    """Every exam published and catalogued."""
    for stored in all_events():
        await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))

    async def complete() -> bool:
        results = await qido(client, "/studies", StudyInstanceUID=",".join(e.study_uid for e in EXAMS))
        counts = {value(r, "0020000D"): value(r, "00201208") for r in results}
        return counts == {exam.study_uid: exam.instance_count for exam in EXAMS}

    await eventually(complete)


async def test_study_results_carry_the_default_attributes_and_derived_counts(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    exam = BY_KEY["2"]
    [result] = await qido(client, "/studies", StudyInstanceUID=exam.study_uid)
    # PS3.18 Table 10.6.3-3.
    for tag in (
        "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208",
    ):  # fmt: skip
        assert tag in result, tag
    assert result["00080061"] == {"vr": "CS", "Value": ["MR"]}
    assert value(result, "00201206") == 2
    assert value(result, "00201208") == 4
    assert value(result, "00080056") == "ONLINE"
    assert value(result, "00081190").endswith(f"/studies/{exam.study_uid}")
    assert value(result, "00100010") == {"Alphabetic": "DOE^Jane"}
    assert "7FE00010" not in result
    assert list(result) == sorted(result)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # Single value matching; an issuer tells two facilities' IPP-1 apart.
        ({"PatientID": "IPP-1"}, {"1", "3"}),
        ({"PatientID": "IPP-1", "IssuerOfPatientID": FACILITY_A}, {"1"}),
        ({"00100020": "IPP-1", "00100021": FACILITY_B}, {"3"}),
        ({"AccessionNumber": "ACC-4"}, {"4"}),
        # Person names match whatever the case; trailing empty components do not matter.
        ({"PatientName": "doe^john"}, {"1", "3"}),
        ({"PatientName": "DOE^JANE^^"}, {"2"}),
        # Wildcards.
        ({"PatientName": "doe*"}, {"1", "2", "3"}),
        ({"PatientName": "D?E^J*N"}, {"1", "3"}),
        ({"PatientName": "*brien*"}, {"5"}),
        ({"PatientName": "O'B*"}, {"5"}),
        ({"AccessionNumber": "ACC-?"}, {"1", "2", "3", "4", "5"}),
        # No regular expression injection: these are literal characters.
        ({"PatientName": ".*"}, set()),
        ({"PatientName": "D.e*"}, set()),
        ({"PatientName": "(Doe|Martin)*"}, set()),
        ({"PatientName": "[a-z]*"}, set()),
        # Date ranges, open and closed; a single date.
        ({"StudyDate": "20230101-20231231"}, {"2"}),
        ({"StudyDate": "-20221231"}, {"3"}),
        ({"StudyDate": "20240101-"}, {"1", "4", "5"}),
        ({"StudyDate": "20240301"}, {"4", "5"}),
        # Time range and combined keys.
        ({"StudyDate": "20240301", "StudyTime": "-1200"}, {"4"}),
        ({"StudyTime": "0800-1030"}, {"1", "2", "4"}),
        # Modalities in study: one, a list.
        ({"ModalitiesInStudy": "MR"}, {"2"}),
        ({"ModalitiesInStudy": "CT,MG"}, {"1", "4"}),
        ({"ModalitiesInStudy": "US\\CR"}, {"3", "5"}),
        # UID lists, comma or backslash separated.
        ({"StudyInstanceUID": f"{ROOT}.1,{ROOT}.4"}, {"1", "4"}),
        ({"StudyInstanceUID": f"{ROOT}.2\\{ROOT}.5"}, {"2", "5"}),
        # Universal matching: an empty value and a lone '*' match all.
        ({"PatientName": "", "StudyID": "*"}, {"1", "2", "3", "4", "5"}),
    ],
)
async def test_study_matching(
    client: httpx.AsyncClient, catalogued: None, params: dict[str, str], expected: set[str]
) -> None:
    results = await qido(client, "/studies", **{"AccessionNumber": "ACC-?", **params})
    assert {value(r, "00200010") for r in results} == expected
    for name in params:
        # Matching keys are returned (PS3.18 §8.3.4.1), universal ones included.
        tag = {"PatientName": "00100010", "StudyID": "00200010", "PatientID": "00100020"}.get(name)
        if tag is not None and results:
            assert all(tag in r for r in results)


async def test_results_are_ordered_most_recent_first_and_page_stably_with_a_total(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    everything = await qido(client, "/studies", AccessionNumber="ACC-?")
    keys = [value(r, "00200010") for r in everything]
    # Study Date descending, then Study Time descending.
    assert keys == ["5", "4", "1", "2", "3"]
    pages = []
    for offset in (0, 2, 4):
        response = await client.get(
            "/studies", params={"AccessionNumber": "ACC-?", "limit": 2, "offset": offset}
        )
        assert response.status_code == 200
        assert response.headers["X-Total-Count"] == "5"
        assert "Warning" not in response.headers
        pages.extend(value(r, "00200010") for r in response.json())
    assert pages == keys
    beyond = await client.get("/studies", params={"AccessionNumber": "ACC-?", "offset": 10})
    assert beyond.status_code == 200
    assert beyond.json() == []
    assert beyond.headers["X-Total-Count"] == "5"


async def test_includefield_adds_attributes_by_keyword_tag_or_all(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    exam = BY_KEY["1"]
    [plain] = await qido(client, "/studies", StudyInstanceUID=exam.study_uid)
    assert "00081030" not in plain
    [by_keyword] = await qido(
        client, "/studies", StudyInstanceUID=exam.study_uid, includefield="StudyDescription,00100021"
    )
    assert value(by_keyword, "00081030") == "CT exam 1"
    assert value(by_keyword, "00100021") == FACILITY_A
    [everything] = await qido(client, "/studies", StudyInstanceUID=exam.study_uid, includefield="all")
    assert everything["00080062"] == {"vr": "UI", "Value": [SOP_CLASSES["CT"]]}
    assert value(everything, "00100030") == "19700101"
    # The issuer defaults to the publishing facility when the instance has none.
    [other] = await qido(client, "/studies", StudyInstanceUID=BY_KEY["2"].study_uid, includefield="00100021")
    assert value(other, "00100021") == FACILITY_A


async def test_series_and_instance_searches_hierarchical_and_relational(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    mr = BY_KEY["2"]
    series = await qido(client, f"/studies/{mr.study_uid}/series")
    assert [value(s, "0020000E") for s in series] == [mr.series_uid(1), mr.series_uid(2)]
    assert all(value(s, "00201209") == 2 and value(s, "00080060") == "MR" for s in series)
    assert "00100010" not in series[0]

    relational = await qido(client, "/series", Modality="MR")
    assert [value(s, "0020000E") for s in relational] == [mr.series_uid(1), mr.series_uid(2)]
    # Relational results carry the study's attributes too (PS3.18 §10.6.3.3).
    assert value(relational[0], "00100010") == {"Alphabetic": "DOE^Jane"}
    assert value(relational[0], "00201208") == 4

    instances = await qido(client, f"/studies/{mr.study_uid}/series/{mr.series_uid(2)}/instances")
    assert [value(i, "00080018") for i in instances] == [mr.sop_uid(2, 1), mr.sop_uid(2, 2)]
    assert value(instances[0], "00280010") == 32
    assert value(instances[0], "00081190").endswith(
        f"/studies/{mr.study_uid}/series/{mr.series_uid(2)}/instances/{mr.sop_uid(2, 1)}"
    )

    in_study = await qido(client, f"/studies/{mr.study_uid}/instances")
    assert len(in_study) == 4
    assert value(in_study[0], "0020000E") == mr.series_uid(1)

    us = await qido(client, "/instances", SOPClassUID=SOP_CLASSES["US"], PatientID="IPP-1")
    assert [value(i, "00080018") for i in us] == [BY_KEY["3"].sop_uid(1, 1)]
    assert value(us[0], "00280008") == 4
    assert value(us[0], "0020000D") == BY_KEY["3"].study_uid

    by_time = await qido(client, "/instances", AcquisitionDateTime="2024-202403", includefield="00080016")
    assert {value(i, "0020000D") for i in by_time} == {BY_KEY[key].study_uid for key in ("1", "4", "5")}


async def test_metadata_returns_instance_datasets_with_absolute_bulk_data_uris(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    exam = BY_KEY["1"]
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "emage.example.fr",
        "X-Forwarded-Prefix": "/dicomweb",
    }
    response = await client.get(f"/studies/{exam.study_uid}/metadata", headers=forwarded)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    datasets = response.json()
    assert [value(d, "00080018") for d in datasets] == [exam.sop_uid(1, n) for n in (1, 2, 3)]
    sop = exam.sop_uid(1, 1)
    assert datasets[0]["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": f"https://emage.example.fr/dicomweb/studies/{exam.study_uid}/series/"
        f"{exam.series_uid(1)}/instances/{sop}/bulk/7FE00010",
    }
    series = await client.get(f"/studies/{exam.study_uid}/series/{exam.series_uid(1)}/metadata")
    assert len(series.json()) == 3
    one = await client.get(f"/studies/{exam.study_uid}/series/{exam.series_uid(1)}/instances/{sop}/metadata")
    [dataset] = one.json()
    assert value(dataset, "00100010") == {"Alphabetic": "Doe^John"}
    assert dataset["7FE00010"]["BulkDataURI"].startswith(str(client.base_url))

    unknown = await client.get(f"/studies/{ROOT}.999/metadata")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    invalid = await client.get("/studies/1.2.03/metadata")
    assert invalid.status_code == 400
    assert "leading zero" in invalid.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/studies", {"PatientAge": "042Y"}, "matching on PatientAge is not supported"),
        ("/studies", {"Frobnicate": "1"}, "unknown query parameter"),
        ("/studies", {"SOPClassUID": SOP_CLASSES["CT"]}, "not supported in a study search"),
        ("/studies", {"StudyDate": "2024"}, "is not a date"),
        ("/studies", {"StudyDate": "20240231"}, "not a calendar date"),
        ("/studies", {"StudyDate": "20241231-20240101"}, "ends before it starts"),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}, "is not a UID"),
        ("/studies", {"limit": "ten"}, "limit is an integer"),
        ("/studies", {"offset": "-1"}, "offset is an integer"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching is 'true' or 'false'"),
        ("/studies", {"includefield": "NotAKeyword"}, "includefield"),
        ("/studies", {"PatientName": "a*b*c*d*e*f*g*h*i*j"}, "wildcards"),
        ("/studies/1.2.x/series", {}, "is not a UID"),
    ],
)
async def test_bad_queries_are_refused_with_a_reason(
    client: httpx.AsyncClient, catalogued: None, path: str, params: dict[str, str], message: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert message in response.json()["detail"]


async def test_content_negotiation_limit_and_fuzzy_matching_warnings(
    client: httpx.AsyncClient, catalogued: None
) -> None:
    assert (await client.get("/studies", headers={"Accept": "application/dicom+xml"})).status_code == 406
    assert (await client.get("/studies", params={"accept": "text/html"})).status_code == 406
    accepted = await client.get("/studies", headers={"Accept": "application/json, text/html;q=0.5"})
    assert accepted.status_code == 200
    repeated = await client.get("/studies?PatientID=IPP-1&PatientID=IPP-2")
    assert repeated.status_code == 400

    fuzzy = await client.get("/studies", params={"fuzzymatching": "true", "PatientID": "IPP-4"})
    assert fuzzy.status_code == 200
    assert "fuzzymatching parameter is not supported" in fuzzy.headers["Warning"]
    unbounded = await client.get("/studies", params={"AccessionNumber": "ACC-?", "limit": 1_000_000})
    assert unbounded.status_code == 200
    assert len(unbounded.json()) == 5

    openapi = (await client.get("/openapi.json")).json()
    studies = openapi["paths"]["/studies"]["get"]
    assert "X-Total-Count" in studies["responses"]["200"]["headers"]
    assert "X-Total-Count" in studies["description"]


async def test_an_event_handled_twice_changes_nothing(
    client: httpx.AsyncClient, publisher: EventPublisher, catalogued: None
) -> None:
    exam = BY_KEY["4"]
    before = await qido(client, "/studies", StudyInstanceUID=exam.study_uid, includefield="all")
    series_before = await qido(client, f"/studies/{exam.study_uid}/series", includefield="all")
    duplicate = make_event(instance_stored(exam, 1, 1), "/emage/ingest")
    await publisher.publish(INSTANCE_STORED_TOPIC, duplicate)
    await publisher.publish(INSTANCE_STORED_TOPIC, duplicate)
    # A later instance of the same study shares the partition: once it shows, the duplicates were handled.
    await publisher.publish(INSTANCE_STORED_TOPIC, make_event(instance_stored(exam, 1, 3), "/emage/ingest"))

    async def sentinel_seen() -> list[dict[str, Any]]:
        results = await qido(client, "/studies", StudyInstanceUID=exam.study_uid, includefield="all")
        return results if value(results[0], "00201208") == 3 else []

    [after] = await eventually(sentinel_seen)
    assert {**after, "00201208": before[0]["00201208"]} == before[0]
    series_after = await qido(client, f"/studies/{exam.study_uid}/series", includefield="all")
    assert value(series_after[0], "00201209") == value(series_before[0], "00201209") + 1


async def test_another_facility_cannot_write_into_a_study_and_its_event_is_dead_lettered(
    client: httpx.AsyncClient, publisher: EventPublisher, kafka_bootstrap: str, catalogued: None
) -> None:
    exam = BY_KEY["1"]
    intruder = instance_stored(exam, 1, 9, facility=FACILITY_B)
    event = make_event(intruder, "/emage/ingest")
    await publisher.publish(INSTANCE_STORED_TOPIC, event)

    consumer = AIOKafkaConsumer(
        dlq_topic(INSTANCE_STORED_TOPIC), bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                record = await consumer.getone()
                if CloudEvent.from_bytes(record.value).id == event.id:
                    break
    finally:
        await consumer.stop()
    assert b"belongs to facility 750000001" in dict(record.headers)[DLQ_ERROR_MESSAGE]
    [study] = await qido(client, "/studies", StudyInstanceUID=exam.study_uid)
    assert value(study, "00201208") == exam.instance_count


async def test_study_changes_are_announced_with_increasing_revisions(
    kafka_bootstrap: str, catalogued: None
) -> None:
    exam = BY_KEY["2"]
    consumer = AIOKafkaConsumer(
        STUDY_CHANGED_TOPIC, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    changes: list[StudyChanged] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while not changes or changes[-1].number_of_instances < exam.instance_count:
                record = await consumer.getone()
                change = CloudEvent.from_bytes(record.value).data_as(StudyChanged)
                if change.study_instance_uid == exam.study_uid:
                    assert record.key == exam.study_uid.encode()
                    changes.append(change)
    finally:
        await consumer.stop()
    assert changes[0].change == "created"
    assert all(change.change == "updated" for change in changes[1:])
    revisions = [change.revision for change in changes]
    assert revisions == sorted(set(revisions))
    last = changes[-1]
    assert last.facility_finess == FACILITY_A
    assert last.patient == PatientIdentity(patient_id="IPP-2", issuer_of_patient_id=FACILITY_A)
    assert last.accession_number == "ACC-2"
    assert str(last.study_date) == "2023-06-10"
    assert last.modalities_in_study == ("MR",)
    assert (last.number_of_series, last.number_of_instances) == (2, 4)
    # Debounced: four instances, fewer announcements than instances is allowed but never more.
    assert len(changes) <= exam.instance_count
