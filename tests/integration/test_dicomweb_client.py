"""Conformance with a real third-party DICOMweb client (``dicomweb-client``): store, search with each
matching kind, retrieve metadata — PS3.18 §10.5, §10.6, §10.4 — against the running ingest and catalog.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from emage_devstack.stack import Stack

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _instance(study: str, series: str, *, modality: str, patient_id: str, name: str, date: str) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.Modality, dataset.PatientID, dataset.PatientName = modality, patient_id, name
    dataset.IssuerOfPatientID = "750000001"
    dataset.StudyDate, dataset.StudyTime, dataset.AccessionNumber = date, "101500", f"ACC{patient_id[-4:]}"
    dataset.StudyID, dataset.SeriesNumber, dataset.InstanceNumber = "1", 1, 1
    dataset.Rows = dataset.Columns = 16
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = np.arange(256, dtype=np.uint16).reshape(16, 16).tobytes()
    return dataset


@pytest.fixture(scope="module")
def studies(services: Stack) -> dict[str, Dataset]:
    """Three studies stored with dicomweb-client's STOW-RS, keyed by a short name."""
    suffix = generate_uid()[-6:]
    made = {
        "ct-martin": _instance(
            generate_uid(), generate_uid(), modality="CT", patient_id=f"DWC-{suffix}-1",
            name="MARTIN^Alice", date="20240105",
        ),
        "mr-martinez": _instance(
            generate_uid(), generate_uid(), modality="MR", patient_id=f"DWC-{suffix}-2",
            name="MARTINEZ^Bruno", date="20240620",
        ),
        "ct-durand": _instance(
            generate_uid(), generate_uid(), modality="CT", patient_id=f"DWC-{suffix}-3",
            name="DURAND^Chloe", date="20231130",
        ),
    }  # fmt: skip
    ingest = DICOMwebClient(url=services.service_url("ingest"))
    response = ingest.store_instances(list(made.values()))
    assert len(response.ReferencedSOPSequence) == len(made)
    assert "FailedSOPSequence" not in response
    return made


@pytest.fixture(scope="module")
def catalog(services: Stack, studies: dict[str, Dataset]) -> DICOMwebClient:
    client = DICOMwebClient(url=services.service_url("catalog"))
    deadline = time.monotonic() + 60
    # PS3.18 §8.3.4.1: a UID list is one comma-separated value; a repeated key is refused (400), and
    # dicomweb-client turns a Python list into repeated keys, so the list is joined here.
    uids = ",".join(dataset.StudyInstanceUID for dataset in studies.values())
    while len(client.search_for_studies(search_filters={"StudyInstanceUID": uids})) < len(studies):
        assert time.monotonic() < deadline, "the stored studies never became visible in QIDO-RS"
        time.sleep(0.25)
    return client


def _study_uids(results: list[dict[str, object]]) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in results}  # type: ignore[index]


Matching = Callable[[dict[str, Dataset]], tuple[dict[str, object], set[str]]]

MATCHING: dict[str, Matching] = {
    "single value": lambda s: ({"PatientID": s["ct-durand"].PatientID}, {"ct-durand"}),
    "wildcard, case-insensitive name": lambda s: (
        {"PatientName": "martin*", "PatientID": f"{s['ct-martin'].PatientID[:-1]}*"},
        {"ct-martin", "mr-martinez"},
    ),
    "date range": lambda s: (
        {"StudyDate": "20240101-20241231", "PatientID": f"{s['ct-martin'].PatientID[:-1]}*"},
        {"ct-martin", "mr-martinez"},
    ),
    "uid list": lambda s: (
        {"StudyInstanceUID": f"{s['ct-martin'].StudyInstanceUID},{s['ct-durand'].StudyInstanceUID}"},
        {"ct-martin", "ct-durand"},
    ),
    "modality in study": lambda s: (
        {"ModalitiesInStudy": "MR", "PatientID": f"{s['ct-martin'].PatientID[:-1]}*"},
        {"mr-martinez"},
    ),
}


@pytest.mark.parametrize("kind", MATCHING)
def test_study_search_with_each_matching_kind(
    catalog: DICOMwebClient, studies: dict[str, Dataset], kind: str
) -> None:
    filters, expected = MATCHING[kind](studies)
    results = catalog.search_for_studies(search_filters=filters)
    assert _study_uids(results) == {studies[name].StudyInstanceUID for name in expected}


def test_series_and_instance_search_and_metadata(
    catalog: DICOMwebClient, studies: dict[str, Dataset]
) -> None:
    ct = studies["ct-martin"]
    series = catalog.search_for_series(ct.StudyInstanceUID)
    assert [item["0020000E"]["Value"][0] for item in series] == [ct.SeriesInstanceUID]
    instances = catalog.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert [item["00080018"]["Value"][0] for item in instances] == [ct.SOPInstanceUID]
    (metadata,) = catalog.retrieve_study_metadata(ct.StudyInstanceUID)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "MARTIN^Alice"}]
    assert metadata["00280010"]["Value"] == [16]
    assert "BulkDataURI" in metadata["7FE00010"]


def test_paging_through_results(catalog: DICOMwebClient, studies: dict[str, Dataset]) -> None:
    prefix = f"{studies['ct-martin'].PatientID[:-1]}*"
    pages = [
        catalog.search_for_studies(search_filters={"PatientID": prefix}, limit=1, offset=offset)
        for offset in range(3)
    ]
    assert [len(page) for page in pages] == [1, 1, 1]
    assert set().union(*(_study_uids(page) for page in pages)) == {
        dataset.StudyInstanceUID for dataset in studies.values()
    }
