"""Studies as FHIR R4 ``ImagingStudy`` resources, for electronic health records.

An EHR connector learns of new and changed studies from ``emage.study.changed.v1`` and reads each one here,
through the gateway (``GET /fhir/ImagingStudy/{uid}``, decided like the study's metadata). The resource
follows the R4 ImagingStudy profile as the DICOM-FHIR mapping (PS3.17 / FHIR's ImagingStudy mapping) has
it: identifiers as ``urn:oid:`` UIDs, modalities in the DCM code system, the accession number typed ACSN,
series and instances with their UIDs and SOP classes, and a contained DICOMweb ``Endpoint`` pointing at the
platform's WADO-RS. Every resource is validated with ``fhir.resources`` before it is returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pydantic_core import to_json

from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.query import parse_search
from emage_catalog.service import CatalogService
from emage_common.access_contract import StudyAccessAttributes
from emage_common.events import uid_defect
from emage_common.web import problem_response, public_base_url

FHIR_JSON: Final = "application/fhir+json"
FHIR_PATH: Final = "/internal/v1/studies/{study}/fhir"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
RPPS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.1"
INS_NIR_SYSTEM: Final = "urn:oid:1.2.250.1.213.1.4.8"
_PAGE: Final = 1000

DicomJson = Mapping[str, Any]


def _first(dataset: DicomJson, tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value") or []
    return values[0] if values else None


def _person_name(dataset: DicomJson, tag: str) -> str | None:
    value = _first(dataset, tag)
    if isinstance(value, dict):
        alphabetic = value.get("Alphabetic")
        if isinstance(alphabetic, str) and alphabetic:
            family, _, given = alphabetic.partition("^")
            return " ".join(part for part in (given.replace("^", " ").strip(), family.strip()) if part)
    return None


def _started(dataset: DicomJson) -> str | None:
    """Study Date and Time as a FHIR dateTime: with the time only when its UTC offset is known (FHIR
    requires one), from Timezone Offset From UTC (0008,0201); else the date alone."""
    date = _first(dataset, "00080020")
    if not isinstance(date, str) or len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = _first(dataset, "00080030")
    offset = _first(dataset, "00080201")
    if (
        isinstance(time, str)
        and len(time) >= 6
        and time[:6].isdigit()
        and isinstance(offset, str)
        and len(offset) == 5
        and offset[0] in "+-"
        and offset[1:].isdigit()
    ):
        return f"{day}T{time[:2]}:{time[2:4]}:{time[4:6]}{offset[:3]}:{offset[3:]}"
    return day


def _urn(uid: str) -> str:
    return f"urn:oid:{uid}"


def imaging_study(
    study: DicomJson,
    series: Sequence[DicomJson],
    instances: Sequence[DicomJson],
    attributes: StudyAccessAttributes,
    *,
    dicomweb_url: str,
) -> dict[str, Any]:
    """The FHIR R4 ImagingStudy of a study from its QIDO-RS study, series and instance results."""
    uid = attributes.study_instance_uid
    by_series: dict[str, list[DicomJson]] = {}
    for instance in instances:
        by_series.setdefault(str(_first(instance, "0020000E")), []).append(instance)
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid if len(uid) <= 64 else None,
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "dicomweb",
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM"}],
                "address": dicomweb_url.rstrip("/"),
            }
        ],
        "identifier": [{"system": "urn:dicom:uid", "value": _urn(uid)}],
        "status": "available",
        "subject": _subject(study, attributes),
        "endpoint": [{"reference": "#dicomweb"}],
        "numberOfSeries": len(series),
        "numberOfInstances": len(instances),
        "series": [_series(item, by_series.get(str(_first(item, "0020000E")), [])) for item in series],
    }
    accession = _first(study, "00080050")
    if accession:
        resource["identifier"].append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": str(accession),
            }
        )
    modalities = sorted({str(_first(item, "00080060")) for item in series if _first(item, "00080060")})
    if modalities:
        resource["modality"] = [{"system": DCM, "code": code} for code in modalities]
    started = _started(study)
    if started:
        resource["started"] = started
    description = _first(study, "00081030")
    if description:
        resource["description"] = str(description)
    referrer = _person_name(study, "00080090")
    if referrer or attributes.referring_physician_rpps:
        reference: dict[str, Any] = {"display": referrer} if referrer else {}
        if attributes.referring_physician_rpps:
            reference["identifier"] = {"system": RPPS_SYSTEM, "value": attributes.referring_physician_rpps}
        resource["referrer"] = reference
    if resource["id"] is None:
        del resource["id"]
    ImagingStudy.model_validate(resource)
    return resource


def _subject(study: DicomJson, attributes: StudyAccessAttributes) -> dict[str, Any]:
    key = attributes.patient_key
    if key.startswith("ins:"):
        _, oid, matricule = key.split(":", 2)
        identifier = {"system": f"urn:oid:{oid}", "value": matricule}
    else:
        patient_id = _first(study, "00100020")
        issuer = _first(study, "00100021")
        identifier = {"system": f"urn:emage:patient-id:{issuer or attributes.facility_finess}"}
        identifier["value"] = str(patient_id) if patient_id else key
    subject: dict[str, Any] = {"identifier": identifier, "type": "Patient"}
    name = _person_name(study, "00100010")
    if name:
        subject["display"] = name
    return subject


def _series(series: DicomJson, instances: Sequence[DicomJson]) -> dict[str, Any]:
    modality = _first(series, "00080060") or "OT"
    entry: dict[str, Any] = {
        "uid": str(_first(series, "0020000E")),
        "modality": {"system": DCM, "code": str(modality)},
        "numberOfInstances": len(instances),
    }
    number = _first(series, "00200011")
    if isinstance(number, int):
        entry["number"] = number
    description = _first(series, "0008103E")
    if description:
        entry["description"] = str(description)
    if instances:
        entry["instance"] = [_instance(instance) for instance in instances]
    return entry


def _instance(instance: DicomJson) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "uid": str(_first(instance, "00080018")),
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": _urn(str(_first(instance, "00080016")))},
    }
    number = _first(instance, "00200013")
    if isinstance(number, int):
        entry["number"] = number
    return entry


router = APIRouter(tags=["internal"])


async def _search(
    catalog: CatalogService, level: QueryLevel, study: str, base_url: str, include: str = "all"
) -> list[DicomJson]:
    results: list[DicomJson] = []
    offset = 0
    while True:
        parameters = [("includefield", include), ("limit", str(_PAGE)), ("offset", str(offset))]
        if level is QueryLevel.STUDY:
            parameters.append(("StudyInstanceUID", study))
        query = parse_search(
            parameters,
            level=level,
            study_instance_uid=None if level is QueryLevel.STUDY else study,
            max_limit=_PAGE,
        )
        page = await catalog.search(query, base_url)
        results.extend(page.results)
        offset += len(page.results)
        if not page.results or offset >= page.total:
            return results


@router.get(
    FHIR_PATH,
    summary="The study as a FHIR R4 ImagingStudy",
    response_class=Response,
    responses={
        200: {"description": "A validated FHIR R4 ImagingStudy.", "content": {FHIR_JSON: {}}},
        400: {"description": "The study in the path is not a UID."},
        404: {"description": "The study is not catalogued."},
    },
)
async def study_as_fhir(request: Request, study: str) -> Response:
    request_id = getattr(request.state, "request_id", None)
    if uid_defect(study) is not None:
        return problem_response(400, "the study in the path is not a UID (PS3.5 §9.1)", request_id=request_id)
    catalog: CatalogService = request.app.state.catalog
    attributes = await catalog.access_attributes(study)
    if attributes is None:
        return problem_response(404, "no such study in the catalog", request_id=request_id)
    base_url = public_base_url(request)
    studies = await _search(catalog, QueryLevel.STUDY, study, base_url)
    series = await _search(catalog, QueryLevel.SERIES, study, base_url)
    instances = await _search(catalog, QueryLevel.INSTANCE, study, base_url, include="00200013")
    resource = imaging_study(
        studies[0] if studies else {}, series, instances, attributes, dicomweb_url=base_url
    )
    return Response(to_json(resource), media_type=FHIR_JSON)
