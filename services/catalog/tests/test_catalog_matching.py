"""PS3.4 §C.2.2.2 matching: query values into matchers, stored values into index values, wildcard safety."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emage_catalog.domain.dicom import resolve_attribute
from emage_catalog.domain.matching import (
    QUERY_KEYS,
    AnyOf,
    Between,
    Equals,
    InvalidMatchError,
    Matcher,
    Pattern,
    Prefix,
    QueryKey,
    index_values,
    normalize_person_name,
    parse_matcher,
    wildcard_regex,
)


def key(keyword: str) -> QueryKey:
    return QUERY_KEYS[resolve_attribute(keyword).tag]


@pytest.mark.parametrize(
    ("keyword", "raw", "expected"),
    [
        # Universal matching (§C.2.2.2.3).
        ("PatientName", "", None),
        ("PatientName", "*", None),
        ("AccessionNumber", "**", None),
        ("StudyDate", "", None),
        # Single value matching (§C.2.2.2.1): person names case-folded and unpadded, other text exact.
        ("PatientName", "Doe^John", Equals("doe^john")),
        ("PatientName", "DOE^JOHN^^", Equals("doe^john")),
        ("PatientID", "ipp-1", Equals("ipp-1")),
        ("PatientID", " IPP-1 ", Equals("IPP-1")),
        ("Modality", "CT", Equals("CT")),
        ("SeriesNumber", "12", Equals(12)),
        # Wild card matching (§C.2.2.2.4): a trailing '*' alone is a prefix, anything else a pattern.
        ("PatientName", "Doe*", Prefix("doe")),
        ("PatientName", "Doe**", Prefix("doe")),
        ("PatientName", "*oe", Pattern(r"oe(?![\s\S])")),
        ("PatientName", "D?e*", Pattern(r"^d[\s\S]e")),
        ("PatientName", "*o?e*", Pattern(r"o[\s\S]e")),
        ("AccessionNumber", "A.C*", Prefix("A.C")),
        ("StudyDescription", "CT (*)", Pattern(r"^CT\ \([\s\S]*\)(?![\s\S])")),
        # List of UID matching (§C.2.2.2.2), comma or backslash separated; duplicates folded.
        ("StudyInstanceUID", "1.2.3", Equals("1.2.3")),
        ("StudyInstanceUID", "1.2.3,1.2.4\\1.2.3", AnyOf((Equals("1.2.3"), Equals("1.2.4")))),
        # Multiple values (§C.2.2.2.8): CS also by comma; text by backslash only.
        ("ModalitiesInStudy", "CT,MR", AnyOf((Equals("CT"), Equals("MR")))),
        ("ModalitiesInStudy", "CT\\M*", AnyOf((Equals("CT"), Prefix("M")))),
        ("ModalitiesInStudy", "CT,*", None),
        ("StudyDescription", "Thorax, abdomen", Equals("Thorax, abdomen")),
        ("PatientName", "Doe\\Martin", AnyOf((Equals("doe"), Equals("martin")))),
        # Range matching (§C.2.2.2.5).
        ("StudyDate", "20240115", Equals("20240115")),
        ("StudyDate", "20240101-20241231", Between("20240101", "20241231")),
        ("StudyDate", "-20240101", Between(None, "20240101")),
        ("StudyDate", "20240101-", Between("20240101", None)),
        ("StudyTime", "1030", Between("103000.000000", "103059.999999")),
        ("StudyTime", "08-1030", Between("080000.000000", "103059.999999")),
        ("StudyTime", "-235959.5", Between(None, "235959.599999")),
        ("StudyTime", "235960", Between("235960.000000", "235960.999999")),
        ("AcquisitionDateTime", "2024", Between("20240101000000.000000", "20241231235959.999999")),
        ("AcquisitionDateTime", "202402", Between("20240201000000.000000", "20240229235959.999999")),
        ("AcquisitionDateTime", "2024-202403", Between("20240101000000.000000", "20240331235959.999999")),
        (
            "AcquisitionDateTime",
            "20240115103000+0100",
            Between("20240115103000.000000", "20240115103000.999999"),
        ),
        ("AcquisitionDateTime", "-20240115", Between(None, "20240115235959.999999")),
    ],
)
def test_query_values_become_matchers(keyword: str, raw: str, expected: Matcher | None) -> None:
    assert parse_matcher(key(keyword), raw) == expected


@pytest.mark.parametrize(
    ("keyword", "raw", "reason"),
    [
        ("StudyDate", "2024", "is not a date"),
        ("StudyDate", "2024-01-15", "is not a date"),
        ("StudyDate", "20240230", "not a calendar date"),
        ("StudyDate", "20240101-20231231", "ends before it starts"),
        ("StudyDate", "-", "is not a date"),
        ("StudyDate", "2024*", "is not a date"),
        ("StudyTime", "2500", "not a valid time"),
        ("StudyTime", "10:30", "is not a time"),
        ("AcquisitionDateTime", "20241301", "not a valid date-time"),
        ("StudyInstanceUID", "1.2.03", "leading zero"),
        ("StudyInstanceUID", "1.2.*", "is not a UID"),
        ("SeriesNumber", "one", "Integer String"),
        ("SeriesNumber", "1*", "Integer String"),
        ("PatientName", "a*b*c*d*e*f*g*h*i*j", "wildcards"),
        ("PatientName", "Doe\x00", "control characters"),
        ("PatientName", "x" * 4097, "at most 4096"),
    ],
)
def test_invalid_query_values_are_refused_with_a_reason(keyword: str, raw: str, reason: str) -> None:
    with pytest.raises(InvalidMatchError, match=re.escape(reason)):
        parse_matcher(key(keyword), raw)


@pytest.mark.parametrize(
    ("keyword", "attribute", "expected"),
    [
        (
            "PatientName",
            {
                "vr": "PN",
                "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ"}],
            },
            ["yamada^tarou"],
        ),
        (
            "PatientName",
            {"vr": "PN", "Value": [{"Ideographic": "山田^太郎", "Phonetic": "やまだ"}]},
            ["山田^太郎"],
        ),
        ("PatientName", {"vr": "PN", "Value": [{"Alphabetic": "Doe^John^^^"}]}, ["doe^john"]),
        ("PatientName", {"vr": "PN"}, []),
        ("PatientID", {"vr": "LO", "Value": ["IPP-1 "]}, ["IPP-1"]),
        ("ModalitiesInStudy", {"vr": "CS", "Value": ["CT", "MR", "CT"]}, ["CT", "MR"]),
        ("StudyDate", {"vr": "DA", "Value": ["20240115"]}, ["20240115"]),
        ("StudyDate", {"vr": "DA", "Value": ["2024.01.15"]}, []),
        ("StudyTime", {"vr": "TM", "Value": ["1030"]}, ["103000.000000"]),
        ("StudyTime", {"vr": "TM", "Value": ["103015.25"]}, ["103015.250000"]),
        ("AcquisitionDateTime", {"vr": "DT", "Value": ["20240115103000-0500"]}, ["20240115103000.000000"]),
        ("SeriesNumber", {"vr": "IS", "Value": [3]}, [3]),
        ("SeriesNumber", {"vr": "IS", "Value": ["4"]}, [4]),
        ("SeriesNumber", {"vr": "IS", "Value": [None]}, []),
    ],
)
def test_stored_values_become_index_values(
    keyword: str, attribute: dict[str, Any], expected: list[Any]
) -> None:
    dataset = {resolve_attribute(keyword).tag: attribute}
    assert index_values(key(keyword), dataset) == expected


def test_person_names_are_compared_without_case_and_padding() -> None:
    assert normalize_person_name(" Doe^John^^ ") == normalize_person_name("DOE^JOHN")
    assert normalize_person_name("Straße") == normalize_person_name("STRASSE")


def test_every_query_key_has_a_matching_kind() -> None:
    for query_key in QUERY_KEYS.values():
        assert query_key.kind


# --- Wildcards: literal everywhere but '*' and '?' ----------------------------------------------------------


def glob_matches(pattern: str, value: str) -> bool:
    """Reference semantics of PS3.4 §C.2.2.2.4, by dynamic programming rather than regular expressions."""

    @cache
    def match(p: int, v: int) -> bool:
        if p == len(pattern):
            return v == len(value)
        if pattern[p] == "*":
            return match(p + 1, v) or (v < len(value) and match(p, v + 1))
        return v < len(value) and (pattern[p] == "?" or pattern[p] == value[v]) and match(p + 1, v + 1)

    return match(0, 0)


REGEX_SYNTAX = ".^$+()[]{}|\\-#&~ \n\t"
texts = st.text(alphabet=st.sampled_from(REGEX_SYNTAX) | st.characters(codec="utf-8"), max_size=12)
patterns = st.text(
    alphabet=st.sampled_from(REGEX_SYNTAX + "*?ab") | st.characters(codec="utf-8"), max_size=10
)


@given(literal=texts, value=texts)
@example(literal=".*", value="Doe")
@example(literal="(a|b)", value="a")
@example(literal="abc", value="abc\n")
def test_a_pattern_without_wildcards_matches_only_itself(literal: str, value: str) -> None:
    literal = literal.replace("*", "").replace("?", "")
    assert (re.search(wildcard_regex(literal), value) is not None) == (literal == value)


@given(pattern=patterns, value=texts)
@example(pattern="*.*", value="x")
@example(pattern="a?c", value="a\nc")
def test_wildcard_regex_has_the_reference_semantics(pattern: str, value: str) -> None:
    assert (re.search(wildcard_regex(pattern), value) is not None) == glob_matches(pattern, value)


scalar_values = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)


@given(prefix=scalar_values.filter(bool), value=scalar_values)
@example(prefix="a\U0010ffff", value="b")
@example(prefix="\ud7ff", value="\ue000")
@example(prefix="\U0010ffff", value="\U0010ffff\U0010ffff")
def test_a_prefix_range_holds_exactly_the_strings_that_start_with_the_prefix(prefix: str, value: str) -> None:
    upper = Prefix(prefix).upper_bound
    # Code point order (Python) and UTF-8 byte order (MongoDB's binary comparison) agree on scalar values.
    assert (prefix <= value and (upper is None or value < upper)) == value.startswith(prefix)
    in_bytes = prefix.encode() <= value.encode() and (upper is None or value.encode() < upper.encode())
    assert in_bytes == value.startswith(prefix)
