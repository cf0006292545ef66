"""Logging and tracing setup shared by every service.

Logs are one JSON object per line on stdout (the twelve-factor way: the platform ships them), each carrying
the service name, the request id and the W3C trace context (trace-id / parent-id of
https://www.w3.org/TR/trace-context/) of the span current when the record was made, so a log line can be
joined to its trace. Traces use the OpenTelemetry SDK; spans are always created so that ``traceparent``
propagates through HTTP and Kafka even when no collector is configured.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# Set by the HTTP middleware for the duration of a request (see emage_common.web).
request_id_var: ContextVar[str | None] = ContextVar("emage_request_id", default=None)

_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field,
# except uvicorn's "color_message", a duplicate of the message with terminal escape codes.
_STANDARD_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "service", "trace_id", "span_id", "request_id", "color_message"}

_installed_handler: logging.Handler | None = None
_tracer_provider: TracerProvider | None = None


class _ContextFilter(logging.Filter):
    """Stamps each record with the service name, request id and current span ids.

    Runs in the thread that logs, where the caller's OpenTelemetry context is still current.
    """

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service_name
        record.request_id = request_id_var.get()
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = None
            record.span_id = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (UTC, RFC 3339), level, logger, message, service, request_id,
    trace_id, span_id, every ``extra=`` field, and the formatted exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
        }
        for field in ("request_id", "trace_id", "span_id"):
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(service_name: str, level: str | int = "INFO", json: bool = True) -> None:
    """Route all logging (the service's, the libraries', uvicorn's) to one stdout handler.

    ``json=False`` gives a human-readable line for local development, still with the trace id.
    Idempotent: calling it again replaces the handler it installed and leaves any other handler (a test
    framework's capture, for instance) in place.
    """
    global _installed_handler
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)

    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextFilter(service_name))
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s [trace=%(trace_id)s req=%(request_id)s] %(message)s"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    _installed_handler = handler

    # uvicorn installs its own handlers and formats when left to itself; hand its records to the root.
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)


def setup_tracing(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the global OpenTelemetry tracer provider and the W3C Trace Context propagator.

    With ``otlp_endpoint`` (the base URL of ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. ``http://collector:4318``)
    spans are batched to ``<endpoint>/v1/traces`` over OTLP/HTTP; without it no exporter is attached but
    spans still get real ids, so trace context flows across services. Idempotent: the first provider wins,
    as OpenTelemetry allows only one global provider per process.
    """
    global _tracer_provider
    if _tracer_provider is not None:
        return _tracer_provider

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint:
        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    _tracer_provider = provider
    return provider
