"""docker-compose.yml and its helper files under deploy/compose/, checked without a Docker engine."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from emage_static import compose_checks as cc
from emage_static.services import REPO_ROOT, SERVICES, ServiceSpec

Compose = dict[str, Any]

CREATE_TOPICS = REPO_ROOT / "deploy" / "compose" / "kafka" / "create-topics.sh"
MONGO_INIT = REPO_ROOT / "deploy" / "compose" / "mongo" / "init-replica-set.js"


@pytest.fixture(scope="module")
def compose() -> Compose:
    with cc.COMPOSE_FILE.open(encoding="utf-8") as stream:
        loaded: Compose = yaml.safe_load(stream)
    return loaded


@pytest.fixture
def fresh(compose: Compose) -> Compose:
    return copy.deepcopy(compose)


def test_compose_file_follows_the_compose_specification(compose: Compose) -> None:
    assert cc.schema_problems(compose) == []


def test_builds_dependencies_healthchecks_and_published_ports(compose: Compose) -> None:
    assert cc.structure_problems(compose) == []


def test_bind_mounted_files_exist(compose: Compose) -> None:
    assert cc.bind_mount_problems(compose) == []


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_service_is_built_configured_and_connected_per_its_settings(
    compose: Compose, spec: ServiceSpec
) -> None:
    assert cc.emage_service_problems(compose, spec) == []


def test_every_credential_is_a_visible_local_development_value(compose: Compose) -> None:
    assert cc.credential_problems(compose) == []


def test_kafka_broker_and_topic_job(compose: Compose) -> None:
    assert cc.kafka_problems(compose) == []


def test_topics_file_lists_every_domain_topic_and_its_dead_letter_topic() -> None:
    assert cc.topic_problems(cc.read_topics(cc.TOPICS_FILE.read_text(encoding="utf-8"))) == []


def test_topics_match_the_native_devstack() -> None:
    """Compose and ``emage-devstack`` must create the same topics with the same partition counts."""
    devstack = pytest.importorskip("emage_devstack.kafka")
    if not hasattr(devstack, "TOPICS"):
        pytest.skip("emage_devstack.kafka has no TOPICS table")
    dlq_partitions = getattr(devstack, "DLQ_PARTITIONS", None)
    expected = dict(devstack.TOPICS)
    if dlq_partitions is not None:
        expected.update({f"{topic}.dlq": dlq_partitions for topic in devstack.TOPICS})
    topics = cc.read_topics(cc.TOPICS_FILE.read_text(encoding="utf-8"))
    assert {t: n for t, n in topics.items() if t in expected} == expected


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_create_topics_script_creates_each_topic_idempotently_with_its_partitions(tmp_path: Path) -> None:
    """Runs the job's script against a stand-in for kafka-topics.sh that records its arguments."""
    calls = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n', encoding="utf-8")
    stub.chmod(0o755)
    result = subprocess.run(
        ["sh", str(CREATE_TOPICS)],
        env={
            **os.environ,
            "KAFKA_TOPICS_BIN": str(stub),
            "TOPICS_FILE": str(cc.TOPICS_FILE),
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    creates = [line.split() for line in calls.read_text(encoding="utf-8").splitlines() if "--create" in line]
    created = {}
    for words in creates:
        assert "--if-not-exists" in words
        assert words[words.index("--bootstrap-server") + 1] == "kafka:9092"
        created[words[words.index("--topic") + 1]] = int(words[words.index("--partitions") + 1])
    assert created == cc.read_topics(cc.TOPICS_FILE.read_text(encoding="utf-8"))
    assert len(creates) == len(created)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_create_topics_script_fails_when_kafka_refuses(tmp_path: Path) -> None:
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    stub.chmod(0o755)
    result = subprocess.run(
        ["sh", str(CREATE_TOPICS)],
        env={**os.environ, "KAFKA_TOPICS_BIN": str(stub), "TOPICS_FILE": str(cc.TOPICS_FILE)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


def test_object_store_has_identities_the_bucket_and_ingest_key(compose: Compose) -> None:
    identities = json.loads(cc.S3_IDENTITIES_FILE.read_text(encoding="utf-8"))
    assert cc.object_store_problems(compose, identities) == []


def test_keycloak_issuer_is_the_one_the_gateway_validates(compose: Compose) -> None:
    assert cc.keycloak_problems(compose) == []


def test_realm_export_is_the_emage_realm() -> None:
    if not cc.REALM_FILE.exists():
        pytest.skip(
            f"{cc.REALM_FILE.relative_to(REPO_ROOT)} not written yet (test_bind_mounted_files_exist fails)"
        )
    realm = json.loads(cc.REALM_FILE.read_text(encoding="utf-8"))
    assert realm["realm"] == "emage"


def test_mongo_is_a_replica_set_that_the_services_address_as_such(compose: Compose) -> None:
    assert cc.mongo_problems(compose, MONGO_INIT.read_text(encoding="utf-8")) == []


# --- the checks catch what they claim to ---------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        *parents, last = path.split(".")
        node = compose
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        *parents, last = path.split(".")
        node = compose
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


COMPOSE_BREAKAGES: dict[str, tuple[Callable[[Compose], None], Callable[[Compose], list[str]], str]] = {
    "schema: misspelt key": (_set("services.ingest.buidl", "."), cc.schema_problems, "buidl"),
    "dependency on nothing": (
        _set("services.catalog.depends_on.kafka-broker", {"condition": "service_healthy"}),
        cc.structure_problems,
        "not a service",
    ),
    "unhealthy dependency": (_delete("services.kafka.healthcheck"), cc.structure_problems, "no healthcheck"),
    "missing Dockerfile": (
        _set("services.audit.build.dockerfile", "services/audit/Containerfile"),
        cc.structure_problems,
        "does not exist",
    ),
    "published internal service": (
        _set("services.catalog.ports", ["127.0.0.1:8082:8082"]),
        cc.structure_problems,
        "publishes host port",
    ),
    "gateway on every interface": (
        _set("services.access.ports", ["8080:8080"]),
        cc.structure_problems,
        "every host interface",
    ),
    "unknown setting": (
        _set("services.ingest.environment.EMAGE_INGEST_S3_BUCKETS", "x"),
        lambda c: cc.emage_service_problems(c, SERVICES[0]),
        "not a setting",
    ),
    "missing Mongo URI": (
        _delete("services.catalog.environment.EMAGE_CATALOG_MONGO_URI"),
        lambda c: cc.emage_service_problems(c, SERVICES[1]),
        "required connection",
    ),
    "loopback listener": (
        _set("services.audit.environment.EMAGE_AUDIT_HTTP_HOST", "127.0.0.1"),
        lambda c: cc.emage_service_problems(c, SERVICES[4]),
        "must be 0.0.0.0",
    ),
    "unknown Kafka host": (
        _set("services.consent.environment.EMAGE_CONSENT_KAFKA_BOOTSTRAP_SERVERS", "broker:9092"),
        lambda c: cc.emage_service_problems(c, SERVICES[2]),
        "not a compose service",
    ),
    "real-looking S3 secret": (
        _set("services.ingest.environment.EMAGE_INGEST_S3_SECRET_ACCESS_KEY", "hunter2"),
        lambda c: cc.emage_service_problems(c, SERVICES[0]),
        "local-dev",
    ),
    "real-looking admin password": (
        _set("services.keycloak.environment.KC_BOOTSTRAP_ADMIN_PASSWORD", "admin"),
        cc.credential_problems,
        "local-dev",
    ),
    "topics not awaited": (_delete("services.ingest.depends_on.kafka-init"), cc.kafka_problems, "kafka-init"),
    "auto-created topics": (
        _set("services.kafka.environment.KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true"),
        cc.kafka_problems,
        "auto-creation",
    ),
    "issuer mismatch": (
        _set("services.access.environment.EMAGE_ACCESS_OIDC_ISSUER", "http://localhost:8180/realms/emage"),
        cc.keycloak_problems,
        "issuer",
    ),
    "no realm import": (
        _set("services.keycloak.command", ["start-dev"]),
        cc.keycloak_problems,
        "--import-realm",
    ),
    "standalone mongo": (
        _set("services.mongo.command", ["mongod", "--bind_ip_all"]),
        lambda c: cc.mongo_problems(c, MONGO_INIT.read_text(encoding="utf-8")),
        "replica set",
    ),
}


@pytest.mark.parametrize("breakage", sorted(COMPOSE_BREAKAGES))
def test_compose_checks_catch(fresh: Compose, breakage: str) -> None:
    mutate, check, expected = COMPOSE_BREAKAGES[breakage]
    assert not any(expected in problem for problem in check(fresh)), "already failing before the mutation"
    mutate(fresh)
    problems = check(fresh)
    assert any(expected in problem for problem in problems), problems


def test_object_store_check_catches_a_key_without_rights_on_the_bucket(fresh: Compose) -> None:
    identities = json.loads(cc.S3_IDENTITIES_FILE.read_text(encoding="utf-8"))
    for identity in identities["identities"]:
        identity["actions"] = [a for a in identity["actions"] if not a.startswith("Write")]
    assert any("may not Write" in p for p in cc.object_store_problems(fresh, identities))
    fresh["services"]["seaweedfs"]["command"] = [
        w for w in fresh["services"]["seaweedfs"]["command"] if not str(w).startswith("-bucket")
    ]
    assert any("-bucket" in p for p in cc.object_store_problems(fresh, identities))


def test_topic_check_catches_a_missing_dead_letter_topic() -> None:
    topics = cc.read_topics(cc.TOPICS_FILE.read_text(encoding="utf-8"))
    del topics["emage.consent.changed.v1.dlq"]
    topics["emage.consent.changed"] = 3
    problems = cc.topic_problems(topics)
    assert any("emage.consent.changed.v1.dlq is missing" in p for p in problems)
    assert any("emage.consent.changed is not one of" in p for p in problems)
