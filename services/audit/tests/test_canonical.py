"""Canonical JSON: one byte string per value, whatever the key order or the platform."""

from __future__ import annotations

import hashlib

import pytest

from emage_audit.domain.canonical import NotCanonicalizableError, canonical_json, sha256_hex


def test_keys_are_sorted_and_there_is_no_white_space() -> None:
    assert canonical_json({"b": 1, "a": [True, None, {"d": "x", "c": 2}]}) == (
        b'{"a":[true,null,{"c":2,"d":"x"}],"b":1}'
    )


def test_key_order_of_the_input_does_not_matter() -> None:
    assert canonical_json({"seq": 1, "data": {"x": 1, "y": 2}}) == canonical_json(
        {"data": {"y": 2, "x": 1}, "seq": 1}
    )


def test_text_is_utf8_escaped_only_where_json_requires() -> None:
    assert canonical_json({"name": "Hélène « été » ☃"}) == '{"name":"Hélène « été » ☃"}'.encode()
    assert canonical_json('quote " backslash \\ newline \n bell \x07') == (
        b'"quote \\" backslash \\\\ newline \\n bell \\u0007"'
    )


def test_tuples_are_arrays() -> None:
    assert canonical_json({"uids": ("1.2", "1.3")}) == b'{"uids":["1.2","1.3"]}'


@pytest.mark.parametrize(
    "value",
    [1.5, {"n": float("nan")}, {1: "non-string key"}, 2**53, {"when": object()}, b"bytes"],
    ids=["float", "nan", "int-key", "unsafe-int", "object", "bytes"],
)
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(NotCanonicalizableError):
        canonical_json(value)


def test_booleans_are_not_integers() -> None:
    assert canonical_json([True, 1, False, 0]) == b"[true,1,false,0]"


def test_the_hash_is_sha256_of_the_canonical_bytes() -> None:
    assert sha256_hex({"b": 2, "a": 1}) == hashlib.sha256(b'{"a":1,"b":2}').hexdigest()
