"""DIMSE C-STORE of the CT series with dcmtk's ``storescu``: one association, every slice, instances/s.

Each upload writes the series under new UIDs to a scratch folder first (untimed); the clock runs from
``storescu`` start to its exit. e-mage: ingest's storage SCP, calling AE title ``CHUA_MODALITY`` (mapped to
CHU Alpha), each C-STORE answered once the instance is encrypted in S3 and announced. Orthanc: its DICOM
port, stored as received. ``storescu`` exits non-zero when a store fails; afterwards the run also checks
that each system lists every instance of the series (QIDO-RS), outside the timing.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx

from bench.dicomweb import BenchRequestError, client, search
from bench.environment import MODALITY_AE_TITLE, interleaved, log
from bench.results import EMAGE
from bench.run import Run

SCENARIO = "dimse"
CHECK_USER = "radiologist-a"


def run(context: Run) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    factory = context.series()
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed: apt-get install -y dcmtk")
    size = 0
    for repetition in range(scale.repetitions):
        for system in interleaved(repetition):
            folder = context.scratch(f"dimse-{repetition}-{system}")
            series, files = factory.fresh_files(folder, factory.slices)
            size = sum(path.stat().st_size for path in files)
            called, port = systems.dimse_target(system)
            argv = [
                storescu,
                "-aet",
                MODALITY_AE_TITLE,
                "-aec",
                called,
                "127.0.0.1",
                str(port),
                "+sd",
                str(folder),
            ]
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
            elapsed = time.perf_counter() - started
            shutil.rmtree(folder, ignore_errors=True)
            if done.returncode != 0:
                raise BenchRequestError(
                    f"storescu to {system} failed ({done.returncode}): {done.stderr[-500:]}"
                )
            results.record(
                SCENARIO,
                "storescu, 1 association",
                "instances/s",
                "instances/s",
                system,
                len(files) / elapsed,
            )
            results.record(SCENARIO, "storescu, 1 association", "MB/s", "MB/s", system, size / elapsed / 1e6)
            _check_listed(context, system, series.study_instance_uid, len(files))
        log(f"dimse: repetition {repetition + 1}/{scale.repetitions}")
    results.note(
        SCENARIO,
        f"{factory.slices} slices ({size / 1e6:.1f} MB) a run, default storescu options (its PDU size, "
        "the files' explicit VR little endian proposed).",
    )


def _check_listed(context: Run, system: str, study: str, expected: int) -> None:
    """Every instance sent is listed by the system (e-mage: once its catalog has filed them)."""
    endpoint = context.systems.endpoint(system, CHECK_USER)
    deadline = time.monotonic() + 120
    with client(60) as http:
        while True:
            try:
                matches, _ = search(http, endpoint, f"studies/{study}/instances", {"limit": "1000"})
            except (BenchRequestError, httpx.HTTPError):
                matches = []
            if len(matches) >= expected:
                return
            if time.monotonic() > deadline or system != EMAGE:
                raise BenchRequestError(
                    f"{system} lists {len(matches)} of the {expected} instances stored by DIMSE"
                )
            time.sleep(0.5)
