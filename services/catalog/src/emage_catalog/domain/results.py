"""QIDO-RS results and WADO-RS metadata, assembled from the catalog's study, series and instance datasets.

A result carries (PS3.18 §10.6.3.3): the default attributes of its level (Tables 10.6.3-3 to -5) and, for a
relational search that did not fix the study (or series) in the path, those of the levels above; every
matching key of the request; and what ``includefield`` asked for, when the catalog holds it (an attribute it
does not hold is left out, not an error). Each attribute is read from the document of the level that owns it
(:func:`~emage_catalog.domain.levels.level_of`), so a series result reports the study's current counts.

URLs in results (Retrieve URL, BulkDataURI) are absolute, built on the DICOMweb base URL of the request: the
catalog stores them relative to the service root (PS3.18 §8.2) so that the gateway's public URL can change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from emage_catalog.domain.dicom import DicomJson, element, sorted_dataset
from emage_catalog.domain.levels import (
    DEFAULT_RESULT,
    DEFAULT_SERIES_RESULT,
    DEFAULT_STUDY_RESULT,
    INSTANCE_AVAILABILITY,
    RETRIEVE_URL,
    QueryLevel,
    level_of,
)
from emage_catalog.domain.query import SearchQuery

_LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE)


@dataclass(frozen=True, slots=True)
class ResultShape:
    """Which attributes a search returns and which levels' documents hold them."""

    tags: tuple[str, ...] | None
    """Tags to return, ascending, or None for every attribute held (``includefield=all``)."""
    levels: tuple[QueryLevel, ...]
    """Levels whose documents each result needs, shallowest first; always ends with the searched level."""
    sources: tuple[tuple[str, tuple[QueryLevel, ...]], ...] = ()
    """For each returned tag, the levels to read it from, in order: its own level's document, then deeper
    ones (an attribute the catalog holds lower down). Computed once per search rather than per result."""


def result_shape(query: SearchQuery) -> ResultShape:
    """The attributes and documents the results of ``query`` are made of."""
    within = tuple(level for level in _LEVELS if level.depth <= query.level.depth)
    if query.include_all:
        return ResultShape(tags=None, levels=within)
    tags = [attribute.tag for attribute in DEFAULT_RESULT[query.level]]
    if query.level is not QueryLevel.STUDY and query.study_instance_uid is None:
        tags.extend(attribute.tag for attribute in DEFAULT_STUDY_RESULT)
    if query.level is QueryLevel.INSTANCE and query.series_instance_uid is None:
        tags.extend(attribute.tag for attribute in DEFAULT_SERIES_RESULT)
    tags.extend(query.return_tags)
    unique = tuple(sorted(set(tags)))
    needed = {level_of(tag) for tag in unique} | {query.level}
    levels = tuple(level for level in within if level in needed)
    sources = tuple(
        (tag, tuple(level for level in levels if level.depth >= level_of(tag).depth))
        for tag in unique
        if tag not in _COMPUTED
    )
    return ResultShape(tags=unique, levels=levels, sources=sources)


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the UIDs that locate it and the datasets of its lineage that were read."""

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    datasets: Mapping[QueryLevel, Mapping[str, dict[str, Any]]]


_COMPUTED = frozenset({INSTANCE_AVAILABILITY.tag, RETRIEVE_URL.tag})
_ONLINE: dict[str, Any] = element("CS", "ONLINE")


def result_dataset(shape: ResultShape, hit: Hit, base_url: str) -> DicomJson:
    """The DICOM JSON object of one QIDO-RS result (PS3.18 §10.6.3.3), tags in ascending order."""
    if shape.tags is None:
        merged: dict[str, dict[str, Any]] = {}
        for level in reversed(shape.levels):
            merged.update(hit.datasets.get(level, {}))
        merged[INSTANCE_AVAILABILITY.tag] = _ONLINE
        merged[RETRIEVE_URL.tag] = element("UR", resolve_reference(base_url, resource_path(hit)))
        return resolve_bulk_data(sorted_dataset(merged), base_url)
    held: DicomJson = {}
    for tag, levels in shape.sources:
        for level in levels:
            found = hit.datasets.get(level, {}).get(tag)
            if found is not None:
                held[tag] = found
                break
    if INSTANCE_AVAILABILITY.tag in shape.tags:
        held[INSTANCE_AVAILABILITY.tag] = _ONLINE
    if RETRIEVE_URL.tag in shape.tags:
        held[RETRIEVE_URL.tag] = element("UR", resolve_reference(base_url, resource_path(hit)))
    return resolve_bulk_data({tag: held[tag] for tag in shape.tags if tag in held}, base_url)


def resource_path(hit: Hit) -> str:
    """The path, relative to the DICOMweb base, of the study, series or instance a result stands for.

    UIDs are digits and dots (PS3.5 §9.1): they need no percent-encoding in a path.
    """
    path = f"studies/{hit.study_instance_uid}"
    if hit.series_instance_uid is not None:
        path += f"/series/{hit.series_instance_uid}"
        if hit.sop_instance_uid is not None:
            path += f"/instances/{hit.sop_instance_uid}"
    return path


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def resolve_reference(base_url: str, reference: str) -> str:
    """``reference`` resolved against ``base_url`` (which ends with ``/``) as RFC 3986 §5.2 says.

    A plain relative path, the form the catalog stores, is appended to the base directly; any other form
    (absolute, network-path, absolute-path, dot segments) goes through the general algorithm.
    """
    if _SCHEME.match(reference):
        return reference
    if reference.startswith("/") or reference.startswith(".") or "/." in reference:
        return urljoin(base_url, reference)
    return base_url + reference


def resolve_bulk_data(dataset: Mapping[str, dict[str, Any]], base_url: str) -> DicomJson:
    """``dataset`` with every BulkDataURI (PS3.18 §F.2.6), in sequences too, made absolute on ``base_url``.

    Attributes without a reference are shared with ``dataset``, not copied.
    """
    resolved: DicomJson = {}
    for tag, attribute in dataset.items():
        if "BulkDataURI" in attribute:
            attribute = {
                **attribute,
                "BulkDataURI": resolve_reference(base_url, str(attribute["BulkDataURI"])),
            }
        elif attribute.get("vr") == "SQ" and isinstance(attribute.get("Value"), list):
            items = [
                resolve_bulk_data(item, base_url) if isinstance(item, dict) else item
                for item in attribute["Value"]
            ]
            attribute = {**attribute, "Value": items}
        resolved[tag] = attribute
    return resolved
