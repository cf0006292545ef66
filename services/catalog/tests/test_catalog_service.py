"""The service layer on an in-memory store: idempotent recording, derived totals, revisions, announcements."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from emage_catalog.domain.care import CareAttributes, operator_rpps
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.model import (
    CatalogConflictError,
    CatalogEntry,
    IndexFields,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
    SeriesTotals,
    StudySnapshot,
    StudyState,
)
from emage_catalog.domain.query import parse_search
from emage_catalog.service import CatalogService, SearchPage, StudyAnnouncer
from emage_common.access_contract import StudyAccessAttributes, WireSearchScope
from emage_common.events import STUDY_CHANGED_TOPIC, CloudEvent, InstanceStored, PatientIdentity, StudyChanged

ROOT = "1.2.826.0.1.3680043.8.498.9"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


class MemoryStore:
    """The :class:`~emage_catalog.service.CatalogStore` writing side, in dictionaries."""

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}
        self.series: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}

    async def states(
        self, entry: CatalogEntry
    ) -> tuple[StudyState | None, SeriesState | None, InstancePlacement | None]:
        study = self.studies.get(entry.study_instance_uid)
        series = self.series.get(entry.series_instance_uid)
        instance = self.instances.get(entry.sop_instance_uid)
        return (
            None
            if study is None
            else StudyState(study["facility_finess"], dict(study["q"]), study["revision"], study["pending"]),
            None if series is None else SeriesState(series["study_uid"], dict(series["q"])),
            None if instance is None else InstancePlacement(instance["study_uid"], instance["series_uid"]),
        )

    async def put_instance(self, entry: CatalogEntry, index: IndexFields, *, stored_at: datetime) -> None:
        self.instances[entry.sop_instance_uid] = {
            "study_uid": entry.study_instance_uid,
            "series_uid": entry.series_instance_uid,
            "dataset": entry.instance,
            "q": dict(index),
        }

    async def series_totals(self, series_instance_uid: str) -> SeriesTotals:
        members = [i for i in self.instances.values() if i["series_uid"] == series_instance_uid]
        return SeriesTotals(len(members), tuple(sorted({i["q"]["SOPClassUID"] for i in members})))

    async def put_series(
        self, entry: CatalogEntry, dataset: Any, index: IndexFields, totals: SeriesTotals, *, previous: Any
    ) -> None:
        series = self.series.setdefault(entry.series_instance_uid, {"q": {}})
        _replace(series["q"], index, previous)
        series.update(
            study_uid=entry.study_instance_uid,
            dataset=dataset,
            count=totals.instance_count,
            sop_classes=totals.sop_class_uids,
        )

    async def series_summaries(self, study_instance_uid: str) -> list[SeriesSummary]:
        return [
            SeriesSummary(s["q"].get("Modality"), s["count"], s["sop_classes"], operator_rpps(s["dataset"]))
            for s in self.series.values()
            if s["study_uid"] == study_instance_uid
        ]

    async def put_study(
        self,
        entry: CatalogEntry,
        dataset: Any,
        index: IndexFields,
        *,
        previous: StudyState | None,
        revision: int,
        announcement_pending: bool,
    ) -> None:
        study = self.studies.setdefault(
            entry.study_instance_uid, {"facility_finess": entry.facility_finess, "announced": 0, "q": {}}
        )
        _replace(study["q"], index, None if previous is None else previous.index)
        study.update(dataset=dataset, patient=entry.patient, revision=revision, pending=announcement_pending)

    async def copy_study_keys(
        self, entry: CatalogEntry, index: IndexFields, previous: Any, *, whole_study: bool
    ) -> None:
        for documents, own in (
            (self.series, entry.series_instance_uid),
            (self.instances, entry.sop_instance_uid),
        ):
            for uid, document in documents.items():
                if (whole_study and document["study_uid"] == entry.study_instance_uid) or uid == own:
                    _replace(document["q"], index, previous)

    async def copy_series_keys(
        self, entry: CatalogEntry, index: IndexFields, previous: Any, *, whole_series: bool
    ) -> None:
        for uid, document in self.instances.items():
            if (
                whole_series and document["series_uid"] == entry.series_instance_uid
            ) or uid == entry.sop_instance_uid:
                _replace(document["q"], index, previous)

    async def care_attributes(self, study_instance_uid: str) -> CareAttributes | None:
        study = self.studies.get(study_instance_uid)
        return None if study is None else CareAttributes.from_fields(study["q"])

    async def pending_announcements(self, limit: int) -> list[StudySnapshot]:
        return [
            StudySnapshot(
                uid, s["facility_finess"], s["patient"], s["dataset"], s["revision"], s["announced"]
            )
            for uid, s in self.studies.items()
            if s["pending"]
        ][:limit]

    async def mark_announced(self, study_instance_uid: str, revision: int) -> None:
        study = self.studies[study_instance_uid]
        study["announced"] = max(study["announced"], revision)
        study["pending"] = study["pending"] and study["revision"] != revision


def _replace(target: dict[str, Any], fields: IndexFields, previous: IndexFields | None) -> None:
    for name in set(previous or {}) - set(fields):
        target.pop(name, None)
    target.update(fields)


class Sink:
    def __init__(self) -> None:
        self.published: list[tuple[str, CloudEvent]] = []

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        self.published.append((topic, event))


def stored(
    study: int,
    series: int,
    instance: int,
    *,
    name: str = "Doe^John",
    sop_class: str = CT,
    facility: str = "750000001",
    referrer: str | None = None,
    operators: tuple[str, ...] = (),
) -> InstanceStored:
    study_uid, series_uid = f"{ROOT}.{study}", f"{ROOT}.{study}.{series}"
    sop_uid = f"{series_uid}.{instance}"
    return InstanceStored(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
        size_bytes=1,
        sha256="00" * 32,
        facility_finess=facility,
        patient=PatientIdentity(patient_id="IPP-1", issuer_of_patient_id="750000001"),
        modality="CT" if sop_class == CT else "SR",
        stored_at=datetime(2024, 1, 1, tzinfo=UTC),
        dicom_json={
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
            "00200011": {"vr": "IS", "Value": [series]},
            "00200013": {"vr": "IS", "Value": [instance]},
            **({} if referrer is None else {"00080096": _people(referrer)}),
            **({"00081072": _people(*operators)} if operators else {}),
        },
    )


def _people(*rpps: str) -> dict[str, Any]:
    """A sequence of Person Identification Macro items naming each RPPS (PS3.3 Table 10-1)."""
    return {
        "vr": "SQ",
        "Value": [
            {
                "00080080": {"vr": "LO", "Value": ["CHU Alpha"]},
                "00401101": {
                    "vr": "SQ",
                    "Value": [
                        {
                            "00080100": {"vr": "SH", "Value": [number]},
                            "00080102": {"vr": "SH", "Value": ["RPPS"]},
                            "00080104": {"vr": "LO", "Value": ["Someone"]},
                        }
                    ],
                },
            }
            for number in rpps
        ],
    }


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def wakes() -> list[None]:
    return []


@pytest.fixture
def service(store: MemoryStore, wakes: list[None]) -> CatalogService:
    return CatalogService(store, on_study_changed=lambda: wakes.append(None))  # type: ignore[arg-type]


async def test_totals_are_derived_and_replays_leave_identical_documents(
    service: CatalogService, store: MemoryStore
) -> None:
    events = [stored(1, 1, 1), stored(1, 1, 2), stored(1, 2, 1, sop_class=SR)]
    for revision, event in enumerate(events, start=1):
        await service.record_instance(event, revision=revision)
    study = store.studies[f"{ROOT}.1"]
    assert study["dataset"]["00201206"] == {"vr": "IS", "Value": [2]}
    assert study["dataset"]["00201208"] == {"vr": "IS", "Value": [3]}
    assert study["dataset"]["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert study["dataset"]["00080062"] == {"vr": "UI", "Value": [CT, SR]}
    assert store.series[f"{ROOT}.1.1"]["dataset"]["00201209"] == {"vr": "IS", "Value": [2]}
    snapshot = copy.deepcopy((store.studies, store.series, store.instances))

    # The same events again (a redelivery, or a replay over the same database): nothing changes.
    for revision, event in enumerate(events, start=1):
        await service.record_instance(event, revision=revision)
    assert (store.studies, store.series, store.instances) == snapshot


async def test_study_keys_are_copied_down_and_rewritten_when_they_change(
    service: CatalogService, store: MemoryStore
) -> None:
    await service.record_instance(stored(1, 1, 1), revision=1)
    await service.record_instance(stored(1, 2, 1, sop_class=SR), revision=2)
    first = store.instances[f"{ROOT}.1.1.1"]["q"]
    assert first["PatientName"] == "doe^john"
    assert first["ModalitiesInStudy"] == ["CT", "SR"]
    assert first["Modality"] == "CT"
    # A corrected name on a later instance: the study, and every copy of its keys, follow.
    await service.record_instance(stored(1, 2, 2, name="Doe^Jonathan", sop_class=SR), revision=3)
    assert all(i["q"]["PatientName"] == "doe^jonathan" for i in store.instances.values())
    assert all(s["q"]["PatientName"] == "doe^jonathan" for s in store.series.values())


async def test_revisions_only_rise_and_announcements_follow_them(
    service: CatalogService, store: MemoryStore, wakes: list[None]
) -> None:
    sink = Sink()
    announcer = StudyAnnouncer(store, sink, debounce_seconds=0)  # type: ignore[arg-type]
    await service.record_instance(stored(1, 1, 1), revision=5)
    await service.record_instance(stored(1, 1, 2), revision=9)
    assert len(wakes) == 2
    assert await announcer.announce_pending() == 1
    [(topic, event)] = sink.published
    assert topic == STUDY_CHANGED_TOPIC
    created = event.data_as(StudyChanged)
    assert (created.change, created.revision, created.number_of_instances) == ("created", 9, 2)
    assert event.partitionkey == f"{ROOT}.1"

    # An older event again: no new revision, nothing to announce.
    await service.record_instance(stored(1, 1, 1), revision=5)
    assert store.studies[f"{ROOT}.1"]["revision"] == 9
    assert await announcer.announce_pending() == 0
    assert len(wakes) == 2

    await service.record_instance(stored(1, 1, 3), revision=12)
    await announcer.announce_pending()
    updated = sink.published[-1][1].data_as(StudyChanged)
    assert (updated.change, updated.revision, updated.number_of_instances) == ("updated", 12, 3)


async def test_a_conflicting_event_writes_nothing(service: CatalogService, store: MemoryStore) -> None:
    await service.record_instance(stored(1, 1, 1), revision=1)
    snapshot = copy.deepcopy((store.studies, store.series, store.instances))
    with pytest.raises(CatalogConflictError):
        await service.record_instance(stored(1, 1, 2, facility="690000002"), revision=2)
    assert (store.studies, store.series, store.instances) == snapshot


REFERRER, TECHNICIAN, OTHER_TECHNICIAN = "10100000024", "10100000040", "10100000057"
OTHER_REFERRER = "10100000099"
CARE_FIELDS = ("facility_finess", "patient_key", "referring_physician_rpps", "performing_technician_rpps")


def _care(document: dict[str, Any]) -> dict[str, Any]:
    return {name: document["q"][name] for name in CARE_FIELDS if name in document["q"]}


async def test_care_attributes_are_copied_to_every_level_and_follow_new_operators(
    service: CatalogService, store: MemoryStore
) -> None:
    patient_key = "pid:750000001:IPP-1"
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(TECHNICIAN,)), revision=1)
    await service.record_instance(stored(1, 1, 2, referrer=REFERRER, operators=(TECHNICIAN,)), revision=2)
    expected = {
        "facility_finess": "750000001",
        "patient_key": patient_key,
        "referring_physician_rpps": REFERRER,
        "performing_technician_rpps": [TECHNICIAN],
    }
    documents = [*store.studies.values(), *store.series.values(), *store.instances.values()]
    assert [_care(document) for document in documents] == [expected] * 4

    # A new series brings a new operator: the study's list grows, and every copy of it with it.
    await service.record_instance(
        stored(1, 2, 1, sop_class=SR, referrer=REFERRER, operators=(OTHER_TECHNICIAN, TECHNICIAN)), revision=3
    )
    grown = {**expected, "performing_technician_rpps": [TECHNICIAN, OTHER_TECHNICIAN]}
    documents = [*store.studies.values(), *store.series.values(), *store.instances.values()]
    assert [_care(document) for document in documents] == [grown] * 6
    assert await service.access_attributes(f"{ROOT}.1") == StudyAccessAttributes(
        study_instance_uid=f"{ROOT}.1",
        facility_finess="750000001",
        patient_key=patient_key,
        referring_physician_rpps=REFERRER,
        performing_technician_rpps=(TECHNICIAN, OTHER_TECHNICIAN),
    )

    # A later instance without a referrer (a report series often omits it) removes nobody's access.
    await service.record_instance(stored(1, 2, 2, sop_class=SR, operators=(OTHER_TECHNICIAN,)), revision=4)
    documents = [*store.studies.values(), *store.series.values(), *store.instances.values()]
    assert all(document["q"]["referring_physician_rpps"] == REFERRER for document in documents)
    attributes = await service.access_attributes(f"{ROOT}.1")
    assert attributes is not None
    assert attributes.referring_physician_rpps == REFERRER
    assert attributes.performing_technician_rpps == (TECHNICIAN, OTHER_TECHNICIAN)

    # One naming another referrer replaces them, like any study-level attribute.
    await service.record_instance(stored(1, 2, 3, sop_class=SR, referrer=OTHER_REFERRER), revision=5)
    attributes = await service.access_attributes(f"{ROOT}.1")
    assert attributes is not None
    assert attributes.referring_physician_rpps == OTHER_REFERRER


async def test_an_unknown_study_has_no_access_attributes(service: CatalogService) -> None:
    assert await service.access_attributes(f"{ROOT}.404") is None


async def test_a_scope_permitting_nothing_is_answered_without_a_query(service: CatalogService) -> None:
    # The memory store has no search at all: asking it would fail.
    query = parse_search([], level=QueryLevel.SERIES, max_limit=10)
    page = await service.search(replace(query, scope=WireSearchScope()), "http://catalog/")
    assert page == SearchPage(0, [])
