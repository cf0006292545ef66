"""A real OTLP/HTTP trace receiver on loopback, for tests that look at the spans the services export.

It speaks the binary protobuf encoding of OTLP/HTTP (OpenTelemetry Protocol specification, "OTLP/HTTP"):
``POST /v1/traces`` with ``Content-Type: application/x-protobuf`` (optionally ``Content-Encoding: gzip``)
carrying an ``ExportTraceServiceRequest``, answered ``200`` with an empty ``ExportTraceServiceResponse``;
a body that does not decode is a ``400`` (not retryable), another encoding a ``415``, another path a ``404``.

Bodies are kept as received and decoded only when a test asks for spans, so a whole test session exporting
to it costs the services a few loopback requests and the test process next to nothing.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TRACES_PATH: Final = "/v1/traces"
PROTOBUF: Final = "application/x-protobuf"
_MAX_BODY: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span, ids in the lowercase hex of W3C Trace Context."""

    service: str
    """The ``service.name`` resource attribute of the process that made the span."""
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    """``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER`` or ``INTERNAL``."""
    attributes: dict[str, Any] = field(hash=False)


def _value(value: AnyValue) -> Any:
    match value.WhichOneof("value"):
        case "array_value":
            return [_value(item) for item in value.array_value.values]
        case "kvlist_value":
            return _attributes(value.kvlist_value.values)
        case None:
            return None
        case which:
            return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode_spans(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest`` (raises :class:`DecodeError` if it is not one)."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=service,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                    )
                )
    return spans


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters reuse their connection

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= _MAX_BODY:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length)
        if self.path != TRACES_PATH:
            self._answer(HTTPStatus.NOT_FOUND)
            return
        if self.headers.get_content_type() != PROTOBUF:
            self._answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            ExportTraceServiceRequest.FromString(body)  # refuse what a later decoding would choke on
        except (OSError, DecodeError):
            self._answer(HTTPStatus.BAD_REQUEST)
            return
        self.server.receiver.keep(body)
        self._answer(HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString())

    def _answer(self, status: HTTPStatus, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", PROTOBUF)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: one line per export would bury the test output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OtlpReceiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receiver = receiver


class OtlpReceiver:
    """Accepts OTLP/HTTP trace exports on ``127.0.0.1`` (an ephemeral port) until stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._decoded: list[ReceivedSpan] = []
        self._decoded_bodies = 0
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL to give an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``); traces go to ``/v1/traces``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def keep(self, body: bytes) -> None:
        with self._lock:
            self._bodies.append(body)

    @property
    def exports(self) -> int:
        """How many export requests were accepted."""
        with self._lock:
            return len(self._bodies)

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order; only those of ``trace_id`` if given."""
        with self._lock:
            fresh = self._bodies[self._decoded_bodies :]
            self._decoded_bodies = len(self._bodies)
            for body in fresh:
                self._decoded.extend(decode_spans(body))
            spans = list(self._decoded)
        return spans if trace_id is None else [span for span in spans if span.trace_id == trace_id]
