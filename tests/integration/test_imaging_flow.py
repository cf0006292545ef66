"""The imaging core end to end on real processes: generated exams of every kind, imported by STOW-RS into
ingest, announced on Kafka, catalogued, found by QIDO-RS, described by WADO-RS metadata whose bulk data
references ingest serves.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from emage_devstack.stack import Stack

DICOM_JSON = "application/dicom+json"


def _study_counts(folder: Path) -> dict[str, tuple[int, set[str]]]:
    """StudyInstanceUID → (number of instances, modalities) of the generated files."""
    instances: Counter[str] = Counter()
    modalities: dict[str, set[str]] = {}
    for path in folder.rglob("*.dcm"):
        dataset = dcmread(path, stop_before_pixels=True)
        instances[dataset.StudyInstanceUID] += 1
        modalities.setdefault(dataset.StudyInstanceUID, set()).add(dataset.Modality)
    return {study: (count, modalities[study]) for study, count in instances.items()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exams")
    command = [sys.executable, "-m", "emage_cli", "generate", str(folder), "--slices", "12", "--frames", "8"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return folder


def test_every_exam_kind_is_found_by_qido_with_its_counts(services: Stack, generated: Path) -> None:
    expected = _study_counts(generated)
    assert len(expected) >= 5  # CR, CT, MR, US, MG for the dev patients
    ingest = services.service_url("ingest")
    started = time.monotonic()
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "emage_cli",
            "import",
            str(generated),
            "--url",
            ingest,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    catalog = services.service_url("catalog")

    def visible() -> dict[str, dict[str, object]]:
        response = httpx.get(
            f"{catalog}/studies",
            params={"StudyInstanceUID": ",".join(expected), "includefield": "ModalitiesInStudy"},
            headers={"Accept": DICOM_JSON},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return {item["0020000D"]["Value"][0]: item for item in response.json()}

    deadline = time.monotonic() + 60
    found = visible()
    while time.monotonic() < deadline and (
        len(found) < len(expected)
        or any(found[uid]["00201208"]["Value"][0] != count for uid, (count, _) in expected.items())
    ):
        time.sleep(0.25)
        found = visible()
    print(
        f"{sum(c for c, _ in expected.values())} instances imported and catalogued in "
        f"{time.monotonic() - started:.1f}s"
    )
    assert set(found) == set(expected)
    for uid, (count, modalities) in expected.items():
        assert found[uid]["00201208"]["Value"] == [count]
        assert set(found[uid]["00080061"]["Value"]) == modalities


def test_metadata_bulk_data_references_are_served_by_ingest(services: Stack, generated: Path) -> None:
    ct = next(
        dataset
        for dataset in (dcmread(path, stop_before_pixels=True) for path in sorted(generated.rglob("*.dcm")))
        if dataset.Modality == "CT"
    )
    path = f"studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    deadline = time.monotonic() + 60
    while True:
        metadata = httpx.get(
            f"{services.service_url('catalog')}/{path}/metadata", headers={"Accept": DICOM_JSON}, timeout=10
        )
        if metadata.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert metadata.status_code == 200, metadata.text
    (dataset,) = metadata.json()
    assert dataset["00100020"]["Value"] == [ct.PatientID]
    pixel_data = dataset["7FE00010"]
    assert "Value" not in pixel_data
    assert "InlineBinary" not in pixel_data
    bulk_path = pixel_data["BulkDataURI"].split("/studies/", 1)[1]
    # Until the gateway fronts both services, the bulk data path is asked of ingest directly.
    bulk = httpx.get(
        f"{services.service_url('ingest')}/studies/{bulk_path}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        timeout=10,
    )
    assert bulk.status_code == 200, bulk.text
    assert len(bulk.content) >= ct.Rows * ct.Columns * 2


def test_every_exam_kind_is_retrieved_byte_identical(services: Stack, generated: Path) -> None:
    """CR, CT, MR, US (cine, key image, H.264 clip), MG and PDF reports: WADO-RS returns the bytes sent."""
    ingest = services.service_url("ingest")
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    seen: set[str] = set()
    with httpx.Client(base_url=ingest, timeout=60) as http:
        for path in sorted(generated.rglob("*.dcm")):
            dataset = dcmread(path, stop_before_pixels=True)
            seen.add(dataset.Modality)
            resource = (
                f"/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
                f"/instances/{dataset.SOPInstanceUID}"
            )
            response = http.get(resource, headers=accept)
            assert response.status_code == 200, (path.name, response.text)
            boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
            part = response.content.split(f"--{boundary}".encode())[1]
            body = part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
            sent = hashlib.sha256(path.read_bytes()).hexdigest()
            assert hashlib.sha256(body).hexdigest() == sent, path.name
    assert {"CR", "CT", "MR", "US", "MG", "DOC"} <= seen
