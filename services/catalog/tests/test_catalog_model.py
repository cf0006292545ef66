"""The catalog model: entries from events, derived study and series attributes, conflicts, announcements."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.model import (
    CatalogConflictError,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
    SeriesTotals,
    StudySnapshot,
    StudyState,
    catalog_entry,
    check_consistency,
    index_fields,
    series_dataset,
    study_care,
    study_changed,
    study_dataset,
)
from emage_common.events import InstanceStored, InvalidEventDataError, PatientIdentity

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = f"{STUDY}.1"
SOP = f"{SERIES}.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def stored(dicom_json: dict[str, Any] | None = None, *, facility: str = "750000001") -> InstanceStored:
    return InstanceStored(
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        sop_instance_uid=SOP,
        sop_class_uid=CT,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{STUDY}/series/{SERIES}/instances/{SOP}",
        size_bytes=1,
        sha256="00" * 32,
        facility_finess=facility,
        patient=PatientIdentity(patient_id="IPP-1", issuer_of_patient_id=facility),
        modality="CT",
        stored_at=datetime(2024, 1, 1, tzinfo=UTC),
        dicom_json=dicom_json
        if dicom_json is not None
        else {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
            "00100020": {"vr": "LO", "Value": ["IPP-1"]},
            "00080020": {"vr": "DA", "Value": ["20240115"]},
            "0008103E": {"vr": "LO", "Value": ["Thorax"]},
            "00200013": {"vr": "IS", "Value": [7]},
            "7FE00010": {
                "vr": "OW",
                "BulkDataURI": f"studies/{STUDY}/series/{SERIES}/instances/{SOP}/bulk/7FE00010",
            },
        },
    )


def test_an_entry_splits_the_dataset_into_study_series_and_instance_attributes() -> None:
    entry = catalog_entry(stored())
    assert list(entry.instance) == sorted(entry.instance)
    assert entry.instance["0020000D"] == {"vr": "UI", "Value": [STUDY]}
    assert entry.instance["00080016"] == {"vr": "UI", "Value": [CT]}
    assert set(entry.study_attributes) == {"00080020", "00100010", "00100020", "00100021", "0020000D"}
    # Without an Issuer of Patient ID in the instance, the publishing facility issued the Patient ID.
    assert entry.study_attributes["00100021"] == {"vr": "LO", "Value": ["750000001"]}
    assert entry.series_attributes == {
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "0008103E": {"vr": "LO", "Value": ["Thorax"]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
    }


def _identified(rpps: str) -> dict[str, Any]:
    code = {"00080100": {"vr": "SH", "Value": [rpps]}, "00080102": {"vr": "SH", "Value": ["RPPS"]}}
    return {"00401101": {"vr": "SQ", "Value": [code]}}


def test_the_care_of_a_study_comes_from_its_referrer_and_all_its_series_operators() -> None:
    referrer, operators = "10100000024", {"vr": "SQ", "Value": [_identified("10100000040")]}
    entry = catalog_entry(
        stored(
            {
                "00080096": {"vr": "SQ", "Value": [_identified(referrer)]},
                "00081072": operators,
                "00200013": {"vr": "IS", "Value": [1]},
            }
        )
    )
    # The Referring Physician Identification Sequence is a study attribute, the Operator one a series one.
    assert "00080096" in entry.study_attributes
    assert entry.series_attributes["00081072"] == operators
    care = study_care(
        entry,
        [
            SeriesSummary("CT", 1, (CT,), ("10100000057", "10100000040")),
            SeriesSummary("CT", 1, (CT,), ("10100000040",)),
            SeriesSummary("SR", 1, (CT,)),
        ],
    )
    assert care.facility_finess == "750000001"
    assert care.patient_key == "pid:750000001:IPP-1"
    assert care.referring_physician_rpps == referrer
    assert care.performing_technician_rpps == ("10100000040", "10100000057")


def test_study_attributes_are_derived_from_its_series_whatever_their_order() -> None:
    series = [
        SeriesSummary("MR", 3, ("1.2.840.10008.5.1.4.1.1.4",)),
        SeriesSummary("CT", 2, (CT,)),
        SeriesSummary("MR", 1, ("1.2.840.10008.5.1.4.1.1.4", CT)),
    ]
    forward = study_dataset({}, series)
    assert forward == study_dataset({}, list(reversed(series)))
    assert forward == {
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00080062": {"vr": "UI", "Value": [CT, "1.2.840.10008.5.1.4.1.1.4"]},
        "00201206": {"vr": "IS", "Value": [3]},
        "00201208": {"vr": "IS", "Value": [6]},
    }
    assert index_fields(forward, QueryLevel.STUDY)["ModalitiesInStudy"] == ["CT", "MR"]
    assert series_dataset({}, SeriesTotals(4, (CT,))) == {"00201209": {"vr": "IS", "Value": [4]}}


def test_index_fields_keep_the_keys_of_one_level() -> None:
    entry = catalog_entry(stored())
    assert index_fields(entry.study_attributes, QueryLevel.STUDY) == {
        "StudyDate": "20240115",
        "PatientName": "doe^john",
        "PatientID": "IPP-1",
        "IssuerOfPatientID": "750000001",
        "StudyInstanceUID": STUDY,
    }
    assert index_fields(entry.instance, QueryLevel.INSTANCE) == {
        "SOPClassUID": CT,
        "SOPInstanceUID": SOP,
        "InstanceNumber": 7,
    }


NO_SERIES = SeriesSummary(None, 0, ())


@pytest.mark.parametrize(
    ("study", "series", "instance", "reason"),
    [
        (StudyState("690000002", {}, 1, False), None, None, "belongs to facility 690000002"),
        (None, SeriesState("1.2.9", {}, NO_SERIES), None, f"series {SERIES} is catalogued in study 1.2.9"),
        (None, None, InstancePlacement(STUDY, "1.2.9", CT), f"instance {SOP} is catalogued in series 1.2.9"),
    ],
)
def test_conflicting_entries_are_refused_for_the_dead_letter_topic(
    study: StudyState | None, series: SeriesState | None, instance: InstancePlacement | None, reason: str
) -> None:
    with pytest.raises(CatalogConflictError, match=reason) as raised:
        check_consistency(catalog_entry(stored()), study=study, series=series, instance=instance)
    # The consumer dead-letters decoding errors at once: retrying cannot resolve a conflict.
    assert isinstance(raised.value, InvalidEventDataError)


def test_consistent_entries_pass() -> None:
    check_consistency(
        catalog_entry(stored()),
        study=StudyState("750000001", {}, 3, False),
        series=SeriesState(STUDY, {}, SeriesSummary("CT", 1, (CT,))),
        instance=InstancePlacement(STUDY, SERIES, CT),
    )


def snapshot(dataset: dict[str, Any], announced_revision: int = 0) -> StudySnapshot:
    return StudySnapshot(
        study_instance_uid=STUDY,
        facility_finess="750000001",
        patient=PatientIdentity(patient_id="IPP-1", issuer_of_patient_id="750000001"),
        dataset=dataset,
        revision=12,
        announced_revision=announced_revision,
    )


def test_study_changed_summarises_the_study() -> None:
    dataset = study_dataset(
        {"00080050": {"vr": "SH", "Value": ["ACC-1"]}, "00080020": {"vr": "DA", "Value": ["20240115"]}},
        [SeriesSummary("CT", 2, (CT,))],
    )
    now = datetime(2024, 2, 1, tzinfo=UTC)
    created = study_changed(snapshot(dataset), changed_at=now)
    assert (created.change, created.revision, created.accession_number) == ("created", 12, "ACC-1")
    assert str(created.study_date) == "2024-01-15"
    assert created.modalities_in_study == ("CT",)
    assert (created.number_of_series, created.number_of_instances) == (1, 2)
    assert study_changed(snapshot(dataset, announced_revision=5), changed_at=now).change == "updated"


def test_study_changed_leaves_out_values_its_schema_does_not_admit() -> None:
    dataset = {
        "00080050": {"vr": "SH", "Value": ["AN-ACCESSION-NUMBER-TOO-LONG"]},
        "00080020": {"vr": "DA", "Value": ["20240231"]},
        "00080061": {"vr": "CS", "Value": ["CT", "not a code"]},
    }
    change = study_changed(snapshot(dataset), changed_at=datetime(2024, 2, 1, tzinfo=UTC))
    assert (change.accession_number, change.study_date, change.modalities_in_study) == (None, None, ("CT",))
