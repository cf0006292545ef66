"""QIDO-RS query strings into searches (PS3.18 §8.3.4), and searches into MongoDB filters."""

from __future__ import annotations

import re

import pytest

from emage_catalog.adapters.mongo import compile_filter, sort_order
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.matching import Equals, Prefix
from emage_catalog.domain.query import InvalidQueryError, SearchQuery, parse_search


def search(query: str, level: QueryLevel = QueryLevel.STUDY, **scope: str) -> SearchQuery:
    pairs = [tuple(part.split("=", 1)) for part in query.split("&")] if query else []
    return parse_search(pairs, level=level, max_limit=100, **scope)  # type: ignore[arg-type]


def test_attributes_by_keyword_or_tag_and_their_return() -> None:
    query = search("PatientID=IPP-1&00100010=doe*&StudyDescription=&includefield=00081030,PatientSex")
    matched = {(c.key.attribute.keyword, c.matcher) for c in query.constraints}
    assert matched == {("PatientID", Equals("IPP-1")), ("PatientName", Prefix("doe"))}
    # Matching keys, universal ones included, and includefield attributes are returned.
    assert query.return_tags == ("00100020", "00100010", "00081030", "00100040")
    assert not query.include_all


def test_includefield_all_repeated_includefield_and_content_negotiation_parameters() -> None:
    query = search("includefield=all&includefield=PatientAge&accept=application/dicom%2Bjson&charset=utf-8")
    assert query.include_all
    assert query.return_tags == ("00101010",)


@pytest.mark.parametrize(
    ("query", "limit", "offset", "reduced"),
    [
        ("", 100, 0, True),
        ("limit=10", 10, 0, False),
        ("limit=500&offset=7", 100, 7, True),
        ("offset=0", 100, 0, True),
    ],
)
def test_paging_is_bounded_by_the_server_maximum(query: str, limit: int, offset: int, reduced: bool) -> None:
    parsed = search(query)
    assert (parsed.limit, parsed.offset, parsed.limit_reduced) == (limit, offset, reduced)


def test_fuzzy_matching_is_accepted_and_reported() -> None:
    assert search("fuzzymatching=true").fuzzy_matching_requested
    assert not search("fuzzymatching=false").fuzzy_matching_requested


@pytest.mark.parametrize(
    ("query", "level", "reason"),
    [
        ("Foo=1", QueryLevel.STUDY, "unknown query parameter"),
        ("7FE00010=x", QueryLevel.INSTANCE, "matching on PixelData is not supported"),
        ("00191001=x", QueryLevel.STUDY, "not a public attribute tag"),
        ("Modality=CT", QueryLevel.STUDY, "not supported in a study search"),
        ("SOPInstanceUID=1.2", QueryLevel.SERIES, "not supported in a series search"),
        ("RequestAttributesSequence.RequestedProcedureID=1", QueryLevel.SERIES, "within sequences"),
        ("PatientID=1&00100020=2", QueryLevel.STUDY, "more than once"),
        ("limit=0", QueryLevel.STUDY, "limit is an integer of at least 1"),
        ("limit=1&limit=2", QueryLevel.STUDY, "more than once"),
        ("offset=x", QueryLevel.STUDY, "offset is an integer"),
        ("fuzzymatching=1", QueryLevel.STUDY, "'true' or 'false'"),
        ("includefield=Nope", QueryLevel.STUDY, "includefield"),
        ("includefield=ReferencedSeriesSequence.SeriesInstanceUID", QueryLevel.STUDY, "sequence attribute"),
        ("StudyDate=today", QueryLevel.STUDY, "StudyDate: 'today' is not a date"),
    ],
)
def test_invalid_queries_say_why(query: str, level: QueryLevel, reason: str) -> None:
    with pytest.raises(InvalidQueryError, match=re.escape(reason)):
        search(query, level)


def test_higher_level_keys_are_accepted_in_lower_level_searches() -> None:
    query = search("PatientID=IPP-1&Modality=CT&SOPClassUID=1.2.840.10008.5.1.4.1.1.2", QueryLevel.INSTANCE)
    assert len(query.constraints) == 3


@pytest.mark.parametrize(
    ("query", "level", "scope", "expected"),
    [
        ("", QueryLevel.STUDY, {}, {}),
        ("PatientID=IPP-1", QueryLevel.STUDY, {}, {"q.PatientID": "IPP-1"}),
        ("StudyInstanceUID=1.2,1.3", QueryLevel.STUDY, {}, {"_id": {"$in": ["1.2", "1.3"]}}),
        ("StudyInstanceUID=1.2", QueryLevel.SERIES, {}, {"study_uid": "1.2"}),
        ("SeriesInstanceUID=1.2", QueryLevel.INSTANCE, {}, {"series_uid": "1.2"}),
        ("SOPInstanceUID=1.2", QueryLevel.INSTANCE, {}, {"_id": "1.2"}),
        ("PatientName=doe*", QueryLevel.STUDY, {}, {"q.PatientName": {"$gte": "doe", "$lt": "dof"}}),
        ("PatientName=*oe", QueryLevel.STUDY, {}, {"q.PatientName": {"$regex": r"oe(?![\s\S])"}}),
        ("StudyDate=20240101-", QueryLevel.STUDY, {}, {"q.StudyDate": {"$gte": "20240101"}}),
        ("StudyDate=20240101", QueryLevel.STUDY, {}, {"q.StudyDate": "20240101"}),
        (
            "ModalitiesInStudy=CT\\M*",
            QueryLevel.STUDY,
            {},
            {
                "$or": [
                    {"q.ModalitiesInStudy": "CT"},
                    {"q.ModalitiesInStudy": {"$elemMatch": {"$gte": "M", "$lt": "N"}}},
                ]
            },
        ),
        (
            "Modality=MR",
            QueryLevel.INSTANCE,
            {"study_instance_uid": "1.2", "series_instance_uid": "1.2.3"},
            {"$and": [{"study_uid": "1.2"}, {"series_uid": "1.2.3"}, {"q.Modality": "MR"}]},
        ),
    ],
)
def test_searches_compile_to_indexed_mongodb_filters(
    query: str, level: QueryLevel, scope: dict[str, str], expected: dict[str, object]
) -> None:
    assert compile_filter(search(query, level, **scope)) == expected


@pytest.mark.parametrize(
    ("level", "scope", "expected"),
    [
        (QueryLevel.STUDY, {}, ["q.StudyDate", "q.StudyTime", "_id"]),
        (QueryLevel.SERIES, {}, ["q.StudyDate", "q.StudyTime", "study_uid", "q.SeriesNumber", "_id"]),
        (QueryLevel.SERIES, {"study_instance_uid": "1.2"}, ["q.SeriesNumber", "_id"]),
        (
            QueryLevel.INSTANCE,
            {"study_instance_uid": "1.2"},
            ["q.SeriesNumber", "series_uid", "q.InstanceNumber", "_id"],
        ),
        (
            QueryLevel.INSTANCE,
            {"study_instance_uid": "1.2", "series_instance_uid": "1.2.3"},
            ["q.InstanceNumber", "_id"],
        ),
    ],
)
def test_results_within_a_study_or_series_are_ordered_by_its_index(
    level: QueryLevel, scope: dict[str, str], expected: list[str]
) -> None:
    assert [field for field, _ in sort_order(search("", level, **scope))] == expected
