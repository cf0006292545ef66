"""WADO-RS retrieval of a CT series each system holds (stored by the STOW-RS scenario, else here).

* Whole study: ``GET /studies/{study}`` as ``multipart/related; type="application/dicom"; transfer-syntax=*``,
  read to the end: MB/s, and time to the first byte. Compare with the S3 store's own GET rate (reference).
* Time to first frame: ``GET …/instances/{sop}/frames/1`` (``application/octet-stream``, as a viewer asks
  for pixels) of a random slice, the whole answer read.
* Rendered: ``GET …/instances/{sop}/rendered`` as ``image/jpeg`` of a random slice (server-side windowing and
  JPEG encoding of the 512x512x16-bit slice).

e-mage through the gateway as radiologist-a (CHU Alpha, the owning facility: a care basis; a whole-study
download is a ``download`` decision); Orthanc through its DICOMweb plugin.
"""

from __future__ import annotations

import random
import time

import httpx

from bench.data import UploadedSeries, multipart
from bench.dicomweb import FRAME_ACCEPT, WHOLE_STUDY_ACCEPT, BenchRequestError, client, retrieve, search, stow
from bench.environment import Endpoint, interleaved, log
from bench.results import EMAGE, ORTHANC, Better
from bench.run import Run

SCENARIO = "wado"
USER = "radiologist-a"
UPLOADER = "technician-a"
INGEST_DIRECT = "e-mage ingest, no gateway (diagnostic)"


def run(context: Run) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    rng = random.Random("wado")  # noqa: S311 - which slices to ask for
    with client(600) as http:
        for system in (EMAGE, ORTHANC):
            if system not in context.stored_ct:
                series = context.series().fresh()
                systems.tokens.warm([UPLOADER])
                body = multipart(series.instances)
                stow(http, systems.endpoint(system, UPLOADER), body, len(series.instances))
                context.stored_ct[system] = series
        _wait_listed(context)
        direct = Endpoint(INGEST_DIRECT, systems.stack.service_url("ingest"))
        stored = {**context.stored_ct, INGEST_DIRECT: context.stored_ct[EMAGE]}

        def endpoint(system: str) -> Endpoint:
            return direct if system == INGEST_DIRECT else systems.endpoint(system, USER)

        def record(case: str, system: str, seconds: float) -> None:
            results.record(SCENARIO, case, "latency", "ms", system, seconds * 1000, better=Better.LOWER)

        for repetition in range(scale.repetitions):
            systems.tokens.warm([USER])
            for system in (*interleaved(repetition), INGEST_DIRECT):
                series = stored[system]
                seconds, size, first = _timed(
                    http, endpoint(system), f"studies/{series.study_instance_uid}", WHOLE_STUDY_ACCEPT
                )
                if size < series.size_bytes:
                    raise BenchRequestError(
                        f"{system} returned {size} of the study's {series.size_bytes} bytes"
                    )
                results.record(SCENARIO, "whole study", "MB/s", "MB/s", system, size / seconds / 1e6)
                record("whole study: first byte", system, first)
            for case, leaf, accept, samples in (
                ("first frame of a slice", "frames/1", FRAME_ACCEPT, scale.frames_per_repetition),
                ("rendered JPEG of a slice", "rendered", "image/jpeg", scale.rendered_per_repetition),
            ):
                for sample in range(samples):
                    for system in (*interleaved(repetition + sample), INGEST_DIRECT):
                        series = stored[system]
                        path = f"{_instance_path(series, rng.choice(series.sop_instance_uids))}/{leaf}"
                        seconds, _, _ = _timed(http, endpoint(system), path, accept)
                        record(case, system, seconds)
            log(f"wado: repetition {repetition + 1}/{scale.repetitions}")
    for system in (EMAGE, ORTHANC):
        series = context.stored_ct[system]
        results.fact(
            SCENARIO,
            f"study retrieved from {system}",
            f"{len(series.sop_instance_uids)} instances, {series.size_bytes / 1e6:.1f} MB as stored",
        )
    results.note(
        SCENARIO,
        "The diagnostic row asks ingest's internal port for e-mage's study (no gateway, no token): the "
        "difference to e-mage's row is the gateway's share (token, policy, audit event, proxying).",
    )


def _instance_path(series: UploadedSeries, sop: str) -> str:
    return f"studies/{series.study_instance_uid}/series/{series.series_instance_uid}/instances/{sop}"


def _timed(http: httpx.Client, endpoint: Endpoint, path: str, accept: str) -> tuple[float, int, float]:
    """(seconds to the last byte, bytes, seconds to the first body byte) of ``GET path``."""
    started = time.perf_counter()
    size, first = retrieve(http, endpoint, path, accept)
    return time.perf_counter() - started, size, first if first is not None else 0.0


def _wait_listed(context: Run) -> None:
    """The e-mage study must be catalogued before its retrieval is decided (the policy reads the catalog)."""
    series = context.stored_ct[EMAGE]
    endpoint = context.systems.emage(USER)
    deadline = time.monotonic() + 120
    with client(30) as http:
        while time.monotonic() < deadline:
            try:
                matches, _ = search(
                    http, endpoint, "studies", {"StudyInstanceUID": series.study_instance_uid}
                )
            except BenchRequestError:
                matches = []
            if matches:
                return
            time.sleep(0.5)
    raise BenchRequestError("the e-mage CT study never became searchable")
