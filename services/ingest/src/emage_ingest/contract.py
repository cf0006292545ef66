"""The published contract of ``emage.acquisition.v1``: the JSON Schema of its payload, for hospital IT.

``docs/integration/acquisition.schema.json`` is generated from :class:`~emage_common.events.Acquisition`, the
model ingest and the catalog validate every event with, so the schema hospital systems build against is
the one e-mage enforces; ``docs/integration/asyncapi.yaml`` describes the topic, its key and the CloudEvents
envelope around it. Regenerate after changing the model (a unit test fails until then)::

    python -m emage_ingest.contract docs/integration/acquisition.schema.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from emage_common.events import Acquisition

SCHEMA_ID: Final = "urn:emage:schemas:fr.emage.acquisition.v1"
"""The schema's ``$id``; producers may also set it as the CloudEvents ``dataschema`` attribute."""
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def acquisition_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the ``data`` of an ``fr.emage.acquisition.v1`` event."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        **Acquisition.model_json_schema(mode="validation"),
    }


def render(schema: dict[str, Any]) -> str:
    """The schema as it is published: indented JSON, non-ASCII kept, ending with a newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    target = Path(arguments[0] if arguments else "docs/integration/acquisition.schema.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(acquisition_schema()), encoding="utf-8")


if __name__ == "__main__":
    main()
