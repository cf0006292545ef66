"""The DICOM vocabulary the catalog speaks: data dictionary look-ups and the DICOM JSON Model.

Attributes are named in QIDO-RS requests by keyword or by tag (PS3.18 §8.3.4.1); the data dictionary of
PS3.6 (as pydicom ships it) turns either into the tag, keyword and VR. Datasets are kept in the DICOM JSON
Model of PS3.18 Annex F: an object whose members are 8-hex-digit tags, each ``{"vr": ..., "Value": [...]}``
(or ``BulkDataURI`` / ``InlineBinary`` for binary values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydicom import datadict

DicomJson = dict[str, dict[str, Any]]
"""A dataset in the DICOM JSON Model (PS3.18 Annex F)."""

_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}")


class UnknownAttributeError(ValueError):
    """A keyword or tag that is not a public attribute of the PS3.6 data dictionary."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """A public DICOM attribute: tag as 8 uppercase hex digits (PS3.18 §F.2.1), keyword and VR (PS3.6)."""

    tag: str
    keyword: str
    vr: str


def resolve_attribute(attribute_id: str) -> Attribute:
    """The attribute ``attribute_id`` names: a PS3.6 keyword (``PatientID``) or tag (``00100020``).

    PS3.18 §8.3.4.1 allows either form. Private attributes (odd group, PS3.5 §7.8) and repeating groups
    have no dictionary entry to match against, so they are rejected like unknown names.
    """
    if _TAG.fullmatch(attribute_id):
        number = int(attribute_id, 16)
        if (number >> 16) % 2 == 1 or not datadict.dictionary_has_tag(number):
            raise UnknownAttributeError(f"{attribute_id} is not a public attribute tag of PS3.6")
    else:
        found = datadict.tag_for_keyword(attribute_id)
        if found is None:
            raise UnknownAttributeError(f"{attribute_id!r} is not a DICOM attribute keyword of PS3.6")
        number = found
    # Ambiguous VRs ("US or SS", "OB or OW") depend on other attributes; the first is the usual one.
    vr = datadict.dictionary_VR(number).split(" or ")[0]
    return Attribute(tag=f"{number:08X}", keyword=datadict.keyword_for_tag(number), vr=vr)


def values(dataset: Mapping[str, Mapping[str, Any]], tag: str) -> list[Any]:
    """The ``Value`` array of ``tag`` in a DICOM JSON dataset; empty if absent or zero-length (§F.2.5)."""
    element = dataset.get(tag)
    if element is None:
        return []
    found = element.get("Value")
    return list(found) if isinstance(found, list) else []


def first_value(dataset: Mapping[str, Mapping[str, Any]], tag: str) -> Any | None:
    """The first value of ``tag``, or None."""
    found = values(dataset, tag)
    return found[0] if found else None


def first_string(dataset: Mapping[str, Mapping[str, Any]], tag: str) -> str | None:
    """The first value of ``tag`` if it is a non-empty string, else None."""
    found = first_value(dataset, tag)
    return found if isinstance(found, str) and found else None


def element(vr: str, *value: Any) -> dict[str, Any]:
    """A DICOM JSON attribute object; no ``Value`` member when there is no value (PS3.18 §F.2.5)."""
    return {"vr": vr, "Value": list(value)} if value else {"vr": vr}


def subset(dataset: Mapping[str, dict[str, Any]], tags: frozenset[str]) -> DicomJson:
    """The attributes of ``dataset`` whose tag is in ``tags``, in ascending tag order (PS3.18 §F.2.1)."""
    return {tag: dataset[tag] for tag in sorted(dataset) if tag in tags}


def sorted_dataset(dataset: Mapping[str, dict[str, Any]]) -> DicomJson:
    """``dataset`` with its members in ascending tag order, as PS3.18 §F.2.1 orders them."""
    return {tag: dataset[tag] for tag in sorted(dataset)}
