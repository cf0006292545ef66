"""``emage generate``: a reproducible set of synthetic studies, one per (patient, exam type).

Every study draws from its own generators seeded by (seed, patient, kind), so the output does not depend on
the order or the parallelism in which studies are written, and the same seed writes the same UIDs and
pixels: a regenerated set re-imports as duplicates.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emage_cli.synthetic import KINDS, studies
from emage_cli.synthetic.identities import Patient, patient_roster
from emage_cli.synthetic.studies import StudyWriter, WrittenInstance
from emage_cli.synthetic.uids import UidFactory


@dataclass(frozen=True)
class GenerationRequest:
    kinds: tuple[str, ...] = KINDS
    patients: int = 2
    slices: int = 220
    frames: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown exam kind(s) {sorted(unknown)}: use {', '.join(KINDS)} or all")
        if self.patients < 1 or self.slices < 1 or self.frames < 1:
            raise ValueError("patients, slices and frames must be at least 1")

    @property
    def mr_slices(self) -> int:
        """Slices of each MR series: an eighth of the CT's, at least 16 (5 mm slices over a brain)."""
        return max(16, self.slices // 8)


#: Relative time to write a study of each kind, to schedule the slowest first.
_COST = {"mg": 5, "ct": 4, "us": 2, "mr": 1, "cr": 1}


@dataclass(frozen=True)
class _StudyJob:
    outdir: Path
    patient: Patient
    kind: str
    sequence: int
    request: GenerationRequest


def _write_study(job: _StudyJob) -> list[WrittenInstance]:
    kind_index = KINDS.index(job.kind)
    # Reproducible synthetic data, not secrets: a seeded PRNG is what is wanted.
    rng = random.Random(f"{job.request.seed}:{job.patient.patient_id}:{job.kind}")  # noqa: S311
    pixels = np.random.default_rng([job.request.seed, job.sequence, kind_index])
    uids = UidFactory(rng)
    writer = StudyWriter(
        job.outdir, studies.study_context(job.patient, job.kind, job.sequence, uids, rng), uids
    )
    if job.kind == "cr":
        studies.write_cr(writer, pixels)
    elif job.kind == "ct":
        studies.write_ct(writer, pixels, job.request.slices)
    elif job.kind == "mr":
        studies.write_mr(writer, pixels, job.request.mr_slices)
    elif job.kind == "us":
        studies.write_us(writer, pixels, job.request.frames)
    else:
        studies.write_mg(writer, pixels)
    studies.write_report(writer, writer.study.modality)
    return writer.written


def roster_of(request: GenerationRequest) -> tuple[Patient, ...]:
    """The patients of ``request``: the dev patients, then synthetic ones drawn from its seed."""
    return patient_roster(request.patients, random.Random(request.seed))  # noqa: S311


def generate(
    outdir: Path,
    request: GenerationRequest,
    *,
    workers: int | None = None,
    on_study: Callable[[list[WrittenInstance]], None] | None = None,
) -> list[WrittenInstance]:
    """Write every study of ``request`` under ``outdir``; studies are written in parallel processes.

    Layout: ``<PatientID>/<StudyDate>-<Modality>-<AccessionNumber>/<SeriesNumber>-<Modality>/<n>.dcm``.
    """
    jobs = []
    for patient_index, patient in enumerate(roster_of(request)):
        for kind in studies.kinds_for(patient, request.kinds):
            sequence = patient_index * len(KINDS) + KINDS.index(kind) + 1
            jobs.append(_StudyJob(outdir, patient, kind, sequence, request))
    # Longest first, so that the worker processes finish together (mammography's JPEG 2000 is the slowest).
    jobs.sort(key=lambda job: _COST[job.kind], reverse=True)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return _collect(map(_write_study, jobs), on_study)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return _collect(pool.map(_write_study, jobs), on_study)


def _collect(
    results: Iterator[list[WrittenInstance]], on_study: Callable[[list[WrittenInstance]], None] | None
) -> list[WrittenInstance]:
    written: list[WrittenInstance] = []
    for result in results:
        written.extend(result)
        if on_study is not None:
            on_study(result)
    return written
