"""Care relationships announced on emage.acquisition.v1, merged into the study whichever arrives first.

The service runs on the in-memory catalog store of ``test_catalog_service.py`` and an in-memory order store
with the semantics of :class:`~emage_catalog.adapters.orders.MongoOrderStore`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from emage_catalog.domain.care import CareAttributes, OrderedCare, OrderLookup, StudyOwner, with_ordered_care
from emage_catalog.domain.model import CatalogConflictError
from emage_catalog.service import CatalogService
from emage_common.events import Acquisition, PatientIdentity

_spec = importlib.util.spec_from_file_location(
    "catalog_service_tests", Path(__file__).with_name("test_catalog_service.py")
)
assert _spec is not None
assert _spec.loader is not None
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)
MemoryStore, stored, ROOT = _tests.MemoryStore, _tests.stored, _tests.ROOT

CHU = "750000001"
REFERRER, ORDERED_REFERRER = "10100000024", "10100000032"
OPERATOR, TECHNICIAN, OTHER_TECHNICIAN = "10100000040", "10100000057", "10100000065"
STUDY = f"{ROOT}.1"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def acquisition(**changes: Any) -> Acquisition:
    event: dict[str, Any] = {
        "facility_finess": CHU,
        "accession_number": "ACC-1",
        "patient": {"patient_id": "IPP-1", "issuer_of_patient_id": CHU},
        "referring_physician_rpps": ORDERED_REFERRER,
        "performing_technician_rpps": TECHNICIAN,
        "study_instance_uid": STUDY,
        "source": {"kind": "dicomweb", "base_url": "https://pacs.example/dicom-web"},
    }
    return Acquisition.model_validate(event | changes)


def ordered(event_id: str = "e1", at: datetime = T0, **changes: Any) -> OrderedCare:
    return OrderedCare.of(acquisition(**changes), event_id=event_id, announced_at=at)


class MemoryOrders:
    """The order store over the catalog store's dictionaries."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.orders: dict[str, OrderedCare] = {}

    async def record_order(self, announced: OrderedCare) -> tuple[OrderedCare, OrderedCare | None]:
        stored_order = self.orders.get(announced.order_key)
        if stored_order is not None and not announced.supersedes(stored_order):
            return stored_order, None
        if announced.study_instance_uid is None and stored_order is not None:
            announced = dataclasses.replace(announced, study_instance_uid=stored_order.study_instance_uid)
        self.orders[announced.order_key] = announced
        return announced, stored_order

    async def ordered_care(self, lookups: Collection[OrderLookup]) -> dict[OrderLookup, OrderedCare]:
        found = {}
        for lookup in lookups:
            naming = [
                order
                for order in self.orders.values()
                if order.study_instance_uid == lookup.study_instance_uid
            ]
            order = self.orders.get(f"{lookup.facility_finess}/{lookup.accession_number}")
            if naming:
                found[lookup] = naming[0]
            elif order is not None and order.study_instance_uid is None:
                found[lookup] = order
        return found

    async def studies_of_order(self, order: OrderedCare) -> list[StudyOwner]:
        return [
            StudyOwner(uid, document["facility_finess"], PatientIdentity.model_validate(document["patient"]))
            for uid, document in self.catalog.studies.items()
            if uid == order.study_instance_uid
            or (
                order.study_instance_uid is None
                and document["facility_finess"] == order.facility_finess
                and document["q"].get("AccessionNumber") == order.accession_number
            )
        ]

    def _documents(self, study: str) -> list[dict[str, Any]]:
        below = [
            document
            for documents in (self.catalog.series, self.catalog.instances)
            for document in documents.values()
            if document["study_uid"] == study
        ]
        return [self.catalog.studies[study], *below]

    async def absorb_ordered_care(self, study: str, order: OrderedCare) -> None:
        for document in self._documents(study):
            if order.referring_physician_rpps is not None:
                document["q"]["referring_physician_rpps"] = order.referring_physician_rpps
            if order.performing_technician_rpps is not None:
                technicians = set(document["q"].get("performing_technician_rpps", []))
                document["q"]["performing_technician_rpps"] = sorted(
                    technicians | {order.performing_technician_rpps}
                )

    async def dicom_care(self, study: str) -> CareAttributes | None:
        self.recomputed = True
        return CareAttributes(CHU, "pid:750000001:IPP-1", REFERRER, (OPERATOR,))

    async def replace_care(self, study: str, care: CareAttributes) -> None:
        fields = care.fields()
        for document in self._documents(study):
            for name in ("referring_physician_rpps", "performing_technician_rpps"):
                document["q"].pop(name, None)
                if name in fields:
                    document["q"][name] = fields[name]


@pytest.fixture
def catalog() -> Any:
    return MemoryStore()


@pytest.fixture
def orders(catalog: Any) -> MemoryOrders:
    return MemoryOrders(catalog)


@pytest.fixture
def service(catalog: Any, orders: MemoryOrders) -> CatalogService:
    return CatalogService(catalog, on_study_changed=lambda: None, orders=orders)  # type: ignore[arg-type]


def care_everywhere(catalog: Any) -> set[tuple[str | None, tuple[str, ...]]]:
    documents = [*catalog.studies.values(), *catalog.series.values(), *catalog.instances.values()]
    return {
        (
            document["q"].get("referring_physician_rpps"),
            tuple(document["q"].get("performing_technician_rpps", [])),
        )
        for document in documents
    }


# --- Domain -------------------------------------------------------------------------------------------------


def test_the_order_s_referrer_prevails_and_its_technician_joins_the_operators() -> None:
    headers = CareAttributes(CHU, "pid:x", REFERRER, (OPERATOR,))
    merged = with_ordered_care(headers, ordered())
    assert merged.referring_physician_rpps == ORDERED_REFERRER
    assert merged.performing_technician_rpps == (OPERATOR, TECHNICIAN)
    silent = with_ordered_care(
        headers, ordered(referring_physician_rpps=None, performing_technician_rpps=None)
    )
    assert silent == headers
    assert with_ordered_care(headers, None) is headers
    assert with_ordered_care(
        headers, ordered(performing_technician_rpps=OPERATOR)
    ).performing_technician_rpps == (OPERATOR,)


def test_later_announcements_supersede_and_corrections_are_recognised() -> None:
    first, later = ordered("e1", T0), ordered("e0", T0 + timedelta(seconds=1))
    assert later.supersedes(first)
    assert not first.supersedes(later)
    assert ordered("e2", T0).supersedes(first)
    assert not first.supersedes(first)
    assert first.supersedes(None)
    assert not later.withdraws_from(first)
    assert not later.withdraws_from(None)
    assert ordered(performing_technician_rpps=OTHER_TECHNICIAN).withdraws_from(first)
    assert ordered(referring_physician_rpps=None).withdraws_from(first)


def test_an_order_concerns_its_facility_s_studies_of_its_patient_only() -> None:
    order = ordered()
    assert order.order_key == f"{CHU}/ACC-1"
    assert order.concerns(CHU, PatientIdentity(patient_id="IPP-1", issuer_of_patient_id=CHU))
    assert not order.concerns("690000002", PatientIdentity(patient_id="IPP-1", issuer_of_patient_id=CHU))
    assert not order.concerns(CHU, PatientIdentity(patient_id="IPP-2", issuer_of_patient_id=CHU))
    assert not order.concerns(CHU, PatientIdentity(patient_id="IPP-1", issuer_of_patient_id="OTHER"))


# --- Reconciliation -----------------------------------------------------------------------------------------


async def test_an_event_after_the_study_is_merged_at_every_level(
    service: CatalogService, catalog: Any
) -> None:
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=1)
    await service.record_instance(stored(1, 2, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=2)
    await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    assert care_everywhere(catalog) == {(ORDERED_REFERRER, (OPERATOR, TECHNICIAN))}
    attributes = await service.access_attributes(STUDY)
    assert attributes is not None
    assert attributes.referring_physician_rpps == ORDERED_REFERRER
    assert attributes.performing_technician_rpps == (OPERATOR, TECHNICIAN)
    # Again, or an older announcement: nothing changes.
    await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    await service.record_acquisition(
        acquisition(performing_technician_rpps=OTHER_TECHNICIAN),
        event_id="e0",
        announced_at=T0 - timedelta(1),
    )
    assert care_everywhere(catalog) == {(ORDERED_REFERRER, (OPERATOR, TECHNICIAN))}


async def test_an_event_before_the_study_is_merged_when_it_arrives(
    service: CatalogService, catalog: Any
) -> None:
    await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    assert catalog.studies == {}
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=1)
    await service.record_instance(stored(1, 1, 2, operators=(OPERATOR,)), revision=2)
    assert care_everywhere(catalog) == {(ORDERED_REFERRER, (OPERATOR, TECHNICIAN))}


async def test_an_event_without_study_uid_finds_its_study_by_accession_number(
    service: CatalogService, catalog: Any
) -> None:
    by_accession = acquisition(study_instance_uid=None)
    await service.record_acquisition(by_accession, event_id="e1", announced_at=T0)
    event = stored(1, 1, 1)
    event = event.model_copy(
        update={"dicom_json": {**event.dicom_json, "00080050": {"vr": "SH", "Value": ["ACC-1"]}}}
    )
    await service.record_instance(event, revision=1)
    assert care_everywhere(catalog) == {(ORDERED_REFERRER, (TECHNICIAN,))}
    # And the other way round, for a second study of another order.
    other = stored(2, 1, 1)
    other = other.model_copy(
        update={"dicom_json": {**other.dicom_json, "00080050": {"vr": "SH", "Value": ["ACC-2"]}}}
    )
    await service.record_instance(other, revision=1)
    catalog.studies[f"{ROOT}.2"]["q"]["AccessionNumber"] = "ACC-2"
    await service.record_acquisition(
        acquisition(
            study_instance_uid=None, accession_number="ACC-2", performing_technician_rpps=OTHER_TECHNICIAN
        ),
        event_id="e2",
        announced_at=T0,
    )
    assert catalog.studies[f"{ROOT}.2"]["q"]["performing_technician_rpps"] == [OTHER_TECHNICIAN]


async def test_an_order_announced_while_an_instance_is_recorded_is_not_lost(
    service: CatalogService, catalog: Any, orders: MemoryOrders
) -> None:
    lookups = 0
    original = orders.ordered_care

    async def announced_meanwhile(studies: Collection[OrderLookup]) -> dict[OrderLookup, OrderedCare]:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            # The acquisition consumer records and applies the order right after the instance's first look.
            found = await original(studies)
            await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
            return found
        return await original(studies)

    orders.ordered_care = announced_meanwhile  # type: ignore[method-assign]
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=1)
    assert care_everywhere(catalog) == {(ORDERED_REFERRER, (OPERATOR, TECHNICIAN))}


async def test_a_corrected_order_withdraws_what_it_no_longer_names(
    service: CatalogService, catalog: Any, orders: MemoryOrders
) -> None:
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=1)
    await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    corrected = acquisition(referring_physician_rpps=None, performing_technician_rpps=OTHER_TECHNICIAN)
    await service.record_acquisition(corrected, event_id="e2", announced_at=T0 + timedelta(minutes=5))
    assert care_everywhere(catalog) == {(REFERRER, (OPERATOR, OTHER_TECHNICIAN))}


async def test_an_event_naming_another_patient_s_study_grants_nothing(
    service: CatalogService, catalog: Any
) -> None:
    await service.record_instance(stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)), revision=1)
    with pytest.raises(CatalogConflictError, match="another facility's or another patient's"):
        await service.record_acquisition(
            acquisition(patient={"patient_id": "IPP-9", "issuer_of_patient_id": CHU}),
            event_id="e1",
            announced_at=T0,
        )
    assert care_everywhere(catalog) == {(REFERRER, (OPERATOR,))}
    # Nor when the study arrives after such an order.
    await service.record_acquisition(
        acquisition(
            patient={"patient_id": "IPP-9", "issuer_of_patient_id": CHU}, study_instance_uid=f"{ROOT}.3"
        ),
        event_id="e3",
        announced_at=T0,
    )
    await service.record_instance(stored(3, 1, 1, operators=(OPERATOR,)), revision=1)
    assert catalog.studies[f"{ROOT}.3"]["q"]["performing_technician_rpps"] == [OPERATOR]


async def test_a_run_of_instances_merges_the_order_as_its_instances_one_by_one_would(
    service: CatalogService, catalog: Any
) -> None:
    await service.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    run = [
        stored(1, 1, 1, referrer=REFERRER, operators=(OPERATOR,)),
        stored(1, 2, 1, operators=(OTHER_TECHNICIAN,)),
        stored(1, 1, 2, referrer=REFERRER, operators=(OPERATOR,)),
        stored(2, 1, 1, referrer=REFERRER),  # another study, no order: its headers' referrer
    ]
    await service.record_instances([(event, revision) for revision, event in enumerate(run, start=1)])
    assert catalog.filings == 1

    alone = MemoryStore()
    one_by_one = CatalogService(alone, on_study_changed=lambda: None, orders=MemoryOrders(alone))  # type: ignore[arg-type]
    await one_by_one.record_acquisition(acquisition(), event_id="e1", announced_at=T0)
    for revision, event in enumerate(run, start=1):
        await one_by_one.record_instance(event, revision=revision)
    assert (catalog.studies, catalog.series, catalog.instances) == (
        alone.studies,
        alone.series,
        alone.instances,
    )
    study = catalog.studies[STUDY]["q"]
    assert study["referring_physician_rpps"] == ORDERED_REFERRER
    assert study["performing_technician_rpps"] == sorted({OPERATOR, OTHER_TECHNICIAN, TECHNICIAN})
    assert catalog.studies[f"{ROOT}.2"]["q"]["referring_physician_rpps"] == REFERRER
