"""The synthetic studies: valid Part 10 files and UIDs, CT/MR geometry, pixel ranges, consistent patients."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import UID

from emage_catalog.domain.care import operator_rpps, referring_physician_rpps
from emage_cli.synthetic.generator import GenerationRequest, generate, roster_of
from emage_cli.synthetic.identities import (
    CHU_ALPHA,
    CLINIQUE_BETA,
    DEV_PATIENTS,
    INS_TEST_OID,
    ins_control_key,
)
from emage_cli.synthetic.studies import WrittenInstance
from emage_devstack.dev_users import DEV_USERS_BY_NAME
from emage_devstack.dev_users import INS_TEST_OID as REALM_INS_OID

REQUEST = GenerationRequest(patients=3, slices=16, frames=6, seed=11)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[WrittenInstance]:
    return generate(tmp_path_factory.mktemp("synthetic"), REQUEST, workers=2)


@pytest.fixture(scope="module")
def datasets(written: list[WrittenInstance]) -> dict[Path, Dataset]:
    """Every file, read with pydicom validating each value against its VR (PS3.5 §6.2)."""
    original = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        read = {}
        for instance in written:
            dataset = pydicom.dcmread(instance.path)
            for element in dataset.iterall():
                _ = element.value  # decode every value, so a VR violation raises here
            read[instance.path] = dataset
        return read
    finally:
        config.settings.reading_validation_mode = original


def _of(datasets: dict[Path, Dataset], modality: str) -> Iterator[Dataset]:
    return (dataset for dataset in datasets.values() if dataset.Modality == modality)


def test_every_patient_gets_every_kind_but_mammography_goes_to_women(datasets: dict[Path, Dataset]) -> None:
    studies: dict[str, set[str]] = defaultdict(set)
    for dataset in datasets.values():
        studies[dataset.PatientID].add(dataset.Modality)
    roster = roster_of(REQUEST)
    assert set(studies) == {patient.patient_id for patient in roster}
    for patient in roster:
        expected = {"CR", "CT", "MR", "US", "DOC"} | ({"MG"} if patient.sex == "F" else set())
        assert studies[patient.patient_id] == expected


def test_files_are_part_10_with_consistent_file_meta(
    written: list[WrittenInstance], datasets: dict[Path, Dataset]
) -> None:
    for instance in written:
        assert instance.path.read_bytes()[128:132] == b"DICM"
        dataset = datasets[instance.path]
        meta = dataset.file_meta
        assert meta.MediaStorageSOPClassUID == dataset.SOPClassUID == instance.sop_class_uid
        assert meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID == instance.sop_instance_uid
        assert meta.TransferSyntaxUID == instance.transfer_syntax_uid
        assert instance.size_bytes == instance.path.stat().st_size


def test_uids_are_valid_unique_and_2_25_rooted(datasets: dict[Path, Dataset]) -> None:
    seen: set[str] = set()
    for dataset in datasets.values():
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            uid = UID(dataset[keyword].value)
            assert uid.is_valid, uid
            assert uid.startswith("2.25.")
        assert dataset.SOPInstanceUID not in seen
        seen.add(dataset.SOPInstanceUID)


def test_the_same_seed_writes_the_same_uids(written: list[WrittenInstance], tmp_path: Path) -> None:
    again = generate(tmp_path, GenerationRequest(kinds=("cr",), patients=3, seed=REQUEST.seed), workers=1)
    assert {i.sop_instance_uid for i in again} <= {i.sop_instance_uid for i in written}
    other = generate(tmp_path / "other", GenerationRequest(kinds=("cr",), patients=1, seed=12), workers=1)
    assert not {i.sop_instance_uid for i in other} & {i.sop_instance_uid for i in written}


def test_dev_patients_are_the_realms_patients(datasets: dict[Path, Dataset]) -> None:
    for username, patient in zip(("patient-1", "patient-2"), DEV_PATIENTS, strict=True):
        user = DEV_USERS_BY_NAME[username]
        assert (patient.patient_id, patient.issuer_of_patient_id, patient.ins) == (
            user.patient_id,
            user.patient_id_issuer,
            user.ins,
        )
        assert (patient.given_name, patient.family_name.capitalize()) == (user.first_name, user.last_name)
    assert INS_TEST_OID == REALM_INS_OID
    for dataset in datasets.values():
        if dataset.PatientID == "IPP-A-000001":
            assert dataset.IssuerOfPatientID == "750000001"
            assert dataset.InstitutionName == "CHU Alpha"
            (ins,) = dataset.OtherPatientIDsSequence
            assert ins.PatientID == "285047505612322"
            assert ins.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_TEST_OID
        if dataset.PatientID == "IPP-B-000002":
            assert dataset.IssuerOfPatientID == "690000002"
            assert dataset.OtherPatientIDsSequence[0].PatientID == "162116912304526"


def _rpps_of(person: Dataset) -> tuple[str, str, str]:
    """(Code Value, Coding Scheme Designator, Code Meaning) of a Person Identification Macro item's code."""
    (code,) = person.PersonIdentificationCodeSequence
    return code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning


def test_chu_alpha_exams_identify_the_realms_referrer_and_technician(datasets: dict[Path, Dataset]) -> None:
    referrer, technician = DEV_USERS_BY_NAME["referrer-a"], DEV_USERS_BY_NAME["technician-a"]
    assert referrer.facility_finess == technician.facility_finess == CHU_ALPHA.finess
    alpha = [d for d in datasets.values() if d.IssuerOfPatientID == CHU_ALPHA.finess]
    assert {d.Modality for d in alpha} >= {"CR", "CT", "MR", "US", "MG", "DOC"}
    for dataset in alpha:
        # Referring Physician Identification Sequence (0008,0096): one item, the RPPS under the RPPS scheme.
        assert str(dataset.ReferringPhysicianName) == f"{referrer.last_name.upper()}^{referrer.first_name}"
        (person,) = dataset.ReferringPhysicianIdentificationSequence
        meaning = f"{referrer.first_name} {referrer.last_name.upper()}"
        assert _rpps_of(person) == (referrer.rpps, "RPPS", meaning)
        assert person.InstitutionName == CHU_ALPHA.name
        if dataset.Modality == "DOC":
            # A report is not acquired: no operator.
            assert "OperatorsName" not in dataset
            assert "OperatorIdentificationSequence" not in dataset
            continue
        # Operator Identification Sequence (0008,1072): one item per Operators' Name value, in order.
        assert str(dataset.OperatorsName) == f"{technician.last_name.upper()}^{technician.first_name}"
        (operator,) = dataset.OperatorIdentificationSequence
        assert _rpps_of(operator)[:2] == (technician.rpps, "RPPS")
        assert operator.InstitutionName == CHU_ALPHA.name


def test_the_catalog_reads_the_care_relationships_the_generator_writes(datasets: dict[Path, Dataset]) -> None:
    """In DICOM JSON, as ingest sends them, the catalog finds CHU Alpha's referrer-a and technician-a."""
    referrer, technician = DEV_USERS_BY_NAME["referrer-a"].rpps, DEV_USERS_BY_NAME["technician-a"].rpps
    for dataset in datasets.values():
        as_json = dataset.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")
        alpha = dataset.IssuerOfPatientID == CHU_ALPHA.finess
        assert referring_physician_rpps(as_json) == (referrer if alpha else None)
        operates = alpha and dataset.Modality != "DOC"
        assert operator_rpps(as_json) == ((technician,) if operates else ())


def test_clinique_beta_exams_name_professionals_the_realm_does_not_have(
    datasets: dict[Path, Dataset],
) -> None:
    realm_rpps = {user.rpps for user in DEV_USERS_BY_NAME.values() if user.rpps is not None}
    beta_staff = {
        user.role for user in DEV_USERS_BY_NAME.values() if user.facility_finess == CLINIQUE_BETA.finess
    }
    assert not beta_staff & {"referring_physician", "imaging_technician"}
    beta = [d for d in datasets.values() if d.IssuerOfPatientID == CLINIQUE_BETA.finess]
    assert beta
    for dataset in beta:
        assert "ReferringPhysicianIdentificationSequence" not in dataset
        assert "OperatorIdentificationSequence" not in dataset
        assert str(dataset.ReferringPhysicianName) in {p.name for p in CLINIQUE_BETA.referring_physicians}
    assert not realm_rpps & {p.rpps for p in CLINIQUE_BETA.referring_physicians + CLINIQUE_BETA.operators}


def test_patient_attributes_agree_across_all_their_instances(datasets: dict[Path, Dataset]) -> None:
    keywords = ("PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID", "InstitutionName")
    by_patient: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    by_study: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for dataset in datasets.values():
        by_patient[dataset.PatientID].add(tuple(str(dataset[k].value) for k in keywords))
        study = ("PatientID", "AccessionNumber", "StudyDate", "StudyDescription", "ReferringPhysicianName")
        by_study[dataset.StudyInstanceUID].add(tuple(str(dataset[k].value) for k in study))
    assert all(len(values) == 1 for values in by_patient.values())
    assert all(len(values) == 1 for values in by_study.values())


def test_synthetic_ins_matricules_have_a_valid_control_key(datasets: dict[Path, Dataset]) -> None:
    for dataset in datasets.values():
        for other in dataset.get("OtherPatientIDsSequence", []):
            matricule = other.PatientID
            assert len(matricule) == 15
            assert ins_control_key(matricule[:13]) == matricule[13:]


def test_ct_geometry_steps_along_the_slice_normal(datasets: dict[Path, Dataset]) -> None:
    slices = sorted(_of(datasets, "CT"), key=lambda d: (d.StudyInstanceUID, d.InstanceNumber))
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for dataset in slices:
        by_series[dataset.SeriesInstanceUID].append(dataset)
    for series in by_series.values():
        assert len(series) == REQUEST.slices
        assert len({d.FrameOfReferenceUID for d in series}) == 1
        orientation = np.array(series[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([d.ImagePositionPatient for d in series], dtype=float)
        steps = np.diff(positions @ normal)
        assert np.allclose(np.abs(steps), float(series[0].SliceThickness))
        assert np.allclose(positions[:, :2], positions[0, :2])
        for dataset in series:
            assert (dataset.Rows, dataset.Columns) == (512, 512)
            assert [float(v) for v in dataset.PixelSpacing] == [0.703125, 0.703125]
            assert dataset.SliceLocation == pytest.approx(dataset.ImagePositionPatient[2])


def test_ct_pixels_are_hounsfield_units_within_12_bits(datasets: dict[Path, Dataset]) -> None:
    middle = next(d for d in _of(datasets, "CT") if d.InstanceNumber == REQUEST.slices // 2)
    stored = middle.pixel_array
    assert stored.dtype == np.uint16
    assert stored.max() < 2**middle.BitsStored
    hounsfield = stored * float(middle.RescaleSlope) + float(middle.RescaleIntercept)
    assert hounsfield.min() < -900  # air around the patient
    assert np.median(hounsfield[200:300, 200:300]) > -200  # soft tissue in the middle of the body
    assert hounsfield.max() > 500  # bone


def test_mr_series_share_a_frame_of_reference_and_stay_within_12_bits(datasets: dict[Path, Dataset]) -> None:
    mr = list(_of(datasets, "MR"))
    for patient_id in {d.PatientID for d in mr}:
        own = [d for d in mr if d.PatientID == patient_id]
        assert len({d.SeriesInstanceUID for d in own}) == 2
        assert len({d.FrameOfReferenceUID for d in own}) == 1
        assert len(own) == 2 * REQUEST.mr_slices
    pixels = mr[len(mr) // 2].pixel_array
    assert pixels.shape == (256, 256)
    assert pixels.max() < 4096


def test_compressed_instances_decode_to_the_declared_geometry(datasets: dict[Path, Dataset]) -> None:
    for dataset in datasets.values():
        syntax = dataset.file_meta.TransferSyntaxUID
        if dataset.Modality == "DOC" or syntax.name.startswith("MPEG"):
            continue
        pixels = dataset.pixel_array
        frames = int(dataset.get("NumberOfFrames", 1))
        expected = (dataset.Rows, dataset.Columns) + ((3,) if dataset.SamplesPerPixel == 3 else ())
        assert pixels.shape == ((frames, *expected) if frames > 1 else expected)
        if dataset.Modality == "CR":
            assert syntax == "1.2.840.10008.1.2.4.50"
            assert dataset.LossyImageCompression == "01"
        if dataset.Modality == "MG":
            assert syntax == "1.2.840.10008.1.2.4.90"
            assert pixels.max() < 4096
            assert dataset.ImageLaterality in ("L", "R")
            assert dataset.ViewCodeSequence[0].CodeValue in ("399162004", "399368009")


def test_ultrasound_has_a_cine_loop_a_key_image_and_an_h264_video(datasets: dict[Path, Dataset]) -> None:
    us = [d for d in _of(datasets, "US") if d.PatientID == "IPP-A-000001"]
    syntaxes = sorted(str(d.file_meta.TransferSyntaxUID) for d in us)
    assert syntaxes == ["1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"]
    cine = next(d for d in us if d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50")
    assert (cine.NumberOfFrames, cine.PhotometricInterpretation) == (REQUEST.frames, "YBR_FULL_422")
    assert cine.FrameIncrementPointer == 0x00181063
    video = next(d for d in us if d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102")
    assert video.PhotometricInterpretation == "YBR_PARTIAL_420"
    stream = b"".join(pydicom.encaps.generate_fragments(video.PixelData))
    assert stream[4:8] == b"ftyp"  # an MP4 file, which a browser plays as it is
    with av.open(io.BytesIO(stream), format="mp4") as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == video.NumberOfFrames == REQUEST.frames
    assert decoded[0].shape == (480, 640, 3)


def test_every_study_has_its_report_as_an_encapsulated_pdf(datasets: dict[Path, Dataset]) -> None:
    studies = {d.StudyInstanceUID for d in datasets.values()}
    reports = [d for d in datasets.values() if d.Modality == "DOC"]
    assert {d.StudyInstanceUID for d in reports} == studies
    for report in reports:
        document = bytes(report.EncapsulatedDocument)[: report.EncapsulatedDocumentLength]
        assert document.startswith(b"%PDF-1.4")
        assert document.rstrip().endswith(b"%%EOF")
        assert report.MIMETypeOfEncapsulatedDocument == "application/pdf"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_error_in_any_iod(written: list[WrittenInstance]) -> None:
    """David Clunie's IOD verifier (Debian's dicom3tools), one file of each series."""
    firsts = {instance.series_instance_uid: instance.path for instance in written}
    for path in firsts.values():
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert not errors, f"{path}: {errors}"
