"""STOW-RS of a CT series (512x512x16-bit slices, ~0.5 MB each) by 1 and 4 concurrent clients.

The series is cut into requests of ``stow_instances_per_request`` instances (multipart/related bodies built
before the clock starts); the clients take requests from one queue until it is empty. Time: first request
sent → last answer received; every instance must be acknowledged as stored (no FailedSOPSequence).

* e-mage: ``POST /dicomweb/studies`` on the gateway with technician-a's bearer token (the public path: token
  validated, policy decided, decision published to ``access.decided``, request streamed to ingest), where
  each instance is acknowledged once envelope-encrypted in S3 and announced on ``instance.stored`` (or in
  the outbox). Also, as a diagnostic, ingest's internal STOW-RS without the gateway (1 client).
* Orthanc: ``POST /dicom-web/studies`` on its DICOMweb plugin (HTTP Basic), stored as received on disk.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor

from bench.data import CATALOG_FACILITY, UploadedSeries, multipart
from bench.dicomweb import client, stow
from bench.environment import Endpoint, interleaved, log
from bench.run import Run
from emage_common.access_contract import FACILITY_HEADER

SCENARIO = "stow"
USER = "technician-a"
INGEST_DIRECT = "e-mage ingest, no gateway (diagnostic)"


def run(context: Run) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    factory = context.series()
    internal = Endpoint(
        INGEST_DIRECT, systems.stack.service_url("ingest"), fixed={FACILITY_HEADER: CATALOG_FACILITY}
    )
    for clients in (1, 4):
        for repetition in range(scale.repetitions):
            systems.tokens.warm([USER])
            order = interleaved(repetition)
            if clients == 1:
                order = (*order, INGEST_DIRECT)
            for system in order:
                endpoint = internal if system == INGEST_DIRECT else systems.endpoint(system, USER)
                series = factory.fresh()
                elapsed = upload(endpoint, series, clients, scale.stow_instances_per_request)
                case = f"{clients} client{'s' if clients > 1 else ''}"
                count = len(series.instances)
                results.record(SCENARIO, case, "instances/s", "instances/s", system, count / elapsed)
                results.record(SCENARIO, case, "MB/s", "MB/s", system, series.size_bytes / elapsed / 1e6)
                if clients == 1 and system != INGEST_DIRECT:
                    context.stored_ct.setdefault(system, series)
            log(f"stow: {clients} client(s), repetition {repetition + 1}/{scale.repetitions}")
    size = sum(path.stat().st_size for path in factory.files)
    results.note(
        SCENARIO,
        f"{factory.slices} slices a series ({size / 1e6:.1f} MB), "
        f"{scale.stow_instances_per_request} instances a request, a new series (new UIDs) every upload.",
    )
    results.note(
        SCENARIO,
        "The diagnostic row posts to ingest's internal port with the facility header the gateway would set: "
        "the difference to e-mage's row is the gateway's share.",
    )


def upload(endpoint: Endpoint, series: UploadedSeries, clients: int, per_request: int) -> float:
    """Seconds to store ``series`` by ``clients`` concurrent STOW-RS clients."""
    bodies: queue.SimpleQueue[tuple[bytes, int]] = queue.SimpleQueue()
    for start in range(0, len(series.instances), per_request):
        batch = series.instances[start : start + per_request]
        bodies.put((multipart(batch), len(batch)))
    https = [client() for _ in range(clients)]

    def work(index: int) -> None:
        while True:
            try:
                body, count = bodies.get_nowait()
            except queue.Empty:
                return
            stow(https[index], endpoint, body, count)

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for future in [pool.submit(work, index) for index in range(clients)]:
                future.result()
        return time.perf_counter() - started
    finally:
        for http in https:
            http.close()
