"""The study-attributes cache: a burst asks the catalog once, changes show after the TTL, unknown studies
and errors are never kept, concurrent askers share one call, and a caller going away cancels nothing."""

from __future__ import annotations

import asyncio

import pytest

from emage_access.adapters.catalog import CatalogUnavailableError
from emage_access.adapters.study_cache import CachedStudyDirectory
from emage_access.domain.policy import StudyAttributes

STUDY = "1.2.826.0.1.3680043.8.498.10"
OTHER = "1.2.826.0.1.3680043.8.498.11"


def attributes(uid: str, referrer: str | None = None) -> StudyAttributes:
    return StudyAttributes(
        study_instance_uid=uid,
        facility_finess="750000001",
        patient_key="pid:750000001:IPP-1",
        referring_physician_rpps=referrer,
        performing_technician_rpps=frozenset(),
    )


class Catalog:
    """The catalog as the cache sees it: answers from a dict, counts the questions, can fail or stall."""

    def __init__(self) -> None:
        self.studies: dict[str, StudyAttributes] = {STUDY: attributes(STUDY)}
        self.asked: list[str] = []
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        self.asked.append(study_instance_uid)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise CatalogUnavailableError("catalog down")
        return self.studies.get(study_instance_uid)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(catalog: Catalog, clock: Clock) -> CachedStudyDirectory:
    return CachedStudyDirectory(catalog, ttl_seconds=1.0, clock=clock)


async def test_a_burst_of_decisions_asks_the_catalog_once(
    cache: CachedStudyDirectory, catalog: Catalog
) -> None:
    for _ in range(100):
        assert await cache.attributes(STUDY) == attributes(STUDY)
    assert catalog.asked == [STUDY]


async def test_a_change_reaches_decisions_once_the_ttl_has_passed(
    cache: CachedStudyDirectory, catalog: Catalog, clock: Clock
) -> None:
    await cache.attributes(STUDY)
    catalog.studies[STUDY] = attributes(STUDY, referrer="10100000024")
    clock.now += 0.9
    assert await cache.attributes(STUDY) == attributes(STUDY)
    clock.now += 0.1
    assert await cache.attributes(STUDY) == attributes(STUDY, referrer="10100000024")
    assert catalog.asked == [STUDY, STUDY]


async def test_unknown_studies_are_asked_again_every_time(
    cache: CachedStudyDirectory, catalog: Catalog
) -> None:
    assert await cache.attributes(OTHER) is None
    catalog.studies[OTHER] = attributes(OTHER)
    assert await cache.attributes(OTHER) == attributes(OTHER)
    assert catalog.asked == [OTHER, OTHER]


async def test_an_error_is_raised_to_every_waiter_and_not_kept(
    cache: CachedStudyDirectory, catalog: Catalog
) -> None:
    catalog.failing = True
    catalog.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.attributes(STUDY)) for _ in range(3)]
    await asyncio.sleep(0)
    catalog.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, CatalogUnavailableError) for result in results)
    assert catalog.asked == [STUDY]
    catalog.failing = False
    assert await cache.attributes(STUDY) == attributes(STUDY)


async def test_concurrent_askers_share_one_call_and_one_leaving_cancels_nothing(
    cache: CachedStudyDirectory, catalog: Catalog
) -> None:
    catalog.gate = asyncio.Event()
    leaving = asyncio.create_task(cache.attributes(STUDY))
    staying = asyncio.create_task(cache.attributes(STUDY))
    await asyncio.sleep(0)
    leaving.cancel()
    catalog.gate.set()
    assert await staying == attributes(STUDY)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert catalog.asked == [STUDY]


async def test_the_oldest_entries_go_first_beyond_the_limit(catalog: Catalog, clock: Clock) -> None:
    cache = CachedStudyDirectory(catalog, ttl_seconds=10, max_entries=1, clock=clock)
    catalog.studies[OTHER] = attributes(OTHER)
    await cache.attributes(STUDY)
    await cache.attributes(OTHER)
    await cache.attributes(OTHER)
    await cache.attributes(STUDY)
    assert catalog.asked == [STUDY, OTHER, STUDY]


async def test_a_ttl_of_zero_asks_every_time(catalog: Catalog, clock: Clock) -> None:
    cache = CachedStudyDirectory(catalog, ttl_seconds=0, clock=clock)
    await cache.attributes(STUDY)
    await cache.attributes(STUDY)
    assert catalog.asked == [STUDY, STUDY]
