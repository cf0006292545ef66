"""Event entrypoint of ingest: the ``emage.acquisition.v1`` consumer, which pulls announced studies.

The consumer (group ``EMAGE_INGEST_PULL_CONSUMER_GROUP``) hands each event to
:meth:`~emage_ingest.pull.StudyPuller.pull` and commits its offset only once the whole study is archived, or
once the event is on ``emage.acquisition.v1.dlq``:

* an event that is no CloudEvent, or whose data is no valid ``Acquisition`` (schema violation), and an event
  the puller rejects (:class:`~emage_ingest.domain.sources.PullRejectedError`: unknown facility, source not
  configured for it, study ambiguous or of another patient at the source, instances the archive refuses) is
  dead-lettered at once;
* while the source is unavailable (:class:`~emage_ingest.domain.sources.SourceUnavailableError`: unreachable,
  timing out, or not holding the whole study yet) the pull is attempted again with exponential backoff, up to
  ``EMAGE_INGEST_PULL_MAX_ATTEMPTS`` attempts, then dead-lettered.

The dead letter keeps the original record and adds the ConsumerRunner's ``emage-dlq-*`` headers: the error
type, its message (led by the rejection reason code), the number of attempts and the failure times. Each
retry lists the study again and retrieves only what is still missing, so a study is archived, and announced
on ``instance.stored``, once. Events are fetched one per poll, so a long pull never makes the broker move its
partition to another member while it runs (``max.poll.interval.ms`` covers the whole retry budget).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from emage_common.events import ACQUISITION_TOPIC, Acquisition, CloudEvent
from emage_common.kafka import ConsumerRecordMeta, ConsumerRunner, EventHandler, build_kafka_config
from emage_common.runtime import ServiceRuntime
from emage_ingest.adapters.dicomweb_source import open_dicomweb_source
from emage_ingest.adapters.dimse_source import open_dimse_source
from emage_ingest.adapters.repository import InstanceIndex
from emage_ingest.dimse import accepted_transfer_syntaxes
from emage_ingest.domain.sop_classes import ACCEPTED_STORAGE_SOP_CLASSES
from emage_ingest.domain.sources import DicomWebPeer, ResolvedSource
from emage_ingest.pull import SourceOpener, StudyPuller, StudySource
from emage_ingest.service import IngestService
from emage_ingest.settings import Settings

logger = logging.getLogger(__name__)


def acquisition_handler(puller: StudyPuller) -> EventHandler:
    """The handler of ``emage.acquisition.v1`` records: pull the announced study, all of it."""

    async def on_acquisition(event: CloudEvent, meta: ConsumerRecordMeta) -> None:
        acquisition = event.data_as(Acquisition)
        report = await puller.pull(acquisition)
        logger.info(
            "pull: study %s complete (%d instance(s), %d retrieved) after %d attempt(s)",
            report.study_instance_uid,
            report.instances,
            report.retrieved,
            meta.attempt,
            extra={"facility": acquisition.facility_finess, "event_id": event.id},
        )

    return on_acquisition


def source_opener(settings: Settings, transfer_syntaxes: Sequence[str]) -> SourceOpener:
    """How the puller opens a resolved source: an HTTP client, or DIMSE associations, from the settings."""

    def open_source(resolved: ResolvedSource) -> AbstractAsyncContextManager[StudySource]:
        if isinstance(resolved, DicomWebPeer):
            return open_dicomweb_source(
                resolved,
                timeout_s=settings.pull_request_timeout_seconds,
                spool_dir=settings.stow_spool_dir,
                max_instance_bytes=settings.stow_max_part_bytes,
            )
        return open_dimse_source(
            resolved.peer,
            retrieve_method=resolved.retrieve,
            calling_ae_title=settings.dimse_ae_title,
            move_destination=settings.dimse_ae_title,
            accepted_sop_classes=frozenset(ACCEPTED_STORAGE_SOP_CLASSES),
            transfer_syntaxes=transfer_syntaxes,
            timeout_s=settings.pull_request_timeout_seconds,
            max_pdu_bytes=settings.dimse_max_pdu_bytes,
        )

    return open_source


@asynccontextmanager
async def acquisition_consumer(
    settings: Settings, runtime: ServiceRuntime, service: IngestService, index: InstanceIndex
) -> AsyncIterator[ConsumerRunner]:
    """The running acquisition consumer; stopped (its last pull finished, offsets committed) on exit."""
    puller = StudyPuller(
        store=service,
        archived=index,
        open_source=source_opener(settings, accepted_transfer_syntaxes(settings)),
        sources=settings.pull_sources,
        ae_title_facilities=settings.ae_title_facilities,
        attempt_timeout_s=settings.pull_attempt_timeout_seconds,
    )
    policy = settings.pull_retry_policy
    consumer = ConsumerRunner(
        build_kafka_config(settings),
        topics=[ACQUISITION_TOPIC],
        group_id=settings.pull_consumer_group,
        handler=acquisition_handler(puller),
        dlq_publisher=runtime.publisher,
        max_attempts=policy.max_attempts,
        initial_backoff_s=policy.initial_backoff_s,
        max_backoff_s=policy.max_backoff_s,
        max_records=1,
        max_poll_interval_ms=policy.max_poll_interval_ms,
    )
    await consumer.start()
    runtime.watch_consumer(consumer)
    try:
        yield consumer
    finally:
        await consumer.stop()
