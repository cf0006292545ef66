"""The service app factory, exercised in-process through ``httpx.ASGITransport`` (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Response
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from emage_common.settings import ServiceSettings
from emage_common.telemetry import setup_tracing
from emage_common.web import create_service_app

STUDY_UID = "1.2.826.0.1.3680043.8.498.10948734719834"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

router = APIRouter()


@router.get("/studies/{study_uid}")
async def read_study(study_uid: str, limit: int = 10) -> dict[str, str | int]:
    return {"study_uid": study_uid, "limit": limit}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("database password is hunter2")


@router.get("/protected")
async def protected() -> None:
    raise HTTPException(401, "token expired", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


@router.get("/cacheable")
async def cacheable(response: Response) -> dict[str, str]:
    response.headers["Cache-Control"] = "public, max-age=60"
    return {"static": "yes"}


async def _passing() -> bool:
    return True


async def _failing() -> bool:
    return False


async def _hanging() -> bool:
    await asyncio.sleep(10)
    return True


async def _raising() -> bool:
    raise ConnectionError("refused")


def _app(readiness: Mapping[str, Callable[[], Awaitable[bool]]] | None = None) -> FastAPI:
    settings = ServiceSettings(service_name="webtest", http_port=8099)
    return create_service_app(
        settings,
        title="web test",
        version="1.0.0",
        readiness=readiness if readiness is not None else {"mongo": _passing, "s3": _passing},
        routers=[router],
        readiness_timeout=0.2,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://svc") as http:
        yield http


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", f"/studies/{STUDY_UID}", "/does-not-exist", "/boom"):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
    # A route that chose its own caching keeps it.
    assert (await client.get("/cacheable")).headers["cache-control"] == "public, max-age=60"


async def test_readyz_all_passing(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"mongo": "ok", "s3": "ok"}}


async def test_readyz_names_failures() -> None:
    app = _app({"mongo": _passing, "s3": _failing, "kafka": _hanging, "keycloak": _raising})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as http:
        started = asyncio.get_running_loop().time()
        response = await http.get("/readyz")
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"mongo": "ok", "s3": "failed", "kafka": "timeout", "keycloak": "error"}
    assert body["failed"] == ["kafka", "keycloak", "s3"]
    assert elapsed < 5.0  # bounded by the readiness timeout, not by the check that never returns


async def test_metrics_use_the_route_template(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/studies/{STUDY_UID}")).status_code == 200
    await client.get(f"/nothing/here/{STUDY_UID}")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'emage_http_requests_total{method="GET",route="/studies/{study_uid}",status="200"}' in text
    assert (
        'emage_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/studies/{study_uid}"'
        in text
    )
    assert 'route="unmatched",status="404"' in text
    assert STUDY_UID not in text


async def test_unknown_method_does_not_create_a_metric_series(client: httpx.AsyncClient) -> None:
    await client.request("BREW", "/healthz")
    text = (await client.get("/metrics")).text
    assert 'method="BREW"' not in text
    assert 'method="_OTHER",route="/healthz",status="405"' in text


async def test_mounted_app_routes_keep_their_prefix() -> None:
    app = _app()
    api = FastAPI()

    @api.get("/consents/{consent_id}")
    async def read_consent(consent_id: str) -> dict[str, str]:
        return {"id": consent_id}

    app.mount("/api/v1", api)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as http:
        assert (await http.get("/api/v1/consents/c-42")).status_code == 200
        text = (await http.get("/metrics")).text
    assert 'route="/api/v1/consents/{consent_id}"' in text
    assert "c-42" not in text


async def test_404_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/resource")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"
    assert body["status"] == 404
    assert body["request_id"] == response.headers["x-request-id"]


async def test_422_keeps_its_status_in_problem_shape(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/studies/{STUDY_UID}", params={"limit": "Doe^John"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422
    assert body["errors"][0]["loc"] == ["query", "limit"]
    assert "Doe^John" not in response.text  # the offending input is not echoed back


async def test_500_is_generic_problem_json_without_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/boom", headers={"X-Request-ID": "req-500-check"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "An unexpected error occurred.",
        "request_id": "req-500-check",
    }
    assert "Traceback" not in response.text
    assert "hunter2" not in response.text
    # ... but the server log has the whole story.
    logged = [record for record in caplog.records if record.getMessage() == "unhandled exception"]
    assert logged
    assert logged[0].exc_info is not None
    assert getattr(logged[0], "http_route", None) == "/boom"


async def test_http_exception_keeps_its_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/protected")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["detail"] == "token expired"


async def test_request_id_is_echoed_when_well_formed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "3f2a9c1e-7b44-4d0e-9c1a-5e6f7a8b9c0d"})
    assert response.headers["x-request-id"] == "3f2a9c1e-7b44-4d0e-9c1a-5e6f7a8b9c0d"


@pytest.mark.parametrize("bad", ["has spaces", "x" * 200, "<script>", "line\tbreak"])
async def test_request_id_is_replaced_when_malformed(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": bad})
    generated = response.headers["x-request-id"]
    assert generated != bad
    assert len(generated) == 32
    assert (await client.get("/healthz")).headers["x-request-id"] != generated


async def test_server_span_continues_the_incoming_trace(client: httpx.AsyncClient) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("webtest").add_span_processor(SimpleSpanProcessor(exporter))
    response = await client.get(
        f"/studies/{STUDY_UID}", params={"PatientName": "DOE^JANE"}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    [span] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.name == "GET /studies/{study_uid}"
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/studies/{study_uid}"
    assert attributes["http.response.status_code"] == 200
    # Query strings carry patient demographics on QIDO-RS: they never reach the trace store.
    assert "DOE" not in repr(attributes)


async def test_openapi_is_served_without_operational_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["info"] == {"title": "web test", "version": "1.0.0", "summary": "e-mage webtest service"}
    assert "/studies/{study_uid}" in document["paths"]
    assert "/healthz" not in document["paths"]
