"""The backup drill of docs/operations.md §5: the catalog database dumped, wiped, restored answers as before.

The catalog is filled through its real input (``emage.instance.stored.v1``), backed up with the tool operators
are told to use (``emage db dump``, one archive per service database), stopped, its database dropped, the
archive verified and restored (``emage db verify``, ``emage db restore``), and the catalog started again: the
database holds the same documents byte for byte with the same indexes, and QIDO-RS and WADO-RS metadata answer
identically, counts included. The other path of the drill, rebuilding the dropped database by replaying the
topic, is ``test_catalog_replay.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from catalog_events import (
    SyntheticInstances,
    answers,
    eventually,
    numbered_instances,
    publish_stored,
    settled_answers,
)
from pymongo import MongoClient
from pymongo.database import Database

from emage_common.events import InstanceStored
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

# UIDs, facility, patients, modalities and dates of no other test: the session's other tests search the same
# catalog, unscoped sometimes (``/series?Modality=MR``), and must not find these studies.
ROOT = "1.2.826.0.1.3680043.8.498.7305"
FACILITY = "440000057"
MODALITIES = {
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}


INSTANCES = SyntheticInstances(
    ROOT,
    rows=16,
    size_bytes=1024,
    sha256="ab" * 32,
    stored_at=datetime(2024, 7, 1, tzinfo=UTC),
    bulk_data_threshold=256,
)


def stored_instance(study: int, series: int, instance: int) -> InstanceStored:
    """An instance of ``study`` (its modality, date and patient follow from the study number)."""
    modality = list(MODALITIES)[study % 3]
    return INSTANCES.event(
        study,
        series,
        instance,
        modality=modality,
        sop_class=MODALITIES[modality],
        facility=FACILITY,
        patient_id=f"BKP-{study % 3}",
        patient_name=f"Backup^Patient{study % 3}",
        study_date=f"1998{study % 12 + 1:02d}{study % 27 + 1:02d}",
        study_time=f"{study % 24:02d}1500",
        accession=f"BKP-{study}",
        StudyDescription=f"Backup drill {modality}",
    )


EVENTS = [stored_instance(*numbers) for numbers in numbered_instances(8)]
QUERIES = [
    ("/studies", {"AccessionNumber": "BKP-*", "includefield": "all"}),
    ("/studies", {"PatientID": "BKP-1"}),
    ("/studies", {"PatientName": "backup^patient2*", "StudyDate": "19980101-19980630"}),
    ("/studies", {"AccessionNumber": "BKP-*", "ModalitiesInStudy": "NM"}),
    ("/studies", {"AccessionNumber": "BKP-*", "limit": "3", "offset": "2"}),
    ("/series", {"AccessionNumber": "BKP-*", "Modality": "PT", "includefield": "all"}),
    ("/instances", {"PatientID": "BKP-0"}),
    (f"/studies/{ROOT}.5/series", {}),
    (f"/studies/{ROOT}.5/instances", {"includefield": "all"}),
    (f"/studies/{ROOT}.2/metadata", {}),
    (f"/studies/{ROOT}.8/series/{ROOT}.8.3/metadata", {}),
]


def database_content(db: Database[Any]) -> dict[str, tuple[int, str, list[Any]]]:
    """Per collection: document count, SHA-256 of the documents' BSON in ``_id`` order, the index specs."""
    content = {}
    for name in sorted(db.list_collection_names()):
        digest = hashlib.sha256()
        for batch in db.get_collection(name).find_raw_batches({}, sort=[("_id", 1)]):
            digest.update(batch)
        count = db.get_collection(name).count_documents({})
        indexes = sorted(
            (
                {k: v for k, v in index.items() if k != "ns"}
                for index in db.get_collection(name).list_indexes()
            ),
            key=lambda index: str(index["name"]),
        )
        content[name] = (count, digest.hexdigest(), indexes)
    return content


def emage(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``emage`` command line, as an operator runs it (in the workspace's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "emage_cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    if "catalog" not in stack.services:
        stack.start_services(("catalog",))
    async with httpx.AsyncClient(base_url=stack.service_url("catalog"), timeout=10) as http:
        yield http


async def test_a_wiped_catalog_restored_from_its_backup_answers_identically(
    stack: Stack, client: httpx.AsyncClient, kafka_bootstrap: str, mongo_uri: str, tmp_path: Path
) -> None:
    await publish_stored(kafka_bootstrap, EVENTS)

    async def catalogued() -> list[tuple[int, str | None, bytes]]:
        instances = await client.get("/instances", params={"AccessionNumber": "BKP-*"})
        if instances.headers.get("X-Total-Count") != str(len(EVENTS)):
            return []
        return await settled_answers(client, QUERIES)

    before = await eventually(catalogued)
    assert all(status == 200 for status, _, _ in before)
    assert [count for _, count, _ in before[:7]] == ["8", "3", "2", "3", "8", "9", "6"]

    # Services scaled to 0 before a restore (operations.md §5, step 4); dumped at rest, compared exactly.
    stack.stop_service("catalog")
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        content = database_content(mongo["catalog"])
        assert content["instances"][0] >= len(EVENTS)
        archive = tmp_path / "catalog.tar"
        dumped = emage("db", "dump", "--uri", mongo_uri, "--db", "catalog", "--archive", str(archive))
        assert dumped.returncode == 0, dumped.stderr

        mongo.drop_database("catalog")
        assert "catalog" not in mongo.list_database_names()

        verified = emage("db", "verify", "--archive", str(archive))
        assert verified.returncode == 0, verified.stderr
        assert f"{len(content)} collections" in verified.stderr
        restored = emage("db", "restore", "--uri", mongo_uri, "--archive", str(archive))
        assert restored.returncode == 0, restored.stderr
        assert database_content(mongo["catalog"]) == content

        # Once restored, a second restore without --drop refuses to write over it.
        again = emage("db", "restore", "--uri", mongo_uri, "--archive", str(archive))
        assert again.returncode == 1
        assert "restore with --drop" in again.stderr
    finally:
        mongo.close()
        if "catalog" not in stack.services:
            stack.start_services(("catalog",))

    assert await answers(client, QUERIES) == before
