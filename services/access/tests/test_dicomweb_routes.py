"""Which policy action each DICOMweb resource is, which study it is about, and who serves it."""

from __future__ import annotations

import pytest

from emage_access.dicomweb_proxy import Target, Upstream, classify
from emage_access.domain.policy import Action

S = "1.2.3"
SE = "1.2.3.4"
I = "1.2.3.4.5"  # noqa: E741
INSTANCE = f"studies/{S}/series/{SE}/instances/{I}"

CATALOG, INGEST = Upstream.CATALOG, Upstream.INGEST


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "studies", Target(Action.SEARCH, None, CATALOG)),
        ("GET", "series", Target(Action.SEARCH, None, CATALOG)),
        ("GET", "instances", Target(Action.SEARCH, None, CATALOG)),
        ("GET", f"studies/{S}/series", Target(Action.SEARCH, S, CATALOG)),
        ("GET", f"studies/{S}/instances", Target(Action.SEARCH, S, CATALOG)),
        ("GET", f"studies/{S}/series/{SE}/instances", Target(Action.SEARCH, S, CATALOG)),
        ("GET", f"studies/{S}/metadata", Target(Action.READ_METADATA, S, CATALOG)),
        ("GET", f"studies/{S}/series/{SE}/metadata", Target(Action.READ_METADATA, S, CATALOG)),
        ("GET", f"{INSTANCE}/metadata", Target(Action.READ_METADATA, S, CATALOG)),
        ("GET", f"studies/{S}", Target(Action.DOWNLOAD, S, INGEST)),
        ("HEAD", f"studies/{S}", Target(Action.DOWNLOAD, S, INGEST)),
        ("GET", f"studies/{S}/series/{SE}", Target(Action.RETRIEVE, S, INGEST)),
        ("GET", f"{INSTANCE}", Target(Action.RETRIEVE, S, INGEST)),
        ("GET", f"{INSTANCE}/frames/1,2", Target(Action.RETRIEVE, S, INGEST)),
        ("GET", f"{INSTANCE}/bulk/7FE00010", Target(Action.RETRIEVE, S, INGEST)),
        ("GET", f"{INSTANCE}/rendered", Target(Action.RENDERED, S, INGEST)),
        (
            "GET",
            f"{INSTANCE}/frames/1/rendered",
            Target(Action.RENDERED, S, INGEST),
        ),
        ("GET", f"studies/{S}/thumbnail", Target(Action.RENDERED, S, INGEST)),
        ("GET", f"studies/{S}/series/{SE}/thumbnail", Target(Action.RENDERED, S, INGEST)),
        (
            "GET",
            f"{INSTANCE}/frames/1/thumbnail",
            Target(Action.RENDERED, S, INGEST),
        ),
        ("POST", "studies", Target(Action.STORE, None, INGEST)),
        ("POST", f"studies/{S}", Target(Action.STORE, S, INGEST)),
        ("GET", "/studies/", Target(Action.SEARCH, None, CATALOG)),
    ],
)
def test_each_resource_is_one_action_on_its_study(method: str, path: str, expected: Target) -> None:
    assert classify(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("GET", "patients"),
        ("GET", f"studies/{S}/instances/{I}"),  # an instance is reached through its series
        ("GET", f"studies/{S}/series/{SE}/series"),
        ("GET", f"studies/{S}/frames/1"),
        ("GET", f"studies/{S}/bulk/7FE00010"),
        ("GET", f"studies/{S}//metadata"),
        ("GET", f"{INSTANCE}/frames/1/metadata"),
        ("GET", f"studies/{S}/unknown"),
        ("POST", f"studies/{S}/series/{SE}"),
        ("POST", "series"),
        ("PUT", f"studies/{S}"),
        ("DELETE", f"studies/{S}"),
    ],
)
def test_anything_else_is_no_resource(method: str, path: str) -> None:
    assert classify(method, path) is None
