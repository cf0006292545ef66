"""The five services come up against the real stack, and their readiness follows their dependencies."""

from __future__ import annotations

import time

import httpx
import pytest

from emage_devstack.stack import SERVICES, Stack


def _readyz(stack: Stack, name: str) -> httpx.Response:
    return httpx.get(f"{stack.service_url(name)}/readyz", timeout=5)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


OWN_CHECKS = {"ingest": {"s3"}, "access": {"consent_view"}}
"""Dependencies a service checks beyond its database and Kafka."""


def test_every_service_is_ready(services: Stack) -> None:
    for name in SERVICES:
        response = _readyz(services, name)
        assert response.status_code == 200, (name, response.text)
        checks = response.json()["checks"]
        expected = {"mongodb", "kafka"} | OWN_CHECKS.get(name, set())
        assert set(checks) == expected
        assert all(status == "ok" for status in checks.values())
        metrics = httpx.get(f"{services.service_url(name)}/metrics", timeout=5).text
        assert 'emage_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics


def test_readiness_turns_red_without_mongodb_and_green_after_restart(services: Stack) -> None:
    services.mongo.kill()
    try:
        for name in SERVICES:
            _wait_for(
                lambda n=name: _readyz(services, n).status_code == 503, 30, f"{name} to report not ready"
            )
            body = _readyz(services, name).json()
            assert body["failed"] == ["mongodb"], body
            # Liveness is not readiness: a missing database must not get the pod restarted.
            assert httpx.get(f"{services.service_url(name)}/healthz", timeout=5).status_code == 200
    finally:
        services.mongo.start()
    for name in SERVICES:
        _wait_for(lambda n=name: _readyz(services, n).status_code == 200, 60, f"{name} to be ready again")
