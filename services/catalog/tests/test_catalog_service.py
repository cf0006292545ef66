"""The service layer on an in-memory store: idempotent recording, derived totals, revisions, announcements."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from emage_catalog.domain.care import CareAttributes, operator_rpps
from emage_catalog.domain.filing import Filing, HeldState, StoredInstance, reclassified_series
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.model import (
    CatalogConflictError,
    IndexFields,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
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
    """The :class:`~emage_catalog.service.CatalogStore` writing side, in dictionaries.

    :meth:`file` is atomic like the MongoDB store's transaction: a plan that raises leaves everything as it
    was. ``filings`` counts the runs of events filed.
    """

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}
        self.series: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.filings = 0

    async def file(self, instances: Sequence[StoredInstance], plan: Callable[[HeldState], Filing]) -> Filing:
        studies = {instance.entry.study_instance_uid for instance in instances}
        series = {instance.entry.series_instance_uid for instance in instances}
        placements = {
            uid: InstancePlacement(
                document["study_uid"], document["series_uid"], document["q"]["SOPClassUID"]
            )
            for uid, document in self.instances.items()
            if uid in {instance.entry.sop_instance_uid for instance in instances}
        }
        held = HeldState(
            studies={
                uid: StudyState(s["facility_finess"], dict(s["q"]), s["revision"], s["pending"])
                for uid, s in self.studies.items()
                if uid in studies
            },
            series={
                uid: SeriesState(
                    s["study_uid"],
                    dict(s["q"]),
                    SeriesSummary(
                        s["q"].get("Modality"), s["count"], s["sop_classes"], operator_rpps(s["dataset"])
                    ),
                )
                for uid, s in self.series.items()
                if uid in series or s["study_uid"] in studies
            },
            instances=placements,
            sop_classes_besides={
                series_uid: frozenset(
                    i["q"]["SOPClassUID"]
                    for uid, i in self.instances.items()
                    if i["series_uid"] == series_uid and uid not in named
                )
                for series_uid, named in reclassified_series(instances, placements).items()
            },
        )
        filing = plan(held)
        for keys in filing.study_keys:
            for document in [*self.series.values(), *self.instances.values()]:
                if document["study_uid"] == keys.uid:
                    _replace(document["q"], keys.index, keys.previous)
        for keys in filing.series_keys:
            for document in self.instances.values():
                if document["series_uid"] == keys.uid:
                    _replace(document["q"], keys.index, keys.previous)
        for instance in filing.instances:
            self.instances[instance.entry.sop_instance_uid] = {
                "study_uid": instance.entry.study_instance_uid,
                "series_uid": instance.entry.series_instance_uid,
                "dataset": instance.entry.instance,
                "q": dict(instance.index),
            }
        for written in filing.series:
            self.series[written.series_instance_uid] = {
                "study_uid": written.study_instance_uid,
                "dataset": written.dataset,
                "q": dict(written.index),
                "count": written.totals.instance_count,
                "sop_classes": written.totals.sop_class_uids,
            }
        for study in filing.studies:
            document = self.studies.setdefault(
                study.entry.study_instance_uid,
                {"facility_finess": study.entry.facility_finess, "announced": 0},
            )
            document.update(
                dataset=study.dataset,
                q=dict(study.index),
                patient=study.entry.patient,
                revision=study.revision,
                pending=study.announcement_pending,
            )
        self.filings += 1
        return filing

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
    series_description: str | None = None,
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
            **(
                {}
                if series_description is None
                else {"0008103E": {"vr": "LO", "Value": [series_description]}}
            ),
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


# --- Runs of events filed at once ---------------------------------------------------------------------------


def _documents(store: MemoryStore) -> Any:
    return copy.deepcopy((store.studies, store.series, store.instances))


def _counts(store: MemoryStore, study: int) -> tuple[int, int, list[int]]:
    """Number of Study Related Series and Instances, and each series' Number of Series Related Instances."""
    dataset = store.studies[f"{ROOT}.{study}"]["dataset"]
    series = sorted(uid for uid, s in store.series.items() if s["study_uid"] == f"{ROOT}.{study}")
    return (
        dataset["00201206"]["Value"][0],
        dataset["00201208"]["Value"][0],
        [store.series[uid]["dataset"]["00201209"]["Value"][0] for uid in series],
    )


async def _one_by_one(events: Sequence[InstanceStored], *, first_revision: int = 1) -> MemoryStore:
    alone = MemoryStore()
    service = CatalogService(alone, on_study_changed=lambda: None)  # type: ignore[arg-type]
    for revision, event in enumerate(events, start=first_revision):
        await service.record_instance(event, revision=revision)
    return alone


EVENTS = [
    stored(1, 2, 1, sop_class=SR, operators=(OTHER_TECHNICIAN,)),  # the second series first
    stored(1, 1, 1, referrer=REFERRER),
    stored(2, 1, 1),
    stored(1, 1, 2, operators=(TECHNICIAN,)),
    stored(1, 1, 1, referrer=REFERRER),  # a duplicate
    stored(1, 2, 2, sop_class=SR, series_description="Report"),  # the series' keys change
    stored(1, 1, 3, name="Doe^Jonathan"),  # the study's keys change
    stored(2, 1, 1),  # another duplicate
    stored(2, 2, 1, sop_class=SR),
    stored(1, 1, 2, operators=(TECHNICIAN,)),
]


@pytest.mark.parametrize("sizes", [(10,), (1,) * 10, (2, 8), (5, 5), (3, 3, 4), (7, 1, 2)])
async def test_a_run_filed_at_once_leaves_the_documents_its_events_one_by_one_leave(
    service: CatalogService, store: MemoryStore, sizes: tuple[int, ...]
) -> None:
    start = 0
    for size in sizes:
        run = EVENTS[start : start + size]
        await service.record_instances([(event, start + i + 1) for i, event in enumerate(run)])
        start += size
    assert store.filings == len(sizes)
    assert _documents(store) == _documents(await _one_by_one(EVENTS))
    # Duplicates count once; series arriving out of order count all the same.
    assert _counts(store, 1) == (2, 5, [3, 2])
    assert _counts(store, 2) == (2, 2, [1, 1])
    assert all(
        i["q"]["PatientName"] == "doe^jonathan"
        for i in store.instances.values()
        if "1.1." in i["study_uid"] + "."
    )


async def test_a_redelivered_run_changes_nothing_however_it_is_cut(
    service: CatalogService, store: MemoryStore
) -> None:
    numbered = [(event, revision) for revision, event in enumerate(EVENTS, start=1)]
    await service.record_instances(numbered)
    filed = _documents(store)
    # Redelivered whole, or from an offset inside the run (its commit was lost) to the end of the partition,
    # in other cuts.
    await service.record_instances(numbered)
    assert _documents(store) == filed
    await service.record_instances(numbered[4:7])
    await service.record_instances(numbered[7:])
    assert _documents(store) == filed
    for event, revision in numbered[2:]:
        await service.record_instance(event, revision=revision)
    assert _documents(store) == filed
    assert _counts(store, 1) == (2, 5, [3, 2])


async def test_an_instance_filed_again_under_another_sop_class_leaves_its_series_classes(
    service: CatalogService, store: MemoryStore
) -> None:
    await service.record_instances(
        [(stored(1, 1, 1), 1), (stored(1, 1, 2), 2), (stored(1, 2, 1, sop_class=SR), 3)]
    )
    # Instance 1 corrected to another class: CT stays (instance 2 has it) and SR joins.
    await service.record_instances([(stored(1, 1, 1, sop_class=SR), 4)])
    assert store.series[f"{ROOT}.1.1"]["sop_classes"] == (CT, SR)
    # Instance 2 too, in a run where it first comes as it was: no CT is left in the series, nor in the study.
    await service.record_instances([(stored(1, 1, 2), 5), (stored(1, 1, 2, sop_class=SR), 6)])
    assert store.series[f"{ROOT}.1.1"]["sop_classes"] == (SR,)
    assert store.studies[f"{ROOT}.1"]["dataset"]["00080062"] == {"vr": "UI", "Value": [SR]}
    assert store.studies[f"{ROOT}.1"]["q"]["SOPClassesInStudy"] == [SR]
    assert _counts(store, 1) == (2, 3, [2, 1])
    assert _documents(store) == _documents(
        await _one_by_one(
            [
                stored(1, 1, 1),
                stored(1, 1, 2),
                stored(1, 2, 1, sop_class=SR),
                stored(1, 1, 1, sop_class=SR),
                stored(1, 1, 2),
                stored(1, 1, 2, sop_class=SR),
            ]
        )
    )


async def test_a_run_with_a_conflicting_event_writes_nothing_at_all(
    service: CatalogService, store: MemoryStore, wakes: list[None]
) -> None:
    await service.record_instance(stored(1, 1, 1), revision=1)
    before, announced = _documents(store), len(wakes)
    with pytest.raises(CatalogConflictError, match="belongs to facility 750000001"):
        await service.record_instances(
            [(stored(2, 1, 1), 2), (stored(1, 1, 2), 3), (stored(1, 1, 3, facility="690000002"), 4)]
        )
    assert _documents(store) == before
    assert len(wakes) == announced
    # An instance moved to another series within the run is refused the same way.
    with pytest.raises(CatalogConflictError, match="is catalogued in series"):
        await service.record_instances(
            [
                (stored(2, 1, 1), 2),
                (stored(2, 2, 1).model_copy(update={"sop_instance_uid": f"{ROOT}.2.1.1"}), 3),
            ]
        )
    assert _documents(store) == before


async def test_a_run_announces_each_study_once_at_its_latest_revision(
    service: CatalogService, store: MemoryStore, wakes: list[None]
) -> None:
    sink = Sink()
    announcer = StudyAnnouncer(store, sink, debounce_seconds=0)  # type: ignore[arg-type]
    await service.record_instances([(stored(1, 1, 1), 3), (stored(2, 1, 1), 4), (stored(1, 1, 2), 7)])
    assert len(wakes) == 1
    assert await announcer.announce_pending() == 2
    changes = {
        event.data_as(StudyChanged).study_instance_uid: event.data_as(StudyChanged)
        for _, event in sink.published
    }
    assert (changes[f"{ROOT}.1"].revision, changes[f"{ROOT}.1"].number_of_instances) == (7, 2)
    assert (changes[f"{ROOT}.2"].revision, changes[f"{ROOT}.2"].number_of_instances) == (4, 1)
    # The same run again: nothing to announce.
    await service.record_instances([(stored(1, 1, 1), 3), (stored(2, 1, 1), 4), (stored(1, 1, 2), 7)])
    assert len(wakes) == 1
    assert await announcer.announce_pending() == 0
