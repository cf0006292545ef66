"""A QIDO-RS search request, parsed and validated (PS3.18 §8.3.4, §10.6.1).

The query string holds ``{attributeID}={value}`` pairs (attribute matching, §8.3.4.1), ``includefield``
(§8.3.4.3), ``fuzzymatching`` (§8.3.4.2), ``limit`` and ``offset`` (§8.3.4.4), and the content negotiation
parameters ``accept`` and ``charset`` (§8.3.3), which the HTTP layer handles. Anything else must name a DICOM
attribute the catalog can match on at the searched level; otherwise the request fails with a message that
says why, rather than silently returning more than was asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from emage_catalog.domain.dicom import UnknownAttributeError, resolve_attribute
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.matching import QUERY_KEYS, InvalidMatchError, Matcher, QueryKey, parse_matcher
from emage_common.access_contract import WireSearchScope

CONTENT_NEGOTIATION_PARAMETERS: Final = frozenset({"accept", "charset"})
"""PS3.18 §8.3.3 parameters, negotiated by the HTTP layer before the search is parsed."""
_SEARCH_PARAMETERS: Final = frozenset({"includefield", "fuzzymatching", "limit", "offset"})


class InvalidQueryError(ValueError):
    """A search request the catalog refuses, with a message for the client (400 Bad Request)."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """One attribute matching condition; the conditions of a query all hold at once (PS3.4 §C.2.2.1)."""

    key: QueryKey
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """What to match, what to return and which page, at one level within an optional study/series."""

    level: QueryLevel
    study_instance_uid: str | None
    """The study of the target resource (``/studies/{study}/...``), else None."""
    series_instance_uid: str | None
    """The series of the target resource (``.../series/{series}/instances``), else None."""
    constraints: tuple[Constraint, ...]
    return_tags: tuple[str, ...]
    """Tags asked for by name: every matching key, universal or not (§8.3.4.1), and ``includefield``."""
    include_all: bool
    """``includefield=all``: every attribute the catalog holds for the result (§8.3.4.3)."""
    limit: int
    offset: int
    limit_reduced: bool
    """Whether the page size is the server's maximum rather than what was asked (or nothing was asked)."""
    fuzzy_matching_requested: bool
    """``fuzzymatching=true`` was asked; the catalog matches literally and says so (§8.3.4.2)."""
    scope: WireSearchScope | None = None
    """The studies the gateway permits this search to return (results of any level belong to one of them);
    None for an unscoped search by an internal caller. A scope without clauses permits nothing."""

    @property
    def permits_nothing(self) -> bool:
        """Whether the scope rules out every study, so that the search needs no query at all."""
        return self.scope is not None and not self.scope.clauses


def parse_search(
    parameters: Iterable[tuple[str, str]],
    *,
    level: QueryLevel,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    max_limit: int,
) -> SearchQuery:
    """Validate a QIDO-RS query string (name/value pairs in request order) into a :class:`SearchQuery`.

    Raises :class:`InvalidQueryError` for an unknown attribute, an attribute this level cannot match on, a
    value its VR does not allow, a key given twice, or a bad ``limit``/``offset``/``fuzzymatching``.
    """
    constraints: list[Constraint] = []
    return_tags: list[str] = []
    matched: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    seen_control: set[str] = set()
    for name, value in parameters:
        if name in CONTENT_NEGOTIATION_PARAMETERS:
            continue
        if name in _SEARCH_PARAMETERS:
            if name != "includefield":
                if name in seen_control:
                    raise InvalidQueryError(f"the {name} parameter is given more than once")
                seen_control.add(name)
            match name:
                case "includefield":
                    for field in (part.strip() for part in value.split(",")):
                        if field == "all":
                            include_all = True
                        else:
                            return_tags.append(_returned_attribute(field))
                case "limit":
                    limit = _integer(name, value, minimum=1)
                case "offset":
                    offset = _integer(name, value, minimum=0)
                case _:
                    fuzzy = _boolean(name, value)
            continue
        key = _query_key(name, level)
        if key.attribute.tag in matched:
            raise InvalidQueryError(
                f"{key.attribute.keyword} is given more than once; list the values in one parameter instead"
            )
        matched.add(key.attribute.tag)
        return_tags.append(key.attribute.tag)
        try:
            matcher = parse_matcher(key, value)
        except InvalidMatchError as exc:
            raise InvalidQueryError(f"{key.attribute.keyword}: {exc}") from None
        if matcher is not None:
            constraints.append(Constraint(key, matcher))
    return SearchQuery(
        level=level,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        constraints=tuple(constraints),
        return_tags=tuple(dict.fromkeys(return_tags)),
        include_all=include_all,
        limit=min(limit, max_limit) if limit is not None else max_limit,
        offset=offset,
        limit_reduced=limit is None or limit > max_limit,
        fuzzy_matching_requested=fuzzy,
    )


def _query_key(name: str, level: QueryLevel) -> QueryKey:
    if "." in name:
        raise InvalidQueryError(f"{name!r}: matching on attributes within sequences is not supported")
    try:
        attribute = resolve_attribute(name)
    except UnknownAttributeError as exc:
        raise InvalidQueryError(f"unknown query parameter: {exc}") from None
    key = QUERY_KEYS.get(attribute.tag)
    if key is None or key.level.depth > level.depth:
        supported = ", ".join(
            k.attribute.keyword for k in QUERY_KEYS.values() if k.level.depth <= level.depth
        )
        raise InvalidQueryError(
            f"matching on {attribute.keyword} is not supported in a {level} search; "
            f"the supported attributes are: {supported}"
        )
    return key


def _returned_attribute(field: str) -> str:
    if "." in field:
        raise InvalidQueryError(f"includefield {field!r}: name the sequence attribute itself")
    try:
        return resolve_attribute(field).tag
    except UnknownAttributeError as exc:
        raise InvalidQueryError(f"includefield: {exc}") from None


_DIGITS: Final = re.compile(r"[0-9]{1,9}")


def _integer(name: str, value: str, *, minimum: int) -> int:
    if _DIGITS.fullmatch(value) is None or int(value) < minimum:
        raise InvalidQueryError(f"{name} is an integer of at least {minimum}, not {value!r}")
    return int(value)


def _boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise InvalidQueryError(f"{name} is 'true' or 'false', not {value!r}")
    return value == "true"
