"""The import: finding DICOM files, grouping them into requests, the STOW-RS body and reading responses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from emage_cli.importer.files import DicomFile, SkippedFile, batches, classify, walk
from emage_cli.importer.outcomes import (
    ImportSummary,
    Outcome,
    part_details,
    results_from_problem,
    results_from_response,
)
from emage_cli.importer.run import ImportOptions, import_folder
from emage_cli.importer.stow import MultipartBody, StowClient

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _write_instance(path: Path, study: str, sop_instance: str | None = None) -> Path:
    dataset = Dataset()
    dataset.SOPClassUID = SECONDARY_CAPTURE
    dataset.SOPInstanceUID = sop_instance or generate_uid()
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "OT"
    dataset.PatientID = "IPP-A-000001"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def _file(study: str | None, size: int = 10, instance: str | None = None, name: str = "f.dcm") -> DicomFile:
    return DicomFile(Path(name), size, study, instance or generate_uid(), SECONDARY_CAPTURE)


# --- finding files --------------------------------------------------------------------------------------


def test_classify_tells_dicom_files_from_the_rest(tmp_path: Path) -> None:
    study = generate_uid()
    dicom = _write_instance(tmp_path / "a.dcm", study)
    (tmp_path / "notes.txt").write_text("compte rendu")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)

    found = classify(dicom)
    text = classify(tmp_path / "notes.txt")
    empty = classify(tmp_path / "empty.dcm")
    fake = classify(tmp_path / "fake.dcm")

    assert isinstance(found, DicomFile)
    assert found.study_instance_uid == study
    assert found.size_bytes == dicom.stat().st_size
    assert isinstance(text, SkippedFile)
    assert "not a DICOM Part 10 file" in text.reason
    assert isinstance(empty, SkippedFile)
    assert empty.reason == "empty file"
    # It starts like a Part 10 file: the server, not the client, says what is wrong with it.
    assert isinstance(fake, DicomFile)
    assert fake.study_instance_uid is None


def test_walk_is_recursive_ordered_and_does_not_follow_directory_links(tmp_path: Path) -> None:
    study = generate_uid()
    _write_instance(tmp_path / "b" / "2.dcm", study)
    _write_instance(tmp_path / "a" / "deep" / "1.dcm", study)
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)

    found = list(walk(tmp_path))

    assert [f.path.relative_to(tmp_path).as_posix() for f in found] == ["a/deep/1.dcm", "b/2.dcm"]


# --- requests -------------------------------------------------------------------------------------------


def test_batches_group_by_study_within_the_limits() -> None:
    one, two = generate_uid(), generate_uid()
    files = [_file(one) for _ in range(5)] + [_file(two)] + [_file(None)]

    result = list(batches(files, max_files=2, max_bytes=1000))

    assert [(b.study_instance_uid, len(b.files)) for b in result] == [
        (None, 1),
        (one, 2),
        (one, 2),
        (one, 1),
        (two, 1),
    ]
    assert (
        list(batches([_file(one, 600), _file(one, 600)], max_files=10, max_bytes=1000))[1].size_bytes == 600
    )


def test_the_same_sop_instance_uid_never_shares_a_request() -> None:
    study, instance = generate_uid(), generate_uid()
    files = [_file(study, instance=instance), _file(study), _file(study, instance=instance)]

    result = list(batches(files, max_files=10, max_bytes=10**6))

    assert [len(b.files) for b in result] == [2, 1]


async def test_multipart_body_is_framed_per_rfc_2046_and_its_length_is_exact(tmp_path: Path) -> None:
    study = generate_uid()
    paths = [_write_instance(tmp_path / f"{n}.dcm", study) for n in range(3)]
    files = [classify(path) for path in paths]
    assert all(isinstance(f, DicomFile) for f in files)
    body = MultipartBody([f for f in files if isinstance(f, DicomFile)], "b0undary")
    sent: list[int] = []

    data = b"".join([chunk async for chunk in body.chunks(sent.append)])

    assert len(data) == body.length
    assert sum(sent) == sum(path.stat().st_size for path in paths)
    assert body.content_type == 'multipart/related; type="application/dicom"; boundary=b0undary'
    parts = data.split(b"--b0undary")
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    for part, path in zip(parts[1:-1], paths, strict=True):
        headers, content = part.split(b"\r\n\r\n", 1)
        assert headers == b"\r\nContent-Type: application/dicom"
        assert content.removesuffix(b"\r\n") == path.read_bytes()


# --- responses ------------------------------------------------------------------------------------------


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def test_results_follow_the_store_instances_response() -> None:
    files = [_file("1.2.3", name=f"{n}.dcm") for n in range(5)]
    stored, warned, duplicate, failed, _not_mentioned = files
    body = {
        "00081199": {
            "vr": "SQ",
            "Value": [
                {"00081155": _ui(str(stored.sop_instance_uid))},
                {"00081155": _ui(str(warned.sop_instance_uid)), "00081196": _us(0xB00E)},
                {"00081155": _ui(str(duplicate.sop_instance_uid))},
            ],
        },
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": _ui(str(failed.sop_instance_uid)), "00081197": _us(0xA900)}],
        },
    }
    details = part_details(
        [
            '299 emage-ingest "part 3: already archived with identical content"',
            '299 emage-ingest "part 4: Modality (0008,0060) is \\"missing\\""',
        ]
    )

    results = results_from_response(files, 202, body, details)

    assert [r.outcome for r in results] == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.REJECTED,
        Outcome.REJECTED,
    ]
    assert results[1].reason.startswith("0xB00E")
    assert results[3].reason.startswith("0xA900 data set does not match SOP class")
    assert results[3].reason.endswith(': Modality (0008,0060) is "missing"')
    assert "not in the server's response" in results[4].reason


def test_a_file_sent_alone_takes_the_single_outcome_of_its_response() -> None:
    unknown = DicomFile(Path("broken.dcm"), 10, None, None, None)
    body = {"00081198": {"vr": "SQ", "Value": [{"00081197": _us(0xC000)}]}}

    (result,) = results_from_response([unknown], 409, body, {})

    assert result.outcome is Outcome.REJECTED
    assert result.reason.startswith("0xC000 cannot understand")


def test_failures_without_uid_go_in_order_to_the_files_no_item_names() -> None:
    readable, truncated, garbled = _file("1.2.3"), _file("1.2.3"), _file("1.2.3")
    body = {
        "00081199": {"vr": "SQ", "Value": [{"00081155": _ui(str(readable.sop_instance_uid))}]},
        "00081198": {"vr": "SQ", "Value": [{"00081197": _us(0xC000)}, {"00081197": _us(0xA900)}]},
    }

    results = results_from_response([readable, truncated, garbled], 202, body, {2: "truncated"})

    assert [r.reason for r in results] == [
        "",
        "0xC000 cannot understand (not a parseable DICOM object): truncated",
        "0xA900 data set does not match SOP class, or contradicts the request",
    ]


def test_out_of_resources_is_retryable_and_a_problem_keeps_what_was_stored() -> None:
    first, second = _file("1.2.3"), _file("1.2.3")
    body = {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": _ui(str(first.sop_instance_uid)), "00081197": _us(0xA700)}],
        }
    }

    (retry, _) = results_from_response([first, second], 409, body, {})
    partial = results_from_problem(
        [first, second],
        400,
        {"detail": "truncated", "stored": [{"sop_instance_uid": first.sop_instance_uid}]},
        retryable=False,
    )

    assert retry.retryable
    assert [r.outcome for r in partial] == [Outcome.STORED, Outcome.REJECTED]
    assert partial[1].reason == "HTTP 400: truncated"


def test_exit_code_is_1_only_when_something_was_rejected() -> None:
    summary = ImportSummary()
    summary.add_skipped(SkippedFile(Path("notes.txt"), "not DICOM"))
    assert summary.exit_code == 0
    summary.results.append(results_from_problem([_file("1.2.3")], 415, {"title": "no"}, retryable=False)[0])
    assert summary.exit_code == 1


# --- the client against an in-process server ------------------------------------------------------------


class _Recorder:
    def scanned(self, files: int, size_bytes: int) -> None:
        self.total = (files, size_bytes)

    def sent(self, size_bytes: int) -> None:
        pass

    def settled(self, results: list[Any]) -> None:
        pass


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    study = generate_uid()
    for number in range(3):
        _write_instance(tmp_path / "exam" / f"{number}.dcm", study)
    (tmp_path / "exam" / "DICOMDIR.txt").write_text("index")
    return tmp_path


async def test_import_streams_each_study_and_retries_a_busy_server(folder: Path) -> None:
    requests: list[httpx.Request] = []

    async def server(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        requests.append(request)
        assert int(request.headers["content-length"]) == len(body)
        assert request.headers["x-emage-facility"] == "690000002"
        if len(requests) == 1:
            return httpx.Response(
                503, json={"title": "busy"}, headers={"content-type": "application/problem+json"}
            )
        boundary = request.headers["content-type"].split("boundary=")[1].encode()
        instances = [part.split(b"\r\n\r\n", 1)[1] for part in body.split(b"--" + boundary)[1:-1]]
        referenced = [
            {"00081155": _ui(dcmread(io.BytesIO(content.removesuffix(b"\r\n"))).SOPInstanceUID)}
            for content in instances
        ]
        return httpx.Response(
            200,
            content=json.dumps({"00081199": {"vr": "SQ", "Value": referenced}}),
            headers={"content-type": "application/dicom+json"},
        )

    transport = httpx.MockTransport(server)
    options = ImportOptions(url="http://ingest.test", facility="690000002", concurrency=2)
    client = httpx.AsyncClient(transport=transport)
    stow = StowClient(client, options.url, facility=options.facility, backoff_seconds=0)
    (batch,) = list(
        batches([f for f in walk(folder) if isinstance(f, DicomFile)], max_files=64, max_bytes=10**9)
    )

    results = await stow.store(batch, lambda _size: None)

    await client.aclose()
    assert [r.outcome for r in results] == [Outcome.STORED] * 3
    assert len(requests) == 2
    assert requests[1].url.path == f"/studies/{batch.study_instance_uid}"


async def test_import_folder_reports_every_file(folder: Path) -> None:
    async def server(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(409, json={"00081198": {"vr": "SQ", "Value": []}})

    recorder = _Recorder()

    summary = await import_folder(
        folder, ImportOptions(url="http://ingest.test"), recorder, transport=httpx.MockTransport(server)
    )

    counts = summary.counts()
    assert recorder.total[0] == 3
    assert (counts[Outcome.REJECTED], counts[Outcome.SKIPPED]) == (3, 1)
    assert summary.exit_code == 1
