"""The ingest service layer: store one received DICOM Part 10 object, whatever path it came by.

:meth:`IngestService.store_instance` is the one write use case behind STOW-RS, DIMSE C-STORE, bulk import
and pulls. It acknowledges an instance (returns a successful outcome) only when the object is durable in
the archive and its ``instance.stored`` event is durable in Kafka or, if Kafka is unavailable, in the
outbox that the relay drains: nothing acknowledged is ever lost (ARCHITECTURE.md, "Events").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol, get_args

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from emage_common.events import INSTANCE_STORED_TOPIC, CloudEvent, InstanceStored, PatientIdentity, make_event
from emage_common.outbox import DirectPublication
from emage_common.outbox import EventSink as EventSink
from emage_common.outbox import OutboxMarks as OutboxMarks
from emage_ingest.adapters.repository import ConcurrentStoreError, OutboxEntry
from emage_ingest.domain.conflict import ConflictPolicy, StoreDecision, decide
from emage_ingest.domain.instance import InstanceHeader, read_instance_header
from emage_ingest.domain.keys import instance_object_key, replacement_object_key
from emage_ingest.domain.model import ArchivedInstance
from emage_ingest.domain.status import FailureReason, StoreRejectedError, WarningReason

logger = logging.getLogger(__name__)

EVENT_SOURCE: Final = "/emage/ingest"
_CLAIM_LEASE: Final = timedelta(minutes=10)
_CLAIM_POLL_S: Final = 0.05
_CLAIM_WAIT_S: Final = 60.0
# The archive or its index is unreachable: the sender should retry later (0xA700), not give up.
_UNAVAILABLE_ERRORS: Final = (PyMongoError, BotoCoreError, ClientError, OSError, ConcurrentStoreError)

StoreSource = Literal["stow", "dimse", "import", "pull"]
StoreStatus = Literal["stored", "duplicate", "replaced", "failed"]

INGESTED_BYTES: Final = Counter(
    "emage_ingest_bytes",
    "Bytes of DICOM Part 10 objects made durable: in the archive, recorded in the index with their "
    "instance.stored event. Duplicates and refused instances add nothing. By arrival path.",
    ["path"],
)
# Every path's series exists from the start at 0, so that rate() sees the first instance of each.
for _path in get_args(StoreSource):
    INGESTED_BYTES.labels(path=_path)


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """How an instance arrived: by which path, for which facility, and what the sender said it is."""

    source: StoreSource
    facility_finess: str
    expected_study_uid: str | None = None
    """The Study Instance UID of the STOW-RS target resource (``POST /studies/{study}``), if any."""
    calling_ae_title: str | None = None


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of one store, with the DICOM status (PS3.18 Annex I.2, PS3.4 §B.2.3) to report."""

    status: StoreStatus
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int | None = None
    warning_reason: int | None = None
    detail: str = ""
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status != "failed"


class InstanceRecords(Protocol):
    """The instance index as storing needs it (:class:`~emage_ingest.adapters.repository.InstanceIndex`)."""

    async def get(self, sop_instance_uid: str) -> ArchivedInstance | None: ...

    async def claim(self, sop_instance_uid: str, token: str, lease: timedelta) -> bool: ...

    async def release(self, sop_instance_uid: str, token: str) -> None: ...

    async def record(
        self,
        instance: ArchivedInstance,
        entry: OutboxEntry,
        *,
        claim_token: str,
        replaces_sha256: str | None,
        publishing_lease: timedelta,
        publisher_id: str,
    ) -> None: ...


class ArchiveWriter(Protocol):
    """The archive as storing needs it (:class:`~emage_ingest.adapters.archive.InstanceArchive`)."""

    async def put(self, key: str, study_uid: str, source_file: Path) -> None: ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Inspected:
    path: Path
    header: InstanceHeader
    sha256: str
    size_bytes: int


_PREAMBLE: Final = bytes(128) + b"DICM"
_FILE_META_GROUP: Final = b"\x02\x00"


def _with_part10_preamble(path: Path) -> Path | None:
    """A copy of ``path`` with the 128-byte preamble and ``DICM`` prefix (PS3.10 §7.1), if it lacks them.

    Some clients (pydicom's ``dcmwrite`` without ``enforce_file_format``, hence dicomweb-client) send the File
    Meta Information and the data set without the preamble. The object is archived as a conformant Part 10
    file, so that what WADO-RS returns is one; anything else is left for validation to refuse.
    """
    with path.open("rb") as received:
        head = received.read(len(_PREAMBLE))
        if head[128:] == b"DICM" or not head.startswith(_FILE_META_GROUP):
            return None
        fixed = path.with_name(f"{path.name}.part10")
        with fixed.open("wb") as out:
            out.write(_PREAMBLE)
            received.seek(0)
            shutil.copyfileobj(received, out, 1024 * 1024)
    return fixed


def _inspect(part10_path: Path) -> _Inspected:
    """Parse and validate the file, and compute its SHA-256 (blocking: run in a worker thread)."""
    with part10_path.open("rb") as fp:
        size = fp.seek(0, 2)
        fp.seek(0)
        header = read_instance_header(fp, size)
        fp.seek(0)
        digest = hashlib.file_digest(fp, "sha256").hexdigest()
    return _Inspected(part10_path, header, digest, size)


def _failed(reason: FailureReason, detail: str, header: InstanceHeader | None = None) -> StoreOutcome:
    return StoreOutcome(
        status="failed",
        sop_class_uid=header.sop_class_uid if header else None,
        sop_instance_uid=header.sop_instance_uid if header else None,
        failure_reason=int(reason),
        detail=detail,
        study_instance_uid=header.study_instance_uid if header else None,
        series_instance_uid=header.series_instance_uid if header else None,
    )


def _succeeded(
    status: StoreStatus, header: InstanceHeader, detail: str, warning: WarningReason | None = None
) -> StoreOutcome:
    return StoreOutcome(
        status=status,
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        warning_reason=int(warning) if warning is not None else None,
        detail=detail,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
    )


class IngestService:
    """Validates, deduplicates, archives, records and announces received instances."""

    def __init__(
        self,
        *,
        records: InstanceRecords,
        archive: ArchiveWriter,
        events: EventSink,
        outbox: OutboxMarks,
        conflict_policy: ConflictPolicy,
        replica_id: str,
        publish_timeout: float,
        outbox_lease: timedelta,
        wake_relay: Callable[[], None],
    ) -> None:
        self._records = records
        self._archive = archive
        self._policy = conflict_policy
        self._outbox_lease = outbox_lease
        self._publication = DirectPublication(
            events,
            outbox,
            replica_id=replica_id,
            publish_timeout=publish_timeout,
            wake_relay=wake_relay,
            log_prefix="store: ",
            logger=logger,
        )

    async def store_instance(self, part10_path: Path, request: StoreRequest) -> StoreOutcome:
        """Store the Part 10 object at ``part10_path`` (which the caller owns and deletes afterwards).

        Never raises for bad input or an unavailable dependency: the outcome carries the failure reason.
        Identical bytes under a known SOP Instance UID are a ``duplicate`` (success, nothing new stored or
        published); different bytes follow the conflict policy.
        """
        with_preamble = await asyncio.to_thread(_with_part10_preamble, part10_path)
        try:
            return await self._store_file(with_preamble or part10_path, request)
        finally:
            if with_preamble is not None:
                await asyncio.to_thread(with_preamble.unlink, True)

    async def _store_file(self, part10_path: Path, request: StoreRequest) -> StoreOutcome:
        try:
            inspected = await asyncio.to_thread(_inspect, part10_path)
        except StoreRejectedError as rejected:
            return _failed(rejected.reason, rejected.detail)
        except Exception:
            logger.exception("store: the received file cannot be read")
            return _failed(FailureReason.PROCESSING_FAILURE, "the received object could not be read")
        header = inspected.header
        if request.expected_study_uid is not None and header.study_instance_uid != request.expected_study_uid:
            return _failed(
                FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"Study Instance UID {header.study_instance_uid} differs from the study of the request "
                f"{request.expected_study_uid} (PS3.18 §10.5.1)",
                header,
            )
        try:
            return await self._store(inspected, request)
        except StoreRejectedError as rejected:
            return _failed(rejected.reason, rejected.detail, header)
        except _UNAVAILABLE_ERRORS:
            logger.warning("store: the archive or its index is unavailable", exc_info=True)
            return _failed(
                FailureReason.OUT_OF_RESOURCES, "the archive is unavailable right now; retry later", header
            )
        except Exception:
            logger.exception("store: unexpected failure")
            return _failed(FailureReason.PROCESSING_FAILURE, "the instance could not be processed", header)

    async def _store(self, inspected: _Inspected, request: StoreRequest) -> StoreOutcome:
        header = inspected.header
        sop_instance_uid = header.sop_instance_uid
        token = uuid.uuid4().hex
        await self._claim(sop_instance_uid, token)
        claimed = True
        try:
            # Under the claim, no other request changes this instance: decide on its stored state.
            existing = await self._records.get(sop_instance_uid)
            decision = decide(existing.sha256 if existing else None, inspected.sha256, self._policy)
            if decision is not StoreDecision.NEW and decision is not StoreDecision.REPLACE:
                return self._settled(decision, header)
            instance, event = self._describe(inspected, request, existing)
            await self._archive.put(instance.object_key, header.study_instance_uid, inspected.path)
            try:
                await self._records.record(
                    instance,
                    OutboxEntry(event.id, INSTANCE_STORED_TOPIC, event),
                    claim_token=token,
                    replaces_sha256=existing.sha256 if existing else None,
                    publishing_lease=self._outbox_lease,
                    publisher_id=self._publication.publisher_id,
                )
                claimed = False  # released by the transaction
            except Exception:
                if not await asyncio.shield(self._recorded_anyway(instance)):
                    raise
                claimed = False
        finally:
            if claimed:
                await asyncio.shield(self._release(sop_instance_uid, token))
        # Durable from here on (object archived, record and outbox entry committed): counted once, whatever
        # becomes of the direct publication, since the relay publishes the event anyway.
        INGESTED_BYTES.labels(path=request.source).inc(inspected.size_bytes)
        # Publish now; if Kafka does not confirm in time, the outbox entry stays for the relay.
        await self._publication.publish(INSTANCE_STORED_TOPIC, event)
        if existing is not None:
            await self._forget(existing.object_key)
            return _succeeded(
                "replaced",
                header,
                f"replaced the version with SHA-256 {existing.sha256}",
                WarningReason.INSTANCE_REPLACED,
            )
        return _succeeded("stored", header, "stored")

    async def _recorded_anyway(self, instance: ArchivedInstance) -> bool:
        """After the record transaction raised: whether it committed all the same.

        A commit whose acknowledgement was lost does leave the record (and outbox entry) in place; the
        object then stays. Otherwise the object is deleted: not recorded, so not stored. When the index
        cannot even be asked, the object stays too, unreferenced, rather than risk deleting a recorded one.
        """
        try:
            recorded = await self._records.get(instance.sop_instance_uid)
        except PyMongoError:
            logger.warning(
                "store: cannot tell whether the record committed; the object is kept", exc_info=True
            )
            return False
        if (
            recorded is not None
            and recorded.object_key == instance.object_key
            and recorded.sha256 == instance.sha256
        ):
            return True
        await self._forget(instance.object_key)
        return False

    def _settled(self, decision: StoreDecision, header: InstanceHeader) -> StoreOutcome:
        if decision is StoreDecision.DUPLICATE:
            return _succeeded("duplicate", header, "already archived with identical content")
        return _failed(
            FailureReason.DUPLICATE_SOP_INSTANCE,
            "this SOP Instance UID is already archived with different content (conflict policy: reject)",
            header,
        )

    def _describe(
        self, inspected: _Inspected, request: StoreRequest, existing: ArchivedInstance | None
    ) -> tuple[ArchivedInstance, CloudEvent]:
        header = inspected.header
        canonical = instance_object_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        object_key = canonical if existing is None else replacement_object_key(canonical, inspected.sha256)
        stored_at = datetime.now(UTC)
        instance = ArchivedInstance(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            object_key=object_key,
            size_bytes=inspected.size_bytes,
            sha256=inspected.sha256,
            stored_at=stored_at,
            facility_finess=request.facility_finess,
            modality=header.modality,
            instance_number=header.instance_number,
            number_of_frames=header.number_of_frames,
            frames=header.frames,
            pixels=header.pixels,
        )
        try:
            patient = PatientIdentity(
                patient_id=header.patient_id,
                # Without an Issuer of Patient ID (0010,0021), the sending facility is the identity domain.
                issuer_of_patient_id=header.issuer_of_patient_id or request.facility_finess,
                ins=header.ins,
            )
            stored = InstanceStored(
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax_uid=header.transfer_syntax_uid,
                object_key=object_key,
                size_bytes=inspected.size_bytes,
                sha256=inspected.sha256,
                facility_finess=request.facility_finess,
                patient=patient,
                modality=header.modality,
                stored_at=stored_at,
                dicom_json=header.dicom_json,
            )
        except ValidationError as invalid:
            first = invalid.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise StoreRejectedError(
                FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{where}: {first['msg']}"
            ) from None
        return instance, make_event(stored, EVENT_SOURCE, subject=header.sop_instance_uid)

    async def _claim(self, sop_instance_uid: str, token: str) -> None:
        async with asyncio.timeout(_CLAIM_WAIT_S):
            # Another request, maybe on another replica, is storing this very instance (a retransmission,
            # usually): the claim lives in MongoDB, so waiting for it is polling.
            while True:
                if await self._records.claim(sop_instance_uid, token, _CLAIM_LEASE):
                    return
                await asyncio.sleep(_CLAIM_POLL_S)

    async def _release(self, sop_instance_uid: str, token: str) -> None:
        try:
            await self._records.release(sop_instance_uid, token)
        except PyMongoError:
            logger.warning("store: releasing a claim failed; it expires by itself", exc_info=True)

    async def _forget(self, object_key: str) -> None:
        try:
            await self._archive.delete(object_key)
        except (BotoCoreError, ClientError, OSError):
            logger.error(
                "store: an unreferenced object could not be deleted", extra={"object_key": object_key}
            )

    async def settle_pending(self) -> None:
        """Wait for the outbox bookkeeping of the publications made so far (at shutdown)."""
        await self._publication.settle_pending()
