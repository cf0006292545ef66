"""Every service is built the same way: its settings, its operational endpoints, its readiness semantics."""

from __future__ import annotations

import importlib

import pytest
from fastapi.testclient import TestClient

SERVICES = {"access": 8080, "ingest": 8081, "catalog": 8082, "consent": 8083, "audit": 8084}


@pytest.mark.parametrize(("name", "port"), SERVICES.items())
def test_settings_have_the_service_prefix_and_port(
    name: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_module = importlib.import_module(f"emage_{name}.settings")
    assert settings_module.Settings().http_port == port
    monkeypatch.setenv(f"EMAGE_{name.upper()}_MONGO_DATABASE", f"{name}-elsewhere")
    monkeypatch.setenv("EMAGE_OTHER_MONGO_DATABASE", "not-mine")
    settings = settings_module.Settings()
    assert settings.database_name == f"{name}-elsewhere"
    assert settings.service_name == name


OWN_CHECKS = {"ingest": {"s3"}, "access": {"consent_view"}}
"""Dependencies a service checks beyond its database and Kafka."""


@pytest.mark.parametrize("name", SERVICES)
def test_alive_but_not_ready_before_its_connections_are_open(name: str) -> None:
    app = importlib.import_module(f"emage_{name}.api").create_app()
    client = TestClient(app)  # no lifespan: the runtime's connections are never opened
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    expected = {"mongodb", "kafka"} | OWN_CHECKS.get(name, set())
    assert set(ready.json()["failed"]) == expected
    assert "emage_http_requests" in client.get("/metrics").text
    assert client.get("/openapi.json").json()["info"]["title"] == f"e-mage {name}"
