"""The hash chain: every record carries the hash of the record before it and the hash of its own content.

A record's hash is the SHA-256 of the canonical JSON (:mod:`emage_audit.domain.canonical`) of::

    {"seq": 17, "prev_hash": "<hash of record 16>", "event_id": "...", "type": "fr.emage.access.decided.v1",
     "time": "2025-03-12T13:05:00.123456Z", "recorded_at": "2025-03-12T13:05:00.456Z", "data": {...}}

``seq`` counts from 1 without gaps; record 1's ``prev_hash`` is :data:`GENESIS_HASH`. ``time`` is when the
event happened, ``recorded_at`` when it entered the trail (retention counts from it). Changing any of them,
removing a record or moving one elsewhere in the chain changes a hash that the next record, or a signed
checkpoint (:mod:`emage_audit.domain.checkpoints`), still holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from emage_audit.domain.canonical import sha256_hex
from emage_common.events import format_rfc3339, parse_rfc3339

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first record ever appended."""


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """What is appended: an event, before it has a place in the chain."""

    event_id: str
    """The CloudEvent ``id``: the same event is appended once however often it is delivered."""
    type: str
    """The CloudEvent ``type`` (``fr.emage.access.decided.v1``…), or the trail's own (a purge)."""
    time: str
    """When it happened, RFC 3339 in UTC."""
    data: Mapping[str, Any]
    """The event's payload as canonical JSON holds it (:func:`emage_audit.domain.entries.entry_of`)."""


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One record of the chain, as stored."""

    seq: int
    prev_hash: str
    event_id: str
    type: str
    time: str
    recorded_at: str
    data: Mapping[str, Any]
    hash: str

    def computed_hash(self) -> str:
        """The hash this record's content has, whatever ``hash`` says."""
        return record_hash(
            seq=self.seq,
            prev_hash=self.prev_hash,
            event_id=self.event_id,
            type_=self.type,
            time=self.time,
            recorded_at=self.recorded_at,
            data=self.data,
        )


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record appended: its sequence number, hash and append time (``seq`` 0 for an empty chain)."""

    seq: int
    hash: str
    recorded_at: str | None = None


EMPTY_HEAD: Final = ChainHead(seq=0, hash=GENESIS_HASH)


def record_hash(
    *,
    seq: int,
    prev_hash: str,
    event_id: str,
    type_: str,
    time: str,
    recorded_at: str,
    data: Mapping[str, Any],
) -> str:
    """SHA-256 of the canonical JSON of a record's content (module docstring)."""
    return sha256_hex(
        {
            "seq": seq,
            "prev_hash": prev_hash,
            "event_id": event_id,
            "type": type_,
            "time": time,
            "recorded_at": recorded_at,
            "data": data,
        }
    )


def append_to(head: ChainHead, entry: ChainEntry, *, recorded_at: str) -> ChainRecord:
    """The record ``entry`` becomes when appended after ``head``."""
    seq = head.seq + 1
    return ChainRecord(
        seq=seq,
        prev_hash=head.hash,
        event_id=entry.event_id,
        type=entry.type,
        time=entry.time,
        recorded_at=recorded_at,
        data=entry.data,
        hash=record_hash(
            seq=seq,
            prev_hash=head.hash,
            event_id=entry.event_id,
            type_=entry.type,
            time=entry.time,
            recorded_at=recorded_at,
            data=entry.data,
        ),
    )


def extend(
    head: ChainHead, entries: Sequence[ChainEntry], *, known: Mapping[str, ChainRecord], now: datetime
) -> tuple[list[tuple[ChainRecord, bool]], ChainHead]:
    """What appending ``entries`` in order after ``head`` gives: for each entry its record and whether it is
    new, and the new head. An entry whose event is ``known`` (already in the trail) or earlier in ``entries``
    appends nothing and gets the record holding its event. The batch's append time is ``now``, or the head's
    if later: append times never go back, even if this machine's clock does (retention relies on them)."""
    recorded = now if head.recorded_at is None else max(now, parse_rfc3339(head.recorded_at))
    recorded_at = format_rfc3339(recorded)
    seen = dict(known)
    extended: list[tuple[ChainRecord, bool]] = []
    for entry in entries:
        if (existing := seen.get(entry.event_id)) is not None:
            extended.append((existing, False))
            continue
        record = append_to(head, entry, recorded_at=recorded_at)
        head = ChainHead(seq=record.seq, hash=record.hash, recorded_at=record.recorded_at)
        seen[entry.event_id] = record
        extended.append((record, True))
    return extended, head
