"""What to do with a received instance given what the archive holds under its SOP Instance UID.

A SOP Instance UID names one immutable object (PS3.3 §C.12.1.1.1): the same bytes again are a harmless
retransmission (success, nothing stored twice); different bytes are a conflict, which e-mage either
rejects or, when the operator chose so, resolves by replacing the stored version with a warning. It never
overwrites silently.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class ConflictPolicy(StrEnum):
    """Setting ``EMAGE_INGEST_CONFLICT_POLICY``."""

    REJECT = "reject"
    REPLACE = "replace"


class StoreDecision(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REJECT = "reject"
    REPLACE = "replace"


def decide(stored_sha256: str | None, received_sha256: str, policy: ConflictPolicy) -> StoreDecision:
    """The decision for a received instance of digest ``received_sha256``; ``stored_sha256`` is that of
    the version already archived under its SOP Instance UID, or ``None``."""
    if stored_sha256 is None:
        return StoreDecision.NEW
    if stored_sha256 == received_sha256:
        return StoreDecision.DUPLICATE
    return StoreDecision.REPLACE if policy is ConflictPolicy.REPLACE else StoreDecision.REJECT
