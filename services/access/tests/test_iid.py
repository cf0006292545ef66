"""IHE IID (RAD-106) launches: parameters checked into a QIDO-RS plan, a bilingual 400 page otherwise."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import parse_qsl

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from emage_access.portal.iid import (
    DEFAULT_PATIENT_LIMIT,
    DisplayPlan,
    InvalidLaunchError,
    RequestType,
    parse_launch,
)

UID1 = "1.2.826.0.1.3680043.8.498.1"
UID2 = "1.2.826.0.1.3680043.8.498.2"


def _plan(query: str) -> DisplayPlan:
    return parse_launch(parse_qsl(query, keep_blank_values=True))


def _problems(query: str) -> list[str]:
    with pytest.raises(InvalidLaunchError) as raised:
        _plan(query)
    return [problem.en for problem in raised.value.problems]


@pytest.mark.parametrize(
    ("query", "request_type", "keys", "limit"),
    [
        (f"requestType=STUDY&studyUID={UID1}", RequestType.STUDY, [("StudyInstanceUID", UID1)], 200),
        (
            f"requestType=study&studyUID={UID1},{UID2}",
            RequestType.STUDY,
            [("StudyInstanceUID", f"{UID1},{UID2}")],
            200,
        ),
        ("requestType=STUDY&accessionNumber=ACC1", RequestType.STUDY, [("AccessionNumber", "ACC1")], 200),
        (
            "requestType=STUDY&accessionNumber=ACC1^CHU^1.2.250.1&patientID=IPP-1^^^750000001",
            RequestType.STUDY,
            [("PatientID", "IPP-1"), ("IssuerOfPatientID", "750000001"), ("AccessionNumber", "ACC1")],
            200,
        ),
        (
            "requestType=STUDY&accessionNumber=A1,A2",
            RequestType.STUDY,
            [("AccessionNumber", "A1\\A2")],
            200,
        ),
        (
            "requestType=PATIENT&patientID=IPP-1^^^750000001",
            RequestType.PATIENT,
            [("PatientID", "IPP-1"), ("IssuerOfPatientID", "750000001")],
            DEFAULT_PATIENT_LIMIT,
        ),
        (
            "requestType=PATIENT&patientID=IPP-1^^^%261.2.250.1.71.4.2.2%26ISO",
            RequestType.PATIENT,
            [("PatientID", "IPP-1"), ("IssuerOfPatientID", "1.2.250.1.71.4.2.2")],
            DEFAULT_PATIENT_LIMIT,
        ),
        (
            "requestType=PATIENT&patientID=IPP-1",
            RequestType.PATIENT,
            [("PatientID", "IPP-1")],
            DEFAULT_PATIENT_LIMIT,
        ),
        (
            "requestType=PATIENT&patientID=IPP-1^^^CHU&mostRecentResults=3&modalitiesInStudy=ct,MR"
            "&lowerDateTime=2025-01-01T00:00:00Z&upperDateTime=2026-06-30",
            RequestType.PATIENT,
            [
                ("PatientID", "IPP-1"),
                ("IssuerOfPatientID", "CHU"),
                ("StudyDate", "20250101-20260630"),
                ("ModalitiesInStudy", "CT\\MR"),
            ],
            3,
        ),
        (
            "requestType=PATIENT&patientID=X&upperDateTime=2026-06-30T10:00:00+02:00",
            RequestType.PATIENT,
            [("PatientID", "X"), ("StudyDate", "-20260630")],
            DEFAULT_PATIENT_LIMIT,
        ),
        (
            f"requestType=STUDY&studyUID={UID1}&viewerType=IHE_BIR&diagnosticQuality=true&keyImagesOnly=false"
            "&vendorExtension=1",
            RequestType.STUDY,
            [("StudyInstanceUID", UID1)],
            200,
        ),
    ],
)
def test_valid_launches_become_a_qido_plan(
    query: str, request_type: RequestType, keys: list[tuple[str, str]], limit: int
) -> None:
    plan = _plan(query)
    assert plan.request_type is request_type
    assert list(plan.query) == keys
    assert plan.limit == limit


def test_display_options_are_kept() -> None:
    plan = _plan(
        f"requestType=STUDY&studyUID={UID1}&viewerType=ohif&diagnosticQuality=TRUE&keyImagesOnly=false"
    )
    assert (plan.viewer_type, plan.diagnostic_quality, plan.key_images_only) == ("OHIF", True, False)
    assert plan.as_json()["query"] == [["StudyInstanceUID", UID1]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("studyUID=1.2.3", "Parameter requestType is required (STUDY or PATIENT)."),
        ("requestType=SERIES&studyUID=1.2.3", "requestType=SERIES is not supported: STUDY or PATIENT."),
        (
            "requestType=STUDY",
            "A STUDY request gives either studyUID or accessionNumber (exactly one of them).",
        ),
        (
            f"requestType=STUDY&studyUID={UID1}&accessionNumber=A",
            "A STUDY request gives either studyUID or accessionNumber (exactly one of them).",
        ),
        ("requestType=STUDY&studyUID=1.02.3", "studyUID: '1.02.3' is not a DICOM UID."),
        ("requestType=STUDY&accessionNumber=A*", "accessionNumber: 'A*' is not an accession number"),
        ("requestType=STUDY&accessionNumber=12345678901234567", "accessionNumber: '12345678901234567'"),
        ("requestType=PATIENT", "A PATIENT request must give patientID."),
        ("requestType=PATIENT&patientID=^^^CHU", "patientID: '^^^CHU' is not an HL7 CX patient identifier"),
        ("requestType=PATIENT&patientID=P?", "patientID: 'P?' is not an HL7 CX patient identifier"),
        (
            "requestType=PATIENT&patientID=P&mostRecentResults=0",
            "mostRecentResults is an integer from 1 to 200.",
        ),
        ("requestType=PATIENT&patientID=P&mostRecentResults=ten", "mostRecentResults is an integer"),
        ("requestType=PATIENT&patientID=P&lowerDateTime=yesterday", "lowerDateTime: 'yesterday' is not"),
        (
            "requestType=PATIENT&patientID=P&lowerDateTime=2026-02-01&upperDateTime=2026-01-01",
            "lowerDateTime is after upperDateTime.",
        ),
        ("requestType=PATIENT&patientID=P&modalitiesInStudy=C-T", "modalitiesInStudy: 'C-T' is not a list"),
        (f"requestType=PATIENT&patientID=P&studyUID={UID1}", "Parameter studyUID is only used with"),
        (
            f"requestType=STUDY&studyUID={UID1}&mostRecentResults=2",
            "Parameter mostRecentResults is only used",
        ),
        (f"requestType=STUDY&studyUID={UID1}&viewerType=XYZ", "viewerType=XYZ is not available"),
        (f"requestType=STUDY&studyUID={UID1}&diagnosticQuality=yes", "diagnosticQuality is true or false"),
        (f"requestType=STUDY&studyUID={UID1}&studyUID={UID2}", "Parameter studyUID is repeated."),
        ("requestType=STUDY&studyUID=" + ",".join([UID1] * 21), "studyUID: at most 20 values."),
    ],
)
def test_invalid_launches_say_why(query: str, expected: str) -> None:
    problems = _problems(query)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems("requestType=PATIENT&mostRecentResults=-1&keyImagesOnly=maybe")
    assert len(problems) == 3


@pytest.fixture
def client(gateway_app: FastAPI) -> TestClient:
    return TestClient(gateway_app)


def test_a_refused_launch_is_a_400_page_in_french_then_english(client: TestClient) -> None:
    response = client.get("/iid", params={"requestType": "STUDY", "studyUID": "<script>"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = response.text
    assert '<html lang="fr">' in page
    assert page.index("Demande d'affichage invalide") < page.index('lang="en"') < page.index("Invalid image")
    assert "studyUID : « &lt;script&gt; » n&#x27;est pas un UID DICOM." in page
    assert "<script>" not in page


@pytest.mark.parametrize("path", ["/iid", "/IHEInvokeImageDisplay"])
def test_a_valid_launch_serves_the_landing_page_with_its_plan(client: TestClient, path: str) -> None:
    response = client.get(path, params={"requestType": "STUDY", "accessionNumber": 'A"<1'})
    assert response.status_code == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    match = re.search(r'<meta name="emage-iid-plan" content="([^"]*)">', response.text)
    assert match is not None
    assert json.loads(html.unescape(match.group(1))) == {
        "requestType": "STUDY",
        "query": [["AccessionNumber", 'A"<1']],
        "limit": 200,
        "diagnosticQuality": None,
        "keyImagesOnly": None,
        "viewerType": None,
    }
    assert '<script type="module" src="/portal/js/iid.js"></script>' in response.text
