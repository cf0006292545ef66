"""Freshness: how soon a write is seen by the readers it concerns.

* STOW acknowledged → visible in QIDO: a one-instance study stored by STOW-RS; from the moment its answer is
  received, ``GET /studies?StudyInstanceUID=…`` is repeated every :data:`POLL_S` until it matches. e-mage:
  stored through the gateway as technician-a and searched as radiologist-a (the instance travels ingest →
  ``instance.stored`` → catalog consumer → catalog; the search is scoped); Orthanc: the same requests on its
  plugin (it indexes an instance before answering the STOW, so its figure is one search's latency).
* Consent revoked → access denied (e-mage only: Orthanc has no consent). patient-1 grants radiologist-b
  (Clinique Beta, no other basis) a consent on one of patient-1's CHU Alpha studies with
  ``POST /api/v1/consents``; once radiologist-b reads the study's metadata (200), patient-1 revokes with
  ``POST /api/v1/consents/{id}/revoke``; from the revocation's answer, radiologist-b's
  ``GET /dicomweb/studies/{study}/metadata`` is repeated every :data:`POLL_S` until it answers 404 (consent
  service → ``consent.changed`` → the gateway's consent view). The grant → allowed delay is recorded too.

A delay runs to the answer of the first poll that saw the change: it overstates the true delay by at most
one poll's round trip plus :data:`POLL_S`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import httpx
from pydicom import dcmread

from bench.data import CATALOG_FACILITY, multipart, small_ct
from bench.dicomweb import DICOM_JSON, BenchRequestError, client, query_url, stow
from bench.environment import Endpoint, interleaved, log
from bench.results import EMAGE, Better
from bench.run import Run

SCENARIO = "freshness"
UPLOADER = "technician-a"
READER = "radiologist-a"
PATIENT = "patient-1"
PATIENT_ID = "IPP-A-000001"
PATIENT_KEY = f"pid:{CATALOG_FACILITY}:{PATIENT_ID}"
COLLEAGUE = "radiologist-b"
COLLEAGUE_RPPS = "10100000057"
POLL_S = 0.005
TIMEOUT_S = 30.0
VISIBLE = "STOW acknowledged → visible in QIDO"
GRANTED = "consent granted → access allowed"
REVOKED = "consent revoked → access denied"


def run(context: Run) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    with client(60) as http:
        for repetition in range(scale.repetitions):
            systems.tokens.warm([UPLOADER, READER])
            for sample in range(scale.freshness_per_repetition):
                for system in interleaved(repetition + sample):
                    uploader, reader = systems.endpoint(system, UPLOADER), systems.endpoint(system, READER)
                    delay = stow_to_qido(http, uploader, reader)
                    results.record(
                        SCENARIO, VISIBLE, "delay", "ms", system, delay * 1000, better=Better.LOWER
                    )
            log(f"freshness: STOW → QIDO, repetition {repetition + 1}/{scale.repetitions}")
        study = _patient_study(http, context)
        for repetition in range(scale.repetitions):
            systems.tokens.warm([PATIENT, COLLEAGUE])
            for _ in range(scale.consent_per_repetition):
                granted, revoked = consent_round(http, context, study)
                results.record(SCENARIO, GRANTED, "delay", "ms", EMAGE, granted * 1000, better=Better.LOWER)
                results.record(SCENARIO, REVOKED, "delay", "ms", EMAGE, revoked * 1000, better=Better.LOWER)
            log(f"freshness: consent, repetition {repetition + 1}/{scale.repetitions}")
    results.note(
        SCENARIO,
        f"Polling every {POLL_S * 1000:.0f} ms. Orthanc has no consent: the consent rows are e-mage's only.",
    )


def stow_to_qido(http: httpx.Client, uploader: Endpoint, reader: Endpoint) -> float:
    """Seconds from a one-instance STOW-RS acknowledgement to the study's first QIDO-RS match."""
    part10 = small_ct(f"IPP-A-F{time.time_ns() % 10**9:09d}", CATALOG_FACILITY)
    study = str(dcmread(io.BytesIO(part10), stop_before_pixels=True).StudyInstanceUID)
    stow(http, uploader, multipart([part10]), 1)
    acknowledged = time.perf_counter()
    return until(lambda: _found(http, reader, study), acknowledged)


def _found(http: httpx.Client, reader: Endpoint, study: str) -> bool:
    url = query_url(reader.root, "studies", {"StudyInstanceUID": study})
    response = http.get(url, headers=reader.headers(Accept=DICOM_JSON))
    return response.status_code == 200 and bool(response.content) and len(response.json()) == 1


def until(condition: Callable[[], bool], since: float) -> float:
    """Seconds from ``since`` to the answer of the first ``condition()`` that holds, polling every POLL_S."""
    while True:
        holds = condition()
        now = time.perf_counter()
        if holds:
            return now - since
        if now - since > TIMEOUT_S:
            raise BenchRequestError(f"not seen after {TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)


def _patient_study(http: httpx.Client, context: Run) -> str:
    """A CHU Alpha study of patient-1 (no INS: its patient key is the CHU's patient ID), catalogued."""
    systems = context.systems
    part10 = small_ct(PATIENT_ID, CATALOG_FACILITY)
    study = str(dcmread(io.BytesIO(part10), stop_before_pixels=True).StudyInstanceUID)
    systems.tokens.warm([UPLOADER, READER, COLLEAGUE])
    stow(http, systems.emage(UPLOADER), multipart([part10]), 1)
    until(lambda: _found(http, systems.emage(READER), study), time.perf_counter())
    if _metadata_status(http, systems.emage(COLLEAGUE), study) != 404:
        raise BenchRequestError("radiologist-b reaches patient-1's study without any consent")
    return study


def _metadata_status(http: httpx.Client, reader: Endpoint, study: str) -> int:
    response = http.get(f"{reader.root}/studies/{study}/metadata", headers=reader.headers(Accept=DICOM_JSON))
    return response.status_code


def consent_round(http: httpx.Client, context: Run, study: str) -> tuple[float, float]:
    """(grant → allowed, revoke → denied) seconds for radiologist-b on ``study``."""
    systems = context.systems
    patient = {"Authorization": f"Bearer {systems.tokens(PATIENT)}"}
    colleague = systems.emage(COLLEAGUE)
    granted = http.post(
        f"{systems.gateway}/api/v1/consents",
        json={
            "patient_key": PATIENT_KEY,
            "grantee": {"kind": "professional", "rpps": COLLEAGUE_RPPS},
            "study_instance_uid": study,
        },
        headers=patient,
    )
    if granted.status_code != 201:
        raise BenchRequestError(f"consent grant answered {granted.status_code}: {granted.text[:300]}")
    allowed = until(lambda: _metadata_status(http, colleague, study) == 200, time.perf_counter())
    consent_id = granted.json()["consent_id"]
    revoked = http.post(f"{systems.gateway}/api/v1/consents/{consent_id}/revoke", json={}, headers=patient)
    if revoked.status_code != 200:
        raise BenchRequestError(f"consent revocation answered {revoked.status_code}: {revoked.text[:300]}")
    denied = until(lambda: _metadata_status(http, colleague, study) == 404, time.perf_counter())
    return allowed, denied
