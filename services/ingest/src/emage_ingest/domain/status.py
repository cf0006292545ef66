"""DICOM status codes of a store, as a STOW-RS response (PS3.18 §10.5.3, Annex I.2) or a C-STORE response
(PS3.4 §B.2.3) reports them.

STOW-RS reuses the C-STORE codes in Failure Reason (0008,1197) and Warning Reason (0008,1196), so one
vocabulary serves both ingest paths. PS3.18 Annex I.2 lets a server use additional codes "to address the
semantics of other issues"; the two e-mage uses are documented on their members.
"""

from __future__ import annotations

from enum import IntEnum


class FailureReason(IntEnum):
    """Why an instance was not stored (PS3.18 Table I.2-2)."""

    PROCESSING_FAILURE = 0x0110
    """A general failure in processing the operation."""
    DUPLICATE_SOP_INSTANCE = 0x0111
    """Additional code: the SOP Instance UID is already archived with different content and the conflict
    policy is ``reject``. The meaning is that of the DIMSE status "Duplicate SOP Instance" (PS3.7 Annex C)."""
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """Referenced SOP Class not supported."""
    OUT_OF_RESOURCES = 0xA700
    """Refused, out of resources: the archive or its index is unavailable right now; retry later."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """A required attribute is missing or invalid, or the instance contradicts the request (its study)."""
    CANNOT_UNDERSTAND = 0xC000
    """Not a parseable DICOM Part 10 object."""
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    """Referenced Transfer Syntax not supported."""


class WarningReason(IntEnum):
    """Why an instance was stored with a warning (PS3.18 Table I.2-1)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    """Some attribute values were modified during storage."""
    INSTANCE_REPLACED = 0xB00E
    """Additional code: the SOP Instance UID was archived before with other content, which this instance
    replaced (conflict policy ``replace``); PS3.18 defines no code for a replacement."""


class StoreRejectedError(Exception):
    """An instance cannot be stored; carries the DICOM failure reason and a sentence for the sender."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
