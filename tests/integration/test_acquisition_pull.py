"""Acquisition events pull studies from a real hospital PACS: Orthanc from Debian, with its DICOMweb plugin.

Orthanc runs with its own configuration on loopback ports (``emage_devstack.orthanc``), HTTP Basic
authentication on, e-mage's AE as its only query/retrieve peer. Ingest is restarted with Orthanc configured
as the CHU's source (``EMAGE_INGEST_PULL_SOURCES``) and a short retry budget; the shared ingest is restored
at the end. Every scenario publishes real CloudEvents on the profile's Kafka and checks, through ingest's
own WADO-RS, its index, ``instance.stored`` and the catalog's access attributes, what e-mage holds.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid
from pymongo.collection import Collection

from emage_common.events import (
    ACQUISITION_TOPIC,
    INSTANCE_STORED_TOPIC,
    Acquisition,
    CloudEvent,
    InstanceStored,
    dlq_topic,
    make_event,
)
from emage_common.kafka import EventPublisher, KafkaClientConfig
from emage_devstack.orthanc import AE_TITLE, OrthancServer
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

CHU = "750000001"
REFERRER, TECHNICIAN = "10100000024", "10100000040"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE, IMPLICIT_VR_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
WAIT_S = 90

if not OrthancServer.installed():
    pytest.skip(
        "Orthanc is not installed (apt-get install -y orthanc orthanc-dicomweb)", allow_module_level=True
    )


# --- Studies --------------------------------------------------------------------------------------------


def ct_slice(study: str, series: str, number: int, *, patient: str, accession: str, syntax: str) -> bytes:
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CT_IMAGE_STORAGE, sop
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.Modality, dataset.InstanceNumber = "CT", number
    dataset.PatientID, dataset.PatientName = patient, "MARTIN^LUCIE"
    dataset.AccessionNumber, dataset.StudyDate = accession, "20260302"
    dataset.Rows = dataset.Columns = 128
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = os.urandom(128 * 128 * 2)
    dataset["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    dataset.save_as(
        buffer, enforce_file_format=True, implicit_vr=syntax == IMPLICIT_VR_LE, little_endian=True
    )
    return buffer.getvalue()


def new_study(count: int, *, syntaxes: tuple[str, ...] = (EXPLICIT_VR_LE,)) -> tuple[str, str, list[bytes]]:
    """A CT study of ``count`` slices in one series (transfer syntaxes in turn); its accession number."""
    study, series = generate_uid(), generate_uid()
    accession = f"ACC-{uuid.uuid4().hex[:10]}"
    slices = [
        ct_slice(
            study, series, n, patient="IPP-PULL", accession=accession, syntax=syntaxes[n % len(syntaxes)]
        )
        for n in range(count)
    ]
    return study, accession, slices


def sop_uid(part10: bytes) -> str:
    return str(dcmread(io.BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def data_set(part10: bytes) -> bytes:
    """The data set of a Part 10 file, after its File Meta Information (PS3.10 §7.1): what DIMSE carries."""
    assert part10[128:132] == b"DICM"
    assert part10[132:136] == b"\x02\x00\x00\x00"
    assert part10[136:138] == b"UL"
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


def acquisition_event(study: str | None, accession: str, source: dict[str, Any]) -> CloudEvent:
    data = Acquisition.model_validate(
        {
            "facility_finess": CHU,
            "accession_number": accession,
            "patient": {"patient_id": "IPP-PULL", "issuer_of_patient_id": CHU},
            "referring_physician_rpps": REFERRER,
            "performing_technician_rpps": TECHNICIAN,
            "performing_technician": "Camille Martin",
            "study_instance_uid": study,
            "source": source,
        }
    )
    return make_event(data, "/chu-alpha/ris")


# --- Fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(stack: Stack) -> Iterator[OrthancServer]:
    pacs = OrthancServer(stack.profile, stack.ports, peers={"EMAGE": ("127.0.0.1", stack.ports.dimse)})
    pacs.start(wipe=True)
    try:
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture(scope="module")
def pulling(services: Stack, orthanc: OrthancServer) -> Iterator[Stack]:
    """The ingest service restarted with Orthanc as the CHU's pull source (and a short retry budget)."""
    sources = {
        CHU: {
            "dicomweb": [
                {"base_url": orthanc.dicomweb_url, "username": orthanc.auth[0], "password": orthanc.auth[1]}
            ],
            "dimse": [
                {
                    "ae_title": AE_TITLE,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "retrieve": ["c-get", "c-move"],
                }
            ],
        }
    }
    settings = {
        "EMAGE_INGEST_PULL_SOURCES": json.dumps(sources),
        "EMAGE_INGEST_PULL_MAX_ATTEMPTS": "40",
        "EMAGE_INGEST_PULL_INITIAL_BACKOFF_SECONDS": "0.5",
        "EMAGE_INGEST_PULL_MAX_BACKOFF_SECONDS": "1",
        "EMAGE_INGEST_PULL_ATTEMPT_TIMEOUT_SECONDS": "60",
        "EMAGE_INGEST_PULL_REQUEST_TIMEOUT_SECONDS": "5",
    }
    shared_env = services.service_env

    def with_pull_sources() -> dict[str, str]:
        env = shared_env()
        # C-MOVE: Orthanc's C-STOREs reach the SCP under its own AE title, which must be the CHU's.
        facilities = json.loads(env["EMAGE_INGEST_AE_TITLE_FACILITIES"]) | {AE_TITLE: CHU}
        return env | settings | {"EMAGE_INGEST_AE_TITLE_FACILITIES": json.dumps(facilities)}

    services.stop_service("ingest")
    services.service_env = with_pull_sources  # type: ignore[method-assign]
    try:
        services.start_services(("ingest",))
        yield services
    finally:
        services.service_env = shared_env  # type: ignore[method-assign]
        services.stop_service("ingest")
        services.start_services(("ingest",))


@pytest.fixture(scope="module")
def pacs_http(orthanc: OrthancServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=orthanc.url, auth=orthanc.auth, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ingest_http(pulling: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pulling.service_url("ingest"), timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def catalog_http(pulling: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pulling.service_url("catalog"), timeout=30) as client:
        yield client


def stow_to_pacs(pacs_http: httpx.Client, slices: list[bytes]) -> None:
    """STOW-RS into Orthanc's DICOMweb plugin (PS3.18 §10.5)."""
    boundary = f"pacs-{uuid.uuid4().hex}"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in slices
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = pacs_http.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "accept": "application/dicom+json",
        },
    )
    assert response.status_code == 200, response.text


def held_by_pacs(pacs_http: httpx.Client, sop_instance_uid: str) -> bytes:
    """The file Orthanc holds for an instance (``/instances/{id}/file``)."""
    found = pacs_http.post("/tools/lookup", content=sop_instance_uid).json()
    (instance,) = [item for item in found if item["Type"] == "Instance"]
    response = pacs_http.get(f"/instances/{instance['ID']}/file")
    assert response.status_code == 200
    return response.content


def retrieved_from_ingest(ingest_http: httpx.Client, study: str, part10: bytes) -> bytes:
    """One instance as e-mage serves it: ingest's WADO-RS Retrieve Instance (PS3.18 §10.4.1)."""
    dataset = dcmread(io.BytesIO(part10), stop_before_pixels=True)
    response = ingest_http.get(
        f"/studies/{study}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}",
        headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200, response.text
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    inner = response.content[len(boundary) + 4 : -(len(boundary) + 8)]
    _, content = inner.split(b"\r\n\r\n", 1)
    return content


def publish(stack: Stack, *events: CloudEvent | tuple[bytes, bytes]) -> None:
    async def send() -> None:
        config = KafkaClientConfig(
            bootstrap_servers=stack.kafka.bootstrap_servers,
            client_id="it-acquisition",
            security_protocol="PLAINTEXT",
        )
        async with EventPublisher(config) as publisher:
            for event in events:
                if isinstance(event, CloudEvent):
                    await publisher.publish(ACQUISITION_TOPIC, event)
                else:
                    key, value = event
                    await publisher.publish_record(ACQUISITION_TOPIC, value, key=key, headers=[])

    asyncio.run(send())


def wait_until_archived(
    index: Collection[dict[str, Any]], study: str, count: int, timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if index.count_documents({"study_instance_uid": study}) >= count:
            return
        time.sleep(0.25)
    raise AssertionError(
        f"study {study}: {index.count_documents({'study_instance_uid': study})}/{count} archived"
    )


def access_attributes(catalog_http: httpx.Client, study: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The catalog's access attributes of a study once they carry the event's care relationships."""
    deadline = time.monotonic() + timeout_s
    attributes: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = catalog_http.get(f"/internal/v1/studies/{study}/access-attributes")
        if response.status_code == 200:
            attributes = response.json()
            if attributes.get("referring_physician_rpps") == REFERRER and TECHNICIAN in attributes.get(
                "performing_technician_rpps", []
            ):
                return attributes
        time.sleep(0.25)
    raise AssertionError(f"study {study}: access attributes {attributes}")


def records(stack: Stack, topic: str, *, expected: int, match: Any, settle_s: float = 3.0) -> list[Any]:
    """The records of ``topic`` ``match`` accepts: waits for ``expected``, then ``settle_s`` more."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=stack.kafka.bootstrap_servers,
            group_id=f"it-acquisition-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        found: list[Any] = []
        deadline, settled_at = time.monotonic() + WAIT_S, None
        try:
            while time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(record for record in batch if match(record))
                if len(found) >= expected and settled_at is None:
                    settled_at = time.monotonic() + settle_s
                if settled_at is not None and time.monotonic() >= settled_at:
                    break
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def stored_per_sop(stack: Stack, study: str, expected: int) -> Counter[str]:
    def of_study(record: Any) -> bool:
        return CloudEvent.from_bytes(record.value).data_as(InstanceStored).study_instance_uid == study

    found = records(stack, INSTANCE_STORED_TOPIC, expected=expected, match=of_study)
    return Counter(
        CloudEvent.from_bytes(record.value).data_as(InstanceStored).sop_instance_uid for record in found
    )


# --- Scenarios ------------------------------------------------------------------------------------------


def test_an_announced_study_is_pulled_by_wado_rs_byte_identical(
    pulling: Stack,
    orthanc: OrthancServer,
    pacs_http: httpx.Client,
    ingest_http: httpx.Client,
    catalog_http: httpx.Client,
    instances_index: Collection[dict[str, Any]],
) -> None:
    study, accession, slices = new_study(4, syntaxes=(EXPLICIT_VR_LE, IMPLICIT_VR_LE))
    stow_to_pacs(pacs_http, slices)
    publish(
        pulling, acquisition_event(study, accession, {"kind": "dicomweb", "base_url": orthanc.dicomweb_url})
    )

    wait_until_archived(instances_index, study, len(slices))
    for part10 in slices:
        assert retrieved_from_ingest(ingest_http, study, part10) == held_by_pacs(pacs_http, sop_uid(part10))
    assert {
        document["facility_finess"] for document in instances_index.find({"study_instance_uid": study})
    } == {CHU}
    attributes = access_attributes(catalog_http, study)
    assert attributes["facility_finess"] == CHU
    assert attributes["performing_technician_rpps"] == [TECHNICIAN]
    assert stored_per_sop(pulling, study, len(slices)) == Counter({sop_uid(part10): 1 for part10 in slices})


def test_an_announced_study_is_pulled_by_c_get_with_its_transfer_syntaxes(
    pulling: Stack,
    pacs_http: httpx.Client,
    ingest_http: httpx.Client,
    catalog_http: httpx.Client,
    instances_index: Collection[dict[str, Any]],
) -> None:
    """Found at the PACS by accession number and Patient ID (C-FIND), retrieved by C-GET: each data set is
    the one Orthanc holds, in its own transfer syntax; the File Meta Information, which DIMSE does not carry
    (PS3.10 §7.1), is the receiver's."""
    study, accession, slices = new_study(3, syntaxes=(EXPLICIT_VR_LE, IMPLICIT_VR_LE))
    stow_to_pacs(pacs_http, slices)
    source = {"kind": "dimse", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": pulling_port(pacs_http)}
    publish(pulling, acquisition_event(None, accession, source | {"retrieve": "c-get"}))

    wait_until_archived(instances_index, study, len(slices))
    for part10 in slices:
        archived = retrieved_from_ingest(ingest_http, study, part10)
        assert data_set(archived) == data_set(held_by_pacs(pacs_http, sop_uid(part10)))
        syntax = dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert dcmread(io.BytesIO(archived), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    access_attributes(catalog_http, study)
    assert stored_per_sop(pulling, study, len(slices)) == Counter({sop_uid(part10): 1 for part10 in slices})


def test_an_announced_study_is_pulled_by_c_move_through_the_storage_scp(
    pulling: Stack,
    pacs_http: httpx.Client,
    ingest_http: httpx.Client,
    catalog_http: httpx.Client,
    instances_index: Collection[dict[str, Any]],
) -> None:
    study, accession, slices = new_study(2)
    stow_to_pacs(pacs_http, slices)
    source = {"kind": "dimse", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": pulling_port(pacs_http)}
    publish(pulling, acquisition_event(study, accession, source | {"retrieve": "c-move"}))

    wait_until_archived(instances_index, study, len(slices))
    for part10 in slices:
        assert data_set(retrieved_from_ingest(ingest_http, study, part10)) == data_set(part10)
    assert {
        document["facility_finess"] for document in instances_index.find({"study_instance_uid": study})
    } == {CHU}
    access_attributes(catalog_http, study)


def test_a_source_down_during_the_pull_delivers_the_study_once_it_is_back(
    pulling: Stack,
    orthanc: OrthancServer,
    pacs_http: httpx.Client,
    ingest_http: httpx.Client,
    catalog_http: httpx.Client,
    instances_index: Collection[dict[str, Any]],
) -> None:
    study, accession, slices = new_study(5)
    stow_to_pacs(pacs_http, slices)
    orthanc.stop()
    try:
        publish(
            pulling,
            acquisition_event(study, accession, {"kind": "dicomweb", "base_url": orthanc.dicomweb_url}),
        )
        time.sleep(4)  # several attempts find the source unreachable
        assert instances_index.count_documents({"study_instance_uid": study}) == 0
    finally:
        orthanc.start()

    wait_until_archived(instances_index, study, len(slices))
    assert stored_per_sop(pulling, study, len(slices)) == Counter({sop_uid(part10): 1 for part10 in slices})
    for part10 in slices:
        assert retrieved_from_ingest(ingest_http, study, part10) == part10
    access_attributes(catalog_http, study)


def test_bad_events_are_dead_lettered_with_their_reason_and_the_next_one_flows(
    pulling: Stack,
    orthanc: OrthancServer,
    pacs_http: httpx.Client,
    instances_index: Collection[dict[str, Any]],
) -> None:
    marker = uuid.uuid4().hex
    announced = acquisition_event(
        None, f"BAD-{marker[:8]}", {"kind": "dicomweb", "base_url": orthanc.dicomweb_url}
    )
    assert isinstance(announced.data, dict)
    malformed = announced.model_copy(update={"data": announced.data | {"facility_finess": "not-a-finess"}})
    elsewhere = acquisition_event(
        None, f"ELS-{marker[:8]}", {"kind": "dicomweb", "base_url": "http://127.0.0.1:9/dicom-web"}
    )
    study, accession, slices = new_study(2)
    stow_to_pacs(pacs_http, slices)
    good = acquisition_event(study, accession, {"kind": "dicomweb", "base_url": orthanc.dicomweb_url})
    publish(pulling, malformed, (b"junk", f"not json {marker}".encode()), elsewhere, good)

    wait_until_archived(instances_index, study, len(slices))

    def letter_of(record: Any) -> str | None:
        """Which of the bad events a dead letter is (events are matched by id: the publisher adds its trace
        context to them), or None."""
        if dict(record.headers).get("emage-dlq-consumer-group") != b"ingest-pull":
            return None
        if marker.encode() in record.value:
            return "junk"
        try:
            event_id = json.loads(record.value).get("id")
        except ValueError:
            return None
        return {malformed.id: "malformed", elsewhere.id: "elsewhere"}.get(event_id)

    letters = records(pulling, dlq_topic(ACQUISITION_TOPIC), expected=3, match=letter_of, settle_s=1)
    by_event = {letter_of(record): dict(record.headers) for record in letters}
    assert set(by_event) == {"malformed", "elsewhere", "junk"}
    schema_violation = by_event["malformed"]
    assert schema_violation["emage-dlq-error-type"] == b"emage_common.events.InvalidEventDataError"
    assert b"facility_finess" in schema_violation["emage-dlq-error-message"]
    assert schema_violation["emage-dlq-attempts"] == b"1"
    not_configured = by_event["elsewhere"]
    assert not_configured["emage-dlq-error-type"] == b"emage_ingest.domain.sources.PullRejectedError"
    assert not_configured["emage-dlq-error-message"].startswith(b"source-not-configured: ")
    assert by_event["junk"]["emage-dlq-error-type"] == b"emage_common.events.InvalidEnvelopeError"
    assert not_configured["emage-dlq-original-topic"] == ACQUISITION_TOPIC.encode()


def pulling_port(pacs_http: httpx.Client) -> int:
    """Orthanc's DICOM port, as it reports it."""
    port: int = pacs_http.get("/system").json()["DicomPort"]
    return port
