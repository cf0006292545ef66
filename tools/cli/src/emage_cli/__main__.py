"""The ``emage`` command line.

emage generate OUTDIR [--kind cr|ct|mr|us|mg|all]… [--patients N] [--slices N] [--frames N] [--seed S]
emage import DIR [--url URL] [--facility FINESS] [--concurrency N] [--token TOKEN]
emage demo [--url URL] [--cache-dir DIR] [--regenerate]
emage audit verify [--url URL] [--token TOKEN]
emage db dump|verify|restore --archive FILE [--uri URI] [--db NAME] [--drop]
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from emage_cli.audit import app as audit_app
from emage_cli.backup import app as backup_app
from emage_cli.importer.outcomes import FileResult, ImportSummary, Outcome
from emage_cli.synthetic import KINDS
from emage_cli.synthetic.identities import DEV_PATIENTS

if TYPE_CHECKING:
    from emage_cli.importer.run import ImportOptions
    from emage_cli.synthetic.studies import WrittenInstance

app = typer.Typer(
    name="emage",
    help="e-mage command line: synthetic DICOM studies, bulk import by STOW-RS, demo data, database backups.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="db")
console = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8081"
_MAX_LISTED = 50


class Kind(StrEnum):
    cr = "cr"
    ct = "ct"
    mr = "mr"
    us = "us"
    mg = "mg"
    all = "all"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _print_generated(outdir: Path, written: list[WrittenInstance], seconds: float) -> None:
    studies: dict[tuple[str, str], list[WrittenInstance]] = defaultdict(list)
    for instance in written:
        patient, study = instance.path.relative_to(outdir).parts[:2]
        studies[(patient, study)].append(instance)
    table = Table(title=f"Generated under {outdir}")
    for column in ("patient", "study (date-modality-accession)", "series", "instances", "size"):
        table.add_column(column, justify="right" if column in ("series", "instances", "size") else "left")
    for (patient, study), instances in sorted(studies.items()):
        series = {instance.series_instance_uid for instance in instances}
        size = sum(instance.size_bytes for instance in instances)
        table.add_row(patient, study, str(len(series)), str(len(instances)), _megabytes(size))
    console.print(table)
    total = sum(instance.size_bytes for instance in written)
    console.print(f"{len(written)} instances, {_megabytes(total)} in {seconds:.1f} s")


@app.command("generate")
def generate_command(
    outdir: Annotated[Path, typer.Argument(help="Folder to write the studies into (created if needed).")],
    kind: Annotated[
        list[Kind] | None, typer.Option("--kind", "-k", help="Exam type(s), repeatable; default all.")
    ] = None,
    patients: Annotated[
        int, typer.Option(min=1, help="Patients: the two dev patients first, then synthetic ones.")
    ] = 2,
    slices: Annotated[int, typer.Option(min=1, help="Slices of each CT (MR series: an eighth, ≥ 16).")] = 220,
    frames: Annotated[int, typer.Option(min=1, help="Frames of each ultrasound cine loop.")] = 40,
    seed: Annotated[
        int | None, typer.Option(help="Seed: the same seed writes the same UIDs and pixels.")
    ] = None,
) -> None:
    """Write realistic synthetic DICOM studies (CR, CT, MR, US, MG, each with its PDF report)."""
    # numpy, pydicom and FFmpeg load only for the commands that draw images.
    from emage_cli.synthetic.generator import GenerationRequest, generate

    chosen = [k.value for k in (kind or [Kind.all])]
    kinds = KINDS if "all" in chosen else tuple(k for k in KINDS if k in chosen)
    seed = seed if seed is not None else secrets.randbelow(2**31)
    request = GenerationRequest(kinds=kinds, patients=patients, slices=slices, frames=frames, seed=seed)
    started = time.monotonic()
    with console.status(f"generating {', '.join(kinds)} for {patients} patient(s), seed {seed}…"):
        written = generate(outdir, request)
    _print_generated(outdir, written, time.monotonic() - started)


class _AmountColumn(ProgressColumn):
    """``12.3/45.6 MB  8.1 MB/s`` for the bytes sent, ``120/300 files`` for the files settled."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "files":
            return Text(f"{int(task.completed)}/{int(task.total or 0)} files")
        speed = f"  {decimal(int(task.speed))}/s" if task.speed else ""
        return Text(f"{decimal(int(task.completed))}/{decimal(int(task.total or 0))}{speed}")


class _RichProgress:
    """Draws an import: bytes sent and files settled."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._bytes: TaskID = progress.add_task("sending", total=None, unit="bytes")
        self._files: TaskID = progress.add_task("settled", total=None, visible=False, unit="files")

    def scanned(self, files: int, size_bytes: int) -> None:
        self._progress.update(self._bytes, total=size_bytes)
        self._progress.update(self._files, total=files, visible=True)

    def sent(self, size_bytes: int) -> None:
        self._progress.advance(self._bytes, size_bytes)

    def settled(self, results: list[FileResult]) -> None:
        self._progress.advance(self._files, len(results))


def _run_import(directory: Path, options: ImportOptions) -> ImportSummary:
    from emage_cli.importer.run import import_folder

    columns = (TextColumn("{task.description:>8}"), BarColumn(), _AmountColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        return asyncio.run(import_folder(directory, options, _RichProgress(progress)))


def _print_summary(summary: ImportSummary, seconds: float) -> None:
    counts = summary.counts()
    table = Table(title="Import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in Outcome:
        table.add_row(outcome.value, str(counts[outcome]))
    console.print(table)
    console.print(f"{_megabytes(summary.bytes_sent)} sent in {seconds:.1f} s")
    for outcome in (Outcome.REJECTED, Outcome.SKIPPED):
        listed = summary.by_outcome(outcome)
        for result in listed[:_MAX_LISTED]:
            console.print(f"  {outcome.value}: {result.path}: {result.reason}", markup=False, highlight=False)
        if len(listed) > _MAX_LISTED:
            console.print(f"  … and {len(listed) - _MAX_LISTED} more {outcome.value}")
    warned = [r for r in summary.by_outcome(Outcome.STORED) if r.reason]
    for result in warned[:_MAX_LISTED]:
        console.print(f"  warning: {result.path}: {result.reason}", markup=False, highlight=False)


UrlOption = Annotated[
    str, typer.Option(envvar="EMAGE_INGEST_URL", help="DICOMweb root of the ingest service (STOW-RS).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="EMAGE_TOKEN", help="Bearer access token, when going through the gateway."),
]


@app.command("import")
def import_command(
    directory: Annotated[Path, typer.Argument(exists=True, help="File or folder, searched recursively.")],
    url: UrlOption = DEFAULT_URL,
    facility: Annotated[
        str | None, typer.Option(help="FINESS of the facility the instances belong to (X-Emage-Facility).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at once.")] = 4,
    batch_files: Annotated[int, typer.Option(min=1, help="Files per STOW-RS request, at most.")] = 64,
    token: TokenOption = None,
) -> None:
    """Send every DICOM Part 10 file under DIRECTORY by STOW-RS, grouped by study.

    Exits with status 1 when any instance was rejected (non-DICOM files are skipped, not rejected).
    """
    from emage_cli.importer.run import ImportOptions

    options = ImportOptions(
        url=url, facility=facility, token=token, concurrency=concurrency, max_files_per_request=batch_files
    )
    started = time.monotonic()
    summary = _run_import(directory, options)
    _print_summary(summary, time.monotonic() - started)
    raise typer.Exit(summary.exit_code)


@app.command("demo")
def demo_command(
    url: UrlOption = DEFAULT_URL,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where the generated set is kept (default $EMAGE_CACHE/demo).")
    ] = None,
    regenerate: Annotated[bool, typer.Option(help="Generate the set again even if cached.")] = False,
    token: TokenOption = None,
) -> None:
    """Generate (once) and import the demo studies, each patient's under their own facility."""
    from emage_cli.demo import DEMO_REQUEST, default_cache_dir, demo_dataset
    from emage_cli.importer.run import ImportOptions

    started = time.monotonic()
    with console.status("preparing the demo studies…"):
        folder = demo_dataset(cache_dir or default_cache_dir(), regenerate=regenerate)
    console.print(f"demo studies ready in {folder} ({time.monotonic() - started:.1f} s)")
    exit_code = 0
    for patient in DEV_PATIENTS[: DEMO_REQUEST.patients]:
        console.print(f"[bold]{patient.patient_name}[/] ({patient.patient_id}) → {patient.facility.name}")
        options = ImportOptions(url=url, facility=patient.facility.finess, token=token)
        imported = time.monotonic()
        summary = _run_import(folder / patient.patient_id, options)
        _print_summary(summary, time.monotonic() - imported)
        exit_code = max(exit_code, summary.exit_code)
    raise typer.Exit(exit_code)


def main() -> None:
    # pydicom warns through logging about the broken files an import reports anyway.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
