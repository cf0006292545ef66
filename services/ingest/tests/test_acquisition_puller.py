"""Pulling an announced study: one attempt at a time, resuming without duplicates, failures classified.

The puller runs against in-memory sources and an in-memory store; the DICOMweb client against an
``httpx.MockTransport`` origin server; the DIMSE negotiation rules as the pure function they are.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from emage_common.events import Acquisition, InvalidEventDataError, make_event
from emage_common.kafka import ConsumerRecordMeta
from emage_ingest.adapters.dicomweb_source import DicomWebStudySource
from emage_ingest.adapters.dimse_source import storage_contexts
from emage_ingest.domain.sources import (
    DicomWebPeer,
    FacilitySources,
    PullRejectedError,
    SourceInstance,
    SourceStudy,
    SourceUnavailableError,
)
from emage_ingest.domain.status import FailureReason
from emage_ingest.handlers import acquisition_handler
from emage_ingest.pull import StoreCallback, StudyPuller
from emage_ingest.service import StoreOutcome, StoreRequest

CHU = "750000001"
STUDY = "1.2.826.0.1.3680043.8.498.7"
SERIES = "1.2.826.0.1.3680043.8.498.7.1"
BASE_URL = "https://pacs.chu.example/dicom-web"
PEER = DicomWebPeer.model_validate({"base_url": BASE_URL, "username": "puller", "password": "s3cret"})
SOURCES = {CHU: FacilitySources(dicomweb=(PEER,))}


def acquisition(**changes: Any) -> Acquisition:
    event: dict[str, Any] = {
        "facility_finess": CHU,
        "accession_number": "ACC-7",
        "patient": {"patient_id": "IPP-7", "issuer_of_patient_id": CHU},
        "study_instance_uid": STUDY,
        "source": {"kind": "dicomweb", "base_url": BASE_URL},
    }
    return Acquisition.model_validate(event | changes)


def instances(count: int) -> list[SourceInstance]:
    return [
        SourceInstance(SERIES, f"{SERIES}.{number}", "1.2.840.10008.5.1.4.1.1.2")
        for number in range(1, count + 1)
    ]


@dataclass
class Archive:
    """The store use case and the index, in memory: a SOP instance is archived once, then a duplicate."""

    archived: dict[str, str] = field(default_factory=dict)
    requests: list[StoreRequest] = field(default_factory=list)
    stored_events: list[str] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)

    async def store_instance(self, part10_path: Path, request: StoreRequest) -> StoreOutcome:
        sop = await asyncio.to_thread(part10_path.read_text)
        self.requests.append(request)
        if sop in self.refuse:
            return StoreOutcome("failed", None, sop, failure_reason=self.refuse[sop], detail="refused")
        if sop in self.archived:
            return StoreOutcome("duplicate", None, sop)
        self.archived[sop] = request.facility_finess
        self.stored_events.append(sop)
        return StoreOutcome("stored", None, sop)

    async def list(self, study_uid: str, series_uid: str | None = None) -> list[Any]:
        return [SimpleNamespace(sop_instance_uid=sop) for sop in self.archived]


@dataclass
class Pacs:
    """A source holding one study; it can break off after a number of instances, or be unreachable."""

    tmp: Path
    held: list[SourceInstance]
    studies: list[SourceStudy] = field(default_factory=lambda: [SourceStudy(STUDY, "IPP-7", "ACC-7")])
    break_after: int | None = None
    unreachable: bool = False
    retrievals: list[list[str] | None] = field(default_factory=list)
    delay_s: float = 0.0

    async def find_studies(self, acquisition: Acquisition) -> list[SourceStudy]:
        if self.unreachable:
            raise SourceUnavailableError("connection refused")
        return self.studies

    async def list_instances(self, study_instance_uid: str) -> list[SourceInstance]:
        return list(self.held)

    async def retrieve(
        self, study_instance_uid: str, wanted: Sequence[SourceInstance] | None, store: StoreCallback
    ) -> None:
        self.retrievals.append(None if wanted is None else [one.sop_instance_uid for one in wanted])
        for sent, instance in enumerate(wanted if wanted is not None else self.held):
            if self.break_after is not None and sent >= self.break_after:
                self.break_after = None
                raise SourceUnavailableError("connection reset by peer")
            await asyncio.sleep(self.delay_s)
            path = self.tmp / f"{instance.sop_instance_uid}.dcm"
            path.write_text(instance.sop_instance_uid)
            await store(path)


def puller(archive: Archive, pacs: Pacs, *, timeout_s: float = 30) -> StudyPuller:
    @asynccontextmanager
    async def open_source(resolved: Any) -> AsyncIterator[Pacs]:
        assert resolved == PEER
        yield pacs

    return StudyPuller(
        store=archive,
        archived=archive,
        open_source=open_source,
        sources=SOURCES,
        ae_title_facilities={},
        attempt_timeout_s=timeout_s,
    )


async def test_a_study_is_retrieved_whole_and_stored_for_the_event_s_facility(tmp_path: Path) -> None:
    archive, pacs = Archive(), Pacs(tmp_path, instances(3))
    report = await puller(archive, pacs).pull(acquisition())
    assert (report.study_instance_uid, report.instances, report.retrieved) == (STUDY, 3, 3)
    assert pacs.retrievals == [None]
    assert {(r.source, r.facility_finess, r.expected_study_uid) for r in archive.requests} == {
        ("pull", CHU, STUDY)
    }


async def test_a_broken_off_pull_resumes_with_what_is_missing_and_stores_each_instance_once(
    tmp_path: Path,
) -> None:
    archive, pacs = Archive(), Pacs(tmp_path, instances(5), break_after=2)
    study_puller = puller(archive, pacs)
    with pytest.raises(SourceUnavailableError, match="reset"):
        await study_puller.pull(acquisition())
    assert len(archive.archived) == 2
    report = await study_puller.pull(acquisition())
    assert report.retrieved == 3
    assert pacs.retrievals[1] == [f"{SERIES}.{n}" for n in (3, 4, 5)]
    assert sorted(archive.stored_events) == sorted(f"{SERIES}.{n}" for n in range(1, 6))
    # Once everything is archived, another event for the study retrieves nothing.
    assert (await study_puller.pull(acquisition())).retrieved == 0
    assert len(pacs.retrievals) == 2


async def test_an_unreachable_source_or_a_study_not_there_yet_is_retried(tmp_path: Path) -> None:
    archive = Archive()
    with pytest.raises(SourceUnavailableError, match="refused"):
        await puller(archive, Pacs(tmp_path, instances(1), unreachable=True)).pull(acquisition())
    with pytest.raises(SourceUnavailableError, match="no study"):
        await puller(archive, Pacs(tmp_path, instances(1), studies=[])).pull(acquisition())
    with pytest.raises(SourceUnavailableError, match="no instance"):
        await puller(archive, Pacs(tmp_path, [])).pull(acquisition())


async def test_instances_the_source_did_not_send_keep_the_pull_unfinished(tmp_path: Path) -> None:
    pacs = Pacs(tmp_path, instances(3))
    original = pacs.retrieve

    async def sends_two(study: str, wanted: Sequence[SourceInstance] | None, store: StoreCallback) -> None:
        pacs.held, complete = pacs.held[:2], pacs.held
        try:
            await original(study, wanted, store)
        finally:
            pacs.held = complete

    pacs.retrieve = sends_two  # type: ignore[method-assign]
    with pytest.raises(SourceUnavailableError, match="1 of 3"):
        await puller(Archive(), pacs).pull(acquisition())


async def test_refused_instances_reject_the_pull_and_an_unavailable_archive_retries_it(
    tmp_path: Path,
) -> None:
    refused = Archive(refuse={f"{SERIES}.2": int(FailureReason.SOP_CLASS_NOT_SUPPORTED)})
    with pytest.raises(PullRejectedError, match=r"^instance-rejected: .*\.2: refused"):
        await puller(refused, Pacs(tmp_path, instances(3))).pull(acquisition())
    busy = Archive(refuse={f"{SERIES}.1": int(FailureReason.OUT_OF_RESOURCES)})
    with pytest.raises(SourceUnavailableError, match="archive unavailable"):
        await puller(busy, Pacs(tmp_path, instances(2))).pull(acquisition())


async def test_a_mismatching_study_or_an_unconfigured_source_is_never_pulled(tmp_path: Path) -> None:
    pacs = Pacs(tmp_path, instances(1), studies=[SourceStudy(STUDY, "IPP-OTHER")])
    archive = Archive()
    with pytest.raises(PullRejectedError, match="patient-mismatch"):
        await puller(archive, pacs).pull(acquisition())
    with pytest.raises(PullRejectedError, match="source-not-configured"):
        await puller(archive, pacs).pull(
            acquisition(source={"kind": "dicomweb", "base_url": "https://elsewhere.example/dicom-web"})
        )
    assert pacs.retrievals == []
    assert archive.requests == []


async def test_an_attempt_that_takes_too_long_is_given_up_and_retried(tmp_path: Path) -> None:
    pacs = Pacs(tmp_path, instances(3), delay_s=0.2)
    with pytest.raises(SourceUnavailableError, match="did not complete"):
        await puller(Archive(), pacs, timeout_s=0.1).pull(acquisition())


async def test_the_handler_dead_letters_schema_violations_at_once(tmp_path: Path) -> None:
    handler = acquisition_handler(puller(Archive(), Pacs(tmp_path, instances(1))))
    meta = ConsumerRecordMeta("emage.acquisition.v1", 0, 0, None, None, (), 1)  # type: ignore[arg-type]
    event = make_event(acquisition(), "/chu/ris")
    await handler(event, meta)
    broken = event.model_copy(update={"data": {**event.data, "facility_finess": "nope"}})  # type: ignore[dict-item]
    with pytest.raises(InvalidEventDataError):
        await handler(broken, meta)


# --- The DICOMweb client ------------------------------------------------------------------------------------


def part10(sop: str) -> bytes:
    return bytes(128) + b"DICM" + sop.encode()


def multipart(bodies: Sequence[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    content = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body + b"\r\n"
        for body in bodies
    )
    return (
        content + f"--{boundary}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def origin(held: list[SourceInstance], **failures: int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path.removeprefix("/dicom-web")
        for fragment, status in failures.items():
            if fragment in path or fragment == "all":
                return httpx.Response(status, json={"error": status})
        if path == "/studies":
            return httpx.Response(
                200,
                json=[
                    {
                        "0020000D": {"vr": "UI", "Value": [STUDY]},
                        "00100020": {"vr": "LO", "Value": ["IPP-7"]},
                        "00080050": {"vr": "SH", "Value": ["ACC-7"]},
                    }
                ],
            )
        if path == f"/studies/{STUDY}/instances":
            offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
            page = held[offset : offset + limit]
            return httpx.Response(
                200,
                json=[
                    {
                        "0020000E": {"vr": "UI", "Value": [one.series_instance_uid]},
                        "00080018": {"vr": "UI", "Value": [one.sop_instance_uid]},
                        "00080016": {"vr": "UI", "Value": [one.sop_class_uid]},
                    }
                    for one in page
                ],
            )
        assert request.headers["accept"] == 'multipart/related; type="application/dicom"; transfer-syntax=*'
        wanted = [one for one in held if path == f"/studies/{STUDY}" or path.endswith(one.sop_instance_uid)]
        body, content_type = multipart([part10(one.sop_instance_uid) for one in wanted])
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(answer), seen


@asynccontextmanager
async def dicomweb(transport: httpx.MockTransport, tmp_path: Path) -> AsyncIterator[DicomWebStudySource]:
    auth = httpx.BasicAuth("puller", "s3cret")
    async with httpx.AsyncClient(transport=transport, auth=auth) as client:
        yield DicomWebStudySource(PEER, client, spool_dir=str(tmp_path), max_instance_bytes=1 << 20)


async def test_qido_rs_finds_and_lists_page_by_page_with_the_configured_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("emage_ingest.adapters.dicomweb_source.QIDO_PAGE", 2)
    transport, seen = origin(instances(5))
    async with dicomweb(transport, tmp_path) as source:
        assert await source.find_studies(acquisition()) == [SourceStudy(STUDY, "IPP-7", "ACC-7")]
        listed = await source.list_instances(STUDY)
    assert [one.sop_instance_uid for one in listed] == [f"{SERIES}.{n}" for n in range(1, 6)]
    assert seen[0].url.params["StudyInstanceUID"] == STUDY
    assert seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"puller:s3cret").decode()
    assert [request.url.params.get("offset") for request in seen[1:]] == ["0", "2", "4"]
    async with dicomweb(transport, tmp_path) as source:
        await source.find_studies(acquisition(study_instance_uid=None))
    by_accession = seen[-1].url.params
    assert (by_accession["AccessionNumber"], by_accession["PatientID"]) == ("ACC-7", "IPP-7")


async def test_wado_rs_streams_each_instance_to_the_store(tmp_path: Path) -> None:
    held = instances(3)
    transport, seen = origin(held)
    received: list[bytes] = []

    async def store(path: Path) -> StoreOutcome:
        received.append(await asyncio.to_thread(path.read_bytes))
        return StoreOutcome("stored", None, None)

    async with dicomweb(transport, tmp_path) as source:
        await source.retrieve(STUDY, None, store)
        await source.retrieve(STUDY, held[1:2], store)
    assert received == [part10(one.sop_instance_uid) for one in held] + [part10(held[1].sop_instance_uid)]
    assert seen[-1].url.path.endswith(f"/series/{SERIES}/instances/{held[1].sop_instance_uid}")
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a test's own temporary directory


@pytest.mark.parametrize(
    ("failure", "expected", "match"),
    [
        (503, SourceUnavailableError, "HTTP 503"),
        (429, SourceUnavailableError, "HTTP 429"),
        (404, SourceUnavailableError, "not found"),
        (401, PullRejectedError, "source-refused-credentials"),
        (403, PullRejectedError, "source-refused-credentials"),
        (400, PullRejectedError, "source-refused-request"),
        (302, PullRejectedError, "redirects are not followed"),
    ],
)
async def test_http_failures_are_classified(
    tmp_path: Path, failure: int, expected: type[Exception], match: str
) -> None:
    transport, _ = origin(instances(1), **{f"/studies/{STUDY}": failure})

    async def store(path: Path) -> StoreOutcome:
        raise AssertionError("nothing to store")

    async with dicomweb(transport, tmp_path) as source:
        with pytest.raises(expected, match=match):
            await source.retrieve(STUDY, None, store)


async def test_an_unreachable_or_truncating_origin_is_unavailable(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with dicomweb(httpx.MockTransport(refuse), tmp_path) as source:
        with pytest.raises(SourceUnavailableError, match="refused"):
            await source.find_studies(acquisition())

    def truncate(request: httpx.Request) -> httpx.Response:
        body, content_type = multipart([part10("1.2.3")])
        return httpx.Response(200, content=body[:-20], headers={"content-type": content_type})

    async def store(path: Path) -> StoreOutcome:
        return StoreOutcome("stored", None, None)

    async with dicomweb(httpx.MockTransport(truncate), tmp_path) as source:
        with pytest.raises(SourceUnavailableError, match=r"truncated|no delimiter"):
            await source.retrieve(STUDY, None, store)


# --- DIMSE negotiation --------------------------------------------------------------------------------------


def test_c_get_proposes_a_context_per_transfer_syntax_while_they_fit() -> None:
    syntaxes = [f"1.2.840.10008.1.2.{n}" for n in range(1, 25)]
    few = storage_contexts(["1.1", "1.2"], syntaxes, limit=127)
    assert len(few) == 48
    assert all(len(offered) == 1 for _, offered in few)
    many = storage_contexts([f"1.{n}" for n in range(1, 11)], syntaxes, limit=127)
    assert len(many) <= 127
    separate = [uid for uid, offered in many if len(offered) == 1]
    shared = [(uid, offered) for uid, offered in many if len(offered) > 1]
    assert len(set(separate)) == 5
    assert len(shared) == 5
    assert all(offered == syntaxes for _, offered in shared)
    assert storage_contexts(["1.1", "1.1"], ["1.2.840.10008.1.2.1"], limit=10) == [
        ("1.1", ["1.2.840.10008.1.2.1"])
    ]
    with pytest.raises(ValueError, match="cannot fit"):
        storage_contexts([f"1.{n}" for n in range(5)], syntaxes, limit=3)
