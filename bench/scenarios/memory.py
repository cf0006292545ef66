"""Memory: the resident set size of every process while one large study is ingested.

The study (``large_ingest_mib`` of CT slices, written to disk under new UIDs beforehand) is sent as ONE
STOW-RS request whose body is streamed from the files, so only a server that buffers whole requests or studies
grows with it. e-mage: through the gateway as technician-a; then the same files to Orthanc. A sampler reads
the RSS of each process (with its children) by the PID the stack started it with, every
:data:`SAMPLE_S`, from before the upload to after its answer; the trace of each is charted.

"Flat" means: peak RSS during the ingest less the RSS just before it stays under
min(100 MiB, 25 % of the study's size), for every e-mage service. One ingest per system (a trace, not a
rate): the issue's 2 GB ingest repeated five times would dominate the run.
"""

from __future__ import annotations

import shutil
import threading
import time

import psutil

from bench.data import multipart_from_files
from bench.dicomweb import client, stow
from bench.environment import log
from bench.results import EMAGE, ORTHANC, Better
from bench.run import Run

SCENARIO = "memory"
USER = "technician-a"
SAMPLE_S = 0.2
MIB = 1024 * 1024
SETTLE_S = 3.0


def tree_rss(pid: int) -> int:
    """RSS of the process ``pid`` and all its descendants, in bytes (0 once gone)."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return int(total)
    except psutil.Error:
        return 0


class Sampler:
    """Samples the RSS of named PIDs in a thread, from :meth:`start` to :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.points: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter() - self._started
            for name, pid in self.pids.items():
                self.points[name].append((now, tree_rss(pid) / MIB))
            self._stop.wait(SAMPLE_S)


def run(context: Run) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    factory = context.series()
    slice_bytes = sum(path.stat().st_size for path in factory.files) / factory.slices
    slices = max(1, round(scale.large_ingest_mib * MIB / slice_bytes))
    folder = context.scratch("memory")
    try:
        _, files = factory.fresh_files(folder, slices)
        size = sum(path.stat().st_size for path in files)
        pids = systems.pids()
        watched = {
            EMAGE: {name: pid for name, pid in pids.items() if name != "orthanc"},
            ORTHANC: {"orthanc": pids["orthanc"]},
        }
        with client(7200) as http:
            for system in (EMAGE, ORTHANC):
                systems.tokens.warm([USER], min_validity=250)
                sampler = Sampler(watched[system])
                sampler.start()
                time.sleep(SETTLE_S)
                uploaded = time.perf_counter()
                stow(http, systems.endpoint(system, USER), multipart_from_files(files), len(files))
                elapsed = time.perf_counter() - uploaded
                time.sleep(SETTLE_S)
                sampler.stop()
                results.fact(
                    SCENARIO,
                    f"{system}: one STOW-RS request of {len(files)} slices ({size / 1e6:,.0f} MB)",
                    f"{elapsed:,.1f} s, {size / elapsed / 1e6:,.1f} MB/s",
                )
                for name, points in sampler.points.items():
                    results.trace(SCENARIO, f"{system}: {name}", points)
                    before = [value for moment, value in points if moment < SETTLE_S] or [points[0][1]]
                    baseline, peak, after = before[-1], max(value for _, value in points), points[-1][1]
                    for quantity, value in (
                        ("RSS before", baseline),
                        ("RSS peak", peak),
                        ("RSS after", after),
                    ):
                        results.record(SCENARIO, name, quantity, "MiB", system, value, better=Better.LOWER)
                log(f"memory: {system} ingested {size / 1e6:,.0f} MB in {elapsed:.0f}s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results.note(
        SCENARIO,
        f"Samples every {SAMPLE_S * 1000:.0f} ms from {SETTLE_S:.0f} s before the request to "
        f"{SETTLE_S:.0f} s "
        "after its answer; Kafka, MongoDB, SeaweedFS and Keycloak are shown for context (their caches grow "
        "by design).",
    )
