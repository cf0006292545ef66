"""Finding the DICOM files of a folder tree, and grouping them into STOW-RS requests by study.

A DICOM file here is a Part 10 file (PS3.10 §7.1): a 128-byte preamble then ``DICM``. Anything else is
skipped with the reason. Only the header up to Pixel Data is read, to learn the study and the SOP
instance; the server decides whether the instance is acceptable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

PREAMBLE_LENGTH: Final = 128
MAGIC: Final = b"DICM"


@dataclass(frozen=True, slots=True)
class DicomFile:
    """A Part 10 file to send. The UIDs are None when its header could not be read: the server will say
    why it refuses it."""

    path: Path
    size_bytes: int
    study_instance_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that is not sent, and why."""

    path: Path
    reason: str


def _text(value: object) -> str | None:
    return str(value) if value else None


def _header(path: Path) -> tuple[str | None, str | None, str | None]:
    try:
        with warnings.catch_warnings():
            # A malformed file is reported once, by the server's reason, not by pydicom's warnings here.
            warnings.simplefilter("ignore")
            dataset = dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"],
            )
        return (
            _text(dataset.get("StudyInstanceUID")),
            _text(dataset.get("SOPInstanceUID")),
            _text(dataset.get("SOPClassUID")),
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, LookupError, TypeError, AttributeError):
        # A malformed header: send the file anyway, on its own, and report the server's reason.
        return None, None, None


def classify(path: Path) -> DicomFile | SkippedFile:
    """Whether ``path`` is a Part 10 file to send, or why it is skipped."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            start = stream.read(PREAMBLE_LENGTH + len(MAGIC))
    except OSError as error:
        return SkippedFile(path, f"unreadable: {error.strerror or error}")
    if size == 0:
        return SkippedFile(path, "empty file")
    if len(start) < PREAMBLE_LENGTH + len(MAGIC) or start[PREAMBLE_LENGTH:] != MAGIC:
        return SkippedFile(path, "not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)")
    study, instance, sop_class = _header(path)
    return DicomFile(path, size, study, instance, sop_class)


def walk(root: Path) -> Iterator[DicomFile | SkippedFile]:
    """Every regular file under ``root`` (or ``root`` itself), in a stable order, classified.

    Symbolic links to directories are not followed, so a link cycle cannot loop the walk.
    """
    if root.is_file():
        yield classify(root)
        return
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories.sort()
        for name in sorted(filenames):
            path = Path(directory) / name
            if path.is_file():
                yield classify(path)
            else:
                yield SkippedFile(path, "not a regular file")


@dataclass(frozen=True, slots=True)
class Batch:
    """One STOW-RS request: files of one study (``POST /studies/{study}``), or one file whose study is
    unknown (``POST /studies``)."""

    study_instance_uid: str | None
    files: tuple[DicomFile, ...]

    @property
    def size_bytes(self) -> int:
        return sum(file.size_bytes for file in self.files)


def batches(files: Iterable[DicomFile], *, max_files: int, max_bytes: int) -> Iterator[Batch]:
    """Group files by study into requests of at most ``max_files`` files and about ``max_bytes`` bytes
    (a single larger file still makes its own request). Only paths and sizes are held, never contents.

    Two files with the same SOP Instance UID never share a request: the response names instances by UID,
    so each file's outcome must be the only one under its UID.
    """
    by_study: dict[str, list[DicomFile]] = {}
    for file in files:
        if file.study_instance_uid is None:
            yield Batch(None, (file,))
        else:
            by_study.setdefault(file.study_instance_uid, []).append(file)
    for study, members in by_study.items():
        current: list[DicomFile] = []
        instances: set[str | None] = set()
        size = 0
        for file in members:
            full = len(current) >= max_files or size + file.size_bytes > max_bytes
            if current and (full or file.sop_instance_uid in instances):
                yield Batch(study, tuple(current))
                current, instances, size = [], set(), 0
            current.append(file)
            instances.add(file.sop_instance_uid)
            size += file.size_bytes
        if current:
            yield Batch(study, tuple(current))
