"""Validation of custom resources (Strimzi, KEDA, MongoDB, Keycloak, prometheus-operator) against the schemas
in ``tests/static/crd_schemas`` (see its README for where they come from and what they cover).

Kubernetes types embedded in a custom resource are checked against the strict Kubernetes schemas bundled with
kubernetes-validate, the same ones the built-in kinds are validated with.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "crd_schemas"
_BASE_URI = "https://kubernetes.io/crd/"


def _kubernetes_definitions(version: str) -> dict[str, Any]:
    package = Path(kubernetes_validate.__file__).resolve().parent / "kubernetes-json-schema"
    candidates = sorted(
        (p for p in package.glob("v*-local-strict") if p.name[1:].startswith(version + ".")),
        key=lambda p: p.name,
    )
    if not candidates:
        raise FileNotFoundError(f"kubernetes-validate has no strict schemas for Kubernetes {version}")
    definitions: dict[str, Any] = json.loads(
        (candidates[-1] / "_definitions.json").read_text(encoding="utf-8")
    )
    return definitions


@cache
def _validators(version: str) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    registry: Registry = Resource.from_contents(_kubernetes_definitions(version)) @ Registry()
    documents = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in SCHEMA_DIR.glob("*.yaml")}
    common = documents.pop("_common.yaml")
    registry = registry.with_resource(
        _BASE_URI + "_common.yaml",
        Resource.from_contents({"$schema": "https://json-schema.org/draft/2020-12/schema", **common}),
    )
    validators = {}
    for name, document in documents.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _BASE_URI + name}
        schema.update(document["schema"])
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[(document["apiVersion"], document["kind"])] = jsonschema.Draft202012Validator(
            schema, registry=registry
        )
    return validators


def has_schema(manifest: dict[str, Any], version: str) -> bool:
    return (str(manifest.get("apiVersion")), str(manifest.get("kind"))) in _validators(version)


def custom_resource_problems(manifest: dict[str, Any], version: str) -> list[str]:
    """Every schema violation of one custom resource (empty when it is valid)."""
    validator = _validators(version)[(str(manifest.get("apiVersion")), str(manifest.get("kind")))]
    where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"{where}: {path}: {error.message}")
    return problems


def covered_kinds(version: str) -> set[tuple[str, str]]:
    return set(_validators(version))
