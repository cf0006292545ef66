"""The published contract of emage.acquisition.v1: the JSON Schema file and the AsyncAPI document.

No AsyncAPI validator is published on PyPI (the reference one is JavaScript), so the document is parsed and
checked here: its version and structure, that it references the generated schema, and that every example it
gives is an event e-mage accepts, with the key it documents.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from emage_common.events import ACQUISITION_TOPIC, Acquisition, CloudEvent, dlq_topic
from emage_ingest.contract import SCHEMA_ID, acquisition_schema, main, render
from emage_ingest.domain.sources import RejectionReason

DOCS = Path(__file__).resolve().parents[3] / "docs" / "integration"
SCHEMA_FILE = DOCS / "acquisition.schema.json"
ASYNCAPI_FILE = DOCS / "asyncapi.yaml"


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text(encoding="utf-8"))
    return document


def test_the_published_schema_is_the_one_generated_from_the_model() -> None:
    published = SCHEMA_FILE.read_text(encoding="utf-8")
    assert published == render(acquisition_schema()), (
        "docs/integration/acquisition.schema.json is stale: "
        "run `python -m emage_ingest.contract docs/integration/acquisition.schema.json`"
    )
    schema = json.loads(published)
    assert schema["$id"] == SCHEMA_ID
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_generator_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "acquisition.schema.json"
    main([str(target)])
    assert target.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")


def test_the_schema_accepts_what_the_model_accepts_and_refuses_what_it_refuses() -> None:
    validator = jsonschema.Draft202012Validator(acquisition_schema())
    valid = {
        "facility_finess": "750000001",
        "accession_number": "ACC-1",
        "patient": {"patient_id": "IPP-1", "issuer_of_patient_id": "750000001"},
        "performing_technician_rpps": "10100000040",
        "study_instance_uid": "1.2.3.4",
        "source": {"kind": "dimse", "ae_title": "PACS", "host": "pacs", "port": 104, "retrieve": "c-move"},
    }
    assert not list(validator.iter_errors(valid))
    Acquisition.model_validate(valid)
    for invalid in (
        valid | {"performing_technician_rpps": "123"},
        valid | {"study_instance_uid": "1.02.3"},
        valid | {"facility_finess": "75000001"},
        valid
        | {"source": {"kind": "dimse", "ae_title": "PACS", "host": "pacs", "port": 104, "retrieve": "ftp"}},
        valid | {"unexpected": True},
        {key: value for key, value in valid.items() if key != "patient"},
    ):
        assert list(validator.iter_errors(invalid)), invalid
        with pytest.raises(ValueError, match="validation error"):
            Acquisition.model_validate(invalid)


def test_the_asyncapi_document_describes_the_topic_its_key_and_envelope(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    channels = asyncapi["channels"]
    assert channels["acquisition"]["address"] == ACQUISITION_TOPIC
    assert channels["acquisitionDeadLetters"]["address"] == dlq_topic(ACQUISITION_TOPIC)
    message = asyncapi["components"]["messages"]["acquisition"]
    assert message["name"] == Acquisition.event_type
    key = message["bindings"]["kafka"]["key"]
    assert key["type"] == "string"
    assert "<facility_finess>/<accession_number>" in key["description"]
    envelope = asyncapi["components"]["schemas"]["acquisitionEvent"]
    assert envelope["properties"]["type"]["const"] == Acquisition.event_type
    assert envelope["properties"]["data"] == {"$ref": "./acquisition.schema.json"}
    for operation in asyncapi["operations"].values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in channels
    # Every $ref inside the document points at something it defines.
    for reference in _references(asyncapi):
        if reference.startswith("#/"):
            _resolve(asyncapi, reference)
        else:
            assert (DOCS / reference).is_file(), reference


def test_every_rejection_reason_is_documented_for_operators(asyncapi: dict[str, Any]) -> None:
    description = asyncapi["components"]["messages"]["deadLetter"]["description"]
    for reason in RejectionReason:
        assert f"`{reason.value}`" in description


def test_the_examples_are_events_e_mage_accepts(asyncapi: dict[str, Any]) -> None:
    components = asyncapi["components"]
    envelope = copy.deepcopy(components["schemas"]["acquisitionEvent"])
    envelope["properties"]["data"] = acquisition_schema()
    envelope_validator = jsonschema.Draft202012Validator(envelope)
    headers_validator = jsonschema.Draft202012Validator(components["schemas"]["kafkaHeaders"])
    examples = components["messages"]["acquisition"]["examples"]
    assert len(examples) >= 2
    for example in examples:
        assert not list(envelope_validator.iter_errors(example["payload"])), example["name"]
        assert not list(headers_validator.iter_errors(example["headers"])), example["name"]
        event = CloudEvent.from_bytes(json.dumps(example["payload"]).encode())
        acquisition = event.data_as(Acquisition)
        if event.partitionkey is not None:
            assert event.partitionkey == acquisition.partition_key()
    kinds = {example["payload"]["data"]["source"]["kind"] for example in examples}
    assert kinds == {"dicomweb", "dimse"}


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def _resolve(document: dict[str, Any], reference: str) -> Any:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node
