"""The care relationships a study records, as the access policy needs them, read from DICOM (PS3.3).

Two health professionals are named in a study by their RPPS number, the national identifier of French
health professionals:

* the referring physician, who ordered the exam: the one item of the Referring Physician Identification
  Sequence (0008,0096), General Study module (PS3.3 §C.7.2.1), study level;
* the imaging technicians who acquired it: the items of the Operator Identification Sequence (0008,1072),
  General Series module (PS3.3 §C.7.3.1), one per operator of a series. A study's technicians are the union
  over its series, so the list grows as series arrive.

Each item is a Person Identification Macro (PS3.3 Table 10-1), whose Person Identification Code Sequence
(0040,1101) codes the person in one or more schemes; the RPPS is the Code Value (0008,0100) of the item coded
in the ``RPPS`` scheme (Coding Scheme Designator (0008,0102)), or in the scheme of the ANS's RPPS OID (as
Coding Scheme Designator, or as Coding Scheme UID (0008,010C)). A code value that is not 11 digits is no RPPS
and is ignored: it could not name anyone the policy knows.

The facility's RIS also announces both on ``emage.acquisition.v1`` (:class:`OrderedCare`), before or after
the study arrives; what it announces is merged into what the headers say (:func:`with_ordered_care`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from emage_catalog.domain.matching import IndexValue
from emage_common.events import Acquisition, PatientIdentity

REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE: Final = "00080096"
OPERATOR_IDENTIFICATION_SEQUENCE: Final = "00081072"
PERSON_IDENTIFICATION_CODE_SEQUENCE: Final = "00401101"
CODE_VALUE: Final = "00080100"
CODING_SCHEME_DESIGNATOR: Final = "00080102"
CODING_SCHEME_UID: Final = "0008010C"

RPPS_SCHEME: Final = "RPPS"
RPPS_OID: Final = "1.2.250.1.71.4.2.1"
"""The ANS's OID of the RPPS identifiers of health professionals."""

_RPPS: Final = re.compile(r"[0-9]{11}")

# Names of the access attributes in the catalog's documents (snake case: never a DICOM keyword).
FACILITY_FIELD: Final = "facility_finess"
PATIENT_FIELD: Final = "patient_key"
REFERRER_FIELD: Final = "referring_physician_rpps"
TECHNICIANS_FIELD: Final = "performing_technician_rpps"
CARE_FIELDS: Final = (FACILITY_FIELD, PATIENT_FIELD, REFERRER_FIELD, TECHNICIANS_FIELD)


def _items(dataset: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = dataset.get(tag)
    found = element.get("Value") if isinstance(element, Mapping) else None
    return [item for item in found if isinstance(item, Mapping)] if isinstance(found, list) else []


def _first_text(item: Mapping[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    found = element.get("Value") if isinstance(element, Mapping) else None
    if not isinstance(found, list) or not found or not isinstance(found[0], str):
        return None
    # SH/UI values: leading and trailing spaces (and the NUL padding of a UI) are not significant.
    return found[0].strip(" \x00")


def _is_rpps_code(code: Mapping[str, Any]) -> bool:
    designator = _first_text(code, CODING_SCHEME_DESIGNATOR)
    return designator in (RPPS_SCHEME, RPPS_OID) or _first_text(code, CODING_SCHEME_UID) == RPPS_OID


def person_rpps(person: Mapping[str, Any]) -> str | None:
    """The RPPS of a Person Identification Macro item, or None when it codes none (or none well-formed)."""
    for code in _items(person, PERSON_IDENTIFICATION_CODE_SEQUENCE):
        if not _is_rpps_code(code):
            continue
        value = _first_text(code, CODE_VALUE)
        if value is not None and _RPPS.fullmatch(value):
            return value
    return None


def referring_physician_rpps(study: Mapping[str, Any]) -> str | None:
    """The RPPS of the study's referring physician: its Referring Physician Identification Sequence's item.

    The sequence holds a single item (PS3.3 §C.7.2.1); only the first is read.
    """
    people = _items(study, REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE)
    return person_rpps(people[0]) if people else None


def operator_rpps(series: Mapping[str, Any]) -> tuple[str, ...]:
    """The RPPS of a series' operators (Operator Identification Sequence), sorted, each once."""
    found = (person_rpps(person) for person in _items(series, OPERATOR_IDENTIFICATION_SEQUENCE))
    return tuple(sorted({rpps for rpps in found if rpps is not None}))


def union_of(operators: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """A study's technicians from its series' operators: the sorted union, each once."""
    return tuple(sorted({rpps for series in operators for rpps in series}))


@dataclass(frozen=True, slots=True)
class CareAttributes:
    """What the access policy asks of a study (:class:`~emage_common.access_contract.StudyAccessAttributes`
    without the UID), and what a search scope filters on at every level."""

    facility_finess: str
    patient_key: str
    referring_physician_rpps: str | None = None
    performing_technician_rpps: tuple[str, ...] = ()

    def fields(self) -> dict[str, IndexValue | list[IndexValue]]:
        """The attributes as document fields: an absent referrer or no technician is no field at all."""
        fields: dict[str, IndexValue | list[IndexValue]] = {
            FACILITY_FIELD: self.facility_finess,
            PATIENT_FIELD: self.patient_key,
        }
        if self.referring_physician_rpps is not None:
            fields[REFERRER_FIELD] = self.referring_physician_rpps
        if self.performing_technician_rpps:
            fields[TECHNICIANS_FIELD] = list(self.performing_technician_rpps)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> CareAttributes | None:
        """The attributes :meth:`fields` wrote, or None when the document holds none."""
        facility, patient = fields.get(FACILITY_FIELD), fields.get(PATIENT_FIELD)
        if not isinstance(facility, str) or not isinstance(patient, str):
            return None
        referrer = fields.get(REFERRER_FIELD)
        technicians = fields.get(TECHNICIANS_FIELD)
        return cls(
            facility_finess=facility,
            patient_key=patient,
            referring_physician_rpps=referrer if isinstance(referrer, str) else None,
            performing_technician_rpps=tuple(value for value in technicians or () if isinstance(value, str)),
        )


# --- Care announced by the facility (emage.acquisition.v1) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderedCare:
    """The care relationships of one imaging order, as its facility's latest acquisition event announces them.

    An order is identified by its facility and Accession Number (0008,0050); its study by the Study Instance
    UID when the event knew it, else by that accession number in the facility's studies. The facility's RIS
    is authoritative on who ordered the exam and who performed it, so its referring physician prevails over
    the DICOM headers' and its technician joins the operators the headers name (:func:`with_ordered_care`).
    """

    facility_finess: str
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str
    study_instance_uid: str | None
    referring_physician_rpps: str | None
    performing_technician_rpps: str | None
    event_id: str
    announced_at: datetime
    """When the facility announced it (the CloudEvent ``time``): the latest announcement of an order wins."""

    @property
    def order_key(self) -> str:
        """``<FINESS>/<accession number>``: the order, unique within e-mage."""
        return f"{self.facility_finess}/{self.accession_number}"

    @classmethod
    def of(cls, acquisition: Acquisition, *, event_id: str, announced_at: datetime) -> OrderedCare:
        return cls(
            facility_finess=acquisition.facility_finess,
            accession_number=acquisition.accession_number,
            patient_id=acquisition.patient.patient_id,
            issuer_of_patient_id=acquisition.patient.issuer_of_patient_id,
            study_instance_uid=acquisition.study_instance_uid,
            referring_physician_rpps=acquisition.referring_physician_rpps,
            performing_technician_rpps=acquisition.performing_technician_rpps,
            event_id=event_id,
            announced_at=announced_at,
        )

    def supersedes(self, other: OrderedCare | None) -> bool:
        """Whether this announcement is later than ``other`` (ties broken by event id, so all agree)."""
        return other is None or (self.announced_at, self.event_id) > (other.announced_at, other.event_id)

    def concerns(self, facility_finess: str, patient: PatientIdentity) -> bool:
        """Whether a study of ``facility_finess`` imaging ``patient`` can be this order's.

        Only the facility's own studies, of the same patient in the same identity domain (Patient ID and
        Issuer of Patient ID, the facility's FINESS when the headers have no issuer): an event can never
        grant anyone a relationship to another facility's or another patient's study.
        """
        return (
            facility_finess == self.facility_finess
            and patient.patient_id == self.patient_id
            and patient.issuer_of_patient_id == self.issuer_of_patient_id
        )

    def withdraws_from(self, superseded: OrderedCare | None) -> bool:
        """Whether replacing ``superseded`` by this takes a relationship away (a corrected order), rather
        than only adding or confirming one."""
        if superseded is None:
            return False
        referrer_gone = (
            superseded.referring_physician_rpps is not None
            and superseded.referring_physician_rpps != self.referring_physician_rpps
        )
        technician_gone = (
            superseded.performing_technician_rpps is not None
            and superseded.performing_technician_rpps != self.performing_technician_rpps
        )
        return referrer_gone or technician_gone


@dataclass(frozen=True, slots=True)
class OrderLookup:
    """How a study finds the order it is the exam of: the order naming its UID, else its facility's order
    with its Accession Number (unless that order names another study)."""

    study_instance_uid: str
    facility_finess: str
    accession_number: str | None


@dataclass(frozen=True, slots=True)
class StudyOwner:
    """Whose a catalogued study is: its owning facility and its patient."""

    study_instance_uid: str
    facility_finess: str
    patient: PatientIdentity


def with_ordered_care(care: CareAttributes, ordered: OrderedCare | None) -> CareAttributes:
    """A study's care attributes from its DICOM headers, merged with what its order announced.

    The order's referring physician, when it names one, replaces the headers'; its technician is added to
    the operators (sorted, each once, as :func:`union_of` keeps them).
    """
    if ordered is None:
        return care
    technicians = set(care.performing_technician_rpps)
    if ordered.performing_technician_rpps is not None:
        technicians.add(ordered.performing_technician_rpps)
    return CareAttributes(
        facility_finess=care.facility_finess,
        patient_key=care.patient_key,
        referring_physician_rpps=ordered.referring_physician_rpps or care.referring_physician_rpps,
        performing_technician_rpps=tuple(sorted(technicians)),
    )
