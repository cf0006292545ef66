"""Canonical JSON: one byte string per value, so that a hash of it can be recomputed by anyone, any time.

The form is RFC 8785 (JSON Canonicalization Scheme) restricted to what audit records hold: objects with
string keys sorted by code point (the same order as RFC 8785's UTF-16 order for the ASCII keys used here),
no insignificant white space, strings escaped only where JSON requires it (``"``, ``\\`` and controls, as
RFC 8785 §3.2.2.2), UTF-8, and integers only: a float has no single textual form across languages
(RFC 8785 §3.2.2.3 needs ECMAScript's algorithm for it), so none is accepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

MAX_SAFE_INTEGER: Final = 2**53 - 1
"""Largest integer every JSON implementation represents exactly (RFC 8785 §3.2.2.3, I-JSON RFC 7493)."""


class NotCanonicalizableError(ValueError):
    """The value holds something canonical JSON does not represent (a float, a non-string key...)."""


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise NotCanonicalizableError(f"{path}: integer outside the interoperable range")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalizableError(f"{path}: object key {key!r} is not a string")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise NotCanonicalizableError(f"{path}: {type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (objects, arrays, strings, integers, booleans, null)."""
    _check(value, "$")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sha256_hex(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``, in lowercase hexadecimal."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
