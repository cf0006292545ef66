"""A study as a FHIR R4 ImagingStudy: identifiers, modalities, series and instances, the DICOMweb endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy

from emage_catalog.fhir import imaging_study
from emage_common.access_contract import StudyAccessAttributes

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


STUDY = {
    "00080020": _el("DA", "20261101"),
    "00080030": _el("TM", "101500"),
    "00080050": _el("SH", "ACC0001"),
    "00080090": _el("PN", {"Alphabetic": "LEFEVRE^Marc"}),
    "00081030": _el("LO", "Scanner thoracique"),
    "00100010": _el("PN", {"Alphabetic": "MARTIN^Lucie"}),
    "00100020": _el("LO", "IPP-A-000001"),
    "00100021": _el("LO", "750000001"),
}
SERIES = [
    {"0020000E": _el("UI", SERIES_UID), "00080060": _el("CS", "CT"), "00200011": _el("IS", 2)},
]
INSTANCES = [
    {
        "0020000E": _el("UI", SERIES_UID),
        "00080018": _el("UI", f"{SERIES_UID}.{n}"),
        "00080016": _el("UI", CT),
        "00200013": _el("IS", n),
    }
    for n in (1, 2, 3)
]


def _attributes(patient_key: str = "pid:750000001:IPP-A-000001") -> StudyAccessAttributes:
    return StudyAccessAttributes(
        study_instance_uid=STUDY_UID,
        facility_finess="750000001",
        patient_key=patient_key,
        referring_physician_rpps="10100000024",
    )


def test_a_study_maps_to_a_valid_imaging_study() -> None:
    resource = imaging_study(
        STUDY, SERIES, INSTANCES, _attributes(), dicomweb_url="https://emage.example/dicomweb/"
    )
    ImagingStudy.model_validate(resource)
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}
    assert resource["identifier"][1]["value"] == "ACC0001"
    assert resource["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
    assert resource["started"] == "2026-11-01", "no UTC offset: the date alone"
    with_offset = {**STUDY, "00080201": _el("SH", "+0100")}
    started = imaging_study(with_offset, SERIES, INSTANCES, _attributes(), dicomweb_url="x")["started"]
    assert started == "2026-11-01T10:15:00+01:00"
    assert (resource["numberOfSeries"], resource["numberOfInstances"]) == (1, 3)
    [series] = resource["series"]
    assert (series["uid"], series["number"], series["numberOfInstances"]) == (SERIES_UID, 2, 3)
    assert [instance["number"] for instance in series["instance"]] == [1, 2, 3]
    assert series["instance"][0]["sopClass"]["code"] == f"urn:oid:{CT}"
    assert resource["contained"][0]["address"] == "https://emage.example/dicomweb"
    assert resource["endpoint"] == [{"reference": "#dicomweb"}]
    assert resource["referrer"] == {
        "display": "Marc LEFEVRE",
        "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10100000024"},
    }
    assert resource["subject"]["identifier"] == {
        "system": "urn:emage:patient-id:750000001",
        "value": "IPP-A-000001",
    }


def test_a_patient_known_by_ins_is_identified_by_it() -> None:
    resource = imaging_study(
        STUDY, SERIES, INSTANCES, _attributes("ins:1.2.250.1.213.1.4.8:285047505612322"), dicomweb_url="x"
    )
    assert resource["subject"]["identifier"] == {
        "system": "urn:oid:1.2.250.1.213.1.4.8",
        "value": "285047505612322",
    }


@pytest.mark.parametrize("date", [None, "2026", "notadate"])
def test_a_study_without_a_usable_date_has_no_start(date: str | None) -> None:
    study = {**STUDY, "00080020": _el("DA", date) if date else {"vr": "DA"}}
    assert "started" not in imaging_study(study, SERIES, INSTANCES, _attributes(), dicomweb_url="x")
