"""The catalog as the consent service asks it: does this patient have a study at this facility?

A QIDO-RS study search (PS3.18 §10.6) restricted by an ``X-Emage-Search-Scope`` clause — the facility, the
patient key, and the study when the act is about one — with ``limit=1``: the catalog applies the scope
inside its query, and ``X-Total-Count`` says whether any study matched.
"""

from __future__ import annotations

import logging
from typing import Final

import httpx

from emage_common.access_contract import SEARCH_SCOPE_HEADER, WireScopeClause, WireSearchScope
from emage_consent.ports import PatientDirectoryUnavailableError

logger = logging.getLogger(__name__)

TOTAL_COUNT_HEADER: Final = "X-Total-Count"


class CatalogPatientDirectory:
    """:class:`~emage_consent.ports.PatientDirectory` answered by the catalog's QIDO-RS."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def has_studies_at(
        self, facility_finess: str, patient_key: str, study_instance_uid: str | None = None
    ) -> bool:
        clause = WireScopeClause(
            facility_finess=facility_finess,
            patient_keys=(patient_key,),
            study_instance_uids=(study_instance_uid,) if study_instance_uid is not None else None,
        )
        headers = {
            SEARCH_SCOPE_HEADER: WireSearchScope(clauses=(clause,)).encode(),
            "Accept": "application/dicom+json",
        }
        try:
            response = await self._client.get("/studies", params={"limit": "1"}, headers=headers)
        except httpx.HTTPError as error:
            logger.warning("catalog unreachable: %s", error)
            raise PatientDirectoryUnavailableError("the catalog is unreachable") from error
        if response.status_code != 200:
            logger.warning("catalog answered %d to a scoped study search", response.status_code)
            raise PatientDirectoryUnavailableError(f"the catalog answered {response.status_code}")
        try:
            return int(response.headers[TOTAL_COUNT_HEADER]) > 0
        except (KeyError, ValueError) as error:
            raise PatientDirectoryUnavailableError(
                f"the catalog sent no valid {TOTAL_COUNT_HEADER}"
            ) from error
