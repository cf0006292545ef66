"""The catalog's model: what one stored instance contributes, and the study and series it aggregates into.

A study is owned by the facility that first published it, and its patient is identified as that facility
identifies them: (Issuer of Patient ID, Patient ID), plus the INS when the facility qualified it. Names are
never used to identify a patient, so two facilities' patients are never merged on name alone.

Everything derived (counts, Modalities in Study, SOP Classes in Study) follows the instances the catalog
holds: an instance counts once however often its event is handled (:mod:`emage_catalog.domain.filing`), so
handling an event twice, or replaying the whole topic into an empty database, yields the same documents.
Study- and series-level attributes come from the latest instance handled: events of a study are consumed in
the order they were stored (they share a partition key), so a replay ends in the same state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from emage_catalog.domain.care import (
    CareAttributes,
    OrderedCare,
    referring_physician_rpps,
    union_of,
    with_ordered_care,
)
from emage_catalog.domain.dicom import DicomJson, element, first_string, sorted_dataset, subset, values
from emage_catalog.domain.levels import (
    MODALITIES_IN_STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_SERIES,
    SERIES_ATTRIBUTES,
    SOP_CLASSES_IN_STUDY,
    STUDY_ATTRIBUTES,
    QueryLevel,
)
from emage_catalog.domain.matching import QUERY_KEYS, IndexValue, index_values
from emage_common.events import InstanceStored, InvalidEventDataError, PatientIdentity, StudyChanged

_STUDY_COPIED: Final = frozenset(attribute.tag for attribute in STUDY_ATTRIBUTES)
_SERIES_COPIED: Final = frozenset(attribute.tag for attribute in SERIES_ATTRIBUTES)
_STUDY_INSTANCE_UID: Final = "0020000D"
_SERIES_INSTANCE_UID: Final = "0020000E"
_SOP_INSTANCE_UID: Final = "00080018"
_SOP_CLASS_UID: Final = "00080016"
_AVAILABLE_TRANSFER_SYNTAX_UID: Final = "00083002"
"""Available Transfer Syntax UID (PS3.18 §10.6.3.3.3): how the archive holds the instance. Viewers tell a
video (MPEG-4, HEVC) from frames by it; OHIF gives such an instance to its video viewport, not frames."""
_MODALITY: Final = "00080060"
_PATIENT_ID: Final = "00100020"
_ISSUER_OF_PATIENT_ID: Final = "00100021"
_ACCESSION_NUMBER: Final = "00080050"
_STUDY_DATE: Final = "00080020"


class CatalogConflictError(InvalidEventDataError):
    """An event that contradicts what the catalog holds; applying it would mix up patients or facilities.

    It is an :class:`~emage_common.events.InvalidEventDataError`, so the consumer dead-letters the event at
    once (retrying cannot resolve it) with this message, for a human to look at.
    """


IndexFields = dict[str, IndexValue | list[IndexValue]]
"""Normalised query key values of one document, by keyword (the ``q`` of the stored documents)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What one ``instance.stored`` event contributes to the catalog."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    facility_finess: str
    patient: PatientIdentity
    instance: DicomJson
    """The instance's metadata, as WADO-RS returns it (PS3.18 §10.4.1.1.2), identifying UIDs ensured."""
    study_attributes: DicomJson
    """The study-level attributes of this instance (Patient and General Study modules)."""
    series_attributes: DicomJson
    """The series-level attributes of this instance (General Series and Equipment modules)."""


def catalog_entry(stored: InstanceStored) -> CatalogEntry:
    """The catalog entry of a stored instance.

    The identifying UIDs, Modality and the patient identity come from the event, which ingest validated;
    they are added to the datasets when the instance lacked them (a Modality is Type 1, PS3.3 §C.7.3.1, but
    some senders omit it). When the instance has no Issuer of Patient ID the facility issued the ID
    (the issue's identity rule), and the study says so.
    """
    identifying = {
        _STUDY_INSTANCE_UID: element("UI", stored.study_instance_uid),
        _SERIES_INSTANCE_UID: element("UI", stored.series_instance_uid),
        _SOP_INSTANCE_UID: element("UI", stored.sop_instance_uid),
        _SOP_CLASS_UID: element("UI", stored.sop_class_uid),
        _AVAILABLE_TRANSFER_SYNTAX_UID: element("UI", stored.transfer_syntax_uid),
    }
    instance = sorted_dataset({**identifying, **stored.dicom_json})
    modality = first_string(instance, _MODALITY) or stored.modality
    study = subset(instance, _STUDY_COPIED)
    if not values(study, _PATIENT_ID):
        study[_PATIENT_ID] = element("LO", stored.patient.patient_id)
    if not values(study, _ISSUER_OF_PATIENT_ID):
        study[_ISSUER_OF_PATIENT_ID] = element("LO", stored.patient.issuer_of_patient_id)
    series = subset(instance, _SERIES_COPIED)
    if not values(series, _MODALITY):
        series[_MODALITY] = element("CS", modality)
    return CatalogEntry(
        study_instance_uid=stored.study_instance_uid,
        series_instance_uid=stored.series_instance_uid,
        sop_instance_uid=stored.sop_instance_uid,
        sop_class_uid=stored.sop_class_uid,
        modality=modality,
        facility_finess=stored.facility_finess,
        patient=stored.patient,
        instance=instance,
        study_attributes=sorted_dataset(study),
        series_attributes=sorted_dataset(series),
    )


def accession_number_of(entry: CatalogEntry) -> str | None:
    """The Accession Number (0008,0050) of the entry's study, if it has one (SH: spaces not significant)."""
    accession = (first_string(entry.study_attributes, _ACCESSION_NUMBER) or "").strip(" ")
    return accession or None


@dataclass(frozen=True, slots=True)
class StudyState:
    """What the catalog holds of a study when another of its instances arrives."""

    facility_finess: str
    index: IndexFields
    revision: int
    announcement_pending: bool


@dataclass(frozen=True, slots=True)
class SeriesState:
    """What the catalog holds of a series when another of its instances arrives."""

    study_instance_uid: str
    index: IndexFields
    summary: SeriesSummary


@dataclass(frozen=True, slots=True)
class InstancePlacement:
    """Where the catalog files an instance it already holds, and under which SOP class."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str | None


def check_consistency(
    entry: CatalogEntry,
    *,
    study: StudyState | None,
    series: SeriesState | None,
    instance: InstancePlacement | None,
) -> None:
    """Refuse an entry that would move an instance or series, or let a facility write another's study.

    A SOP Instance UID names one instance of one series (PS3.3 §C.12.1.1.1) and a Series Instance UID one
    series of one study (PS3.3 §C.7.3.1): a second event for the same UID elsewhere is a UID collision, not a
    move. A study is published by one facility; another facility's instance under the same Study Instance
    UID would put its patient's images into the first facility's study.
    """
    if study is not None and study.facility_finess != entry.facility_finess:
        raise CatalogConflictError(
            f"study {entry.study_instance_uid} belongs to facility {study.facility_finess}; "
            f"facility {entry.facility_finess} cannot add instances to it"
        )
    if series is not None and series.study_instance_uid != entry.study_instance_uid:
        raise CatalogConflictError(
            f"series {entry.series_instance_uid} is catalogued in study {series.study_instance_uid}, "
            f"not {entry.study_instance_uid}"
        )
    if instance is not None and (instance.study_instance_uid, instance.series_instance_uid) != (
        entry.study_instance_uid,
        entry.series_instance_uid,
    ):
        raise CatalogConflictError(
            f"instance {entry.sop_instance_uid} is catalogued in series {instance.series_instance_uid} "
            f"of study {instance.study_instance_uid}"
        )


@dataclass(frozen=True, slots=True)
class SeriesTotals:
    """What the instances of one series add up to."""

    instance_count: int
    sop_class_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """A series as its study aggregates it."""

    modality: str | None
    instance_count: int
    sop_class_uids: tuple[str, ...]
    operator_rpps: tuple[str, ...] = ()
    """RPPS of the series' operators (:func:`~emage_catalog.domain.care.operator_rpps`)."""


def series_dataset(attributes: DicomJson, totals: SeriesTotals) -> DicomJson:
    """A series' dataset: its attributes plus Number of Series Related Instances (PS3.4 §C.3.4)."""
    derived = {NUMBER_OF_SERIES_RELATED_INSTANCES.tag: element("IS", totals.instance_count)}
    return sorted_dataset({**attributes, **derived})


def study_dataset(attributes: DicomJson, series: Sequence[SeriesSummary]) -> DicomJson:
    """A study's dataset: its attributes plus the Additional Query/Retrieve Attributes of PS3.4 §C.3.4.

    Modalities and SOP classes are sorted, so the dataset does not depend on the order series arrived in.
    """
    modalities = sorted({summary.modality for summary in series if summary.modality})
    sop_classes = sorted({uid for summary in series for uid in summary.sop_class_uids})
    derived = {
        MODALITIES_IN_STUDY.tag: element("CS", *modalities),
        SOP_CLASSES_IN_STUDY.tag: element("UI", *sop_classes),
        NUMBER_OF_STUDY_RELATED_SERIES.tag: element("IS", len(series)),
        NUMBER_OF_STUDY_RELATED_INSTANCES.tag: element(
            "IS", sum(summary.instance_count for summary in series)
        ),
    }
    return sorted_dataset({**attributes, **derived})


def study_care(
    entry: CatalogEntry,
    series: Sequence[SeriesSummary],
    ordered: OrderedCare | None = None,
    *,
    previous_referrer: str | None = None,
) -> CareAttributes:
    """The care attributes of the entry's study once the entry is recorded.

    The owning facility and the patient are the entry's (the facility never changes, see
    :func:`check_consistency`); the referring physician is the one the entry names or, when it names none
    (a report or annotation series often omits it), the one the study already had (``previous_referrer``):
    an absent sequence removes nobody's access; the technicians are the operators of all the study's
    series. What the study's order announced (``ordered``, if it concerns this study) is merged in
    (:func:`~emage_catalog.domain.care.with_ordered_care`).
    """
    care = CareAttributes(
        facility_finess=entry.facility_finess,
        patient_key=entry.patient.patient_key,
        referring_physician_rpps=referring_physician_rpps(entry.study_attributes) or previous_referrer,
        performing_technician_rpps=union_of(summary.operator_rpps for summary in series),
    )
    return with_ordered_care(care, ordered)


def index_fields(dataset: Mapping[str, Mapping[str, Any]], level: QueryLevel) -> IndexFields:
    """The query key values of ``dataset`` that belong to ``level``, normalised for matching.

    Multi-valued keys are stored as lists (a MongoDB multikey index matches any element); single-valued
    keys as their first value. Absent keys are left out.
    """
    fields: IndexFields = {}
    for key in QUERY_KEYS.values():
        if key.level is not level:
            continue
        found = index_values(key, dataset)
        if found:
            fields[key.attribute.keyword] = found if key.multivalued else found[0]
    return fields


# --- study.changed ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudySnapshot:
    """A study as the catalog last wrote it, to be announced on ``emage.study.changed.v1``."""

    study_instance_uid: str
    facility_finess: str
    patient: PatientIdentity
    dataset: DicomJson
    revision: int
    announced_revision: int


_SHORT_STRING: Final = re.compile(r"[^\\\x00-\x1f\x7f]{1,16}")
_MODALITY_CODE: Final = re.compile(r"[A-Z0-9_]{1,16}")


def study_changed(snapshot: StudySnapshot, *, changed_at: datetime) -> StudyChanged:
    """The ``study.changed`` event of a snapshot: ``created`` if the study was never announced before.

    Values a malformed dataset carries that the event schema does not admit (an accession number longer
    than SH allows, a study date that is no calendar date) are left out rather than blocking the event.
    """
    dataset = snapshot.dataset
    accession = (first_string(dataset, _ACCESSION_NUMBER) or "").strip(" ")
    return StudyChanged(
        study_instance_uid=snapshot.study_instance_uid,
        change="created" if snapshot.announced_revision == 0 else "updated",
        revision=snapshot.revision,
        facility_finess=snapshot.facility_finess,
        patient=snapshot.patient,
        accession_number=accession if _SHORT_STRING.fullmatch(accession) else None,
        study_date=_calendar_date(first_string(dataset, _STUDY_DATE)),
        modalities_in_study=tuple(
            value
            for value in values(dataset, MODALITIES_IN_STUDY.tag)
            if isinstance(value, str) and _MODALITY_CODE.fullmatch(value)
        ),
        referring_physician_rpps=referring_physician_rpps(dataset),
        number_of_series=_count(dataset, NUMBER_OF_STUDY_RELATED_SERIES.tag),
        number_of_instances=_count(dataset, NUMBER_OF_STUDY_RELATED_INSTANCES.tag),
        changed_at=changed_at,
    )


def _calendar_date(value: str | None) -> date | None:
    if value is None or re.fullmatch(r"[0-9]{8}", value) is None:
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _count(dataset: DicomJson, tag: str) -> int:
    found = values(dataset, tag)
    return found[0] if found and isinstance(found[0], int) else 0
