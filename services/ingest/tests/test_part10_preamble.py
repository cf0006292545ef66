"""Objects sent without the Part 10 preamble (as pydicom's dcmwrite and dicomweb-client do) are archived
as conformant Part 10 files; others are left to validation."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from emage_ingest.service import _with_part10_preamble


def _encoded(*, enforce_file_format: bool) -> bytes:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=enforce_file_format)
    return buffer.getvalue()


def test_file_meta_without_preamble_gets_one(tmp_path: Path) -> None:
    received = tmp_path / "part"
    received.write_bytes(_encoded(enforce_file_format=False))
    fixed = _with_part10_preamble(received)
    assert fixed is not None
    assert fixed.read_bytes() == bytes(128) + b"DICM" + received.read_bytes()
    assert pydicom.dcmread(fixed).SOPInstanceUID == pydicom.dcmread(received, force=True).SOPInstanceUID


def test_a_part10_file_or_garbage_is_left_as_it_is(tmp_path: Path) -> None:
    for name, content in {"part10": _encoded(enforce_file_format=True), "garbage": b"not dicom" * 20}.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert _with_part10_preamble(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage", "part10"]
