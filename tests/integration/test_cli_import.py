"""``emage import`` and ``emage demo`` against the running ingest service (STOW-RS, PS3.18 §10.5).

A generated folder with a text file, a truncated DICOM file and a file that merely starts like one: the
import stores every valid instance, skips the text file, reports both broken files as rejected with the
server's reason, and exits with status 1. Importing it again stores nothing new.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from emage_cli.importer.outcomes import FileResult, Outcome
from emage_cli.importer.run import ImportOptions, import_folder
from emage_cli.synthetic.generator import GenerationRequest, generate
from emage_devstack.stack import Stack


class _Silent:
    def scanned(self, files: int, size_bytes: int) -> None:
        pass

    def sent(self, size_bytes: int) -> None:
        pass

    def settled(self, results: list[FileResult]) -> None:
        pass


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("import")
    generate(root, GenerationRequest(kinds=("cr", "ct", "us"), patients=1, slices=12, frames=6, seed=4105))
    (root / "LISEZMOI.txt").write_text("Examens exportés du PACS\n", encoding="utf-8")
    # A radiograph of its own (new SOP Instance UID) cut in the middle of its JPEG fragment.
    radiograph = pydicom.dcmread(next(root.glob("*/*-CR-*/01-CR/0001.dcm")))
    radiograph.SOPInstanceUID = radiograph.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None)
    (root / "nested" / "deeper").mkdir(parents=True)
    truncated = root / "nested" / "deeper" / "truncated.dcm"
    radiograph.save_as(truncated, enforce_file_format=True)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "nested" / "not-really.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    return root


def _valid_instances(folder: Path) -> dict[str, Path]:
    return {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path
        for path in folder.glob("IPP-*/**/*.dcm")
    }


async def test_import_stores_valid_instances_and_reports_the_rest(
    services: Stack, folder: Path, instances_index: Any
) -> None:
    options = ImportOptions(url=services.service_url("ingest"), facility="750000001", concurrency=3)

    summary = await import_folder(folder, options, _Silent())

    counts = summary.counts()
    valid = _valid_instances(folder)
    assert counts[Outcome.STORED] + counts[Outcome.DUPLICATE] == len(valid) == 12 + 1 + 2 + 4
    assert counts[Outcome.SKIPPED] == 1
    assert counts[Outcome.REJECTED] == 2
    assert summary.exit_code == 1
    (skipped,) = summary.by_outcome(Outcome.SKIPPED)
    assert skipped.path.name == "LISEZMOI.txt"
    assert "not a DICOM Part 10 file" in skipped.reason
    rejected = {result.path.name: result.reason for result in summary.by_outcome(Outcome.REJECTED)}
    assert set(rejected) == {"truncated.dcm", "not-really.dcm"}
    assert all(reason.startswith(("0xC000", "0xA900", "HTTP 4")) for reason in rejected.values()), rejected
    for uid, path in valid.items():
        record = instances_index.find_one({"_id": uid})
        assert record is not None, path
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["facility_finess"] == "750000001"


def test_the_command_line_exits_1_and_importing_again_stores_nothing_new(
    services: Stack, folder: Path, instances_index: Any
) -> None:
    documents_before = instances_index.count_documents({})
    command = [
        sys.executable,
        "-m",
        "emage_cli",
        "import",
        str(folder),
        "--url",
        services.service_url("ingest"),
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 1, result.stderr
    assert "Import summary" in result.stderr
    assert "not-really.dcm" in result.stderr
    assert "LISEZMOI.txt" in result.stderr
    assert instances_index.count_documents({}) == documents_before


def test_demo_loads_both_dev_patients_studies_each_under_its_facility(
    services: Stack, instances_index: Any, tmp_path: Path
) -> None:
    env = {**os.environ, "EMAGE_CACHE": str(tmp_path)}
    command = [sys.executable, "-m", "emage_cli", "demo", "--url", services.service_url("ingest")]

    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)

    assert result.returncode == 0, result.stderr
    facilities = {
        facility: instances_index.count_documents({"facility_finess": facility})
        for facility in ("750000001", "690000002")
    }
    assert facilities["750000001"] > 200
    assert facilities["690000002"] > 200
    shutil.rmtree(tmp_path / "demo")
