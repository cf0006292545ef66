"""DIMSE against the running ingest service, with dcmtk's ``echoscu`` and ``storescu`` as third-party SCUs.

Verification (PS3.4 Annex A) and Storage (PS3.4 Annex B) over real associations: every instance sent is
retrieved back by WADO-RS and compared with what was sent. C-STORE carries the data set without the File
Meta Information, which the SCP writes itself (PS3.10 §7.1), so "what was sent" is the data set: the
bytes after the File Meta Information group must be identical, and the archived object's SHA-256 must be
the one ingest recorded.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from emage_cli.synthetic.generator import GenerationRequest, generate
from emage_devstack.stack import Stack

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk's echoscu/storescu are not installed (apt-get install dcmtk; `make test` installs it)",
)

AE_TITLE = "EMAGE"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patient's CR, CT (24 slices), US (cine, key image, H.264) and MG studies, with their reports."""
    root = tmp_path_factory.mktemp("dimse")
    generate(
        root, GenerationRequest(kinds=("cr", "ct", "us", "mg"), patients=1, slices=24, frames=12, seed=4104)
    )
    return root / "IPP-A-000001"


def _series(exams: Path, modality: str, series: str) -> Path:
    (study,) = exams.glob(f"*-{modality}-*")
    return study / series


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def _storescu(
    services: Stack, *options: str, files: list[Path], calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    peer = ("127.0.0.1", str(services.ports.dimse))
    return _run("storescu", "-v", "-aec", AE_TITLE, "-aet", calling_ae, *options, *peer, *map(str, files))


def _data_set(part10: bytes) -> bytes:
    """The bytes after the File Meta Information: its group length (0002,0000) says where it ends."""
    assert part10[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


def _retrieve(services: Stack, dataset: pydicom.Dataset) -> bytes:
    """The archived Part 10 object, by WADO-RS in its stored transfer syntax (PS3.18 §10.4)."""
    url = (
        f"{services.service_url('ingest')}/studies/{dataset.StudyInstanceUID}"
        f"/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"
    )
    response = httpx.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}, timeout=30
    )
    assert response.status_code == 200, response.text
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    start = body.index(b"\r\n\r\n") + 4
    return body[start : body.index(b"\r\n--" + boundary, start)]


def _assert_archived_as_sent(
    services: Stack, index: Any, path: Path, transfer_syntax: str | None = None
) -> None:
    sent = path.read_bytes()
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    record = index.find_one({"_id": dataset.SOPInstanceUID})
    assert record is not None, f"{path} was not archived"
    archived = _retrieve(services, dataset)
    assert hashlib.sha256(archived).hexdigest() == record["sha256"]
    assert record["transfer_syntax_uid"] == (transfer_syntax or dataset.file_meta.TransferSyntaxUID)
    assert _data_set(archived) == _data_set(sent), f"{path}: the archived data set differs from the one sent"


def test_echoscu_verification_succeeds(services: Stack) -> None:
    result = _run(
        "echoscu", "-v", "-aec", AE_TITLE, "-aet", "ECHOSCU", "127.0.0.1", str(services.ports.dimse)
    )

    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_an_association_for_another_called_ae_title_is_rejected(services: Stack) -> None:
    result = _run("echoscu", "-aec", "NOT-EMAGE", "127.0.0.1", str(services.ports.dimse))

    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr


def test_storescu_ct_series_in_explicit_vr_little_endian_is_archived_byte_identical(
    services: Stack, exams: Path, instances_index: Any
) -> None:
    series = _series(exams, "CT", "02-CT")

    result = _storescu(services, "-xe", "+sd", "+r", files=[series], calling_ae="CHUA_MODALITY")

    assert result.returncode == 0, result.stderr
    slices = sorted(series.glob("*.dcm"))
    assert len(slices) == 24
    for path in slices:
        _assert_archived_as_sent(services, instances_index, path, EXPLICIT_VR_LITTLE_ENDIAN)
    record = instances_index.find_one({"_id": pydicom.dcmread(slices[0]).SOPInstanceUID})
    assert record["facility_finess"] == "750000001"


@pytest.mark.parametrize(
    ("proposal", "modality", "series", "instance"),
    [
        pytest.param("-xy", "CR", "01-CR", "0001.dcm", id="CR JPEG baseline"),
        pytest.param("-xy", "US", "05-US", "0001.dcm", id="US cine JPEG baseline YBR_FULL_422"),
        pytest.param("-xr", "US", "05-US", "0002.dcm", id="US key image RLE lossless"),
        pytest.param("-xn", "US", "06-US", "0001.dcm", id="US video MPEG-4 AVC/H.264"),
        pytest.param("-xv", "MG", "07-MG", "0001.dcm", id="MG JPEG 2000 lossless"),
        pytest.param("-xi", "US", "99-DOC", "0001.dcm", id="encapsulated PDF, implicit VR proposed"),
    ],
)
def test_storescu_compressed_instance_is_archived_as_received(
    services: Stack,
    exams: Path,
    instances_index: Any,
    proposal: str,
    modality: str,
    series: str,
    instance: str,
) -> None:
    path = _series(exams, modality, series) / instance
    expected = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID

    result = _storescu(services, proposal, files=[path])

    assert result.returncode == 0, result.stderr
    if proposal == "-xi":
        # storescu converted the explicit VR data set to the only syntax it proposed: the archive keeps that.
        record = instances_index.find_one({"_id": pydicom.dcmread(path).SOPInstanceUID})
        assert record["transfer_syntax_uid"] == "1.2.840.10008.1.2"
        assert "Converting transfer syntax" in result.stdout + result.stderr
    else:
        _assert_archived_as_sent(services, instances_index, path, str(expected))


@pytest.mark.parametrize(
    ("encoder", "proposal", "transfer_syntax"),
    [
        pytest.param("dcmcjpeg", "-xs", JPEG_LOSSLESS_SV1, id="JPEG lossless SV1"),
        pytest.param("dcmcjpls", "-xt", JPEG_LS_LOSSLESS, id="JPEG-LS lossless"),
    ],
)
def test_a_ct_slice_compressed_by_dcmtk_is_archived_as_received(
    services: Stack,
    exams: Path,
    instances_index: Any,
    tmp_path: Path,
    encoder: str,
    proposal: str,
    transfer_syntax: str,
) -> None:
    # A new instance (the CT slices are archived already), losslessly compressed by dcmtk's own encoder.
    source = pydicom.dcmread(_series(exams, "CT", "02-CT") / "0012.dcm")
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        prefix=None
    )
    uncompressed, compressed = tmp_path / "slice.dcm", tmp_path / "compressed.dcm"
    source.save_as(uncompressed, enforce_file_format=True)
    assert _run(encoder, str(uncompressed), str(compressed)).returncode == 0

    result = _storescu(services, proposal, files=[compressed])

    assert result.returncode == 0, result.stderr
    _assert_archived_as_sent(services, instances_index, compressed, transfer_syntax)
    archived = pydicom.dcmread(io.BytesIO(_retrieve(services, source)))
    assert np.array_equal(archived.pixel_array, source.pixel_array)


def test_the_calling_ae_title_decides_the_facility(
    services: Stack, exams: Path, instances_index: Any, tmp_path: Path
) -> None:
    source = pydicom.dcmread(_series(exams, "CR", "99-DOC") / "0001.dcm")
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        prefix=None
    )
    path = tmp_path / "report.dcm"
    source.save_as(path, enforce_file_format=True)

    result = _storescu(services, files=[path], calling_ae="CLIB_MODALITY")

    assert result.returncode == 0, result.stderr
    assert instances_index.find_one({"_id": source.SOPInstanceUID})["facility_finess"] == "690000002"


def test_sending_the_same_instance_again_is_a_success_that_stores_nothing_new(
    services: Stack, exams: Path, instances_index: Any
) -> None:
    path = _series(exams, "CR", "01-CR") / "0001.dcm"
    assert _storescu(services, "-xy", files=[path]).returncode == 0
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    before = instances_index.find_one({"_id": uid})

    result = _storescu(services, "-xy", files=[path])

    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stdout + result.stderr
    assert instances_index.find_one({"_id": uid}) == before


def test_other_bytes_under_an_archived_sop_instance_uid_are_refused(
    services: Stack, exams: Path, instances_index: Any, tmp_path: Path
) -> None:
    original = _series(exams, "MG", "99-DOC") / "0001.dcm"
    assert _storescu(services, files=[original]).returncode == 0
    changed = pydicom.dcmread(original)
    changed.DocumentTitle = "Compte rendu modifié"
    path = tmp_path / "changed.dcm"
    changed.save_as(path, enforce_file_format=True)
    before = instances_index.find_one({"_id": changed.SOPInstanceUID})

    result = _storescu(services, files=[path])

    output = result.stdout + result.stderr
    assert "Received Store Response" in output
    assert "Success" not in output.split("Received Store Response", 1)[1].splitlines()[0]
    assert instances_index.find_one({"_id": changed.SOPInstanceUID}) == before
