"""The hash chain and its verification: every change, removal or reordering is named at its record."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from emage_audit.domain.chain import EMPTY_HEAD, GENESIS_HASH, ChainEntry, ChainHead, ChainRecord, append_to
from emage_audit.domain.checkpoints import CheckpointSigner, InvalidKeyError, TrustedKeys, public_key_bytes
from emage_audit.domain.entries import entry_of, index_fields, record_index
from emage_audit.domain.verification import BreakReason, ChainVerifier, StoredRecord, VerificationReport
from emage_common.events import parse_rfc3339


def entry(n: int) -> ChainEntry:
    return ChainEntry(
        event_id=f"event-{n}", type="fr.emage.test.v1", time="2025-03-12T13:05:00Z", data={"n": n}
    )


def build_chain(length: int) -> list[ChainRecord]:
    head, records = EMPTY_HEAD, []
    for n in range(1, length + 1):
        record = append_to(head, entry(n), recorded_at=f"2025-03-12T13:05:{n:02d}Z")
        records.append(record)
        head = ChainHead(record.seq, record.hash, record.recorded_at)
    return records


def head_of(records: list[ChainRecord]) -> ChainHead:
    return ChainHead(records[-1].seq, records[-1].hash, records[-1].recorded_at)


def verify(
    records: list[ChainRecord],
    head: ChainHead,
    *,
    checkpoints: dict[int, Any] | None = None,
    keys: TrustedKeys | None = None,
    indexes: dict[int, dict[str, Any]] | None = None,
) -> VerificationReport:
    def index_of(record: ChainRecord) -> dict[str, Any]:
        return {"n": record.data.get("n")}

    verifier = ChainVerifier(
        checkpoints=checkpoints or {},
        signature_valid=(keys or TrustedKeys.of(SIGNER)).verify,
        index_of=index_of,
    )
    for record in sorted(records, key=lambda r: r.seq):
        index = (indexes or {}).get(record.seq, index_of(record))
        if not verifier.feed(StoredRecord(record, index)):
            break
    return verifier.finish(head)


SIGNER = CheckpointSigner.from_base64_seed("ZGV2LW9ubHkgZS1tYWdlIGF1ZGl0IGtleSBwdWJsaWM=")
OTHER_SIGNER = CheckpointSigner.from_base64_seed("b3RoZXIga2V5IG9mIGEgZm9yZ2VyLCAzMiBieXRlcyE=")


def sign(record: ChainRecord, signer: CheckpointSigner = SIGNER) -> Any:
    return signer.sign(record.seq, record.hash, record.recorded_at, parse_rfc3339(record.recorded_at))


# --- Computing the chain ------------------------------------------------------------------------------------


def test_the_first_record_follows_genesis_and_each_next_one_its_predecessor() -> None:
    records = build_chain(3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert records[1].prev_hash == records[0].hash
    assert records[2].prev_hash == records[1].hash
    assert all(r.hash == r.computed_hash() for r in records)


def test_the_hash_covers_every_field_of_the_content() -> None:
    record = build_chain(1)[0]
    for change in (
        {"seq": 2},
        {"prev_hash": "1" * 64},
        {"event_id": "other"},
        {"type": "fr.emage.other.v1"},
        {"time": "2025-03-12T13:05:01Z"},
        {"recorded_at": "2025-03-12T13:06:00Z"},
        {"data": {"n": 2}},
    ):
        assert dataclasses.replace(record, **change).computed_hash() != record.hash, change


def test_the_hash_is_stable_across_key_orders() -> None:
    a = append_to(
        EMPTY_HEAD, dataclasses.replace(entry(1), data={"x": 1, "y": 2}), recorded_at="2025-01-01T00:00:00Z"
    )
    b = append_to(
        EMPTY_HEAD, dataclasses.replace(entry(1), data={"y": 2, "x": 1}), recorded_at="2025-01-01T00:00:00Z"
    )
    assert a.hash == b.hash


# --- Verifying it ------------------------------------------------------------------------------------------


def test_an_intact_chain_verifies() -> None:
    records = build_chain(5)
    report = verify(records, head_of(records))
    assert report.valid
    assert report.broken is None
    assert (report.records_checked, report.first_seq, report.last_seq, report.head_seq) == (5, 1, 5, 5)


def test_an_empty_chain_verifies() -> None:
    report = verify([], EMPTY_HEAD)
    assert report.valid
    assert report.records_checked == 0


def test_a_changed_record_is_named() -> None:
    records = build_chain(5)
    records[2] = dataclasses.replace(records[2], data={"n": 99})
    report = verify(records, head_of(records))
    assert not report.valid
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (3, BreakReason.ALTERED)
    assert report.records_checked == 2


def test_a_changed_record_whose_hash_was_recomputed_breaks_the_next_link() -> None:
    records = build_chain(5)
    forged = dataclasses.replace(records[2], data={"n": 99})
    records[2] = dataclasses.replace(forged, hash=forged.computed_hash())
    report = verify(records, head_of(records))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (4, BreakReason.UNLINKED)


def test_a_removed_record_is_named_by_its_number() -> None:
    records = build_chain(5)
    del records[2]
    report = verify(records, head_of(records))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (3, BreakReason.MISSING)
    assert "from 2 to 4" in report.broken.detail


def test_a_removed_last_record_is_named_against_the_head() -> None:
    records = build_chain(5)
    head = head_of(records)
    report = verify(records[:-1], head)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (5, BreakReason.MISSING)


def test_a_removed_first_record_is_named() -> None:
    records = build_chain(5)
    report = verify(records[1:], head_of(records))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (2, BreakReason.UNANCHORED)


def test_reordered_records_are_named_at_the_first_moved_one() -> None:
    records = build_chain(5)
    # Records 2 and 4 exchange places: each now sits under the other's sequence number.
    second, fourth = records[1], records[3]
    records[1] = dataclasses.replace(fourth, seq=2)
    records[3] = dataclasses.replace(second, seq=4)
    report = verify(records, head_of(records))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (2, BreakReason.ALTERED)


def test_a_whole_chain_rewritten_after_a_change_is_caught_by_its_signed_checkpoint() -> None:
    records = build_chain(6)
    checkpoint = sign(records[3])
    # Whoever has database access rewrites record 2 and recomputes every hash after it; they cannot sign.
    head = records[0]
    rewritten = [head]
    current = ChainHead(head.seq, head.hash, head.recorded_at)
    for record in records[1:]:
        data = {"n": 99} if record.seq == 2 else record.data
        forged = append_to(
            current,
            ChainEntry(record.event_id, record.type, record.time, data),
            recorded_at=record.recorded_at,
        )
        rewritten.append(forged)
        current = ChainHead(forged.seq, forged.hash, forged.recorded_at)
    report = verify(rewritten, head_of(rewritten), checkpoints={4: checkpoint})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (4, BreakReason.CHECKPOINT_MISMATCH)


def test_a_checkpoint_signed_by_an_untrusted_key_is_refused() -> None:
    records = build_chain(4)
    report = verify(records, head_of(records), checkpoints={2: sign(records[1], OTHER_SIGNER)})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (2, BreakReason.CHECKPOINT_SIGNATURE)


def test_a_checkpoint_whose_content_was_changed_no_longer_verifies() -> None:
    records = build_chain(4)
    checkpoint = dataclasses.replace(sign(records[1]), recorded_at="2020-01-01T00:00:00Z")
    report = verify(records, head_of(records), checkpoints={2: checkpoint})
    assert report.broken is not None
    assert report.broken.reason == BreakReason.CHECKPOINT_SIGNATURE


def test_valid_checkpoints_anchor_the_chain() -> None:
    records = build_chain(4)
    report = verify(records, head_of(records), checkpoints={2: sign(records[1]), 4: sign(records[3])})
    assert report.valid
    assert (report.checkpoints_checked, report.anchored_through) == (2, 4)


def test_a_checkpoint_past_the_last_record_reveals_a_truncation() -> None:
    records = build_chain(5)
    checkpoint = sign(records[4])
    truncated = records[:3]
    report = verify(truncated, head_of(truncated), checkpoints={5: checkpoint})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (4, BreakReason.MISSING)


def test_a_head_holding_another_hash_is_reported() -> None:
    records = build_chain(3)
    report = verify(records, ChainHead(3, "f" * 64))
    assert report.broken is not None
    assert report.broken.reason == BreakReason.HEAD_MISMATCH


def test_changed_query_fields_are_named() -> None:
    records = build_chain(3)
    report = verify(records, head_of(records), indexes={2: {"n": 3}})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (2, BreakReason.INDEX_MISMATCH)
    assert "n" in report.broken.detail


def test_after_a_purge_the_checkpoint_before_the_first_kept_record_anchors_it() -> None:
    records = build_chain(6)
    anchor = sign(records[2])
    kept = records[3:]
    report = verify(kept, head_of(records), checkpoints={3: anchor})
    assert report.valid
    assert report.first_seq == 4
    assert report.anchored_through == 3


def test_after_a_purge_the_first_kept_record_must_match_its_anchor() -> None:
    records = build_chain(6)
    kept = records[3:]
    kept[0] = dataclasses.replace(kept[0], data={"n": 0})
    report = verify(kept, head_of(records), checkpoints={3: sign(records[2])})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (4, BreakReason.ALTERED)


def test_after_a_purge_a_forged_anchor_is_refused() -> None:
    records = build_chain(6)
    report = verify(records[3:], head_of(records), checkpoints={3: sign(records[2], OTHER_SIGNER)})
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (4, BreakReason.UNANCHORED)


def test_a_rotated_key_still_verifies_the_checkpoints_it_signed() -> None:
    records = build_chain(3)
    old = sign(records[1], OTHER_SIGNER)
    previous = base64.b64encode(public_key_bytes(OTHER_SIGNER.public_key)).decode()
    report = verify(records, head_of(records), checkpoints={2: old}, keys=TrustedKeys.of(SIGNER, [previous]))
    assert report.valid


def test_verification_recomputes_the_query_fields_of_real_records(audit: Any) -> None:
    record = append_to(EMPTY_HEAD, entry_of(audit.access_event()), recorded_at="2025-03-12T13:05:00Z")
    verifier = ChainVerifier(checkpoints={}, signature_valid=lambda _: True, index_of=record_index)
    index = index_fields(record.type, record.data, record.time)
    assert verifier.feed(StoredRecord(record, {**index, "patient_key": "pid:OTHER:1"})) is False
    assert verifier.broken is not None
    assert verifier.broken.reason == BreakReason.INDEX_MISMATCH


@pytest.mark.parametrize("seed", ["not base64!", "c2hvcnQ="])
def test_a_malformed_signing_key_is_refused(seed: str) -> None:
    with pytest.raises(InvalidKeyError):
        CheckpointSigner.from_base64_seed(seed)
