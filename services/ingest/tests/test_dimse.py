"""The DIMSE SCP: statuses, negotiation and the C-STORE path, with pynetdicom as the SCU and a fake store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from emage_ingest.dimse import (
    DimseScp,
    accepted_transfer_syntaxes,
    c_store_status,
    facility_of,
    start_dimse_scp,
)
from emage_ingest.service import StoreOutcome, StoreRequest
from emage_ingest.settings import Settings

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def _outcome(status: str, *, failure: int | None = None, warning: int | None = None) -> StoreOutcome:
    return StoreOutcome(
        status=status,  # type: ignore[arg-type]
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid="1.2.3",
        failure_reason=failure,
        warning_reason=warning,
        detail="what happened",
    )


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (_outcome("stored"), 0x0000),
        (_outcome("duplicate"), 0x0000),
        (_outcome("replaced", warning=0xB00E), 0xB00E),
        (_outcome("stored", warning=0xB000), 0xB000),
        (_outcome("failed", failure=0xA700), 0xA700),
        (_outcome("failed", failure=0xA900), 0xA900),
        (_outcome("failed", failure=0xC000), 0xC000),
        (_outcome("failed", failure=0x0111), 0x0111),
        (_outcome("failed"), 0x0110),
    ],
)
def test_c_store_status_of_each_outcome(outcome: StoreOutcome, status: int) -> None:
    assert c_store_status(outcome) == status


def test_accepted_transfer_syntaxes_prefer_lossless_then_uncompressed_then_lossy() -> None:
    syntaxes = accepted_transfer_syntaxes(Settings())

    assert DEFLATED not in syntaxes  # the archive reads frames by offset: no whole-data-set deflate
    assert syntaxes.index(JPEG_LOSSLESS_SV1) < syntaxes.index(EXPLICIT) < syntaxes.index(IMPLICIT)
    assert syntaxes.index(IMPLICIT) < syntaxes.index(JPEG_BASELINE)
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.102"} <= set(syntaxes)


def test_configured_transfer_syntaxes_keep_their_order_and_must_be_archivable() -> None:
    chosen = Settings(dimse_transfer_syntaxes=(EXPLICIT, JPEG_BASELINE, EXPLICIT))
    assert accepted_transfer_syntaxes(chosen) == [EXPLICIT, JPEG_BASELINE]
    with pytest.raises(ValueError, match="archive refuses"):
        accepted_transfer_syntaxes(Settings(dimse_transfer_syntaxes=(DEFLATED,)))


def test_the_facility_follows_the_calling_ae_title() -> None:
    settings = Settings(ae_title_facilities={"CLIB_CT ": "690000002"}, default_facility="750000001")

    assert facility_of("CLIB_CT", settings) == "690000002"
    assert facility_of("  CLIB_CT  ", settings) == "690000002"
    assert facility_of("SOMEONE", settings) == "750000001"


# --- the SCP over real associations ---------------------------------------------------------------------


@dataclass
class FakeStore:
    """Records each store, checks the received file while the SCP waits, answers ``outcome``."""

    outcome: StoreOutcome = field(default_factory=lambda: _outcome("stored"))
    release: asyncio.Event | None = None
    calls: list[tuple[StoreRequest, Dataset]] = field(default_factory=list)

    async def store_instance(self, part10_path: Path, request: StoreRequest) -> StoreOutcome:
        # The file is complete Part 10 (File Meta Information written by the SCP) and still there.
        self.calls.append((request, dcmread(part10_path)))
        if self.release is not None:
            await self.release.wait()
        return self.outcome


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dimse_host": "127.0.0.1",
        "dimse_port": 0,
        "ae_title_facilities": {"CLIB_MODALITY": "690000002"},
    }
    return Settings(**(values | overrides))


@pytest.fixture
async def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def scp(store: FakeStore) -> AsyncIterator[DimseScp]:
    running = start_dimse_scp(store, _settings(), drain_seconds=2)
    try:
        yield running
    finally:
        await running.stop()


def _ct_slice() -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = CT_IMAGE_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "CT"
    dataset.PatientID = "IPP-B-000002"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def _associate(
    port: int, contexts: list[tuple[str, list[str]]], *, calling: str = "MODALITY", called: str = "EMAGE"
) -> Association:
    ae = AE(ae_title=calling)
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _store(port: int, dataset: Dataset, *, calling: str = "MODALITY") -> Dataset:
    association = _associate(port, [(CT_IMAGE_STORAGE, [EXPLICIT])], calling=calling)
    assert association.is_established
    try:
        status: Dataset = association.send_c_store(dataset)
        return status
    finally:
        association.release()


async def test_c_echo_succeeds(scp: DimseScp) -> None:
    def echo() -> int:
        association = _associate(scp.port, [(VERIFICATION, [IMPLICIT])])
        try:
            return int(association.send_c_echo().Status)
        finally:
            association.release()

    assert await asyncio.to_thread(echo) == 0x0000


async def test_c_store_hands_the_received_file_to_the_store_and_answers_its_outcome(
    scp: DimseScp, store: FakeStore
) -> None:
    sent = _ct_slice()

    status = await asyncio.to_thread(_store, scp.port, sent, calling="CLIB_MODALITY")

    assert status.Status == 0x0000
    (request, received) = store.calls[0]
    assert (request.source, request.facility_finess, request.calling_ae_title) == (
        "dimse",
        "690000002",
        "CLIB_MODALITY",
    )
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert received.file_meta.TransferSyntaxUID == EXPLICIT
    assert received.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID


async def test_an_unmapped_calling_ae_title_stores_for_the_default_facility(
    scp: DimseScp, store: FakeStore
) -> None:
    await asyncio.to_thread(_store, scp.port, _ct_slice(), calling="UNKNOWN")

    assert store.calls[0][0].facility_finess == "750000001"


async def test_a_refused_instance_gets_the_failure_status_and_an_error_comment(
    scp: DimseScp, store: FakeStore
) -> None:
    store.outcome = _outcome("failed", failure=0xA900)

    status = await asyncio.to_thread(_store, scp.port, _ct_slice())

    assert status.Status == 0xA900
    assert status.ErrorComment == "what happened"


async def test_the_response_waits_until_the_store_returned(scp: DimseScp, store: FakeStore) -> None:
    store.release = asyncio.Event()
    sending = asyncio.create_task(asyncio.to_thread(_store, scp.port, _ct_slice()))

    await asyncio.sleep(0.5)
    waited = not sending.done()
    store.release.set()
    status = await sending

    assert waited
    assert status.Status == 0x0000


async def test_negotiation_never_makes_an_scu_compress_with_loss(scp: DimseScp) -> None:
    def negotiate() -> list[str]:
        association = _associate(
            scp.port,
            [
                (CT_IMAGE_STORAGE, [JPEG_BASELINE, EXPLICIT]),
                (CT_IMAGE_STORAGE, [EXPLICIT, JPEG_LOSSLESS_SV1]),
                ("1.2.840.10008.5.1.4.1.1.1", [JPEG_BASELINE]),
                (RT_PLAN_STORAGE, [EXPLICIT]),
            ],
        )
        try:
            accepted = {cx.context_id: cx.transfer_syntax[0] for cx in association.accepted_contexts}
            rejected = {cx.context_id for cx in association.rejected_contexts}
            return [accepted.get(context_id, "rejected") for context_id in (1, 3, 5)] + (
                ["rejected"] if 7 in rejected else []
            )
        finally:
            association.release()

    assert await asyncio.to_thread(negotiate) == [EXPLICIT, JPEG_LOSSLESS_SV1, JPEG_BASELINE, "rejected"]


async def test_an_association_for_another_ae_title_is_rejected(scp: DimseScp) -> None:
    association = await asyncio.to_thread(_associate, scp.port, [(VERIFICATION, [IMPLICIT])], called="OTHER")

    assert association.is_rejected


async def test_unknown_calling_ae_titles_are_rejected_when_configured(store: FakeStore) -> None:
    strict = start_dimse_scp(store, _settings(dimse_reject_unknown_calling_ae=True), drain_seconds=1)
    try:
        known = await asyncio.to_thread(
            _associate, strict.port, [(VERIFICATION, [IMPLICIT])], calling="CLIB_MODALITY"
        )
        unknown = await asyncio.to_thread(
            _associate, strict.port, [(VERIFICATION, [IMPLICIT])], calling="INTRUDER"
        )
        assert known.is_established
        known.release()
        assert unknown.is_rejected
    finally:
        await strict.stop()


async def test_rejecting_unknown_calling_ae_titles_needs_a_mapping(store: FakeStore) -> None:
    with pytest.raises(ValueError, match="AE_TITLE_FACILITIES"):
        start_dimse_scp(store, _settings(dimse_reject_unknown_calling_ae=True, ae_title_facilities={}))


async def test_a_stopped_scp_accepts_no_association(store: FakeStore) -> None:
    stopped = start_dimse_scp(store, _settings(), drain_seconds=1)
    port = stopped.port
    await stopped.stop()

    association = await asyncio.to_thread(_associate, port, [(VERIFICATION, [IMPLICIT])])

    assert not association.is_established
