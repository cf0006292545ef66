"""Attribute matching of PS3.4 §C.2.2.2 as QIDO-RS uses it (PS3.18 §8.3.4.1), in pure Python.

Two halves meet here. Stored values are *normalised* once, when an instance is catalogued, into index values
(:func:`index_values`); query values are parsed into :data:`Matcher` values over the same normalised form
(:func:`parse_matcher`). The storage adapter only has to translate a matcher into its own query language:
equality, an inclusive range, a prefix range, or an anchored regular expression whose every literal
character is escaped.

Kinds of matching, by the VR of the attribute:

* Single Value Matching (§C.2.2.2.1): an exact comparison. Case-sensitive, except for person names (PN),
  which the standard lets an application match insensitively to case; e-mage does (as the issue asks).
  A person name is matched on its alphabetic component group, or the first group present when it has none.
* List of UID Matching (§C.2.2.2.2): UIDs separated by ``\\`` or, as QIDO-RS clients commonly send them,
  by ``,``; each UID is checked against PS3.5 §9.1.
* Universal Matching (§C.2.2.2.3): an empty value (or ``*`` alone) matches everything and asks for the
  attribute to be returned.
* Wild Card Matching (§C.2.2.2.4): ``*`` any sequence of characters, ``?`` exactly one, for AE, CS, LO, LT,
  PN, SH, ST, UC, UR and UT. A pattern whose only wildcard is a trailing ``*`` becomes a prefix range, so an
  index serves it; any other pattern an anchored regular expression.
* Range Matching (§C.2.2.2.5) for DA, TM and DT: ``<lower>-<upper>``, ``-<upper>``, ``<lower>-``, inclusive.
  A partial TM or DT value stands for the whole period it names: ``-1030`` includes 10:30:59.999999, and a
  single value ``2020`` of a DT key matches all of 2020. UTC offsets of DT values are not applied: values
  are compared as recorded (the catalog holds no reliable offset for values recorded without one).
* Multiple values (§C.2.2.2.8): a value list separated by ``\\`` (and ``,`` for CS, whose values cannot hold
  a comma) matches when any value matches.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from emage_catalog.domain.dicom import Attribute, resolve_attribute, values
from emage_catalog.domain.levels import QueryLevel
from emage_common.events import uid_defect

IndexValue = str | int
"""A normalised value the catalog indexes and a matcher compares with."""


class InvalidMatchError(ValueError):
    """A query value that the attribute's VR does not allow (e.g. ``StudyDate=yesterday``)."""


class MatchKind(StrEnum):
    """How values of an attribute are normalised and matched, by its VR (PS3.5 §6.2)."""

    TEXT = "text"
    CODE = "code"
    PERSON_NAME = "person_name"
    UID = "uid"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    INTEGER = "integer"


_KIND_BY_VR: Final = {
    "PN": MatchKind.PERSON_NAME,
    "CS": MatchKind.CODE,
    "UI": MatchKind.UID,
    "DA": MatchKind.DATE,
    "TM": MatchKind.TIME,
    "DT": MatchKind.DATETIME,
    "IS": MatchKind.INTEGER,
}
_TEXT_VRS: Final = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})


@dataclass(frozen=True, slots=True)
class QueryKey:
    """An attribute the catalog indexes and QIDO-RS may match on, at the level whose documents hold it."""

    attribute: Attribute
    level: QueryLevel
    multivalued: bool
    """Whether the index holds a list of values (Modalities in Study, SOP Classes in Study) or one value."""

    @property
    def kind(self) -> MatchKind:
        """How this key's values are normalised and matched."""
        kind = _KIND_BY_VR.get(self.attribute.vr)
        if kind is not None:
            return kind
        if self.attribute.vr in _TEXT_VRS:
            return MatchKind.TEXT
        raise ValueError(f"{self.attribute.keyword} ({self.attribute.vr}) cannot be a query key")


def _keys(level: QueryLevel, *keywords: str) -> list[QueryKey]:
    keys = []
    for keyword in keywords:
        attribute = resolve_attribute(keyword)
        keys.append(QueryKey(attribute, level, keyword in ("ModalitiesInStudy", "SOPClassesInStudy")))
    return keys


# The keys PS3.18 Tables 10.6.1-5 to 10.6.1-7 require an origin server to match on at each level, plus a few
# that clinicians search by (issuer, birth date, sex, descriptions, body part, SOP classes, acquisition time).
QUERY_KEYS: Final[Mapping[str, QueryKey]] = {
    key.attribute.tag: key
    for key in [
        *_keys(
            QueryLevel.STUDY,
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyID",
            "StudyDescription",
        ),
        *_keys(
            QueryLevel.SERIES,
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "SeriesDescription",
            "BodyPartExamined",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
        ),
        *_keys(QueryLevel.INSTANCE, "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "AcquisitionDateTime"),
    ]
}
"""Query keys by tag."""


# --- Matchers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equals:
    """Single value matching (PS3.4 §C.2.2.2.1) against the normalised value."""

    value: IndexValue


@dataclass(frozen=True, slots=True)
class Prefix:
    """A wildcard whose only ``*`` is the last character: values that start with ``prefix``."""

    prefix: str

    @property
    def upper_bound(self) -> str | None:
        """The least string greater than every string starting with ``prefix`` (None: no such string).

        Strings that start with the prefix are exactly those in ``[prefix, upper_bound)`` in code point
        order, which is also the byte order of their UTF-8 encoding: an index range scan serves the match.
        """
        text = self.prefix
        while text:
            last = ord(text[-1]) + 1
            if last == 0xD800:
                last = 0xE000  # surrogates have no UTF-8 encoding; the next scalar value follows them
            if last <= 0x10FFFF:
                return text[:-1] + chr(last)
            text = text[:-1]
        return None


@dataclass(frozen=True, slots=True)
class Pattern:
    """Wild card matching (PS3.4 §C.2.2.2.4) as an anchored regular expression.

    ``regex`` (see :func:`wildcard_regex`) is built from a few constructs that Python's ``re`` and PCRE
    (MongoDB's ``$regex``) read alike, every character of the query value escaped or literal: none can act as
    regular expression syntax.
    """

    regex: str


@dataclass(frozen=True, slots=True)
class Between:
    """Range matching (PS3.4 §C.2.2.2.5), bounds inclusive and None when open."""

    lower: str | None
    upper: str | None


@dataclass(frozen=True, slots=True)
class AnyOf:
    """A list of values (UID list, §C.2.2.2.2; multiple values, §C.2.2.2.8): any one matching suffices."""

    alternatives: tuple[Equals | Prefix | Pattern | Between, ...]


Matcher = Equals | Prefix | Pattern | Between | AnyOf

MAX_VALUE_LENGTH: Final = 4096
"""Longest query value accepted: far above any VR's maximum (PS3.5 Table 6.2-1), bounding matching costs."""
MAX_WILDCARDS: Final = 8
"""Most ``*`` in one value: each one multiplies the backtracking a regular expression may do."""

_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f]")


def parse_matcher(key: QueryKey, raw: str) -> Matcher | None:
    """The matcher a query value stands for, or None for universal matching (§C.2.2.2.3).

    Raises :class:`InvalidMatchError` naming the defect when the value does not fit the key's VR.
    """
    if len(raw) > MAX_VALUE_LENGTH:
        raise InvalidMatchError(f"a query value has at most {MAX_VALUE_LENGTH} characters")
    if _FORBIDDEN.search(raw):
        raise InvalidMatchError("a query value contains no control characters")
    if raw == "":
        return None
    kind = key.kind
    separators = "[\\\\,]" if kind in (MatchKind.UID, MatchKind.CODE, MatchKind.INTEGER) else "\\\\"
    parts = re.split(separators, raw)
    alternatives = []
    for part in parts:
        matcher = _parse_single(kind, part)
        if matcher is None:
            return None
        alternatives.append(matcher)
    unique = tuple(dict.fromkeys(alternatives))
    return unique[0] if len(unique) == 1 else AnyOf(unique)


def _parse_single(kind: MatchKind, text: str) -> Equals | Prefix | Pattern | Between | None:
    match kind:
        case MatchKind.UID:
            defect = uid_defect(text)
            if defect is not None:
                raise InvalidMatchError(f"{text!r} is not a UID (PS3.5 §9.1): {defect}")
            return Equals(text)
        case MatchKind.INTEGER:
            if re.fullmatch(r"[+-]?[0-9]{1,10}", text.strip()) is None:
                raise InvalidMatchError(f"{text!r} is not an Integer String (IS) value")
            return Equals(int(text))
        case MatchKind.DATE:
            return _date_matcher(text)
        case MatchKind.TIME:
            return _time_matcher(text)
        case MatchKind.DATETIME:
            return _datetime_matcher(text)
        case MatchKind.PERSON_NAME:
            return _wildcard_matcher(text, exact=normalize_person_name, literal=str.casefold)
        case MatchKind.TEXT | MatchKind.CODE:
            return _wildcard_matcher(text, exact=_strip, literal=_strip_leading)


def _strip(text: str) -> str:
    # Leading and trailing spaces are not significant in AE, CS, LO, PN, SH and UC (PS3.5 Table 6.2-1).
    return text.strip(" ")


def _strip_leading(text: str) -> str:
    return text.lstrip(" ")


def normalize_person_name(text: str) -> str:
    """A person name component group as the catalog compares it: case-folded, without trailing padding.

    Trailing empty components may be omitted (PS3.5 §6.2.1.1): ``Doe^John^^`` and ``DOE^JOHN`` are equal.
    """
    return text.strip(" ").rstrip("^ ").casefold()


def _wildcard_matcher(
    text: str, *, exact: Callable[[str], str], literal: Callable[[str], str]
) -> Equals | Prefix | Pattern | None:
    if "*" not in text and "?" not in text:
        return Equals(exact(text))
    pattern = re.sub(r"\*+", "*", literal(text))
    if pattern == "*":
        return None
    if pattern.count("*") > MAX_WILDCARDS:
        raise InvalidMatchError(f"a query value has at most {MAX_WILDCARDS} '*' wildcards")
    body = pattern[:-1]
    if pattern.endswith("*") and "*" not in body and "?" not in body:
        return Prefix(body)
    return Pattern(wildcard_regex(pattern))


def wildcard_regex(pattern: str) -> str:
    """The regular expression of a PS3.4 §C.2.2.2.4 wildcard pattern, matching whole values only.

    ``*`` becomes ``[\\s\\S]*`` and ``?`` becomes ``[\\s\\S]`` (any character, line breaks included,
    whatever the flags); every other ASCII character that is not a letter or digit is escaped with a
    backslash, which both Python's ``re`` and PCRE read as that literal character. The value is anchored at
    its start with ``^`` and at its end with a lookahead for "no character left" (``$`` also matches before a
    final line break), except where the pattern starts or ends with ``*``: there the anchor and the ``*`` are
    left out, which matches the same values and lets the regular expression engine search for the literal.
    """
    body = pattern.strip("*")
    out = [] if pattern.startswith("*") else ["^"]
    for char in body:
        if char == "*":
            out.append(r"[\s\S]*")
        elif char == "?":
            out.append(r"[\s\S]")
        elif char.isascii() and not char.isalnum():
            out.append("\\" + char)
        else:
            out.append(char)
    if not pattern.endswith("*"):
        out.append(r"(?![\s\S])")
    return "".join(out)


# --- Dates and times (PS3.5 Table 6.2-1: DA, TM, DT) --------------------------------------------------------

_DA: Final = r"[0-9]{8}"
_TM: Final = r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
_DT_CORE: Final = (
    r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?)?)?)?"
)
_DT: Final = f"{_DT_CORE}(?:[+-][0-9]{{4}})?"


def _range(text: str, single: str) -> tuple[str | None, str | None] | None:
    """``(lower, upper)`` of a range value ``lower-upper`` (either side may be empty), or None if no range."""
    found = re.fullmatch(f"({single})?-({single})?", text)
    if found is None or (found.group(1) is None and found.group(2) is None):
        return None
    return found.group(1), found.group(2)


def _ordered(lower: str | None, upper: str | None, text: str) -> Between:
    if lower is not None and upper is not None and lower > upper:
        raise InvalidMatchError(f"the range {text!r} ends before it starts")
    return Between(lower, upper)


def _date_matcher(text: str) -> Equals | Between:
    if re.fullmatch(_DA, text):
        return Equals(_checked_date(text))
    bounds = _range(text, _DA)
    if bounds is None:
        raise InvalidMatchError(f"{text!r} is not a date (YYYYMMDD) or a date range (PS3.4 §C.2.2.2.5)")
    lower, upper = (None if bound is None else _checked_date(bound) for bound in bounds)
    return _ordered(lower, upper, text)


def _checked_date(text: str) -> str:
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:])
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year or 1, month)[1]:
        raise InvalidMatchError(f"{text!r} is not a calendar date")
    return text


def _time_matcher(text: str) -> Between:
    if re.fullmatch(_TM, text):
        return Between(_time_bound(text, upper=False), _time_bound(text, upper=True))
    bounds = _range(text, _TM)
    if bounds is None:
        raise InvalidMatchError(f"{text!r} is not a time (HHMMSS.FFFFFF) or a time range (PS3.4 §C.2.2.2.5)")
    lower, upper = bounds
    return _ordered(
        None if lower is None else _time_bound(lower, upper=False),
        None if upper is None else _time_bound(upper, upper=True),
        text,
    )


def _time_bound(text: str, *, upper: bool) -> str:
    normalized = _normalize_time(text, upper=upper)
    if normalized is None:
        raise InvalidMatchError(f"{text!r} is not a valid time of day")
    return normalized


def _normalize_time(text: str, *, upper: bool) -> str | None:
    """``HHMMSS.FFFFFF`` with the missing components at their least (or, for ``upper``, greatest) value."""
    whole, _, fraction = text.partition(".")
    # ``whole`` has 2, 4 or 6 digits: complete it with the minutes and seconds it lacks.
    digits = whole + ("5959" if upper else "0000")[len(whole) - 2 :]
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    # Seconds may be 60 for a leap second (PS3.5 Table 6.2-1, TM).
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return f"{digits}.{fraction.ljust(6, '9' if upper else '0')}"


def _datetime_matcher(text: str) -> Between:
    if re.fullmatch(_DT, text):
        return Between(_datetime_bound(text, upper=False), _datetime_bound(text, upper=True))
    bounds = _range(text, _DT)
    if bounds is None:
        raise InvalidMatchError(
            f"{text!r} is not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX) or a range (PS3.4 §C.2.2.2.5)"
        )
    lower, upper = bounds
    return _ordered(
        None if lower is None else _datetime_bound(lower, upper=False),
        None if upper is None else _datetime_bound(upper, upper=True),
        text,
    )


def _datetime_bound(text: str, *, upper: bool) -> str:
    normalized = _normalize_datetime(text, upper=upper)
    if normalized is None:
        raise InvalidMatchError(f"{text!r} is not a valid date-time")
    return normalized


def _normalize_datetime(text: str, *, upper: bool) -> str | None:
    """``YYYYMMDDHHMMSS.FFFFFF``, missing components at their least (``upper``: greatest) value, no offset."""
    whole, _, fraction = re.sub(r"[+-][0-9]{4}$", "", text).partition(".")
    year = int(whole[:4])
    month = int(whole[4:6]) if len(whole) >= 6 else (12 if upper else 1)
    if not 1 <= month <= 12:
        return None
    last_day = calendar.monthrange(year or 1, month)[1]
    day = int(whole[6:8]) if len(whole) >= 8 else (last_day if upper else 1)
    if not 1 <= day <= last_day:
        return None
    clock = whole[8:]
    if clock:
        time = _normalize_time(clock + ("." + fraction if fraction else ""), upper=upper)
    else:
        time = "235959.999999" if upper else "000000.000000"
    if time is None:
        return None
    return f"{year:04d}{month:02d}{day:02d}{time}"


# --- Index values of stored datasets ------------------------------------------------------------------------


def index_values(key: QueryKey, dataset: Mapping[str, Mapping[str, Any]]) -> list[IndexValue]:
    """The normalised values of ``key`` in a DICOM JSON dataset, in the form matchers compare with."""
    raw = values(dataset, key.attribute.tag)
    kind = key.kind
    found: Iterable[IndexValue | None]
    match kind:
        case MatchKind.PERSON_NAME:
            found = (_person_name_group(value) for value in raw)
        case MatchKind.INTEGER:
            found = (_stored_integer(value) for value in raw)
        case MatchKind.DATE:
            found = (value if isinstance(value, str) and re.fullmatch(_DA, value) else None for value in raw)
        case MatchKind.TIME:
            found = (
                _normalize_time(value.strip(" "), upper=False)
                if isinstance(value, str) and re.fullmatch(_TM, value.strip(" "))
                else None
                for value in raw
            )
        case MatchKind.DATETIME:
            found = (
                _normalize_datetime(value.strip(" "), upper=False)
                if isinstance(value, str) and re.fullmatch(_DT, value.strip(" "))
                else None
                for value in raw
            )
        case _:
            found = (_strip(value) if isinstance(value, str) else None for value in raw)
    return list(dict.fromkeys(value for value in found if value is not None and value != ""))


def _person_name_group(value: object) -> str | None:
    """The component group a person name is matched on: the alphabetic one, else the first present.

    One value per name keeps the index single-valued, so that a name prefix is an index range whose keys
    alone answer a count (PS3.18 §F.2.2 represents the groups as ``Alphabetic``, ``Ideographic``,
    ``Phonetic``).
    """
    if not isinstance(value, dict):
        return None
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        text = value.get(group)
        if isinstance(text, str) and normalize_person_name(text):
            return normalize_person_name(text)
    return None


def _stored_integer(value: object) -> int | None:
    # IS values are JSON numbers in the DICOM JSON Model (PS3.18 §F.2.3.1), strings from some encoders.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,10}", value.strip(" ")):
        return int(value)
    return None
