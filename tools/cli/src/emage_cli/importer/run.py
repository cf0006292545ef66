"""``emage import``: every DICOM file under a folder, by STOW-RS, a few requests at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from emage_cli.importer.files import Batch, DicomFile, SkippedFile, batches, walk
from emage_cli.importer.outcomes import FileResult, ImportSummary
from emage_cli.importer.stow import StowClient


class ImportProgress(Protocol):
    """What an import reports while it runs (the command line draws it as progress bars)."""

    def scanned(self, files: int, size_bytes: int) -> None: ...

    def sent(self, size_bytes: int) -> None: ...

    def settled(self, results: list[FileResult]) -> None: ...


@dataclass(frozen=True, slots=True)
class ImportOptions:
    url: str
    facility: str | None = None
    token: str | None = None
    concurrency: int = 4
    max_files_per_request: int = 64
    max_bytes_per_request: int = 256 * 1024 * 1024
    timeout_seconds: float = 300.0


async def import_folder(
    root: Path,
    options: ImportOptions,
    progress: ImportProgress,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImportSummary:
    """Scan ``root``, then send its DICOM files grouped by study, ``options.concurrency`` requests at once.

    Only paths, sizes and UIDs are kept in memory; file contents stream from disk into the requests.
    ``transport`` replaces the network (an in-process server in tests).
    """
    summary = ImportSummary()
    files: list[DicomFile] = []
    for found in await asyncio.to_thread(lambda: list(walk(root))):
        if isinstance(found, SkippedFile):
            summary.add_skipped(found)
        else:
            files.append(found)
    progress.scanned(len(files), sum(file.size_bytes for file in files))

    def sent(size: int) -> None:
        summary.bytes_sent += size
        progress.sent(size)

    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for batch in batches(
        files, max_files=options.max_files_per_request, max_bytes=options.max_bytes_per_request
    ):
        queue.put_nowait(batch)
    timeout = httpx.Timeout(options.timeout_seconds, connect=10.0)
    limits = httpx.Limits(max_connections=options.concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:
        stow = StowClient(client, options.url, facility=options.facility, token=options.token)

        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                results = await stow.store(batch, sent)
                summary.results.extend(results)
                progress.settled(results)

        await asyncio.gather(*(worker() for _ in range(max(1, options.concurrency))))
    return summary
