"""The catalog, as the gateway's :class:`~emage_access.ports.StudyDirectory`: one internal HTTP call."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

import httpx

from emage_access.domain.policy import StudyAttributes
from emage_common.access_contract import STUDY_ACCESS_ATTRIBUTES_PATH, StudyAccessAttributes


class CatalogUnavailableError(Exception):
    """The catalog could not answer; the gateway answers 503, never a decision made without the facts."""


_UID_CHARS: Final = frozenset("0123456789.")


class HttpStudyDirectory:
    """Asks the catalog's internal route for a study's access attributes."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        """See :meth:`~emage_access.ports.StudyDirectory.attributes`; None for a UID that is no UID."""
        if (
            not study_instance_uid
            or len(study_instance_uid) > 64
            or not set(study_instance_uid) <= _UID_CHARS
        ):
            return None
        path = STUDY_ACCESS_ATTRIBUTES_PATH.format(study=quote(study_instance_uid, safe=""))
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as error:
            raise CatalogUnavailableError(str(error)) from error
        if response.status_code in (400, 404):
            return None
        if response.status_code != 200:
            raise CatalogUnavailableError(f"catalog answered {response.status_code}")
        wire = StudyAccessAttributes.model_validate_json(response.content)
        return StudyAttributes(
            study_instance_uid=wire.study_instance_uid,
            facility_finess=wire.facility_finess,
            patient_key=wire.patient_key,
            referring_physician_rpps=wire.referring_physician_rpps,
            performing_technician_rpps=frozenset(wire.performing_technician_rpps),
        )

    async def patient_birth_date(self, study_instance_uid: str) -> str | None:
        """The study's Patient's Birth Date (0010,0030) as ``YYYYMMDD``, or None when unknown.

        The second factor a share link may ask its holder for: something the patient knows and the person
        they give the link to can be told, but that is not written in the link.
        """
        try:
            response = await self._client.get(
                "/studies",
                params={"StudyInstanceUID": study_instance_uid, "includefield": "00100030"},
                headers={"Accept": "application/dicom+json"},
            )
        except httpx.HTTPError as error:
            raise CatalogUnavailableError(str(error)) from error
        if response.status_code != 200:
            raise CatalogUnavailableError(f"catalog answered {response.status_code}")
        results = response.json()
        if not results:
            return None
        values = results[0].get("00100030", {}).get("Value") or []
        birth_date = values[0] if values else None
        return birth_date if isinstance(birth_date, str) and len(birth_date) == 8 else None
