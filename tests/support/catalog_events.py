"""Filling the catalog through its real input: synthetic ``instance.stored`` events published as ingest does.

Each test module keeps its own UID root, facilities, patients, modalities and dates, so that the session's
other modules, searching the same catalog, never find its studies; this module only builds and sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from emage_common.events import INSTANCE_STORED_TOPIC, InstanceStored, PatientIdentity, make_event
from emage_common.kafka import EventPublisher, build_kafka_config
from emage_common.settings import ServiceSettings

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
WAIT_S = 60

T = TypeVar("T")


@dataclass(frozen=True)
class SyntheticInstances:
    """A module's instances: under its UID root (study ``{root}.{study}``, series ``{study}.{series}``,
    instance ``{series}.{instance}``), each an image of ``rows`` rows and columns of zero pixels, all stored
    alike."""

    root: str
    rows: int
    size_bytes: int
    sha256: str
    stored_at: datetime
    bulk_data_threshold: int
    """Elements longer than this (the pixel data) are bulk data URIs under the instance's path."""

    def event(
        self,
        study: int | str,
        series: int,
        instance: int,
        *,
        modality: str,
        sop_class: str,
        facility: str,
        patient_id: str,
        patient_name: str,
        study_date: str,
        study_time: str,
        accession: str,
        **attributes: Any,
    ) -> InstanceStored:
        """The event of instance ``instance`` of series ``series`` of study ``study``, stored at ``facility``
        for its patient ``patient_id``; ``attributes`` (DICOM keyword: value) are set after Modality."""
        study_uid = f"{self.root}.{study}"
        series_uid = f"{study_uid}.{series}"
        sop_uid = f"{series_uid}.{instance}"
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.StudyTime = study_time
        ds.AccessionNumber = accession
        ds.Modality = modality
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series
        ds.InstanceNumber = instance
        ds.Rows = ds.Columns = self.rows
        ds.BitsAllocated = 16
        ds.add(DataElement(0x7FE00010, "OW", bytes(self.rows * self.rows * 2)))
        instance_path = f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        return InstanceStored(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
            object_key=instance_path,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            facility_finess=facility,
            patient=PatientIdentity(patient_id=patient_id, issuer_of_patient_id=facility),
            modality=modality,
            stored_at=self.stored_at,
            dicom_json=ds.to_json_dict(
                bulk_data_threshold=self.bulk_data_threshold,
                bulk_data_element_handler=lambda element: f"{instance_path}/bulk/{element.tag:08X}",
            ),
        )


def numbered_instances(studies: int) -> Iterator[tuple[int, int, int]]:
    """Study, series and instance numbers of studies 1 to ``studies``: study ``n`` has ``n % 3 + 1`` series of
    3 instances."""
    for study in range(1, studies + 1):
        for series in range(1, study % 3 + 2):
            for instance in range(1, 4):
                yield study, series, instance


def ingest_publisher(kafka_bootstrap: str) -> EventPublisher:
    """A publisher configured as the ingest service's (to be entered: ``async with``)."""
    return EventPublisher(
        build_kafka_config(
            ServiceSettings(service_name="ingest", http_port=8081, kafka_bootstrap_servers=kafka_bootstrap)
        )
    )


async def publish_stored(kafka_bootstrap: str, events: Iterable[InstanceStored]) -> None:
    """Publish ``events`` on ``emage.instance.stored.v1``, in order, as ingest does."""
    async with ingest_publisher(kafka_bootstrap) as publisher:
        for stored in events:
            await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))


async def answers(
    client: httpx.AsyncClient, queries: Sequence[tuple[str, Mapping[str, str]]]
) -> list[tuple[int, str | None, bytes]]:
    """Status, total count (``X-Total-Count``) and body of every query (path, parameters), in order."""
    responses = [await client.get(path, params=params) for path, params in queries]
    return [(r.status_code, r.headers.get("X-Total-Count"), r.content) for r in responses]


async def settled_answers(
    client: httpx.AsyncClient, queries: Sequence[tuple[str, Mapping[str, str]]]
) -> list[tuple[int, str | None, bytes]]:
    """The :func:`answers` to ``queries`` if they are the same 0.5 s later (the last instances' series and
    study documents are written too), else none."""
    first = await answers(client, queries)
    await asyncio.sleep(0.5)
    return first if await answers(client, queries) == first else []


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = WAIT_S) -> T:
    """The first truthy result of ``check``, called every 0.2 s (``TimeoutError`` after ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.2)
