"""A source PACS reached through DIMSE: C-FIND to find and list, then C-GET or C-MOVE to retrieve (PS3.4
Annex C, Study Root Query/Retrieve Information Model, PS3.7 §9.1.2-9.1.4), with pynetdicom in-process.

* C-GET: the instances come back as C-STORE sub-operations on ingest's own association, for which ingest
  proposes the Storage SOP Classes of the study with the SCP role (PS3.7 §D.3.3.4). Each (SOP Class, transfer
  syntax) pair gets a presentation context of its own where the limit of 128 allows it, so the SCP can send
  every instance in the transfer syntax it holds: nothing is transcoded. Each data set is written to a file
  as it arrives and stored (:class:`~emage_ingest.service.IngestService`) before the sub-operation is
  answered, so a Success sub-operation status means the instance is archived.
* C-MOVE: the PACS sends the instances to ingest's C-STORE SCP (:mod:`emage_ingest.dimse`), which stores
  them for the facility the PACS' calling AE title maps to; the puller then checks that they all arrived.

pynetdicom is blocking: each exchange runs in a worker thread, and C-STORE sub-operations are stored on
the service's event loop while their thread waits, as the SCP does. An association that cannot be
established, is aborted or times out makes the source unavailable (:class:`SourceUnavailableError`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType

from emage_common.events import Acquisition
from emage_ingest.dimse import UNCOMPRESSED, c_store_status
from emage_ingest.domain.sources import (
    DimsePeer,
    PullRejectedError,
    RejectionReason,
    RetrieveMethod,
    SourceInstance,
    SourceStudy,
    SourceUnavailableError,
)
from emage_ingest.domain.status import FailureReason
from emage_ingest.pull import StoreCallback

logger = logging.getLogger(__name__)
T = TypeVar("T")

STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
MAX_PRESENTATION_CONTEXTS: Final = 128
"""Presentation Context IDs are the odd numbers 1-255 (PS3.8 §9.3.2.2)."""
_PENDING: Final = frozenset({0xFF00, 0xFF01})
_SUCCESS: Final = 0x0000
_CANCEL: Final = 0xFE00
# C-FIND/C-GET/C-MOVE failures (PS3.4 Tables C.4-1 to C.4-3) retrying cannot change.
_REFUSED: Final = {
    0x0122: (RejectionReason.SOURCE_REFUSED_REQUEST, "SOP class not supported"),
    0x0124: (RejectionReason.SOURCE_REFUSED_CREDENTIALS, "refused: not authorized"),
    0xA801: (RejectionReason.SOURCE_REFUSED_REQUEST, "move destination unknown"),
    0xA900: (RejectionReason.SOURCE_REFUSED_REQUEST, "identifier does not match SOP class"),
}


def storage_contexts(
    sop_class_uids: Sequence[str], transfer_syntaxes: Sequence[str], *, limit: int
) -> list[tuple[str, list[str]]]:
    """The storage presentation contexts to propose for C-GET, at most ``limit``.

    One context per (SOP Class, transfer syntax), so that the SCP may send each instance in its own transfer
    syntax without transcoding; when that exceeds ``limit``, the SOP classes that do not fit get a single
    context offering every syntax, in ``transfer_syntaxes``' order of preference.
    """
    classes = list(dict.fromkeys(sop_class_uids))
    syntaxes = list(dict.fromkeys(transfer_syntaxes))
    if len(classes) > limit:
        raise ValueError(f"{len(classes)} SOP classes cannot fit in {limit} presentation contexts")
    if len(syntaxes) <= 1:
        return [(uid, syntaxes) for uid in classes]
    # k classes with one context per syntax, the others one context each: k·t + (n - k) <= limit.
    separate = min(len(classes), (limit - len(classes)) // (len(syntaxes) - 1))
    contexts = [(uid, [syntax]) for uid in classes[:separate] for syntax in syntaxes]
    contexts += [(uid, syntaxes) for uid in classes[separate:]]
    return contexts


def _status(response: Dataset | None) -> int | None:
    if response is None or "Status" not in response:
        return None
    return int(response.Status)


class DimseStudySource:
    """C-FIND, C-GET and C-MOVE exchanges with one configured DIMSE peer, each on its own association."""

    def __init__(
        self,
        peer: DimsePeer,
        *,
        retrieve_method: RetrieveMethod,
        calling_ae_title: str,
        move_destination: str,
        accepted_sop_classes: frozenset[str],
        transfer_syntaxes: Sequence[str],
        timeout_s: float,
        max_pdu_bytes: int,
    ) -> None:
        self._peer = peer
        self._method = retrieve_method
        self._calling_ae_title = calling_ae_title
        self._move_destination = move_destination
        self._accepted_sop_classes = accepted_sop_classes
        self._transfer_syntaxes = list(transfer_syntaxes)
        self._timeout_s = timeout_s
        self._max_pdu_bytes = max_pdu_bytes
        self._listed: dict[str, list[SourceInstance]] = {}
        self._association: Association | None = None

    @property
    def _where(self) -> str:
        return f"{self._peer.ae_title}@{self._peer.host}:{self._peer.port}"

    # --- Query ----------------------------------------------------------------------------------------------

    async def find_studies(self, acquisition: Acquisition) -> list[SourceStudy]:
        """C-FIND at STUDY level by Study Instance UID, else by Accession Number and Patient ID."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = acquisition.study_instance_uid or ""
        query.AccessionNumber = "" if acquisition.study_instance_uid else acquisition.accession_number
        query.PatientID = "" if acquisition.study_instance_uid else acquisition.patient.patient_id
        matches = await self._in_thread(lambda: self._find([query]))
        return [
            SourceStudy(
                str(match.StudyInstanceUID),
                str(match.get("PatientID", "")) or None,
                str(match.get("AccessionNumber", "")) or None,
            )
            for match in matches
            if match.get("StudyInstanceUID")
        ]

    async def list_instances(self, study_instance_uid: str) -> list[SourceInstance]:
        """C-FIND at SERIES level, then at IMAGE level in each series (hierarchical, PS3.4 §C.4.1.3.1)."""

        def exchange() -> list[SourceInstance]:
            with self._associated([(STUDY_ROOT_FIND, list(UNCOMPRESSED))]) as association:
                series_query = Dataset()
                series_query.QueryRetrieveLevel = "SERIES"
                series_query.StudyInstanceUID = study_instance_uid
                series_query.SeriesInstanceUID = ""
                series = [str(match.SeriesInstanceUID) for match in self._matches(association, series_query)]
                found: dict[str, SourceInstance] = {}
                for series_uid in dict.fromkeys(series):
                    image_query = Dataset()
                    image_query.QueryRetrieveLevel = "IMAGE"
                    image_query.StudyInstanceUID = study_instance_uid
                    image_query.SeriesInstanceUID = series_uid
                    image_query.SOPInstanceUID = ""
                    image_query.SOPClassUID = ""
                    for match in self._matches(association, image_query):
                        sop = str(match.get("SOPInstanceUID", ""))
                        sop_class = str(match.get("SOPClassUID", "")) or None
                        if sop:
                            found[sop] = SourceInstance(series_uid, sop, sop_class)
                return list(found.values())

        listed = await self._in_thread(exchange)
        self._listed[study_instance_uid] = listed
        return listed

    def _find(self, queries: Sequence[Dataset]) -> list[Dataset]:
        with self._associated([(STUDY_ROOT_FIND, list(UNCOMPRESSED))]) as association:
            return [match for query in queries for match in self._matches(association, query)]

    def _matches(self, association: Association, query: Dataset) -> Iterator[Dataset]:
        for response, identifier in association.send_c_find(query, STUDY_ROOT_FIND):
            status = _status(response)
            if status is None:
                raise SourceUnavailableError(f"C-FIND to {self._where}: no response (aborted or timed out)")
            if status in _PENDING:
                if identifier is not None:
                    yield identifier
                continue
            self._check_final("C-FIND", status)

    # --- Retrieve -------------------------------------------------------------------------------------------

    async def retrieve(
        self, study_instance_uid: str, instances: Sequence[SourceInstance] | None, store: StoreCallback
    ) -> None:
        """C-GET (sub-operations stored through ``store``) or C-MOVE to ingest's SCP; whole study if
        ``instances`` is None, else one request per instance on one association."""
        requests = self._identifiers(study_instance_uid, instances)
        if self._method == "c-move":
            await self._in_thread(lambda: self._move(requests))
            return
        listed = self._listed.get(study_instance_uid) or list(instances or ())
        loop = asyncio.get_running_loop()
        await self._in_thread(lambda: self._get(requests, listed, store, loop))

    def _identifiers(self, study_uid: str, instances: Sequence[SourceInstance] | None) -> list[Dataset]:
        if instances is None:
            whole = Dataset()
            whole.QueryRetrieveLevel = "STUDY"
            whole.StudyInstanceUID = study_uid
            return [whole]
        identifiers = []
        for instance in instances:
            one = Dataset()
            one.QueryRetrieveLevel = "IMAGE"
            one.StudyInstanceUID = study_uid
            one.SeriesInstanceUID = instance.series_instance_uid
            one.SOPInstanceUID = instance.sop_instance_uid
            identifiers.append(one)
        return identifiers

    def _get(
        self,
        requests: Sequence[Dataset],
        listed: Sequence[SourceInstance],
        store: StoreCallback,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        classes = [instance.sop_class_uid for instance in listed]
        if any(uid is None for uid in classes):
            sop_classes = sorted(self._accepted_sop_classes)
        else:
            refused = sorted({uid for uid in classes if uid is not None} - self._accepted_sop_classes)
            if refused:
                raise PullRejectedError(
                    RejectionReason.INSTANCE_REJECTED,
                    f"the study holds SOP classes the archive does not accept: {', '.join(refused)}",
                )
            sop_classes = sorted({uid for uid in classes if uid is not None})
        contexts = [
            (STUDY_ROOT_GET, list(UNCOMPRESSED)),
            *storage_contexts(sop_classes, self._transfer_syntaxes, limit=MAX_PRESENTATION_CONTEXTS - 1),
        ]
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, self._store_handler(store, loop))]
        with self._associated(contexts, roles=roles, handlers=handlers) as association:
            for request in requests:
                self._retrieve_one("C-GET", association.send_c_get(request, STUDY_ROOT_GET))

    def _move(self, requests: Sequence[Dataset]) -> None:
        with self._associated([(STUDY_ROOT_MOVE, list(UNCOMPRESSED))]) as association:
            for request in requests:
                self._retrieve_one(
                    "C-MOVE", association.send_c_move(request, self._move_destination, STUDY_ROOT_MOVE)
                )

    def _retrieve_one(self, what: str, responses: Iterator[tuple[Dataset, Dataset | None]]) -> None:
        for response, _identifier in responses:
            status = _status(response)
            if status is None:
                raise SourceUnavailableError(f"{what} from {self._where}: no response (aborted or timed out)")
            if status in _PENDING:
                continue
            if status != _SUCCESS and response is not None:
                failed = int(response.get("NumberOfFailedSuboperations", 0) or 0)
                logger.warning(
                    "pull: %s from %s ended with status 0x%04X (%d failed sub-operation(s))",
                    what,
                    self._where,
                    status,
                    failed,
                )
            # Warnings (0xB000) and sub-operation failures leave instances missing: the puller checks.
            if status not in (_SUCCESS, 0xB000, 0xA702):
                self._check_final(what, status)

    def _store_handler(self, store: StoreCallback, loop: asyncio.AbstractEventLoop) -> Callable[[Event], int]:
        def on_c_store(event: Event) -> int:
            path = Path(event.dataset_path)
            try:
                future = asyncio.run_coroutine_threadsafe(store(path), loop)
                try:
                    outcome = future.result(timeout=max(self._timeout_s, 300.0))
                except FutureTimeout:
                    future.cancel()
                    return int(FailureReason.OUT_OF_RESOURCES)
                return c_store_status(outcome)
            finally:
                with suppress(OSError):
                    path.unlink()

        return on_c_store

    def _check_final(self, what: str, status: int) -> None:
        if status == _SUCCESS:
            return
        if status in _REFUSED:
            reason, text = _REFUSED[status]
            raise PullRejectedError(reason, f"{what} to {self._where}: 0x{status:04X} {text}")
        if status == _CANCEL:
            raise SourceUnavailableError(f"{what} to {self._where}: cancelled by the peer")
        raise SourceUnavailableError(f"{what} to {self._where}: failed with status 0x{status:04X}")

    # --- Associations ---------------------------------------------------------------------------------------

    @contextmanager
    def _associated(
        self,
        contexts: Sequence[tuple[str, list[str]]],
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[EventHandlerType] = (),
    ) -> Iterator[Association]:
        ae = AE(ae_title=self._calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout_s
        ae.connection_timeout = self._timeout_s
        for abstract_syntax, syntaxes in contexts:
            ae.add_requested_context(abstract_syntax, syntaxes)
        association = ae.associate(
            self._peer.host,
            self._peer.port,
            ae_title=self._peer.ae_title,
            max_pdu=self._max_pdu_bytes,
            ext_neg=list(roles) or None,
            evt_handlers=list(handlers) or None,
        )
        if not association.is_established:
            state = "rejected" if association.is_rejected else "could not be established"
            raise SourceUnavailableError(f"the association with {self._where} {state}")
        self._association = association
        try:
            yield association
        finally:
            self._association = None
            if association.is_established:
                association.release()

    async def _in_thread(self, exchange: Callable[[], T]) -> T:
        """Run a blocking exchange in a worker thread; abort its association if the pull is cancelled."""
        try:
            return await asyncio.to_thread(exchange)
        except asyncio.CancelledError:
            association = self._association
            if association is not None:
                association.abort()
            raise


@asynccontextmanager
async def open_dimse_source(
    peer: DimsePeer,
    *,
    retrieve_method: RetrieveMethod,
    calling_ae_title: str,
    move_destination: str,
    accepted_sop_classes: frozenset[str],
    transfer_syntaxes: Sequence[str],
    timeout_s: float,
    max_pdu_bytes: int,
) -> AsyncIterator[DimseStudySource]:
    """A DIMSE client of ``peer`` for one pull attempt (associations are opened per exchange)."""
    # C-STORE sub-operations are written to a file as their P-DATA arrive (as the SCP does), never held whole.
    _config.STORE_RECV_CHUNKED_DATASET = True
    yield DimseStudySource(
        peer,
        retrieve_method=retrieve_method,
        calling_ae_title=peer.calling_ae_title or calling_ae_title,
        move_destination=move_destination,
        accepted_sop_classes=accepted_sop_classes,
        transfer_syntaxes=transfer_syntaxes,
        timeout_s=timeout_s,
        max_pdu_bytes=max_pdu_bytes,
    )
