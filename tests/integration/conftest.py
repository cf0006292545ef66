"""The real local stack for the integration tests: Kafka, MongoDB, SeaweedFS S3, Keycloak and the services.

Started once per test session with the ``test`` profile, from empty data, and stopped by PID at the end. The
profile has its own ports and data, so a developer's ``make run`` can stay up meanwhile;
``EMAGE_TEST_PROFILE=test1``..``test9`` picks another block of ports for parallel sessions. These are the
same native servers ``make run`` uses; nothing here is a fake.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_world import Tokens, World, publish_world
from otlp_receiver import OtlpReceiver
from pymongo import MongoClient
from pymongo.collection import Collection

from emage_devstack.s3 import ARCHIVE_BUCKET
from emage_devstack.stack import Stack


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """The OTLP/HTTP receiver every service of the session exports its traces to (up before them, down after).

    Cheap for the tests that do not look: bodies are only kept, and decoded when a test asks for spans.
    """
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(otlp_receiver: OtlpReceiver) -> Iterator[Stack]:
    test_stack = Stack(os.environ.get("EMAGE_TEST_PROFILE", "test"), otlp_endpoint=otlp_receiver.endpoint)
    test_stack.provision()
    test_stack.start_infrastructure(wipe=True)
    try:
        yield test_stack
    finally:
        test_stack.stop()


@pytest.fixture(scope="session")
def services(stack: Stack) -> Stack:
    """The five services running as real processes against the stack (started on first use)."""
    missing = tuple(
        name for name in ("ingest", "catalog", "consent", "access", "audit") if name not in stack.services
    )
    if missing:
        stack.start_services(missing)
    return stack


@pytest.fixture(scope="session")
def instances_index(services: Stack) -> Iterator[Collection[dict[str, Any]]]:
    """Ingest's index of archived instances, read directly to check what a test stored."""
    client: MongoClient[dict[str, Any]] = MongoClient(services.mongo.uri)
    try:
        yield client["ingest"]["instances"]
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.kafka.bootstrap_servers


@pytest.fixture(scope="session")
def mongo_uri(stack: Stack) -> str:
    return stack.mongo.uri


@pytest.fixture(scope="session")
def s3_config(stack: Stack) -> dict[str, str]:
    return {
        "endpoint_url": stack.s3.endpoint_url,
        "access_key_id": stack.s3.access_key,
        "secret_access_key": stack.s3.secret_key,
        "region": "us-east-1",
        "bucket": ARCHIVE_BUCKET,
    }


@pytest.fixture(scope="session")
def keycloak_issuer(stack: Stack) -> str:
    return stack.keycloak.issuer


@pytest.fixture(scope="session")
def world(services: Stack) -> World:
    """Three studies for the gateway tests (``tests/support/gateway_world.py``), published once."""
    return publish_world(services)


@pytest.fixture(scope="session")
def tokens(services: Stack) -> Tokens:
    """Access tokens of the dev users from the real Keycloak, renewed before they expire."""
    return Tokens(services.keycloak.issuer)


@pytest.fixture(scope="session")
def gateway(world: World) -> Iterator[httpx.Client]:
    """A client of the gateway."""
    with httpx.Client(base_url=world.gateway, timeout=60) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
