"""Logging and tracing setup: one JSON object per line, joined to the current trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from emage_common.telemetry import request_id_var, setup_logging, setup_tracing


@pytest.fixture
def stdout(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Captures what the installed handler writes, and restores the logging configuration afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    uvicorn_error = logging.getLogger("uvicorn.error")
    saved_uvicorn = (list(uvicorn_error.handlers), uvicorn_error.propagate, uvicorn_error.level)
    try:
        yield capsys
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        uvicorn_error.handlers[:], uvicorn_error.propagate, uvicorn_error.level = saved_uvicorn


def _lines(captured: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.readouterr().out.splitlines()]


def test_json_line_carries_the_current_trace(stdout: pytest.CaptureFixture[str]) -> None:
    setup_logging("catalog", "INFO", json=True)
    tracer = setup_tracing("catalog").get_tracer("test")
    with tracer.start_as_current_span("qido-rs") as span:
        logging.getLogger("emage_catalog.api").info("found %d studies", 3, extra={"study_count": 3})
    [line] = _lines(stdout)
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["message"] == "found 3 studies"
    assert line["level"] == "INFO"
    assert line["logger"] == "emage_catalog.api"
    assert line["service"] == "catalog"
    assert line["study_count"] == 3
    assert line["timestamp"].endswith("+00:00")


def test_json_line_outside_a_span_has_no_trace(stdout: pytest.CaptureFixture[str]) -> None:
    setup_logging("catalog", "INFO", json=True)
    token = request_id_var.set("req-1")
    try:
        logging.getLogger("emage_catalog").warning("no span here")
    finally:
        request_id_var.reset(token)
    [line] = _lines(stdout)
    assert "trace_id" not in line
    assert line["request_id"] == "req-1"


def test_exception_text_is_one_json_field(stdout: pytest.CaptureFixture[str]) -> None:
    setup_logging("ingest", "INFO", json=True)
    try:
        raise ValueError("bad transfer syntax")
    except ValueError:
        logging.getLogger("emage_ingest").exception("store failed")
    [line] = _lines(stdout)
    assert line["message"] == "store failed"
    assert "Traceback" in line["exception"]
    assert "ValueError: bad transfer syntax" in line["exception"]


def test_uvicorn_records_use_the_same_handler_and_setup_is_idempotent(
    stdout: pytest.CaptureFixture[str],
) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))
    uvicorn_error.propagate = False
    setup_logging("access", "INFO", json=True)
    setup_logging("access", "INFO", json=True)
    uvicorn_error.info("Application startup complete.")
    logging.getLogger("emage_access").debug("below the level")
    [line] = _lines(stdout)
    assert line["logger"] == "uvicorn.error"
    assert line["service"] == "access"


def test_plain_text_lines_still_name_the_trace(stdout: pytest.CaptureFixture[str]) -> None:
    setup_logging("audit", "DEBUG", json=False)
    with setup_tracing("audit").get_tracer("test").start_as_current_span("verify") as span:
        logging.getLogger("emage_audit").debug("chain verified")
    output = stdout.readouterr().out
    assert "chain verified" in output
    assert f"trace={format(span.get_span_context().trace_id, '032x')}" in output


def test_tracing_is_idempotent_and_propagates_w3c_tracecontext() -> None:
    provider = setup_tracing("consent")
    assert setup_tracing("consent", "http://127.0.0.1:4318") is provider
    assert trace.get_tracer_provider() is provider
    assert isinstance(propagate.get_global_textmap(), TraceContextTextMapPropagator)
    carrier: dict[str, str] = {}
    with provider.get_tracer("test").start_as_current_span("publish") as span:
        propagate.inject(carrier)
    assert carrier["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
