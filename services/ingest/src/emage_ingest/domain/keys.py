"""Where an instance lives in the archive bucket.

``studies/{StudyInstanceUID}/series/{SeriesInstanceUID}/instances/{SOPInstanceUID}`` mirrors the DICOMweb
resource path (PS3.18 §10.4.1), so an operator reading the bucket sees the study hierarchy. Every UID is
validated first (PS3.5 §9.1: digits and dots only), which rules out path tricks such as ``..`` or ``/``.

A replacement of an instance already archived (conflict policy ``replace``) is written beside it, under the
canonical key plus ``.v`` and the first 16 hex digits of its SHA-256, and the record is switched to it in
one transaction: the instance is never half replaced, and readers follow the record's ``object_key``.
"""

from __future__ import annotations

from emage_common.events import validate_uid


def instance_object_key(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """The canonical object key of an instance; raises :class:`ValueError` for an invalid UID."""
    for uid in (study_instance_uid, series_instance_uid, sop_instance_uid):
        validate_uid(uid)
    return f"studies/{study_instance_uid}/series/{series_instance_uid}/instances/{sop_instance_uid}"


def replacement_object_key(canonical_key: str, sha256: str) -> str:
    """The key of a replacing version of the instance at ``canonical_key`` with digest ``sha256``."""
    return f"{canonical_key}.v{sha256[:16]}"
