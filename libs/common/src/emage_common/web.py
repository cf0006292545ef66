"""The FastAPI application factory every service is built with, so that all five look alike from outside.

Each app gets: ``/healthz`` (liveness), ``/readyz`` (dependencies), ``/metrics`` (Prometheus text format),
a server span per request continuing the caller's W3C ``traceparent``, a request id echoed in
``X-Request-ID``, per-route request metrics, security headers, and errors as RFC 9457 problem details
(``application/problem+json``) that never carry a stack trace.

The per-request work is one pure ASGI middleware rather than FastAPI's native OpenTelemetry support or
``opentelemetry-instrumentation-asgi``: both record the query string on the span, and a QIDO-RS query
string holds patient names, identifiers and birth dates (PS3.18 §10.6), which have no business in a trace
store. The same reason keeps uvicorn's access log off; this middleware logs method, route template,
status and duration instead.

Route dependencies are ``async def`` even when they await nothing (reading ``app.state``): FastAPI runs a
plain ``def`` dependency in a worker thread, a thread hop on every request for no work.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from time import perf_counter
from typing import Any, Final

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from emage_common.settings import ServiceSettings
from emage_common.telemetry import request_id_var, setup_logging, setup_tracing

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("emage.http.access")

ReadinessCheck = Callable[[], Awaitable[bool]]

PROBLEM_JSON: Final = "application/problem+json"
REQUEST_ID_HEADER: Final = "X-Request-ID"
# A caller's id is kept only if it is short and made of token characters: it ends up in logs and headers.
_REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_UNMATCHED_ROUTE: Final = "unmatched"
_OPERATIONAL_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
# Any other method a client sends is counted as "_OTHER" (OTel HTTP semantic conventions), so that
# invented methods cannot create unbounded metric series.
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_SECURITY_HEADERS: Final = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    # Responses carry health data: nothing is cached unless a route says otherwise with its own header.
    ("cache-control", "no-store"),
)

# Module level: the default Prometheus registry accepts each metric name once per process.
_REQUESTS = Counter(
    "emage_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ("method", "route", "status"),
)
_REQUEST_DURATION = Histogram(
    "emage_http_request_duration_seconds",
    "Time from request start to the last response byte, by method, route template and status.",
    ("method", "route", "status"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

_tracer = trace.get_tracer(__name__)


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    version: str,
    readiness: Mapping[str, ReadinessCheck],
    routers: Iterable[APIRouter] = (),
    lifespan: Lifespan[FastAPI] | None = None,
    readiness_timeout: float = 2.0,
) -> FastAPI:
    """Build a service's FastAPI app with the platform's operational endpoints and middleware.

    ``readiness`` maps a dependency name (``"mongo"``, ``"s3"``, ``"kafka"``) to a check returning True
    when the dependency is usable; ``/readyz`` runs them concurrently, each bounded by
    ``readiness_timeout`` seconds. ``settings`` names the service in the OpenAPI document; logging and
    tracing are installed by :func:`run` (or by the caller when it serves the app otherwise).
    """
    app = FastAPI(
        title=title,
        version=version,
        summary=f"e-mage {settings.service_name} service",
        lifespan=lifespan,
        # Our middleware makes the server span (see the module docstring for why not FastAPI's).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(_RequestObservabilityMiddleware)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_exception_handler)

    checks = dict(readiness)

    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Says nothing about dependencies, so restarts stay rare."""
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        """Readiness: every dependency check passed within the timeout (else 503 naming the failures)."""
        results = await asyncio.gather(
            *(_run_check(name, check, readiness_timeout) for name, check in checks.items())
        )
        statuses = dict(zip(checks, results, strict=True))
        failed = sorted(name for name, status in statuses.items() if status != "ok")
        body: dict[str, Any] = {"status": "unavailable" if failed else "ready", "checks": statuses}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=503 if failed else 200)

    async def metrics() -> Response:
        """Prometheus text exposition of the process's default registry."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    for router in routers:
        app.include_router(router)
    return app


def run(app: FastAPI, settings: ServiceSettings) -> None:
    """Configure logging and tracing from ``settings`` and serve ``app`` with uvicorn until stopped.

    uvicorn is told not to configure logging (its records flow to the JSON handler of
    :func:`~emage_common.telemetry.setup_logging`) and not to write its access log, which would record
    raw paths and query strings.
    """
    setup_logging(settings.service_name, settings.log_level, json=settings.log_json)
    setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # Within Kubernetes' default 30 s termination grace period, leaving time for the rest of shutdown.
        timeout_graceful_shutdown=20,
    )


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """An RFC 9457 problem details response (``type`` ``about:blank``, ``title`` the status phrase).

    ``extensions`` become extension members (§3.2); ``request_id`` lets a user quote the failure to
    support, who find the matching log lines and trace by it.
    """
    body: dict[str, Any] = {"type": "about:blank", "title": _status_phrase(status), "status": status}
    if detail is not None and detail != body["title"]:
        body["detail"] = detail
    if request_id is not None:
        body["request_id"] = request_id
    body.update(extensions or {})
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _request_id_of(request: Request) -> str | None:
    request_id = getattr(request.state, "request_id", None)
    return request_id if isinstance(request_id, str) else None


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    # These statuses forbid a body (RFC 9110 §15.3.5, §15.4.5).
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=headers)
    if isinstance(exc.detail, str):
        return problem_response(
            exc.status_code, exc.detail, request_id=_request_id_of(request), headers=headers
        )
    return problem_response(
        exc.status_code,
        request_id=_request_id_of(request),
        headers=headers,
        extensions={"errors": jsonable_encoder(exc.detail)},
    )


async def _validation_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: the offending input itself is not echoed back (it may be health data).
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        for error in exc.errors()
    ]
    return problem_response(
        422,
        "The request does not match the expected parameters or body.",
        request_id=_request_id_of(request),
        extensions={"errors": jsonable_encoder(errors)},
    )


async def _run_check(name: str, check: ReadinessCheck, wait_seconds: float) -> str:
    try:
        async with asyncio.timeout(wait_seconds):
            return "ok" if await check() else "failed"
    except TimeoutError:
        return "timeout"
    except Exception:
        logger.warning("readiness check %s raised", name, exc_info=True)
        return "error"


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _REQUEST_ID_PATTERN.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _route_template(scope: Scope, outer_root_path: str) -> str:
    """The matched route's template (``/studies/{study}``), never the raw path, for bounded cardinality.

    Mounted apps extend ``root_path`` by their prefix, so the prefix is put back in front of the route
    that matched inside them; a mount that is itself the endpoint (static files) is named by its prefix.
    """
    route = scope.get("route")
    if route is None:
        return _UNMATCHED_ROUTE
    prefix = str(scope.get("root_path", ""))[len(outer_root_path) :]
    if isinstance(route, Mount):
        return prefix or route.path
    return prefix + str(getattr(route, "path", _UNMATCHED_ROUTE))


class _RequestObservabilityMiddleware:
    """Request id, server span, metrics, access log, security headers, and the last-resort 500.

    Unhandled exceptions are answered here rather than by Starlette's ``ServerErrorMiddleware``, which
    sits outside every user middleware: answered there, the 500 would leave without the request id and
    security headers and be missing from the metrics.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_token = request_id_var.set(request_id)
        method = str(scope["method"]) if scope["method"] in _KNOWN_METHODS else "_OTHER"
        outer_root_path = str(scope.get("root_path", ""))
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        parent = propagate.extract(carrier)
        status = 500
        response_started = False
        started = perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                headers[REQUEST_ID_HEADER] = request_id
                for name, value in _SECURITY_HEADERS:
                    headers.setdefault(name, value)
                message = {**message, "headers": headers.raw}
            await send(message)

        with _tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.scheme": str(scope.get("scheme", "http")),
                "url.path": str(scope.get("path", "")),
                "network.protocol.version": str(scope.get("http_version", "1.1")),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_with_headers)
            except Exception as exc:
                span.record_exception(exc)
                if response_started:
                    # Too late for an error response; the server closes the connection and logs it.
                    span.set_status(StatusCode.ERROR, type(exc).__name__)
                    raise
                logger.error(
                    "unhandled exception",
                    exc_info=exc,
                    extra={"http_method": method, "http_route": _route_template(scope, outer_root_path)},
                )
                await problem_response(500, "An unexpected error occurred.", request_id=request_id)(
                    scope, receive, send_with_headers
                )
            finally:
                route = _route_template(scope, outer_root_path)
                elapsed = perf_counter() - started
                span.update_name(method if route == _UNMATCHED_ROUTE else f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                labels = (method, route, str(status))
                _REQUESTS.labels(*labels).inc()
                _REQUEST_DURATION.labels(*labels).observe(elapsed)
                access_logger.log(
                    logging.DEBUG if route in _OPERATIONAL_PATHS else logging.INFO,
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={
                        "http_method": method,
                        "http_route": route,
                        "http_status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
                request_id_var.reset(request_id_token)


_FORWARDED_HOST: Final = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?"
)
_FORWARDED_PREFIX: Final = re.compile(r"(?:/[A-Za-z0-9._~\-]+)*/?")


def public_base_url(request: Request) -> str:
    """The service root the client used, ending with ``/`` (PS3.18 §8.2 ``{+SERVICE}``).

    Behind the gateway, that is the gateway's URL: it passes it in ``X-Forwarded-Proto``,
    ``X-Forwarded-Host`` and ``X-Forwarded-Prefix``. Forwarded values are used only when well-formed; the
    internal services are reachable only through the gateway, which sets them.
    """
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if proto not in ("http", "https"):
        proto = request.url.scheme
    host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    if _FORWARDED_HOST.fullmatch(host) is None:
        host = request.url.netloc
    prefix = request.headers.get("x-forwarded-prefix", "").split(",")[0].strip()
    if _FORWARDED_PREFIX.fullmatch(prefix) is None:
        prefix = ""
    root = (prefix or str(request.scope.get("root_path", ""))).rstrip("/")
    return f"{proto}://{host}{root}/"
