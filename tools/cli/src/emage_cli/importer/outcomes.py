"""What became of each file of an import, read from the STOW-RS responses (PS3.18 §10.5.3).

A Store Instances Response lists the stored instances in Referenced SOP Sequence (0008,1199), possibly with
a Warning Reason (0008,1196), and the refused ones in Failed SOP Sequence (0008,1198) with a Failure Reason
(0008,1197). e-mage's ingest also explains each part in words in ``Warning: 299`` headers (PS3.18 §8.10.3),
which is how an instance already archived with identical bytes (a duplicate) is told from a new one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from emage_cli.importer.files import DicomFile, SkippedFile

REFERENCED_SOP_SEQUENCE: Final = "00081199"
FAILED_SOP_SEQUENCE: Final = "00081198"
OTHER_FAILURES_SEQUENCE: Final = "0008119A"
REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
FAILURE_REASON: Final = "00081197"
WARNING_REASON: Final = "00081196"

#: Failure and warning reasons of PS3.18 Annex I.2 and PS3.4 §B.2.3, and e-mage's additional codes.
STATUS_TEXT: Final[Mapping[int, str]] = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance with different content",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "refused: out of resources",
    0xA770: "refused: out of resources (unable to perform sub-operations)",
    0xA900: "data set does not match SOP class, or contradicts the request",
    0xC000: "cannot understand (not a parseable DICOM object)",
    0xC122: "transfer syntax not supported",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
    0xB00E: "replaced the archived instance with other content",
}

DUPLICATE_DETAIL: Final = "already archived with identical content"
RETRYABLE_FAILURES: Final = frozenset({0xA700})
_WARNING_HEADER: Final = re.compile(r'^\s*299\s+\S+\s+"part (\d+): ((?:[^"\\]|\\.)*)"')


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class FileResult:
    path: Path
    outcome: Outcome
    reason: str = ""
    """Why the file was rejected or skipped, or the warning it was stored with."""
    retryable: bool = False


def status_text(code: int) -> str:
    return f"0x{code:04X} {STATUS_TEXT.get(code, 'unknown status')}"


def part_details(warning_headers: Iterable[str]) -> dict[int, str]:
    """Part number (1-based) → the server's sentence about it, from ``Warning: 299`` header values."""
    details: dict[int, str] = {}
    for value in warning_headers:
        match = _WARNING_HEADER.match(value)
        if match:
            details[int(match.group(1))] = re.sub(r"\\(.)", r"\1", match.group(2))
    return details


def _first(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if isinstance(values, list) and values else None


def _items(body: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = body.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def results_from_response(
    files: Sequence[DicomFile], status_code: int, body: Mapping[str, Any], details: Mapping[int, str]
) -> list[FileResult]:
    """The result of each file of one request, from the Store Instances Response it got.

    Files are matched to response items by SOP Instance UID (a request never holds one UID twice). A part
    the server could not even read has a Failed SOP Sequence item without UID; such items come in the
    order of their parts, so they go, in order, to the files no item names. A file nothing accounts for was
    not stored.
    """
    referenced: dict[str, Mapping[str, Any]] = {}
    failed: dict[str, Mapping[str, Any]] = {}
    anonymous: list[Mapping[str, Any]] = []
    for stored in _items(body, REFERENCED_SOP_SEQUENCE):
        if (uid := _first(stored, REFERENCED_SOP_INSTANCE_UID)) is not None:
            referenced[str(uid)] = stored
    for refused in _items(body, FAILED_SOP_SEQUENCE) + _items(body, OTHER_FAILURES_SEQUENCE):
        if (uid := _first(refused, REFERENCED_SOP_INSTANCE_UID)) is None:
            anonymous.append(refused)
        else:
            failed[str(uid)] = refused
    results = []
    for position, file in enumerate(files, start=1):
        detail = details.get(position, "")
        instance = file.sop_instance_uid
        if instance is not None and instance in referenced:
            warning = _first(referenced[instance], WARNING_REASON)
            if warning is None and detail.startswith(DUPLICATE_DETAIL):
                results.append(FileResult(file.path, Outcome.DUPLICATE))
            else:
                text = status_text(int(warning)) if warning is not None else ""
                results.append(FileResult(file.path, Outcome.STORED, text))
            continue
        item = failed.get(instance) if instance is not None else None
        if item is None and anonymous:
            item = anonymous.pop(0)
        if item is None:
            reason = f"HTTP {status_code}: not in the server's response"
            results.append(FileResult(file.path, Outcome.REJECTED, reason))
            continue
        code = _first(item, FAILURE_REASON)
        reason = status_text(int(code)) if code is not None else f"failed (HTTP {status_code})"
        results.append(
            FileResult(
                file.path,
                Outcome.REJECTED,
                f"{reason}: {detail}" if detail else reason,
                retryable=code in RETRYABLE_FAILURES,
            )
        )
    return results


def results_from_problem(
    files: Sequence[DicomFile], status_code: int, problem: Mapping[str, Any], *, retryable: bool
) -> list[FileResult]:
    """Every file of a request the server refused as a whole (RFC 9457 problem details), except those the
    problem lists as stored before the message failed."""
    stored = {
        entry.get("sop_instance_uid")
        for entry in problem.get("stored") or []
        if isinstance(entry, dict) and entry.get("sop_instance_uid")
    }
    detail = problem.get("detail") or problem.get("title") or "refused"
    return [
        FileResult(file.path, Outcome.STORED)
        if file.sop_instance_uid in stored
        else FileResult(file.path, Outcome.REJECTED, f"HTTP {status_code}: {detail}", retryable=retryable)
        for file in files
    ]


@dataclass
class ImportSummary:
    """The result of every file seen by an import."""

    results: list[FileResult] = field(default_factory=list)
    bytes_sent: int = 0

    def add_skipped(self, skipped: SkippedFile) -> None:
        self.results.append(FileResult(skipped.path, Outcome.SKIPPED, skipped.reason))

    def counts(self) -> Counter[Outcome]:
        return Counter(result.outcome for result in self.results)

    def by_outcome(self, outcome: Outcome) -> list[FileResult]:
        return [result for result in self.results if result.outcome is outcome]

    @property
    def exit_code(self) -> int:
        """0 when nothing was rejected (skipped non-DICOM files are not errors), 1 otherwise."""
        return 1 if self.counts()[Outcome.REJECTED] else 0
