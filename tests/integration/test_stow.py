"""STOW-RS into the real ingest service: encrypted S3 archive, MongoDB index, events on Kafka.

The ingest service runs as a real process against the profile's Kafka, MongoDB and SeaweedFS. Every test
uses studies of its own, so it can check precisely what was (and was not) stored and announced.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid
from pymongo import AsyncMongoClient

from emage_common.events import INSTANCE_STORED_TOPIC, CloudEvent, InstanceStored
from emage_common.s3 import create_s3_client
from emage_devstack.stack import DEV_ONLY_ARCHIVE_KEK, Stack
from emage_ingest.adapters.archive import InstanceArchive
from emage_ingest.adapters.crypto import KeyEncryptionKey, KeyRing, StudyKeyStore
from emage_ingest.adapters.repository import InstanceIndex

pytestmark = pytest.mark.integration

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "emage-it-stow-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MAX_PART_BYTES = 8 * 1024 * 1024
WAIT_S = 60


# --- Synthetic CT slices --------------------------------------------------------------------------------


def ct_slice(
    study: str, series: str, number: int, *, sop_instance_uid: str | None = None, **extra: Any
) -> bytes:
    """A 512x512 16-bit CT slice (about 0.5 MB), as PS3.10 bytes."""
    sop_instance = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = extra.pop("SOPClassUID", CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = sop_instance
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series
    dataset.Modality = "CT"
    dataset.PatientID = "IPP-IT-1"
    dataset.PatientName = "MARTIN^LUCIE"
    dataset.StudyDate = "20250101"
    dataset.InstanceNumber = number
    dataset.Rows = dataset.Columns = 512
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -1024
    dataset.WindowCenter = 40
    dataset.WindowWidth = 400
    dataset.PixelData = os.urandom(512 * 512 * 2)
    dataset["PixelData"].VR = "OW"
    for keyword, value in extra.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_of(count: int, study: str | None = None) -> tuple[str, list[bytes]]:
    study = study or generate_uid()
    series = generate_uid()
    return study, [ct_slice(study, series, n) for n in range(1, count + 1)]


def multipart(parts: Sequence[bytes], *, part_type: str = "application/dicom") -> bytes:
    body = bytearray()
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return bytes(body + f"--{BOUNDARY}--\r\n".encode())


def sop_uid_of(part10: bytes) -> str:
    return str(dcmread(io.BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


# --- Fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest(stack: Stack) -> Iterator[str]:
    """The ingest service as a real process, with a small part limit to exercise it."""
    previous = os.environ.get("EMAGE_INGEST_STOW_MAX_PART_BYTES")
    os.environ["EMAGE_INGEST_STOW_MAX_PART_BYTES"] = str(MAX_PART_BYTES)
    try:
        if "ingest" in stack.services:
            stack.stop_service("ingest")
        stack.start_services(("ingest",))
    finally:
        if previous is None:
            del os.environ["EMAGE_INGEST_STOW_MAX_PART_BYTES"]
        else:
            os.environ["EMAGE_INGEST_STOW_MAX_PART_BYTES"] = previous
    yield stack.service_url("ingest")
    # Back to the ingest every other module shares, with the default limits.
    stack.stop_service("ingest")
    stack.start_services(("ingest",))


@pytest.fixture
async def http(ingest: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest, timeout=120) as client:
        yield client


@pytest.fixture
async def mongo(stack: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo.uri, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
async def s3(stack: Stack) -> AsyncIterator[Any]:
    async with create_s3_client(stack.s3_settings()) as client:
        yield client


@pytest.fixture
def archive(stack: Stack, s3: Any, mongo: AsyncMongoClient[dict[str, Any]]) -> InstanceArchive:
    keyring = KeyRing(KeyEncryptionKey("dev-only-kek", base64.b64decode(DEV_ONLY_ARCHIVE_KEK)))
    keys = StudyKeyStore(mongo["ingest"]["study_keys"], keyring)
    return InstanceArchive(s3, stack.s3_settings().s3_bucket, keys)


@pytest.fixture
def index(mongo: AsyncMongoClient[dict[str, Any]]) -> InstanceIndex:
    return InstanceIndex(mongo["ingest"])


async def stored_events(
    bootstrap: str, studies: set[str], *, expected: int, settle_s: float = 2.0, timeout_s: float = WAIT_S
) -> list[CloudEvent]:
    """The instance.stored events of ``studies`` on the topic: waits for ``expected``, then ``settle_s`` more
    (so that a duplicate publication would be seen too)."""
    consumer = AIOKafkaConsumer(
        INSTANCE_STORED_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=f"it-stow-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[CloudEvent] = []
    deadline = time.monotonic() + timeout_s
    settled_at: float | None = None
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = CloudEvent.from_bytes(record.value)
                    if event.data_as(InstanceStored).study_instance_uid in studies:
                        events.append(event)
            if len(events) >= expected and settled_at is None:
                settled_at = time.monotonic() + settle_s
            if settled_at is not None and time.monotonic() >= settled_at:
                break
    finally:
        await consumer.stop()
    return events


async def post(
    http: httpx.AsyncClient, body: bytes, path: str = "/studies", **headers: str
) -> httpx.Response:
    return await http.post(path, content=body, headers={"content-type": CONTENT_TYPE, **headers})


async def nothing_stored(study: str, s3: Any, stack: Stack, mongo: AsyncMongoClient[dict[str, Any]]) -> bool:
    listing = await s3.list_objects_v2(Bucket=stack.s3_settings().s3_bucket, Prefix=f"studies/{study}/")
    instances = await mongo["ingest"]["instances"].count_documents({"study_instance_uid": study})
    outbox = await mongo["ingest"]["outbox"].count_documents({"key": study})
    return listing.get("KeyCount", 0) == 0 and instances == 0 and outbox == 0


async def declared_length_post(http: httpx.AsyncClient, path: str, declared: int) -> tuple[int, str]:
    """Send only the head of a POST declaring a ``declared``-byte body (HTTP clients refuse to write such a
    request) and return the status and content type the server answers before any body byte."""
    url = http.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    headers = rest.split(b"\r\n\r\n", 1)[0].decode().lower()
    content_type = next(
        line.split(":", 1)[1].strip() for line in headers.splitlines() if line.startswith("content-type:")
    )
    return int(status_line.split()[1]), content_type


def failure_reasons(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


# --- Tests ----------------------------------------------------------------------------------------------


async def test_a_ct_series_is_archived_encrypted_indexed_and_announced_once(
    http: httpx.AsyncClient,
    stack: Stack,
    s3: Any,
    archive: InstanceArchive,
    index: InstanceIndex,
) -> None:
    study, slices = series_of(12)
    response = await post(http, multipart(slices), f"/studies/{study}")
    assert response.status_code == 200, response.text
    referenced = response.json()["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in referenced] == [sop_uid_of(s) for s in slices]
    assert response.json()["00081190"]["Value"][0].endswith(f"/studies/{study}")

    records = await index.list(study)
    assert [record.instance_number for record in records] == list(range(1, 13))
    by_uid = {record.sop_instance_uid: record for record in records}
    bucket = stack.s3_settings().s3_bucket
    for part10 in slices:
        record = by_uid[sop_uid_of(part10)]
        assert record.sha256 == hashlib.sha256(part10).hexdigest()
        sealed = await (await s3.get_object(Bucket=bucket, Key=record.object_key))["Body"].read()
        assert sealed[128:132] != b"DICM"
        assert part10[200:1200] not in sealed  # no plaintext run of the header survives
        plaintext = b"".join([chunk async for chunk in archive.stream(record)])
        assert hashlib.sha256(plaintext).hexdigest() == record.sha256
        (frame,) = record.frames
        assert await archive.read_range(record, frame.offset, frame.end) == part10[frame.offset : frame.end]

    events = await stored_events(stack.kafka.bootstrap_servers, {study}, expected=12)
    counts = Counter(event.data_as(InstanceStored).sop_instance_uid for event in events)
    assert counts == Counter({uid: 1 for uid in by_uid})
    stored = events[0].data_as(InstanceStored)
    assert stored.facility_finess == "750000001"
    assert stored.dicom_json["7FE00010"]["BulkDataURI"].endswith("/bulk/7FE00010")


async def test_a_duplicate_post_succeeds_without_a_second_event_and_a_conflict_is_refused(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    study, slices = series_of(2)
    assert (await post(http, multipart(slices))).status_code == 200
    again = await post(http, multipart(slices))
    assert again.status_code == 200
    assert len(again.json()["00081199"]["Value"]) == 2
    other_bytes = ct_slice(study, generate_uid(), 9, sop_instance_uid=sop_uid_of(slices[0]))
    conflict = await post(http, multipart([other_bytes]))
    assert conflict.status_code == 409
    assert failure_reasons(conflict) == [0x0111]
    events = await stored_events(stack.kafka.bootstrap_servers, {study}, expected=2, settle_s=3)
    assert len(events) == 2


@pytest.mark.parametrize(
    ("case", "expected_status", "expected_reasons"),
    [
        ("truncated multipart", 400, None),
        ("missing boundary", 400, None),
        ("non-DICOM part", 409, [0xC000]),
        ("invalid UID", 409, [0xA900]),
        ("study contradicting the path", 409, [0xA900]),
        ("unsupported SOP class", 409, [0x0122]),
        ("huge declared length", 413, None),
        ("oversized part", 413, None),
    ],
)
async def test_bad_input_gets_the_right_failure_and_stores_nothing(
    http: httpx.AsyncClient,
    stack: Stack,
    s3: Any,
    mongo: AsyncMongoClient[dict[str, Any]],
    case: str,
    expected_status: int,
    expected_reasons: list[int] | None,
) -> None:
    study = generate_uid()
    series = generate_uid()
    path = f"/studies/{study}"
    headers: dict[str, str] = {}
    if case == "truncated multipart":
        body = multipart([ct_slice(study, series, 1)])[:-200]
    elif case == "missing boundary":
        body = multipart([ct_slice(study, series, 1)])
        headers["content-type"] = 'multipart/related; type="application/dicom"'
    elif case == "non-DICOM part":
        body = multipart([b"%PDF-1.7 this is not a DICOM file" * 100])
    elif case == "invalid UID":
        body = multipart([ct_slice(study, "1.2.3.04", 1)])
    elif case == "study contradicting the path":
        body = multipart([ct_slice(study, series, 1)])
        path = f"/studies/{generate_uid()}"
    elif case == "unsupported SOP class":
        body = multipart([ct_slice(study, series, 1, SOPClassUID="1.2.840.10008.5.1.4.1.1.66")])
    elif case == "huge declared length":
        status, content_type = await declared_length_post(http, path, 2**62)
        assert (status, content_type) == (413, "application/problem+json")
        assert await nothing_stored(study, s3, stack, mongo)
        return
    else:
        body = multipart([ct_slice(study, series, 1, PixelData=os.urandom(MAX_PART_BYTES))])
    response = await http.post(path, content=body, headers={"content-type": CONTENT_TYPE, **headers})
    assert response.status_code == expected_status, response.text
    if expected_reasons is not None:
        assert failure_reasons(response) == expected_reasons
    else:
        assert response.headers["content-type"] == "application/problem+json"
    assert await nothing_stored(study, s3, stack, mongo)


async def test_with_kafka_down_instances_are_acknowledged_and_announced_once_it_is_back(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    study, slices = series_of(3)
    stack.kafka.stop()
    try:
        response = await post(http, multipart(slices))
        assert response.status_code == 200, response.text
    finally:
        await asyncio.to_thread(stack.kafka.start)
    events = await stored_events(stack.kafka.bootstrap_servers, {study}, expected=3, timeout_s=90)
    by_instance: dict[str, set[str]] = {}
    for event in events:
        by_instance.setdefault(event.data_as(InstanceStored).sop_instance_uid, set()).add(event.id)
    assert set(by_instance) == {sop_uid_of(part10) for part10 in slices}
    # Published at least once, and always as the same event, which consumers deduplicate.
    assert all(len(ids) == 1 for ids in by_instance.values())


@pytest.mark.parametrize("clients", [1, 4])
async def test_concurrent_clients_store_a_ct_series(http: httpx.AsyncClient, clients: int) -> None:
    """100 slices of 0.5 MB split over ``clients`` concurrent STOW-RS requests, encryption and events on, are
    all stored (their rate is measured by the benchmarks, not asserted here)."""
    study, slices = series_of(100)
    share = len(slices) // clients
    bodies = [multipart(slices[i * share : (i + 1) * share]) for i in range(clients)]
    responses = await asyncio.gather(*(post(http, body, f"/studies/{study}") for body in bodies))
    assert [response.status_code for response in responses] == [200] * clients
    stored = [item for response in responses for item in response.json()["00081199"]["Value"]]
    assert len(stored) == share * clients


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_memory_stays_flat_while_a_large_request_streams_through(
    http: httpx.AsyncClient, stack: Stack, index: InstanceIndex
) -> None:
    """A 200 MB request grows the service's RSS by far less than its size (generous bound: 100 MB)."""
    pid = stack.services["ingest"].pid
    assert pid is not None
    study, series = generate_uid(), generate_uid()
    count = 400
    slice_bytes = len(ct_slice(study, series, 1))

    async def body() -> AsyncIterator[bytes]:
        for number in range(1, count + 1):
            part10 = ct_slice(study, series, number)
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10 + b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    baseline = rss_bytes(pid)
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        response = await http.post(
            f"/studies/{study}", content=body(), headers={"content-type": CONTENT_TYPE}
        )
    finally:
        done.set()
        await sampler
    assert response.status_code == 200
    assert len(await index.list(study)) == count
    sent = count * slice_bytes
    print(f"STOW of {sent / 1e6:.0f} MB: ingest RSS {baseline / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB")
    assert peak - baseline < 100 * 1024 * 1024
