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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from emage_catalog.domain.matching import IndexValue

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
