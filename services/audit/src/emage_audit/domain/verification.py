"""Chain verification: recompute every hash and link, check every signed checkpoint, name the first break.

Records are fed in sequence order (:meth:`ChainVerifier.feed`) so a chain of any length is verified in
constant memory; :meth:`ChainVerifier.finish` then compares the end of the chain with its head and with the
checkpoints past it. Each record is checked, in this order, for:

* its place: it follows the previous record without a gap (a removed record is named by its number), or, for
  the first record kept after a retention purge, a valid checkpoint at the sequence number before it anchors
  its ``prev_hash``;
* its content: the hash of its content is the hash it carries (a changed field, or a record moved to another
  place, whose sequence number is part of its content);
* its link: its ``prev_hash`` is the hash of the record before it;
* its query fields: they are those its content gives (else it would be hidden from, or shown to, the wrong
  person while its content stays intact);
* the checkpoint at its sequence number, if any: validly signed, and holding this record's hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from emage_audit.domain.canonical import NotCanonicalizableError
from emage_audit.domain.chain import GENESIS_HASH, ChainHead, ChainRecord
from emage_audit.domain.checkpoints import Checkpoint


class BreakReason(StrEnum):
    MISSING = "missing"
    """The record is not there: removed, or the chain was truncated."""
    ALTERED = "altered"
    """Its content does not hash to its hash: changed, or moved from another place in the chain."""
    UNLINKED = "unlinked"
    """Its ``prev_hash`` is not the previous record's hash: the record before it was replaced."""
    UNANCHORED = "unanchored"
    """Records before it are gone and no valid checkpoint anchors it."""
    INDEX_MISMATCH = "index_mismatch"
    """Its query fields are not those its content gives."""
    CHECKPOINT_SIGNATURE = "checkpoint_signature"
    """The checkpoint at its sequence number is not validly signed by a trusted key."""
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    """The signed checkpoint at its sequence number holds another hash: the chain was rewritten."""
    HEAD_MISMATCH = "head_mismatch"
    """The chain's head holds another hash than the last record's."""


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place where the chain is not what was appended."""

    seq: int
    reason: BreakReason
    detail: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as read back, with the query fields stored beside it."""

    record: ChainRecord
    index: Mapping[str, Any]


@dataclass(slots=True)
class VerificationReport:
    valid: bool
    records_checked: int
    first_seq: int | None
    last_seq: int | None
    head_seq: int
    checkpoints_checked: int
    anchored_through: int | None
    """The highest sequence number a valid signed checkpoint vouches for, if any."""
    broken: ChainBreak | None


@dataclass(slots=True)
class ChainVerifier:
    """Verifies a chain fed record by record (module docstring).

    ``checkpoints`` maps sequence numbers to checkpoints; ``signature_valid`` tells whether a checkpoint is
    signed by a trusted key; ``index_of`` recomputes a record's query fields.
    """

    checkpoints: Mapping[int, Checkpoint]
    signature_valid: Callable[[Checkpoint], bool]
    index_of: Callable[[ChainRecord], Mapping[str, Any]]
    _previous: ChainRecord | None = None
    _first_seq: int | None = None
    _checked: int = 0
    _checkpoints_checked: int = 0
    _anchored_through: int | None = None
    _broken: ChainBreak | None = None
    _signatures: dict[int, bool] = field(default_factory=dict)

    @property
    def broken(self) -> ChainBreak | None:
        return self._broken

    def feed(self, stored: StoredRecord) -> bool:
        """Check the next record; False once the chain is broken (further records are not looked at)."""
        if self._broken is not None:
            return False
        self._broken = self._check(stored)
        if self._broken is None:
            self._previous = stored.record
            self._checked += 1
        return self._broken is None

    def _check(self, stored: StoredRecord) -> ChainBreak | None:
        record = stored.record
        if self._previous is None:
            self._first_seq = record.seq
            expected_prev = self._anchor(record)
            if isinstance(expected_prev, ChainBreak):
                return expected_prev
        else:
            if record.seq != self._previous.seq + 1:
                missing = self._previous.seq + 1
                return ChainBreak(
                    missing,
                    BreakReason.MISSING,
                    f"record {missing} is missing: the chain goes from {self._previous.seq} to {record.seq}",
                )
            expected_prev = self._previous.hash
        try:
            computed = record.computed_hash()
            index = dict(self.index_of(record))
        except (NotCanonicalizableError, ValidationError, KeyError, TypeError, ValueError) as error:
            return ChainBreak(record.seq, BreakReason.ALTERED, f"its content is not a valid record: {error}")
        if computed != record.hash:
            return ChainBreak(
                record.seq,
                BreakReason.ALTERED,
                "its content does not match its hash: it was changed, or moved from elsewhere in the chain",
            )
        if record.prev_hash != expected_prev:
            return ChainBreak(
                record.seq,
                BreakReason.UNLINKED,
                f"its prev_hash is not the hash of record {record.seq - 1}: that record was replaced",
            )
        stored_index = dict(stored.index)
        if stored_index != index:
            changed = sorted(
                k for k in index.keys() | stored_index.keys() if index.get(k) != stored_index.get(k)
            )
            return ChainBreak(
                record.seq,
                BreakReason.INDEX_MISMATCH,
                f"its query fields {', '.join(changed)} are not those its content gives",
            )
        return self._check_checkpoint(record)

    def _anchor(self, first: ChainRecord) -> str | ChainBreak:
        """The ``prev_hash`` the first record must have: genesis, or the hash a checkpoint pins before it."""
        if first.seq == 1:
            return GENESIS_HASH
        anchor = self.checkpoints.get(first.seq - 1)
        if anchor is None:
            return ChainBreak(
                first.seq,
                BreakReason.UNANCHORED,
                f"records 1 to {first.seq - 1} are gone and no signed checkpoint at {first.seq - 1} anchors "
                "the chain: records were removed from its start",
            )
        if not self._signature_valid(anchor):
            return ChainBreak(
                first.seq,
                BreakReason.UNANCHORED,
                f"the checkpoint at {anchor.seq} that should anchor the chain is not validly signed",
            )
        self._checkpoints_checked += 1
        self._anchored_through = anchor.seq
        return anchor.hash

    def _check_checkpoint(self, record: ChainRecord) -> ChainBreak | None:
        checkpoint = self.checkpoints.get(record.seq)
        if checkpoint is None:
            return None
        if not self._signature_valid(checkpoint):
            return ChainBreak(
                record.seq,
                BreakReason.CHECKPOINT_SIGNATURE,
                f"the checkpoint at {record.seq} is not validly signed by a trusted key",
            )
        if checkpoint.hash != record.hash:
            return ChainBreak(
                record.seq,
                BreakReason.CHECKPOINT_MISMATCH,
                f"the signed checkpoint at {record.seq} holds another hash: the chain was rewritten",
            )
        self._checkpoints_checked += 1
        self._anchored_through = record.seq
        return None

    def _signature_valid(self, checkpoint: Checkpoint) -> bool:
        known = self._signatures.get(checkpoint.seq)
        if known is None:
            known = self._signatures[checkpoint.seq] = self.signature_valid(checkpoint)
        return known

    def finish(self, head: ChainHead) -> VerificationReport:
        """The report, once every record up to ``head`` (read before them) was fed, or the chain broke."""
        if self._broken is None:
            self._broken = self._check_end(head)
        return VerificationReport(
            valid=self._broken is None,
            records_checked=self._checked,
            first_seq=self._first_seq,
            last_seq=self._previous.seq if self._previous is not None else None,
            head_seq=head.seq,
            checkpoints_checked=self._checkpoints_checked,
            anchored_through=self._anchored_through,
            broken=self._broken,
        )

    def _check_end(self, head: ChainHead) -> ChainBreak | None:
        last_seq = self._previous.seq if self._previous is not None else 0
        beyond = max([seq for seq in self.checkpoints if seq > last_seq], default=0)
        if head.seq > last_seq or beyond:
            missing = last_seq + 1
            return ChainBreak(
                missing,
                BreakReason.MISSING,
                f"record {missing} is missing: the chain ends at {last_seq} but reaches "
                f"{max(head.seq, beyond)}",
            )
        if self._previous is not None and head.hash != self._previous.hash:
            return ChainBreak(
                head.seq,
                BreakReason.HEAD_MISMATCH,
                f"the chain's head holds another hash than record {head.seq}",
            )
        return None
