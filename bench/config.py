"""Sizes of a benchmark run: the issue's full scale by default, ``BENCH_SCALE=small`` for a trial run."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

#: The native stack's profile the benchmark runs on: its own ports and data under ``.local/test9``
#: (profiles are ``run``, ``test`` and ``test1``..``test9`` only; the last one is left to the benchmark).
PROFILE = "test9"


@dataclass(frozen=True)
class Scale:
    """Every size a run depends on. Each scenario runs ``repetitions`` times for each system, interleaved."""

    name: str
    catalog_studies: int
    """QIDO-RS catalog: studies bulk-loaded into both systems."""
    instances_per_study: int
    """… and instances per study (in two series), header-only."""
    ct_slices: int
    """The CT series of the STOW-RS, DIMSE and WADO-RS scenarios: 512x512x16-bit slices (~0.5 MB each)."""
    large_ingest_mib: int
    """The study ingested while every service's RSS is sampled."""
    repetitions: int = 5
    queries_per_repetition: int = 20
    """Samples of each QIDO-RS query, per system and repetition."""
    freshness_per_repetition: int = 10
    consent_per_repetition: int = 4
    frames_per_repetition: int = 20
    rendered_per_repetition: int = 10
    stow_instances_per_request: int = 10
    """Instances per STOW-RS request (one multipart body); clients send requests one after the other."""
    loopback_mib: int = 512
    bulk_load_clients: int = 4
    """Concurrent uploads of the header-only instances into Orthanc's REST API."""

    def __post_init__(self) -> None:
        for name in (
            "catalog_studies",
            "instances_per_study",
            "ct_slices",
            "large_ingest_mib",
            "repetitions",
            "queries_per_repetition",
            "freshness_per_repetition",
            "consent_per_repetition",
            "frames_per_repetition",
            "rendered_per_repetition",
            "stow_instances_per_request",
            "loopback_mib",
            "bulk_load_clients",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.instances_per_study < 2:
            raise ValueError("instances_per_study must be at least 2 (two series per study)")

    @property
    def catalog_instances(self) -> int:
        return self.catalog_studies * self.instances_per_study


#: The scale of issue 8 and QUALITY.md: 100,000 studies / 1,000,000 instances, a 2 GB ingest.
FULL = Scale(
    name="full", catalog_studies=100_000, instances_per_study=10, ct_slices=500, large_ingest_mib=2048
)
#: A trial run that fits a shared two-core machine in well under an hour.
SMALL = Scale(
    name="small", catalog_studies=2_000, instances_per_study=10, ct_slices=100, large_ingest_mib=200
)
SCALES = {scale.name: scale for scale in (FULL, SMALL)}


def scale_from(environ: Mapping[str, str], name: str | None = None, repetitions: int | None = None) -> Scale:
    """The scale ``name`` (else ``BENCH_SCALE``, else full), each size overridable by ``BENCH_<SIZE>``
    (``BENCH_REPETITIONS=7``, ``BENCH_CATALOG_STUDIES=10000``…), ``repetitions`` overriding all."""
    chosen = name or environ.get("BENCH_SCALE") or "full"
    if chosen not in SCALES:
        raise ValueError(f"unknown scale {chosen!r}: use {' or '.join(SCALES)}")
    changes: dict[str, Any] = {}
    for size in dataclasses.fields(Scale):
        value = environ.get(f"BENCH_{size.name.upper()}")
        if size.name != "name" and value is not None:
            changes[size.name] = int(value)
    if repetitions is not None:
        changes["repetitions"] = repetitions
    return dataclasses.replace(SCALES[chosen], **changes)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def work_dir() -> Path:
    """Generated data and raw results of the benchmark, git-ignored with the rest of ``.local/``."""
    path = repo_root() / ".local" / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_report() -> Path:
    return repo_root() / "docs" / "benchmarks.md"


def scale_from_env() -> Scale:
    return scale_from(os.environ)
