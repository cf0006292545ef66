"""Care attributes read from DICOM JSON: the referring physician's and the operators' RPPS (PS3.3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from emage_catalog.domain.care import (
    CareAttributes,
    operator_rpps,
    person_rpps,
    referring_physician_rpps,
    union_of,
)
from emage_catalog.domain.model import StudySnapshot, study_changed
from emage_common.events import PatientIdentity

REFERRER = "10100000024"
TECHNICIAN = "10100000040"
OTHER_TECHNICIAN = "10100000057"


def code(value: str, scheme: str | None = "RPPS", *, scheme_uid: str | None = None) -> dict[str, Any]:
    """A Person Identification Code Sequence item (Code Sequence Macro, PS3.3 Table 8.8-1)."""
    item: dict[str, Any] = {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080104": {"vr": "LO", "Value": ["LEFEVRE Marc"]},
    }
    if scheme is not None:
        item["00080102"] = {"vr": "SH", "Value": [scheme]}
    if scheme_uid is not None:
        item["0008010C"] = {"vr": "UI", "Value": [scheme_uid]}
    return item


def person(*codes: dict[str, Any]) -> dict[str, Any]:
    """A Person Identification Macro item (PS3.3 Table 10-1)."""
    return {
        "00080080": {"vr": "LO", "Value": ["CHU Alpha"]},
        "00401101": {"vr": "SQ", "Value": list(codes)},
    }


def referred_by(*people: dict[str, Any]) -> dict[str, Any]:
    return {
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "LEFEVRE^Marc"}]},
        "00080096": {"vr": "SQ", "Value": list(people)},
    }


def operated_by(*people: dict[str, Any]) -> dict[str, Any]:
    return {"00081072": {"vr": "SQ", "Value": list(people)}}


def test_the_referring_physician_is_read_from_the_identification_sequence() -> None:
    assert referring_physician_rpps(referred_by(person(code(REFERRER)))) == REFERRER


@pytest.mark.parametrize(
    "study",
    [
        {},
        {"00080090": {"vr": "PN", "Value": [{"Alphabetic": "LEFEVRE^Marc"}]}},
        {"00080096": {"vr": "SQ"}},
        {"00080096": {"vr": "SQ", "Value": []}},
        referred_by(person()),
        referred_by({"00080080": {"vr": "LO", "Value": ["CHU Alpha"]}}),
    ],
    ids=["nothing", "name-only", "empty-sequence", "no-item", "no-code", "no-code-sequence"],
)
def test_no_identification_is_no_referrer(study: dict[str, Any]) -> None:
    assert referring_physician_rpps(study) is None


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        # Another scheme (ADELI, a local one) is not an RPPS, even with 11 digits.
        ((code(REFERRER, "ADELI"),), None),
        ((code(REFERRER, "99CHUA"),), None),
        ((code(REFERRER, None),), None),
        ((code(REFERRER, "rpps"),), None),
        # The ANS's OID of the RPPS, as designator or as Coding Scheme UID.
        ((code(REFERRER, "1.2.250.1.71.4.2.1"),), REFERRER),
        ((code(REFERRER, "99ANS", scheme_uid="1.2.250.1.71.4.2.1"),), REFERRER),
        # A code value that is not 11 digits is ignored.
        ((code("1010000002"),), None),
        ((code("101000000241"),), None),
        ((code("1010000002X"),), None),
        ((code("810100000024"),), None),
        ((code(""),), None),
        # Insignificant padding of an SH value is not a defect.
        ((code(f" {REFERRER} "),), REFERRER),
        # Several codes: the RPPS one, the first well-formed one.
        ((code("0000123456", "ADELI"), code(REFERRER)), REFERRER),
        ((code("bad"), code(REFERRER)), REFERRER),
        ((code(REFERRER), code("10100000032")), REFERRER),
    ],
)
def test_only_an_11_digit_code_of_the_rpps_scheme_is_an_rpps(
    codes: tuple[dict[str, Any], ...], expected: str | None
) -> None:
    assert person_rpps(person(*codes)) == expected
    assert referring_physician_rpps(referred_by(person(*codes))) == expected


def test_a_malformed_sequence_is_no_identification() -> None:
    assert person_rpps({"00401101": {"vr": "SQ", "Value": ["not an item", 7]}}) is None
    assert person_rpps({"00401101": "not an element"}) is None
    assert person_rpps(person({"00080100": {"vr": "SH", "Value": [10100000024]}})) is None
    assert referring_physician_rpps({"00080096": {"vr": "SQ", "Value": "x"}}) is None


def test_only_the_single_item_of_the_referring_sequence_counts() -> None:
    # PS3.3 §C.7.2.1 permits one item; a second is not read.
    assert referring_physician_rpps(referred_by(person(code("bad")), person(code(REFERRER)))) is None


def test_operators_are_every_item_of_the_operator_sequence_sorted_and_once() -> None:
    series = operated_by(
        person(code(TECHNICIAN)),
        person(code(OTHER_TECHNICIAN, "1.2.250.1.71.4.2.1")),
        person(code("123", "RPPS")),
        person(code(TECHNICIAN, "ADELI")),
        person(code(TECHNICIAN)),
    )
    assert operator_rpps(series) == (TECHNICIAN, OTHER_TECHNICIAN)
    assert operator_rpps({}) == ()
    assert operator_rpps(operated_by()) == ()


def test_a_studys_technicians_are_the_union_over_its_series() -> None:
    assert union_of([(OTHER_TECHNICIAN,), (), (TECHNICIAN, OTHER_TECHNICIAN)]) == (
        TECHNICIAN,
        OTHER_TECHNICIAN,
    )
    assert union_of([]) == ()


def test_care_attributes_as_document_fields_and_back() -> None:
    full = CareAttributes("750000001", "pid:750000001:IPP-1", REFERRER, (TECHNICIAN, OTHER_TECHNICIAN))
    assert full.fields() == {
        "facility_finess": "750000001",
        "patient_key": "pid:750000001:IPP-1",
        "referring_physician_rpps": REFERRER,
        "performing_technician_rpps": [TECHNICIAN, OTHER_TECHNICIAN],
    }
    assert CareAttributes.from_fields(full.fields()) == full
    bare = CareAttributes("750000001", "pid:750000001:IPP-1")
    # No referrer, no technician: no field, which no scope condition on them matches.
    assert bare.fields() == {"facility_finess": "750000001", "patient_key": "pid:750000001:IPP-1"}
    assert CareAttributes.from_fields(bare.fields()) == bare
    assert CareAttributes.from_fields({"PatientID": "IPP-1"}) is None


def test_study_changed_names_the_referring_physician() -> None:
    patient = PatientIdentity(patient_id="IPP-1", issuer_of_patient_id="750000001")
    snapshot = StudySnapshot(
        "1.2.826.0.1.3680043.8.498.1", "750000001", patient, referred_by(person(code(REFERRER))), 3, 0
    )
    event = study_changed(snapshot, changed_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert event.referring_physician_rpps == REFERRER
    malformed = StudySnapshot(
        "1.2.826.0.1.3680043.8.498.1", "750000001", patient, referred_by(person(code("123"))), 3, 0
    )
    assert (
        study_changed(malformed, changed_at=datetime(2024, 1, 1, tzinfo=UTC)).referring_physician_rpps is None
    )
