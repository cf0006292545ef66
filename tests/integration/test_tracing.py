"""One trace spans gateway → ingest → Kafka → catalog (ARCHITECTURE.md, "Events").

Every service of the session exports its spans over OTLP/HTTP to the session's receiver (``otlp_receiver``
in conftest.py). A technician stores a new study through the gateway as an instrumented client would, with a
W3C ``traceparent`` (https://www.w3.org/TR/trace-context/); once the catalog has the study, the spans the
access, ingest and catalog processes exported must form one trace: the catalog's consumer span leads, parent
by parent, through ingest's producer and server spans to the gateway's server span, the child of the
client's span.
"""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from gateway_world import (
    FACILITY_A,
    RPPS,
    STOW_TYPE,
    Study,
    Tokens,
    World,
    await_catalogued,
    ct_instance,
    multipart,
)
from otlp_receiver import OtlpReceiver, ReceivedSpan
from pydicom.uid import generate_uid

from emage_common.events import INSTANCE_STORED_TOPIC
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

# Spans leave a service in batches, at the latest 5 s after they end (OTEL_BSP_SCHEDULE_DELAY's default).
WAIT_S = 60


def closed_trace(receiver: OtlpReceiver, trace_id: str, client_span_id: str) -> dict[str, ReceivedSpan]:
    """The spans of ``trace_id`` once the catalog consumed the event and every parent has arrived.

    Parents end after their children and each service exports on its own schedule, so a trace is looked at
    only once it is closed: every span's parent is in it, except the client's span the gateway continued.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        spans = {span.span_id: span for span in receiver.spans(trace_id)}
        consumed = any(
            span.service == "catalog" and span.name == f"process {INSTANCE_STORED_TOPIC}"
            for span in spans.values()
        )
        dangling = {
            span.parent_span_id
            for span in spans.values()
            if span.parent_span_id not in spans and span.parent_span_id != client_span_id
        }
        if consumed and not dangling:
            return spans
        assert time.monotonic() < deadline, (
            f"trace {trace_id} not complete after {WAIT_S}s: catalog consumed={consumed}, "
            f"missing parents {sorted(str(p) for p in dangling)}, have {sorted(spans.values(), key=str)}"
        )
        time.sleep(0.5)


def ancestry(spans: dict[str, ReceivedSpan], span: ReceivedSpan) -> list[ReceivedSpan]:
    """``span``, its parent, its parent's parent… up to the first span whose parent is not in the trace."""
    chain = [span]
    while chain[-1].parent_span_id in spans:
        chain.append(spans[str(chain[-1].parent_span_id)])
        assert len(chain) <= len(spans), "a cycle of parents"
    return chain


def test_a_stow_through_the_gateway_is_one_trace_down_to_the_catalog(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack, otlp_receiver: OtlpReceiver
) -> None:
    trace_id, client_span_id = secrets.token_hex(16), secrets.token_hex(8)
    study = generate_uid()
    part10 = ct_instance(
        study, generate_uid(), patient_id="IPP-A-TRACE", issuer=FACILITY_A, operator_rpps=RPPS["technician-a"]
    )
    response = gateway.post(
        "/dicomweb/studies",
        content=multipart(part10),
        headers={
            "Authorization": f"Bearer {tokens('technician-a')}",
            "Content-Type": STOW_TYPE,
            "Accept": "application/dicom+json",
            "traceparent": f"00-{trace_id}-{client_span_id}-01",
        },
    )
    assert response.status_code == 200, response.text
    await_catalogued(services, Study(study, "", "", FACILITY_A, "", ""))

    spans = closed_trace(otlp_receiver, trace_id, client_span_id)
    assert {"access", "ingest", "catalog"} <= {span.service for span in spans.values()}

    # The gateway's server span is the one root inside the trace, continuing the client's span.
    [root] = [span for span in spans.values() if span.parent_span_id not in spans]
    assert (root.service, root.kind, root.parent_span_id) == ("access", "SERVER", client_span_id)
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.response.status_code"] == 200

    # The Kafka hop: the catalog consumed the very record ingest produced, and continued its span.
    [consumed] = [
        span
        for span in spans.values()
        if span.service == "catalog" and span.name == f"process {INSTANCE_STORED_TOPIC}"
    ]
    assert consumed.kind == "CONSUMER"
    assert consumed.attributes["messaging.consumer.group.name"] == "catalog"
    produced = spans[str(consumed.parent_span_id)]
    assert (produced.service, produced.kind, produced.name) == (
        "ingest",
        "PRODUCER",
        f"send {INSTANCE_STORED_TOPIC}",
    )
    assert produced.attributes["messaging.message.id"] == consumed.attributes["messaging.message.id"]

    # Parent by parent, the consumer span leads back to the gateway's server span through ingest's.
    chain = ancestry(spans, consumed)
    assert chain[-1] == root
    hops = [span.service for span in chain]
    assert [service for i, service in enumerate(hops) if i == 0 or hops[i - 1] != service] == [
        "catalog",
        "ingest",
        "access",
    ]
    ingest_server = [span for span in chain if span.service == "ingest" and span.kind == "SERVER"]
    assert len(ingest_server) == 1
    assert ingest_server[0].attributes["http.route"] == "/studies"
    assert spans[str(ingest_server[0].parent_span_id)].service == "access"
