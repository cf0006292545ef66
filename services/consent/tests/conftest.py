"""In-memory adapters of the consent service's ports, wired into the service and the app as fixtures.

The catalog fake knows three patients: two with studies at CHU Alpha, one at Clinique Beta (the keys and
facilities the test modules name).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi.testclient import TestClient

from emage_common.events import CloudEvent
from emage_consent.api import create_app
from emage_consent.domain.model import Consent, ConsentRecord
from emage_consent.ports import (
    ConcurrentChangeError,
    ConsentPage,
    ConsentQuery,
    OutboxEntry,
    PatientDirectoryUnavailableError,
)
from emage_consent.service import ConsentService
from emage_consent.settings import Settings

NOW = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)

CHU_ALPHA, CLINIQUE_BETA = "750000001", "690000002"
PATIENT_1 = "pid:750000001:IPP-0001"
PATIENT_2 = "pid:750000001:IPP-0002"
ELSEWHERE = "pid:690000002:IPP-0003"
STUDY_1 = "1.2.826.0.1.3680043.8.498.1"


class MemoryStore:
    """The store, with the same append preconditions as the MongoDB one."""

    def __init__(self) -> None:
        self.consents: dict[str, Consent] = {}
        self.appended: list[ConsentRecord] = []
        self.outbox: list[OutboxEntry] = []
        self.conflicts_to_raise = 0

    async def get(self, consent_id: str) -> Consent | None:
        return self.consents.get(consent_id)

    async def records(self, consent_id: str) -> list[ConsentRecord]:
        return [record for record in self.appended if record.consent_id == consent_id]

    async def history(self, patient_keys: Sequence[str]) -> list[ConsentRecord]:
        return [record for record in self.appended if record.patient_key in patient_keys]

    async def list(self, query: ConsentQuery, *, now: datetime, limit: int, offset: int) -> ConsentPage:
        matching = [
            consent
            for consent in self.consents.values()
            if (query.patient_keys is None or consent.patient_key in query.patient_keys)
            and (query.provision is None or consent.provision == query.provision)
            and (query.state is None or consent.state(now) == query.state)
        ]
        matching.sort(key=lambda consent: consent.created_at, reverse=True)
        return ConsentPage(matching[offset : offset + limit], len(matching))

    async def append(
        self,
        record: ConsentRecord,
        consent: Consent,
        entry: OutboxEntry,
        *,
        publisher_id: str,
        publishing_lease: timedelta,
    ) -> None:
        if self.conflicts_to_raise:
            self.conflicts_to_raise -= 1
            raise ConcurrentChangeError("injected")
        current = self.consents.get(record.consent_id)
        if (current.revision if current is not None else 0) != record.revision - 1:
            raise ConcurrentChangeError("revision")
        self.consents[record.consent_id] = consent
        self.appended.append(record)
        self.outbox.append(entry)


class MemoryDirectory:
    """The catalog: which patient has which study at which facility."""

    def __init__(self, studies: Sequence[tuple[str, str, str]] = ()) -> None:
        self.studies = set(studies)
        self.unavailable = False
        self.asked: list[tuple[str, str, str | None]] = []

    async def has_studies_at(
        self, facility_finess: str, patient_key: str, study_instance_uid: str | None = None
    ) -> bool:
        self.asked.append((facility_finess, patient_key, study_instance_uid))
        if self.unavailable:
            raise PatientDirectoryUnavailableError("down")
        return any(
            finess == facility_finess and key == patient_key and study_instance_uid in (None, study)
            for finess, key, study in self.studies
        )


class MemoryEvents:
    def __init__(self) -> None:
        self.published: list[tuple[str, CloudEvent]] = []
        self.down = False

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        if self.down:
            raise KafkaConnectionError("down")
        self.published.append((topic, event))


class MemoryOutboxMarks:
    def __init__(self) -> None:
        self.published: list[str] = []
        self.handed_back: list[str] = []

    async def mark_published(self, event_id: str, owner: str) -> None:
        self.published.append(event_id)

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None:
        self.handed_back.append(event_id)


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Fakes:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.directory = MemoryDirectory(
            [
                (CHU_ALPHA, PATIENT_1, STUDY_1),
                (CHU_ALPHA, PATIENT_2, "1.2.3.4"),
                (CLINIQUE_BETA, ELSEWHERE, "1.2.5"),
            ]
        )
        self.events = MemoryEvents()
        self.marks = MemoryOutboxMarks()
        self.clock = Clock()
        self.relay_wakeups = 0
        self._ids = 0

    def new_id(self) -> str:
        self._ids += 1
        return f"00000000-0000-4000-8000-{self._ids:012d}"

    def wake(self) -> None:
        self.relay_wakeups += 1

    def service(self) -> ConsentService:
        return ConsentService(
            store=self.store,
            directory=self.directory,
            events=self.events,
            outbox=self.marks,
            replica_id="test",
            publish_timeout=1,
            outbox_lease=timedelta(seconds=15),
            wake_relay=self.wake,
            clock=self.clock,
            new_id=self.new_id,
        )


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def service(fakes: Fakes) -> ConsentService:
    return fakes.service()


@pytest.fixture
def client(fakes: Fakes) -> TestClient:
    app = create_app(Settings())
    app.state.consent = fakes.service()
    return TestClient(app)  # no lifespan: no Kafka, MongoDB or catalog behind the fakes
