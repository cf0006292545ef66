"""QIDO-RS study searches on a catalog of N studies / 10·N header-only instances, bulk-loaded into both.

Bulk load (timed, reported as side facts, not compared):

* e-mage: the catalog's real write path. One ``emage.instance.stored.v1`` event per instance, built by
  ingest's own code from the same Part 10 bytes Orthanc receives (header, object key, ``InstanceStored``),
  published to Kafka in bulk by an idempotent producer; the catalog's consumer files them as it does any
  STOW's. Ingest's STOW-RS is left out because its cost (S3 objects, encryption) is not what a search
  depends on, and would take hours at 1,000,000 instances; the pixel-less instances have no S3 object.
* Orthanc: its REST API, ``POST /instances`` of the same header-only Part 10 files in uncompressed ZIP
  archives of ``ORTHANC_ZIP_INSTANCES`` (Orthanc stores each file of an archive as it stores a lone one, and
  answers one status per file), ``bulk_load_clients`` archives at a time: a request per file spends more
  of the two cores on HTTP than on Orthanc's index.

Searches: e-mage through the gateway as ``radiologist-a`` (token validated, policy decided, the decision
published to ``access.decided``, the search scope applied inside the catalog query); Orthanc through its
DICOMweb plugin with HTTP Basic. Every catalog study is CHU Alpha's, so the scope admits all of them and both
systems must return the same number of matches, which the run checks. Each sample sends the same query to
both, in alternating order.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import random
import struct
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

import httpx
from pymongo import MongoClient

from bench.data import (
    CATALOG_DAYS,
    CATALOG_FACILITY,
    CATALOG_FIRST_DAY,
    CatalogStudy,
    catalog_instances,
    catalog_plan,
    instance_stored_record,
)
from bench.dicomweb import DICOM_JSON, BenchRequestError, client, query_url
from bench.environment import Endpoint, interleaved, log
from bench.results import EMAGE, ORTHANC, Better
from bench.run import Run
from emage_common.access_contract import SEARCH_SCOPE_HEADER, WireScopeClause, WireSearchScope

SCENARIO = "qido"
USER = "radiologist-a"
WARMUP = 3
EXPECTED_DATE_RANGE_MATCHES = 50
CATALOG_DIRECT = "e-mage catalog, no gateway (diagnostic)"
USER_SCOPE = WireSearchScope(clauses=(WireScopeClause(facility_finess=CATALOG_FACILITY),)).encode()
"""The search scope the gateway sends for ``USER`` (a radiologist of CHU Alpha, no share, no emergency
access): the diagnostic row asks the catalog the same query, so the difference is the gateway's alone."""
ORTHANC_ZIP_INSTANCES = 500
"""Instances per ZIP archive posted to Orthanc's ``POST /instances`` (one HTTP request per archive)."""
STALL_S = 300.0
"""The bulk load fails when the catalog files nothing for this long."""

Query = tuple[str, dict[str, str]]


def run(context: Run) -> None:
    scale, results = context.scale, context.results
    plan = catalog_plan(scale.catalog_studies)
    pack = _generate(context, plan)
    _load_emage(context, pack)
    _load_orthanc(context, pack)
    results.note(
        SCENARIO,
        f"Catalog: {scale.catalog_studies:,} studies of {max(1, scale.catalog_studies // 4):,} patients, "
        f"{scale.catalog_instances:,} header-only instances (two series a study), five modalities, study "
        f"dates over {CATALOG_DAYS} days from {CATALOG_FIRST_DAY}; all CHU Alpha's.",
    )
    _search(context, plan)


# --- Data: generated once per size, kept as a pack of (Part 10, event key, event value) records ----------


def _generate(context: Run, plan: Sequence[CatalogStudy]) -> Path:
    scale = context.scale
    folder = context.work / "data" / f"catalog-{scale.catalog_studies}x{scale.instances_per_study}"
    pack = folder / "instances.pack"
    if (folder / ".complete").exists():
        return pack
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chunks = [plan[start : start + 200] for start in range(0, len(plan), 200)]
    with pack.open("wb") as out, ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done, records in enumerate(
            pool.map(_records_of, chunks, [scale.instances_per_study] * len(chunks))
        ):
            for part10, key, value in records:
                for field in (part10, key, value):
                    out.write(struct.pack("<I", len(field)))
                    out.write(field)
            if done % 50 == 0:
                log(f"qido: generated {min((done + 1) * 200, len(plan)):,} of {len(plan):,} studies")
    (folder / ".complete").touch()
    log(f"qido: catalog data generated in {time.perf_counter() - started:.0f}s")
    return pack


def _records_of(studies: Sequence[CatalogStudy], instances: int) -> list[tuple[bytes, bytes, bytes]]:
    records = []
    for study in studies:
        for part10 in catalog_instances(study, instances):
            key, value = instance_stored_record(part10)
            records.append((part10, key, value))
    return records


def read_pack(pack: Path) -> Iterator[tuple[bytes, bytes, bytes]]:
    with pack.open("rb") as source:
        while (part10 := _field(source)) is not None:
            key, value = _field(source), _field(source)
            if key is None or value is None:
                raise ValueError(f"{pack} is truncated: delete its folder and run again")
            yield part10, key, value


def _field(source: BinaryIO) -> bytes | None:
    header = source.read(4)
    if not header:
        return None
    (length,) = struct.unpack("<I", header)
    return source.read(length)


# --- Bulk load ------------------------------------------------------------------------------------------


def _catalog_counts(uri: str) -> tuple[int, int]:
    mongo: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        database = mongo["catalog"]
        return (
            database["instances"].estimated_document_count(),
            database["studies"].estimated_document_count(),
        )
    finally:
        mongo.close()


def _load_emage(context: Run, pack: Path) -> None:
    from aiokafka import AIOKafkaProducer

    from emage_common.events import INSTANCE_STORED_TOPIC, STRUCTURED_CONTENT_TYPE

    scale, results, stack = context.scale, context.results, context.systems.stack
    instances_before, studies_before = _catalog_counts(stack.mongo.uri)
    headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]

    async def publish() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=20,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            pending = []
            for _, key, value in read_pack(pack):
                pending.append(
                    await producer.send(INSTANCE_STORED_TOPIC, value=value, key=key, headers=headers)
                )
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    started = time.perf_counter()
    asyncio.run(publish())
    published = time.perf_counter() - started
    total = scale.catalog_instances
    progress, progressed, reported = -1, time.monotonic(), time.monotonic()
    while True:
        instances, studies = _catalog_counts(stack.mongo.uri)
        if instances >= instances_before + total and studies >= studies_before + scale.catalog_studies:
            break
        if instances > progress:
            progress, progressed = instances, time.monotonic()
        elif time.monotonic() - progressed > STALL_S:
            raise BenchRequestError(
                f"the catalog filed {instances - instances_before} of {total} instances, then nothing for "
                f"{STALL_S:.0f} s"
            )
        if time.monotonic() - reported > 60:
            reported = time.monotonic()
            log(f"qido: e-mage catalog at {instances - instances_before:,} of {total:,} instances")
        time.sleep(1)
    filed = time.perf_counter() - started
    results.fact(
        SCENARIO, "e-mage bulk load: events published to Kafka", f"{total / published:,.0f} events/s"
    )
    results.fact(
        SCENARIO,
        "e-mage bulk load: catalogued by the catalog's consumer (publish start → last study filed)",
        f"{total / filed:,.0f} instances/s ({filed:,.0f} s)",
    )
    log(f"qido: e-mage catalog loaded in {filed:.0f}s")


def _load_orthanc(context: Run, pack: Path) -> None:
    scale, results, orthanc = context.scale, context.results, context.systems.orthanc
    total = scale.catalog_instances
    archives = _zip_archives(read_pack(pack), ORTHANC_ZIP_INSTANCES)
    lock = threading.Lock()

    def upload() -> int:
        count = 0
        with httpx.Client(base_url=orthanc.url, auth=orthanc.auth, timeout=600) as http:
            while True:
                with lock:
                    archive = next(archives, None)
                if archive is None:
                    return count
                body, expected = archive
                response = http.post("/instances", content=body, headers={"Content-Type": "application/zip"})
                if response.status_code != 200:
                    raise BenchRequestError(f"Orthanc POST /instances answered {response.status_code}")
                answers = response.json()
                if not isinstance(answers, list):  # a single answer: Orthanc did not read a ZIP archive
                    raise BenchRequestError(f"Orthanc answered {str(answers)[:200]} to a ZIP archive")
                statuses = Counter(str(answer.get("Status")) for answer in answers)
                stored = statuses["Success"]
                if stored != expected:
                    raise BenchRequestError(
                        f"Orthanc stored {stored} of an archive's {expected} instances: {dict(statuses)}"
                    )
                if (count + stored) // 100_000 > count // 100_000:
                    log(f"qido: Orthanc, one client at {count + stored:,} instances")
                count += stored

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=scale.bulk_load_clients) as pool:
        uploaded = sum(pool.map(lambda _: upload(), range(scale.bulk_load_clients)))
    elapsed = time.perf_counter() - started
    if uploaded != total:
        raise BenchRequestError(f"Orthanc took {uploaded} of {total} instances")
    statistics = httpx.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=30).json()
    results.fact(
        SCENARIO,
        f"Orthanc bulk load: REST POST /instances of ZIP archives of {ORTHANC_ZIP_INSTANCES} instances, "
        f"{scale.bulk_load_clients} clients",
        f"{total / elapsed:,.0f} instances/s ({elapsed:,.0f} s); Orthanc counts "
        f"{statistics['CountStudies']:,} "
        f"studies, {statistics['CountInstances']:,} instances",
    )
    log(f"qido: Orthanc loaded in {elapsed:.0f}s")


def _zip_archives(
    records: Iterator[tuple[bytes, bytes, bytes]], per_archive: int
) -> Iterator[tuple[bytes, int]]:
    """(ZIP archive, instances in it) of the records' Part 10 files, ``per_archive`` at a time, stored
    uncompressed (Orthanc takes ZIP archives on ``POST /instances``, one status per file)."""
    while True:
        buffer = io.BytesIO()
        count = 0
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for part10, _, _ in itertools.islice(records, per_archive):
                archive.writestr(f"{count:04d}.dcm", part10)
                count += 1
        if count == 0:
            return
        yield buffer.getvalue(), count


# --- Searches -------------------------------------------------------------------------------------------


def queries(plan: Sequence[CatalogStudy], rng: random.Random) -> dict[str, Callable[[], Query]]:
    """The four searches of issue 8, each drawing its values from the catalog at random."""
    days = max(1, round(EXPECTED_DATE_RANGE_MATCHES * 5 * CATALOG_DAYS / len(plan)))
    pages = max(1, min(10, len(plan) // 100))

    def exact_patient_id() -> Query:
        return "studies", {"PatientID": rng.choice(plan).patient_id}

    def name_wildcard() -> Query:
        study = rng.choice(plan)
        return "studies", {"PatientName": f"{study.family_name}^{study.given_name[:3]}*", "limit": "100"}

    def date_range_and_modality() -> Query:
        first = CATALOG_FIRST_DAY + timedelta(days=rng.randrange(max(1, CATALOG_DAYS - days)))
        last = first + timedelta(days=days - 1)
        return "studies", {
            "StudyDate": f"{first:%Y%m%d}-{last:%Y%m%d}",
            "ModalitiesInStudy": rng.choice(plan).modality,
            "limit": "100",
        }

    def page_with_total() -> Query:
        return "studies", {"limit": "100", "offset": str(100 * rng.randrange(pages))}

    return {
        "exact PatientID": exact_patient_id,
        "name wildcard (FAMILY^Giv*)": name_wildcard,
        f"date range ({days} d) + modality": date_range_and_modality,
        "page of 100 (+ total count)": page_with_total,
    }


def _search(context: Run, plan: Sequence[CatalogStudy]) -> None:
    scale, results, systems = context.scale, context.results, context.systems
    rng = random.Random(f"qido:{len(plan)}")  # noqa: S311 - reproducible query values
    endpoints = {
        EMAGE: systems.emage(USER),
        ORTHANC: systems.orthanc_web(),
        CATALOG_DIRECT: Endpoint(
            CATALOG_DIRECT, systems.stack.service_url("catalog"), fixed={SEARCH_SCOPE_HEADER: USER_SCOPE}
        ),
    }
    mismatches: dict[str, int] = {}
    totals: set[str] = set()
    matched: dict[tuple[str, str], list[int]] = {}
    with client(60) as http:
        for draw in queries(plan, rng).values():
            for _ in range(WARMUP):
                path, params = draw()
                for endpoint in endpoints.values():
                    _timed_search(http, endpoint, path, params)
        for repetition in range(scale.repetitions):
            systems.tokens.warm([USER])
            for name, draw in queries(plan, rng).items():
                for sample in range(scale.queries_per_repetition):
                    path, params = draw()
                    counts: dict[str, int] = {}
                    for system in (*interleaved(repetition + sample), CATALOG_DIRECT):
                        seconds, count, total = _timed_search(http, endpoints[system], path, params)
                        counts[system] = count
                        results.record(
                            SCENARIO, name, "latency", "ms", system, seconds * 1000, better=Better.LOWER
                        )
                        if system == CATALOG_DIRECT:
                            continue
                        matched.setdefault((name, system), []).append(count)
                        if system == EMAGE and total is not None and "offset" in params:
                            totals.add(total)
                    if counts[EMAGE] != counts[ORTHANC]:
                        mismatches[name] = mismatches.get(name, 0) + 1
            log(f"qido: repetition {repetition + 1}/{scale.repetitions}")
    for (name, system), found in matched.items():
        results.fact(
            SCENARIO,
            f"matches per search: {name}, {system}",
            f"median {sorted(found)[len(found) // 2]}, {min(found)}-{max(found)}",
        )
    results.fact(
        SCENARIO, "e-mage X-Total-Count of the unfiltered page", ", ".join(sorted(totals)) or "absent"
    )
    results.fact(
        SCENARIO,
        "searches where e-mage and Orthanc returned different numbers of matches",
        ", ".join(f"{name}: {count}" for name, count in mismatches.items()) or "none",
    )
    results.note(
        SCENARIO,
        f"{WARMUP} untimed warm-up searches of each kind per system, then {scale.queries_per_repetition} "
        f"samples per kind, system and repetition; latency = request sent → whole JSON answer received.",
    )
    results.note(SCENARIO, "Orthanc's DICOMweb plugin returns no total count: its page is the page alone.")
    results.note(
        SCENARIO,
        "The diagnostic row searches the catalog's internal port with the search scope the gateway sends for "
        f"{USER} (CHU Alpha's studies), without gateway or token: the difference to e-mage's row is the "
        "gateway's share (token, policy, audit event, proxying).",
    )


def _timed_search(
    http: httpx.Client, endpoint: Endpoint, path: str, params: dict[str, str]
) -> tuple[float, int, str | None]:
    headers = endpoint.headers(Accept=DICOM_JSON)
    started = time.perf_counter()
    response = http.get(query_url(endpoint.root, path, params), headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code not in (200, 204):
        raise BenchRequestError(f"{endpoint.system} QIDO-RS {params} answered {response.status_code}")
    matches = response.json() if response.status_code == 200 and response.content else []
    return elapsed, len(matches), response.headers.get("X-Total-Count")
