"""DIMSE entrypoint of ingest: a Verification and Storage SCP (PS3.4 Annexes A and B, PS3.7 §9.1.1, §9.1.5).

Modalities and PACS send instances by C-STORE to the AE title and port of the settings. The SCP accepts
the Storage SOP Classes and Transfer Syntaxes the archive accepts (:mod:`emage_ingest.domain.sop_classes`),
taking, for each presentation context, the first transfer syntax the requestor proposes among them: what is
received is what is archived, never transcoded. Deflated Explicit VR Little Endian is not among them, so an
SCU proposing it falls back to another syntax it offered in the same context.

Each data set is written to a temporary file as it arrives (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``),
never held whole in memory, and handed to :meth:`IngestService.store_instance` on the service's event loop.
The C-STORE response is sent only once that returns, so a success status means the instance is durable in
the archive and its ``instance.stored`` event is durable in Kafka or the outbox.

The facility of an instance is the one the settings map the calling AE title to, else the default facility;
with ``dimse_reject_unknown_calling_ae`` an unmapped calling AE title is refused at association time
(A-ASSOCIATE-RJ, "calling AE title not recognized", PS3.8 §9.3.4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import Counter, Histogram
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from emage_ingest.domain.sop_classes import ACCEPTED_STORAGE_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from emage_ingest.domain.status import FailureReason
from emage_ingest.service import StoreOutcome, StoreRequest
from emage_ingest.settings import Settings

logger = logging.getLogger(__name__)

SUCCESS: Final = 0x0000
#: Implicit VR Little Endian: the default transfer syntax every DICOM AE supports (PS3.5 §10.1).
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
UNCOMPRESSED: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: Reversible encodings (PS3.5 §8.2): JPEG 2000 and HTJ2K (incl. RPCL) lossless, JPEG-LS lossless,
#: JPEG lossless (process 14, selection value 1 and any), RLE, encapsulated uncompressed.
LOSSLESS_COMPRESSED: Final = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1.98",
)
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
_ERROR_COMMENT_LENGTH: Final = 64  # Error Comment (0000,0902) is LO

C_STORE_RESPONSES = Counter(
    "emage_dimse_c_store_responses", "C-STORE responses sent by the SCP, by DICOM status.", ["status"]
)
C_STORE_DURATION = Histogram(
    "emage_dimse_c_store_seconds", "From a complete C-STORE request to its response (durable or refused)."
)


class InstanceStore(Protocol):
    """The store use case (:class:`emage_ingest.service.IngestService`)."""

    def store_instance(
        self, part10_path: Path, request: StoreRequest
    ) -> Coroutine[Any, Any, StoreOutcome]: ...


def c_store_status(outcome: StoreOutcome) -> int:
    """The C-STORE response Status (PS3.4 Table B.2-1, PS3.7 Annex C) of a store outcome.

    Stored and duplicate (same SOP Instance UID, same bytes) are Success; a store with a warning reason
    (e.g. 0xB000 coercion, e-mage's 0xB00E replacement) is that Warning; a failure keeps its reason: the
    store use case speaks the C-STORE vocabulary (0xA700 out of resources, 0xA900 data set does not match
    SOP class, 0xCxxx cannot understand, 0x0110 processing failure, 0x0111 duplicate SOP instance, 0x0122
    SOP class not supported).
    """
    if outcome.succeeded:
        return outcome.warning_reason if outcome.warning_reason is not None else SUCCESS
    if outcome.failure_reason is None:
        return int(FailureReason.PROCESSING_FAILURE)
    return outcome.failure_reason


def accepted_transfer_syntaxes(settings: Settings) -> list[str]:
    """The transfer syntaxes the SCP accepts, in its order of preference.

    pynetdicom answers a presentation context with the first of these the requestor proposed in it, so the
    order decides what an SCU that offers several syntaxes in one context sends: lossless compression
    first (smaller, and identical pixels), then uncompressed, and lossy or video syntaxes last, so that the
    archive never makes an SCU compress with loss what it could send without. An SCU offers a file's own
    syntax in a context of its own (as dcmtk's ``storescu`` does), where it is accepted as it is.

    The settings may narrow and reorder them, to syntaxes the archive accepts; :class:`ValueError`
    otherwise.
    """
    if settings.dimse_transfer_syntaxes:
        refused = sorted(set(settings.dimse_transfer_syntaxes) - ACCEPTED_TRANSFER_SYNTAXES)
        if refused:
            raise ValueError(
                f"EMAGE_INGEST_DIMSE_TRANSFER_SYNTAXES has syntaxes the archive refuses: {refused}"
            )
        return list(dict.fromkeys(settings.dimse_transfer_syntaxes))
    preferred = [uid for uid in (*LOSSLESS_COMPRESSED, *UNCOMPRESSED) if uid in ACCEPTED_TRANSFER_SYNTAXES]
    return preferred + sorted(ACCEPTED_TRANSFER_SYNTAXES - set(preferred))


def facility_of(calling_ae_title: str, settings: Settings) -> str:
    """The FINESS of the facility a calling AE title belongs to (AE titles compare without padding)."""
    facilities = {title.strip(): finess for title, finess in settings.ae_title_facilities.items()}
    return facilities.get(calling_ae_title.strip(), settings.default_facility)


def _response(status: int, comment: str = "") -> Dataset:
    response = Dataset()
    response.Status = status
    if comment and status != SUCCESS:
        # Error Comment (0000,0902): shown by SCUs such as dcmtk's storescu; LO, so short and plain.
        response.ErrorComment = comment.replace("\\", "/")[:_ERROR_COMMENT_LENGTH]
    return response


@dataclass
class DimseScp:
    """A running SCP; :meth:`stop` closes it."""

    server: ThreadedAssociationServer
    drain_seconds: float

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    async def stop(self) -> None:
        """Stop accepting associations, let the open ones finish for up to ``drain_seconds``, then abort
        what remains. Waits in a worker thread: the stores of those associations need this event loop."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self.server.shutdown()
        deadline = time.monotonic() + self.drain_seconds
        for association in self.server.active_associations:
            association.join(max(0.0, deadline - time.monotonic()))
        for association in self.server.active_associations:
            logger.warning("dimse: aborting an association still open at shutdown")
            association.abort()


class _StoreHandler:
    """``EVT_C_STORE``: runs in the association's thread and waits for the store on the event loop."""

    def __init__(self, service: InstanceStore, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._settings = settings
        self._loop = loop

    def __call__(self, event: Event) -> Dataset:
        started = time.monotonic()
        calling_ae_title = event.assoc.requestor.ae_title.strip()
        request = StoreRequest(
            source="dimse",
            facility_finess=facility_of(calling_ae_title, self._settings),
            calling_ae_title=calling_ae_title,
        )
        future = asyncio.run_coroutine_threadsafe(
            self._service.store_instance(event.dataset_path, request), self._loop
        )
        try:
            outcome = future.result(timeout=self._settings.dimse_store_timeout_seconds)
        except FutureTimeout:
            future.cancel()
            logger.error(
                "dimse: a C-STORE did not become durable in time", extra={"calling_ae": calling_ae_title}
            )
            response = _response(int(FailureReason.OUT_OF_RESOURCES), "storage timed out; retry later")
        else:
            status = c_store_status(outcome)
            if not outcome.succeeded:
                logger.warning(
                    "dimse: C-STORE refused",
                    extra={
                        "calling_ae": calling_ae_title,
                        "sop_instance_uid": outcome.sop_instance_uid,
                        "status": f"0x{status:04X}",
                        "detail": outcome.detail,
                    },
                )
            response = _response(status, outcome.detail)
        C_STORE_RESPONSES.labels(status=f"0x{int(response.Status):04X}").inc()
        C_STORE_DURATION.observe(time.monotonic() - started)
        return response


def start_dimse_scp(service: InstanceStore, settings: Settings, *, drain_seconds: float = 10.0) -> DimseScp:
    """Start the SCP in background threads; call from the service's running event loop (the lifespan).

    Binds ``settings.dimse_host``:``settings.dimse_port`` (0: a free port, see :attr:`DimseScp.port`).
    """
    loop = asyncio.get_running_loop()
    transfer_syntaxes = accepted_transfer_syntaxes(settings)
    # Receive each data set into a file as its P-DATA arrive instead of into memory.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom logs every PDU at INFO; the SCP logs its own outcomes.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    ae = AE(ae_title=settings.dimse_ae_title)
    ae.maximum_pdu_size = settings.dimse_max_pdu_bytes
    ae.maximum_associations = settings.dimse_max_associations
    ae.require_called_aet = settings.dimse_require_called_ae_title
    if settings.dimse_reject_unknown_calling_ae:
        if not settings.ae_title_facilities:
            # pynetdicom reads an empty list as "any calling AE title": refuse to start instead.
            raise ValueError(
                "EMAGE_INGEST_DIMSE_REJECT_UNKNOWN_CALLING_AE needs EMAGE_INGEST_AE_TITLE_FACILITIES"
            )
        ae.require_calling_aet = [title.strip() for title in settings.ae_title_facilities]
    ae.add_supported_context(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])
    for sop_class_uid in ACCEPTED_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class_uid, transfer_syntaxes)

    handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, _StoreHandler(service, settings, loop))]
    server = ae.start_server((settings.dimse_host, settings.dimse_port), block=False, evt_handlers=handlers)
    if server is None:  # only a blocking start returns nothing
        raise RuntimeError("the DIMSE server did not start")
    scp = DimseScp(server, drain_seconds)
    logger.info(
        "dimse: C-ECHO/C-STORE SCP listening",
        extra={"ae_title": settings.dimse_ae_title, "host": settings.dimse_host, "port": scp.port},
    )
    return scp
