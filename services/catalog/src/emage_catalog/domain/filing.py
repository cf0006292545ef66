"""Filing stored instances: the documents a run of ``instance.stored`` events leaves, from what the catalog
held before them.

The store reads what it holds of the events' studies, series and instances (:class:`HeldState`), this module
applies the events to it in order, exactly as if each had been handled alone, and the store writes the last
state of every document they touched (:class:`Filing`), all in one transaction. So a run of events costs a
few reads and writes whatever its length, and a crash leaves all of it or none of it.

Counts are kept with the series: an instance the catalog did not hold adds one to its series, in the same
transaction that files it, so handling an event again (a redelivery, a replay over the same database) adds
nothing. The SOP classes of a series grow the same way; an instance filed again under another SOP class is the
one case where they may shrink, and the store then reads the classes of the series' other instances
(:func:`reclassified_series`). Everything the study derives from its series (Modalities and SOP Classes in
Study, Number of Study Related Series and Instances, its technicians) is recomputed from all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from emage_catalog.domain.care import REFERRER_FIELD, OrderedCare, operator_rpps, referring_physician_rpps
from emage_catalog.domain.dicom import DicomJson
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.matching import QUERY_KEYS
from emage_catalog.domain.model import (
    CatalogEntry,
    IndexFields,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
    SeriesTotals,
    StudyState,
    check_consistency,
    index_fields,
    series_dataset,
    study_care,
    study_dataset,
)

_OWN_KEYS: Final = {
    level: frozenset(key.attribute.keyword for key in QUERY_KEYS.values() if key.level is level)
    for level in QueryLevel
}


def own_keys(index: IndexFields, level: QueryLevel) -> IndexFields:
    """The keys of ``index`` that belong to ``level`` (a document's ``q`` also holds those above it)."""
    return {name: value for name, value in index.items() if name in _OWN_KEYS[level]}


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One ``instance.stored`` event to file: its entry, its study's revision, when ingest stored it."""

    entry: CatalogEntry
    revision: int
    """The position of the event in its partition, plus one: it orders the events of a study."""
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class HeldState:
    """What the catalog holds of the studies, series and instances a run of events names."""

    studies: Mapping[str, StudyState]
    series: Mapping[str, SeriesState]
    """Every series of the events' studies, and every series the events name (in whatever study)."""
    instances: Mapping[str, InstancePlacement]
    """The instances the events name that the catalog holds."""
    sop_classes_besides: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """For each series of :func:`reclassified_series`: the SOP classes of its instances the events do not
    name."""


@dataclass(frozen=True, slots=True)
class InstanceDocument:
    entry: CatalogEntry
    index: IndexFields
    """Its own keys, its series' and its study's (with the study's care attributes)."""
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class SeriesDocument:
    study_instance_uid: str
    series_instance_uid: str
    dataset: DicomJson
    index: IndexFields
    """Its own keys and its study's (with the study's care attributes)."""
    totals: SeriesTotals


@dataclass(frozen=True, slots=True)
class StudyDocument:
    entry: CatalogEntry
    """The study's latest entry: its patient; its facility, written when the study is created."""
    dataset: DicomJson
    index: IndexFields
    """Its keys and its care attributes."""
    revision: int
    announcement_pending: bool


@dataclass(frozen=True, slots=True)
class KeyCopy:
    """Keys of a study (series) that changed, to rewrite in every document below it."""

    uid: str
    index: IndexFields
    previous: IndexFields
    """The keys the documents below held: those no longer in ``index`` are removed."""


@dataclass(frozen=True, slots=True)
class Filing:
    """The documents a run of events leaves: each in its final state, written once."""

    instances: list[InstanceDocument]
    series: list[SeriesDocument]
    studies: list[StudyDocument]
    study_keys: list[KeyCopy]
    """Studies whose keys changed: rewritten in all their series and instances."""
    series_keys: list[KeyCopy]
    """Series whose own keys changed: rewritten in all their instances."""

    @property
    def announces(self) -> bool:
        """Whether a study is marked for a ``study.changed`` announcement."""
        return any(study.announcement_pending for study in self.studies)


def reclassified_series(
    instances: Sequence[StoredInstance], held: Mapping[str, InstancePlacement]
) -> dict[str, frozenset[str]]:
    """Series in which an event files an instance again under another SOP class than it had, each with the
    SOP Instance UIDs the events name in it (the store reads the classes of the others)."""
    classes = {uid: placement.sop_class_uid for uid, placement in held.items()}
    changed: set[str] = set()
    named: dict[str, set[str]] = {}
    for instance in instances:
        entry = instance.entry
        known = classes.get(entry.sop_instance_uid)
        if known is not None and known != entry.sop_class_uid:
            changed.add(entry.series_instance_uid)
        classes[entry.sop_instance_uid] = entry.sop_class_uid
        named.setdefault(entry.series_instance_uid, set()).add(entry.sop_instance_uid)
    return {series: frozenset(named[series]) for series in changed}


def file_instances(
    instances: Sequence[StoredInstance],
    held: HeldState,
    ordered: Sequence[OrderedCare | None] | None = None,
) -> Filing:
    """The documents ``instances`` leave, applied in order on what the catalog ``held``.

    ``ordered`` is, for each event, what its study's order announced, if anything (and if it concerns the
    study: :meth:`~emage_catalog.domain.care.OrderedCare.concerns`). Each event is checked against the
    catalog as the events before it left it; raises :class:`~emage_catalog.domain.model.CatalogConflictError`
    for the first that contradicts it, and then nothing may be written.

    Only what the next event depends on is followed event by event (placements, counts, revisions, the
    referring physician); the datasets and keys of a series and a study, which depend on their latest event
    and on the totals alone, are derived once, from their final state.
    """
    studies = dict(held.studies)
    series = dict(held.series)
    placements = dict(held.instances)
    latest: dict[str, StoredInstance] = {}
    latest_of_series: dict[str, CatalogEntry] = {}
    latest_of_study: dict[str, int] = {}
    referrers: dict[str, str | None] = {}
    """The referring physician of each study the events touch, as the events so far leave it."""
    referrer_before_latest: dict[str, str | None] = {}

    for position, instance in enumerate(instances):
        entry = instance.entry
        study = studies.get(entry.study_instance_uid)
        current = series.get(entry.series_instance_uid)
        placement = placements.get(entry.sop_instance_uid)
        check_consistency(entry, study=study, series=current, instance=placement)

        placements[entry.sop_instance_uid] = InstancePlacement(
            entry.study_instance_uid, entry.series_instance_uid, entry.sop_class_uid
        )
        totals = _series_totals(entry, current, placement, placements, held.sop_classes_besides)
        series[entry.series_instance_uid] = SeriesState(
            entry.study_instance_uid,
            {} if current is None else current.index,
            SeriesSummary(None, totals.instance_count, totals.sop_class_uids),
        )

        # The entry's referrer, else the study's (study_care); the order's prevails (with_ordered_care).
        order = None if ordered is None else ordered[position]
        so_far = referrers.get(entry.study_instance_uid, _referrer(study))
        referrer_before_latest[entry.study_instance_uid] = so_far
        referrers[entry.study_instance_uid] = (
            (None if order is None else order.referring_physician_rpps)
            or referring_physician_rpps(entry.study_attributes)
            or so_far
        )
        revision = max(instance.revision, 0 if study is None else study.revision)
        pending = study is None or revision > study.revision or study.announcement_pending
        studies[entry.study_instance_uid] = StudyState(
            entry.facility_finess if study is None else study.facility_finess,
            {} if study is None else study.index,
            revision,
            pending,
        )

        latest[entry.sop_instance_uid] = instance
        latest_of_series[entry.series_instance_uid] = entry
        latest_of_study[entry.study_instance_uid] = position

    series_datasets: dict[str, DicomJson] = {}
    for uid, entry in latest_of_series.items():
        summary = series[uid].summary
        totals = SeriesTotals(summary.instance_count, summary.sop_class_uids)
        dataset = series_dataset(entry.series_attributes, totals)
        series_index = index_fields(dataset, QueryLevel.SERIES)
        series_datasets[uid] = dataset
        series[uid] = SeriesState(
            entry.study_instance_uid,
            series_index,
            SeriesSummary(
                _modality(series_index), totals.instance_count, totals.sop_class_uids, operator_rpps(dataset)
            ),
        )

    study_documents: dict[str, StudyDocument] = {}
    for uid, position in latest_of_study.items():
        entry = instances[position].entry
        summaries = [state.summary for state in series.values() if state.study_instance_uid == uid]
        dataset = study_dataset(entry.study_attributes, summaries)
        care = study_care(
            entry,
            summaries,
            None if ordered is None else ordered[position],
            previous_referrer=referrer_before_latest[uid],
        )
        study_documents[uid] = StudyDocument(
            entry=entry,
            dataset=dataset,
            index={**index_fields(dataset, QueryLevel.STUDY), **care.fields()},
            revision=studies[uid].revision,
            announcement_pending=studies[uid].announcement_pending,
        )

    study_indexes = {uid: document.index for uid, document in study_documents.items()}
    series_indexes = {uid: series[uid].index for uid in latest_of_series}
    return Filing(
        instances=[
            InstanceDocument(
                instance.entry,
                {
                    **study_indexes[instance.entry.study_instance_uid],
                    **series_indexes[instance.entry.series_instance_uid],
                    **index_fields(instance.entry.instance, QueryLevel.INSTANCE),
                },
                instance.stored_at,
            )
            for instance in latest.values()
        ],
        series=[
            SeriesDocument(
                study_instance_uid=series[uid].study_instance_uid,
                series_instance_uid=uid,
                dataset=dataset,
                index={**study_indexes[series[uid].study_instance_uid], **series_indexes[uid]},
                totals=SeriesTotals(series[uid].summary.instance_count, series[uid].summary.sop_class_uids),
            )
            for uid, dataset in series_datasets.items()
        ],
        studies=list(study_documents.values()),
        study_keys=[
            KeyCopy(uid, study_indexes[uid], previous)
            for uid, previous in ((uid, _held_study_keys(uid, held)) for uid in study_documents)
            if previous is not None and previous != study_indexes[uid]
        ],
        series_keys=[
            KeyCopy(uid, series_indexes[uid], held_keys)
            for uid in latest_of_series
            if uid in held.series
            and (held_keys := own_keys(held.series[uid].index, QueryLevel.SERIES)) != series_indexes[uid]
        ],
    )


def _series_totals(
    entry: CatalogEntry,
    current: SeriesState | None,
    placement: InstancePlacement | None,
    placements: Mapping[str, InstancePlacement],
    sop_classes_besides: Mapping[str, frozenset[str]],
) -> SeriesTotals:
    """The series' totals once ``entry`` is filed: one more instance if the catalog did not hold it."""
    count = 0 if current is None else current.summary.instance_count
    classes = set(() if current is None else current.summary.sop_class_uids)
    if placement is None:
        count += 1
    besides = sop_classes_besides.get(entry.series_instance_uid)
    if besides is not None:
        # Some instance changed class: the classes of the others, and of those the events name, as filed now.
        classes = set(besides) | {
            named.sop_class_uid
            for named in placements.values()
            if named.series_instance_uid == entry.series_instance_uid and named.sop_class_uid is not None
        }
    else:
        classes.add(entry.sop_class_uid)
    return SeriesTotals(count, tuple(sorted(classes)))


def _held_study_keys(study_instance_uid: str, held: HeldState) -> IndexFields | None:
    """The study keys the documents below a study held, when some may differ from the study's new ones:
    the study's keys, or for a study not held with series already held (a study left half-written by an
    older catalog), nothing to remove."""
    study = held.studies.get(study_instance_uid)
    if study is not None:
        return study.index
    if any(state.study_instance_uid == study_instance_uid for state in held.series.values()):
        return {}
    return None


def _referrer(study: StudyState | None) -> str | None:
    referrer = None if study is None else study.index.get(REFERRER_FIELD)
    return referrer if isinstance(referrer, str) else None


def _modality(series_index: IndexFields) -> str | None:
    modality = series_index.get("Modality")
    return modality if isinstance(modality, str) else None
