"""A small world of studies for the gateway's integration tests, and the dev users' tokens.

Three studies are published straight into ingest, as a hospital's system would for its facility:

* ``A1`` at CHU Alpha for ``patient-1``, ordered by ``referrer-a``, acquired by ``technician-a``;
* ``A2`` at CHU Alpha for another patient, ordered by someone else;
* ``B1`` at Clinique Beta for ``patient-2``.

The care relationships are where DICOM puts them: the Referring Physician and Operator Identification
Sequences, with the RPPS number as a Person Identification Code.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaConsumer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from emage_common.access_contract import FACILITY_HEADER, STUDY_ACCESS_ATTRIBUTES_PATH
from emage_common.events import ACCESS_DECIDED_TOPIC, AccessDecided, CloudEvent
from emage_devstack.dev_users import password_grant
from emage_devstack.stack import Stack

FACILITY_A = "750000001"
FACILITY_B = "690000002"
RPPS = {
    "radiologist-a": "10100000016",
    "referrer-a": "10100000024",
    "nurse-a": "10100000032",
    "technician-a": "10100000040",
    "radiologist-b": "10100000057",
}
CT = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "emage-gateway-it"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
WAIT_S = 60


# --- Data -----------------------------------------------------------------------------------------------


def _person_code(rpps: str, name: str) -> Dataset:
    code = Dataset()
    code.CodeValue = rpps
    code.CodingSchemeDesignator = "RPPS"
    code.CodeMeaning = name
    person = Dataset()
    person.PersonIdentificationCodeSequence = DicomSequence([code])
    return person


def ct_instance(
    study: str,
    series: str,
    *,
    patient_id: str,
    issuer: str,
    referring_rpps: str | None = None,
    operator_rpps: str | None = None,
    number: int = 1,
) -> bytes:
    """A small CT slice (64x64, 16-bit) with the care relationships in their DICOM sequences."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientName = "TEST^GATEWAY"
    ds.PatientBirthDate = "19850412"
    ds.StudyDate = "20261101"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{number:04d}"
    ds.InstanceNumber = number
    if referring_rpps is not None:
        ds.ReferringPhysicianName = "DOCTEUR^REFERENT"
        ds.ReferringPhysicianIdentificationSequence = DicomSequence(
            [_person_code(referring_rpps, "referent")]
        )
    if operator_rpps is not None:
        ds.OperatorsName = "MANIP^RADIO"
        ds.OperatorIdentificationSequence = DicomSequence([_person_code(operator_rpps, "manipulateur")])
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = bytes(range(256)) * 32
    ds["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(*parts: bytes) -> bytes:
    body = bytearray()
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return bytes(body + f"--{BOUNDARY}--\r\n".encode())


@dataclass(frozen=True)
class Study:
    uid: str
    series: str
    instance: str
    facility: str
    patient_id: str
    issuer: str


@dataclass(frozen=True)
class World:
    gateway: str
    a1: Study
    a2: Study
    b1: Study

    @property
    def studies(self) -> dict[str, Study]:
        return {"A1": self.a1, "A2": self.a2, "B1": self.b1}


def publish_study(services: Stack, facility: str, patient_id: str, issuer: str, **care: str | None) -> Study:
    study, series = generate_uid(), generate_uid()
    part10 = ct_instance(study, series, patient_id=patient_id, issuer=issuer, **care)  # type: ignore[arg-type]
    response = httpx.post(
        f"{services.service_url('ingest')}/studies",
        content=multipart(part10),
        headers={"Content-Type": STOW_TYPE, FACILITY_HEADER: facility, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    stored = response.json()["00081199"]["Value"][0]
    instance = stored["00081155"]["Value"][0]
    return Study(study, series, instance, facility, patient_id, issuer)


def await_catalogued(services: Stack, *studies: Study) -> None:
    catalog = services.service_url("catalog")
    deadline = time.monotonic() + WAIT_S
    for study in studies:
        path = STUDY_ACCESS_ATTRIBUTES_PATH.format(study=study.uid)
        while httpx.get(catalog + path, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"study {study.uid} never catalogued"
            time.sleep(0.2)


def publish_world(services: Stack) -> World:
    a1 = publish_study(
        services,
        FACILITY_A,
        "IPP-A-000001",
        FACILITY_A,
        referring_rpps=RPPS["referrer-a"],
        operator_rpps=RPPS["technician-a"],
    )
    a2 = publish_study(
        services, FACILITY_A, f"IPP-A-{uuid.uuid4().hex[:6]}", FACILITY_A, referring_rpps="10100000099"
    )
    b1 = publish_study(services, FACILITY_B, "IPP-B-000002", FACILITY_B)
    await_catalogued(services, a1, a2, b1)
    return World(services.service_url("access"), a1, a2, b1)


class Tokens:
    """Access tokens of the dev users, fetched from Keycloak once and renewed before they expire."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer
        self._tokens: dict[str, tuple[str, float]] = {}

    def __call__(self, username: str) -> str:
        token, expires = self._tokens.get(username, ("", 0.0))
        if time.monotonic() > expires - 30:
            granted = password_grant(self._issuer, username)
            token = granted["access_token"]
            self._tokens[username] = (token, time.monotonic() + float(granted["expires_in"]))
        return token


def get(http: httpx.Client, token: str, path: str, accept: str = "*/*") -> httpx.Response:
    """``GET path`` with the bearer ``token``."""
    return http.get(path, headers={"Authorization": f"Bearer {token}", "Accept": accept})


def decisions_for(bootstrap: str, request_ids: set[str]) -> dict[str, list[AccessDecided]]:
    """Every ``access.decided`` event of the given requests, read from the topic's beginning to its end.

    Waits until each request has at least one event (or a minute passed), then reads on to the end offsets
    so that a duplicate published meanwhile would be counted too.
    """
    return asyncio.run(_decisions_for(bootstrap, request_ids))


async def _decisions_for(bootstrap: str, request_ids: set[str]) -> dict[str, list[AccessDecided]]:
    consumer = AIOKafkaConsumer(
        ACCESS_DECIDED_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        for _ in range(300):
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        found: dict[str, list[AccessDecided]] = {}
        deadline = time.monotonic() + WAIT_S
        end = await consumer.end_offsets(partitions)
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    decided = CloudEvent.from_bytes(record.value).data_as(AccessDecided)
                    if decided.request_id in request_ids:
                        found.setdefault(decided.request_id, []).append(decided)
            caught_up = all([await consumer.position(tp) >= end[tp] for tp in partitions])
            if caught_up and set(found) >= request_ids:
                break
            if caught_up:
                end = await consumer.end_offsets(partitions)
        return found
    finally:
        await consumer.stop()
