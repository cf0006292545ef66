"""IHE Invoke Image Display (IID, IHE RAD TF-2 §4.106, transaction RAD-106): the launch URL an EHR opens.

An Image Display Invoker (an EHR, a RIS, a patient record) opens ``GET /iid?requestType=…`` in the user's
browser. The gateway checks the parameters here — a request it cannot serve is answered at once with a
``400`` page saying why, in French then English — and turns a valid one into a QIDO-RS study search
(:class:`DisplayPlan`). The landing page then signs the professional in (single sign-on with the issuer),
runs that search through ``/dicomweb/studies`` *with the professional's own token*, so the access policy
applies: a study the caller may not see is simply not found, exactly like an unknown one. One study opens in
the viewer; several are listed, most recent first.

Parameters (RAD-106 Table 4.106.4.1.2-1 and -2):

``requestType`` (required)
    ``STUDY`` or ``PATIENT``.
``studyUID`` / ``accessionNumber`` (``STUDY``: exactly one of them)
    comma-separated Study Instance UIDs, or accession numbers (an HL7 EI: the identifier before any ``^``).
``patientID`` (``PATIENT``: required; ``STUDY``: optional, then the studies must be that patient's)
    an HL7 CX ``id^^^authority``: the identifier and its assigning authority, matched against Patient ID and
    Issuer of Patient ID (the namespace, else the universal identifier of the authority).
``lowerDateTime`` / ``upperDateTime`` (``PATIENT``)
    ISO 8601 date or date-time bounds of the study date (whole days: the catalog matches Study Date).
``mostRecentResults`` (``PATIENT``)
    how many studies at most, the most recent first.
``modalitiesInStudy`` (``PATIENT``)
    comma-separated modalities (``CT,MR``).
``viewerType``, ``diagnosticQuality``, ``keyImagesOnly`` (optional)
    ``IHE_BIR`` or ``OHIF`` (both the platform's OHIF viewer); ``true``/``false``. The viewer shows studies
    at full (diagnostic) quality and with all their images: ``keyImagesOnly=true`` is accepted and the key
    image notes are in the study the viewer opens.

Other parameters are ignored, as vendor extensions may add some; a parameter given twice is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Final

from emage_common.events import uid_defect

IID_PATH: Final = "/iid"
"""Where EHRs launch the display; ``/IHEInvokeImageDisplay`` is an alias some invokers default to."""
IID_ALIAS_PATH: Final = "/IHEInvokeImageDisplay"

MAX_LIST: Final = 20
"""Most study UIDs or accession numbers one launch may name."""
DEFAULT_PATIENT_LIMIT: Final = 50
"""Most studies a ``PATIENT`` request lists when the invoker set no ``mostRecentResults``."""
MAX_RESULTS: Final = 200
SUPPORTED_VIEWER_TYPES: Final = frozenset({"IHE_BIR", "OHIF"})

_KNOWN: Final = (
    "requestType",
    "studyUID",
    "accessionNumber",
    "patientID",
    "lowerDateTime",
    "upperDateTime",
    "mostRecentResults",
    "modalitiesInStudy",
    "viewerType",
    "diagnosticQuality",
    "keyImagesOnly",
)
# Values end up in QIDO matching keys: DICOM wildcards and value separators would widen the search.
_FORBIDDEN_IN_VALUES: Final = re.compile(r"[*?\\\x00-\x1f]")
_MODALITY: Final = re.compile(r"[A-Z0-9_]{1,16}")


class RequestType(StrEnum):
    STUDY = "STUDY"
    PATIENT = "PATIENT"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a launch is refused, in French and in English."""

    fr: str
    en: str


class InvalidLaunchError(ValueError):
    """A launch the Image Display cannot serve (RAD-106: HTTP 400); ``problems`` says each reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(problem.en for problem in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class DisplayPlan:
    """What the landing page asks QIDO-RS for, and how it shows the answer."""

    request_type: RequestType
    query: tuple[tuple[str, str], ...]
    """QIDO-RS matching keys (name, value), in order."""
    limit: int
    """Most studies to fetch, most recent first (the catalog's order)."""
    diagnostic_quality: bool | None = None
    key_images_only: bool | None = None
    viewer_type: str | None = None

    def as_json(self) -> dict[str, object]:
        """The plan as the landing page reads it (no secret in it: the page's own URL holds the same)."""
        return {
            "requestType": self.request_type.value,
            "query": [list(pair) for pair in self.query],
            "limit": self.limit,
            "diagnosticQuality": self.diagnostic_quality,
            "keyImagesOnly": self.key_images_only,
            "viewerType": self.viewer_type,
        }


def parse_launch(pairs: Iterable[tuple[str, str]]) -> DisplayPlan:
    """Validate an IID launch's query parameters into a :class:`DisplayPlan`.

    Raises :class:`InvalidLaunchError` with every problem found (not just the first), so the EHR integrator
    fixes their URL in one go.
    """
    problems: list[Problem] = []
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in _KNOWN:
            continue
        if name in values:
            problems.append(
                Problem(f"Le paramètre {name} est donné plusieurs fois.", f"Parameter {name} is repeated.")
            )
            continue
        values[name] = value.strip()
    request_type = _request_type(values.get("requestType"), problems)
    query: list[tuple[str, str]] = []
    limit = DEFAULT_PATIENT_LIMIT
    if request_type is RequestType.STUDY:
        query += _study_keys(values, problems)
        limit = MAX_RESULTS
    elif request_type is RequestType.PATIENT:
        if not values.get("patientID"):
            problems.append(
                Problem(
                    "Une demande PATIENT doit donner patientID.", "A PATIENT request must give patientID."
                )
            )
        _only_with(RequestType.STUDY, ("studyUID", "accessionNumber"), values, problems)
        limit = _most_recent(values.get("mostRecentResults"), problems)
        query += _date_range(values.get("lowerDateTime"), values.get("upperDateTime"), problems)
        query += _modalities(values.get("modalitiesInStudy"), problems)
    if values.get("patientID"):
        query = _patient_keys(values["patientID"], problems) + query
    if request_type is RequestType.STUDY:
        _only_with(
            RequestType.PATIENT,
            ("mostRecentResults", "lowerDateTime", "upperDateTime", "modalitiesInStudy"),
            values,
            problems,
        )
    viewer_type = _viewer_type(values.get("viewerType"), problems)
    diagnostic = _boolean("diagnosticQuality", values.get("diagnosticQuality"), problems)
    key_images = _boolean("keyImagesOnly", values.get("keyImagesOnly"), problems)
    if problems or request_type is None:
        raise InvalidLaunchError(problems)
    return DisplayPlan(
        request_type=request_type,
        query=tuple(query),
        limit=limit,
        diagnostic_quality=diagnostic,
        key_images_only=key_images,
        viewer_type=viewer_type,
    )


def _only_with(
    request_type: RequestType, names: tuple[str, ...], values: Mapping[str, str], problems: list[Problem]
) -> None:
    """A problem for each of ``names`` given in ``values``: parameters of a ``request_type`` request only."""
    for name in names:
        if name in values:
            problems.append(
                Problem(
                    f"Le paramètre {name} ne s'emploie qu'avec requestType={request_type.value}.",
                    f"Parameter {name} is only used with requestType={request_type.value}.",
                )
            )


def _request_type(value: str | None, problems: list[Problem]) -> RequestType | None:
    if not value:
        problems.append(
            Problem(
                "Le paramètre requestType est obligatoire (STUDY ou PATIENT).",
                "Parameter requestType is required (STUDY or PATIENT).",
            )
        )
        return None
    try:
        return RequestType(value.upper())
    except ValueError:
        problems.append(
            Problem(
                f"requestType={value} n'est pas pris en charge : STUDY ou PATIENT.",
                f"requestType={value} is not supported: STUDY or PATIENT.",
            )
        )
        return None


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _study_keys(values: Mapping[str, str], problems: list[Problem]) -> list[tuple[str, str]]:
    uids, accessions = values.get("studyUID"), values.get("accessionNumber")
    if bool(uids) == bool(accessions):
        problems.append(
            Problem(
                "Une demande STUDY donne soit studyUID, soit accessionNumber (un seul des deux).",
                "A STUDY request gives either studyUID or accessionNumber (exactly one of them).",
            )
        )
        return []
    if uids:
        listed = _list(uids)
        if len(listed) > MAX_LIST:
            problems.append(_too_many("studyUID"))
        for uid in listed:
            if uid_defect(uid) is not None:
                problems.append(
                    Problem(
                        f"studyUID : « {uid} » n'est pas un UID DICOM.",
                        f"studyUID: '{uid}' is not a DICOM UID.",
                    )
                )
        return [("StudyInstanceUID", ",".join(listed))]
    assert accessions is not None
    # An HL7 EI: the entity identifier is the first component; the issuer that may follow is not matched
    # (the catalog indexes the Accession Number only); the access policy still bounds what is found.
    numbers = [item.split("^", 1)[0] for item in _list(accessions)]
    if len(numbers) > MAX_LIST:
        problems.append(_too_many("accessionNumber"))
    for number in numbers:
        if not number or len(number) > 16 or _FORBIDDEN_IN_VALUES.search(number):
            problems.append(
                Problem(
                    f"accessionNumber : « {number} » n'est pas un numéro d'accession (16 caractères au plus, "
                    "sans * ? ni \\).",
                    f"accessionNumber: '{number}' is not an accession number (at most 16 characters, "
                    "no * ? or \\).",
                )
            )
    return [("AccessionNumber", "\\".join(numbers))]


def _too_many(name: str) -> Problem:
    return Problem(
        f"{name} : {MAX_LIST} valeurs au plus.",
        f"{name}: at most {MAX_LIST} values.",
    )


def _patient_keys(value: str, problems: list[Problem]) -> list[tuple[str, str]]:
    # HL7 v2 CX: ID ^ check digit ^ check digit scheme ^ assigning authority (HD: namespace & universal
    # ID & universal ID type) ^ ...; DICOM keeps the authority's namespace in Issuer of Patient ID.
    components = value.split("^")
    patient_id = components[0]
    authority = components[3].split("&") if len(components) > 3 else []
    issuer = next((part for part in authority[:2] if part), None)
    bad = Problem(
        f"patientID : « {value} » n'est pas un identifiant patient HL7 CX (id^^^autorité).",
        f"patientID: '{value}' is not an HL7 CX patient identifier (id^^^authority).",
    )
    if not patient_id or len(patient_id) > 64 or _FORBIDDEN_IN_VALUES.search(patient_id):
        problems.append(bad)
        return []
    keys = [("PatientID", patient_id)]
    if issuer is not None:
        if len(issuer) > 64 or _FORBIDDEN_IN_VALUES.search(issuer):
            problems.append(bad)
            return []
        keys.append(("IssuerOfPatientID", issuer))
    return keys


def _most_recent(value: str | None, problems: list[Problem]) -> int:
    if value is None or value == "":
        return DEFAULT_PATIENT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_RESULTS:
        problems.append(
            Problem(
                f"mostRecentResults est un entier de 1 à {MAX_RESULTS}.",
                f"mostRecentResults is an integer from 1 to {MAX_RESULTS}.",
            )
        )
        return DEFAULT_PATIENT_LIMIT
    return int(value)


def _day(name: str, value: str, problems: list[Problem]) -> date | None:
    # An invoker that did not percent-encode the offset's "+" sends a space (form encoding): read it back.
    text = value.replace(" ", "+") if "T" in value else value
    text = text.replace("Z", "+00:00") if text.endswith("Z") else text
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text).date()
    except ValueError:
        problems.append(
            Problem(
                f"{name} : « {value} » n'est pas une date ISO 8601 (AAAA-MM-JJ ou AAAA-MM-JJThh:mm:ss).",
                f"{name}: '{value}' is not an ISO 8601 date (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss).",
            )
        )
        return None


def _date_range(lower: str | None, upper: str | None, problems: list[Problem]) -> list[tuple[str, str]]:
    low = _day("lowerDateTime", lower, problems) if lower else None
    high = _day("upperDateTime", upper, problems) if upper else None
    if low is None and high is None:
        return []
    if low is not None and high is not None and low > high:
        problems.append(
            Problem(
                "lowerDateTime est après upperDateTime.",
                "lowerDateTime is after upperDateTime.",
            )
        )
        return []
    start = low.strftime("%Y%m%d") if low is not None else ""
    end = high.strftime("%Y%m%d") if high is not None else ""
    return [("StudyDate", f"{start}-{end}")]


def _modalities(value: str | None, problems: list[Problem]) -> list[tuple[str, str]]:
    if not value:
        return []
    modalities = [item.upper() for item in _list(value)]
    wrong = [item for item in modalities if _MODALITY.fullmatch(item) is None]
    if wrong or not modalities:
        problems.append(
            Problem(
                f"modalitiesInStudy : « {value} » n'est pas une liste de modalités (CT,MR…).",
                f"modalitiesInStudy: '{value}' is not a list of modalities (CT,MR…).",
            )
        )
        return []
    return [("ModalitiesInStudy", "\\".join(modalities))]


def _viewer_type(value: str | None, problems: list[Problem]) -> str | None:
    if not value:
        return None
    if value.upper() not in SUPPORTED_VIEWER_TYPES:
        supported = ", ".join(sorted(SUPPORTED_VIEWER_TYPES))
        problems.append(
            Problem(
                f"viewerType={value} n'est pas disponible ; visionneuses : {supported}.",
                f"viewerType={value} is not available; viewers: {supported}.",
            )
        )
        return None
    return value.upper()


def _boolean(name: str, value: str | None, problems: list[Problem]) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    problems.append(
        Problem(f"{name} vaut true ou false, pas « {value} ».", f"{name} is true or false, not '{value}'.")
    )
    return None
