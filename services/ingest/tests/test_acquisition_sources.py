"""Which source an acquisition event may be pulled from, how long it is retried, and the settings of both."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from emage_common.events import Acquisition, InvalidEventDataError
from emage_ingest.domain.sources import (
    DicomWebPeer,
    DimsePeer,
    FacilitySources,
    PullRejectedError,
    PullRetryPolicy,
    RejectionReason,
    ResolvedDimse,
    SourceStudy,
    SourceUnavailableError,
    normalized_base_url,
    resolve_source,
    the_study,
)
from emage_ingest.settings import Settings

CHU = "750000001"
CLINIQUE = "690000002"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def acquisition(**changes: Any) -> Acquisition:
    event: dict[str, Any] = {
        "facility_finess": CHU,
        "accession_number": "ACC-1",
        "patient": {"patient_id": "IPP-1", "issuer_of_patient_id": CHU},
        "referring_physician_rpps": "10100000024",
        "performing_technician_rpps": "10100000040",
        "study_instance_uid": STUDY,
        "source": {"kind": "dicomweb", "base_url": "https://pacs.chu.example/dicom-web"},
    }
    return Acquisition.model_validate(event | changes)


SOURCES = {
    CHU: FacilitySources(
        dicomweb=(
            DicomWebPeer.model_validate(
                {"base_url": "https://PACS.chu.example:443/dicom-web/", "username": "u", "password": "p"}
            ),
        ),
        dimse=(
            DimsePeer(
                ae_title="CHU_PACS", host="pacs.chu.example", port=11112, retrieve=frozenset({"c-get"})
            ),
            DimsePeer(ae_title="CHU_MOVE", host="pacs.chu.example", port=104, retrieve=frozenset({"c-move"})),
        ),
    )
}


# --- Settings -----------------------------------------------------------------------------------------------


def test_sources_and_the_retry_budget_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = {
        CHU: {
            "dicomweb": [{"base_url": "https://pacs.chu.example/dicom-web", "bearer_token": "t0ken"}],
            "dimse": [
                {"ae_title": "CHU_PACS", "host": "10.0.0.5", "port": 104, "retrieve": ["c-get", "c-move"]}
            ],
        }
    }
    monkeypatch.setenv("EMAGE_INGEST_PULL_SOURCES", json.dumps(sources))
    monkeypatch.setenv("EMAGE_INGEST_PULL_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("EMAGE_INGEST_PULL_INITIAL_BACKOFF_SECONDS", "0.5")
    monkeypatch.setenv("EMAGE_INGEST_PULL_MAX_BACKOFF_SECONDS", "1")
    settings = Settings()
    peer = settings.pull_sources[CHU].dicomweb[0]
    assert peer.bearer_token is not None
    assert peer.bearer_token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(settings)
    assert settings.pull_sources[CHU].dimse[0].retrieve == {"c-get", "c-move"}
    policy = settings.pull_retry_policy
    assert (policy.max_attempts, policy.initial_backoff_s, policy.max_backoff_s) == (4, 0.5, 1.0)


@pytest.mark.parametrize(
    "peer",
    [
        {"base_url": "https://pacs/dicom-web", "username": "u"},
        {"base_url": "https://pacs/dicom-web", "username": "u", "password": "p", "bearer_token": "t"},
        {"base_url": "https://pacs/dicom-web?token=1"},
        {"base_url": "https://user:secret@pacs/dicom-web"},
        {"base_url": "ftp://pacs/dicom-web"},
    ],
)
def test_a_dicomweb_source_is_configured_without_ambiguity(peer: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DicomWebPeer.model_validate(peer)


def test_an_unknown_facility_or_a_bad_finess_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAGE_INGEST_PULL_SOURCES", json.dumps({"75000001": {}}))
    with pytest.raises(ValidationError):
        Settings()


# --- Resolution ---------------------------------------------------------------------------------------------


def test_base_urls_compare_in_normal_form() -> None:
    assert normalized_base_url("HTTPS://Pacs.Example:443/dicom-web/") == "https://pacs.example/dicom-web"
    assert normalized_base_url("http://pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"
    assert normalized_base_url("https://pacs/dicom-web") != normalized_base_url("https://pacs/dicom-web2")


def test_the_configured_source_with_its_credentials_is_resolved() -> None:
    peer = resolve_source(acquisition(), SOURCES)
    assert isinstance(peer, DicomWebPeer)
    assert peer.username == "u"
    dimse = resolve_source(
        acquisition(
            source={"kind": "dimse", "ae_title": "CHU_PACS", "host": "PACS.chu.example", "port": 11112}
        ),
        SOURCES,
    )
    assert isinstance(dimse, ResolvedDimse)
    assert (dimse.peer.ae_title, dimse.retrieve) == ("CHU_PACS", "c-get")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"facility_finess": CLINIQUE}, RejectionReason.UNKNOWN_FACILITY),
        (
            {"source": {"kind": "dicomweb", "base_url": "https://evil.example/dicom-web"}},
            "source-not-configured",
        ),
        (
            {"source": {"kind": "dicomweb", "base_url": "https://pacs.chu.example/other"}},
            "source-not-configured",
        ),
        (
            {"source": {"kind": "dicomweb", "base_url": "http://pacs.chu.example/dicom-web"}},
            "source-not-configured",
        ),
        (
            {"source": {"kind": "dimse", "ae_title": "CHU_PACS", "host": "pacs.chu.example", "port": 104}},
            "source-not-configured",
        ),
        (
            {"source": {"kind": "dimse", "ae_title": "OTHER", "host": "pacs.chu.example", "port": 11112}},
            "source-not-configured",
        ),
        (
            {
                "source": {
                    "kind": "dimse",
                    "ae_title": "CHU_PACS",
                    "host": "pacs.chu.example",
                    "port": 11112,
                    "retrieve": "c-move",
                }
            },
            "retrieve-not-allowed",
        ),
    ],
)
def test_an_event_never_chooses_where_ingest_connects(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(PullRejectedError) as rejected:
        resolve_source(acquisition(**changes), SOURCES)
    assert rejected.value.reason == reason
    assert str(rejected.value).startswith(f"{reason}: ")
    # Dead-lettered at once by the consumer, like any invalid event data.
    assert isinstance(rejected.value, InvalidEventDataError)


def test_c_move_needs_the_pacs_ae_title_mapped_to_the_facility() -> None:
    move = acquisition(
        source={
            "kind": "dimse",
            "ae_title": "CHU_MOVE",
            "host": "pacs.chu.example",
            "port": 104,
            "retrieve": "c-move",
        }
    )
    with pytest.raises(PullRejectedError, match="retrieve-not-allowed"):
        resolve_source(move, SOURCES, ae_title_facilities={"CHU_MOVE": CLINIQUE})
    resolved = resolve_source(move, SOURCES, ae_title_facilities={"CHU_MOVE": CHU})
    assert isinstance(resolved, ResolvedDimse)
    assert resolved.retrieve == "c-move"


# --- The study at the source --------------------------------------------------------------------------------


def test_the_study_is_checked_against_the_event() -> None:
    event = acquisition()
    found = SourceStudy(STUDY, patient_id="IPP-1 ", accession_number="ACC-1")
    assert the_study(event, [found, SourceStudy("1.2.3")]) == found
    with pytest.raises(SourceUnavailableError):
        the_study(event, [])
    with pytest.raises(PullRejectedError, match="patient-mismatch"):
        the_study(event, [SourceStudy(STUDY, patient_id="IPP-2")])
    with pytest.raises(PullRejectedError, match="accession-mismatch"):
        the_study(event, [SourceStudy(STUDY, accession_number="ACC-9")])
    by_accession = acquisition(study_instance_uid=None)
    with pytest.raises(PullRejectedError, match="ambiguous-study"):
        the_study(by_accession, [SourceStudy("1.2.3"), SourceStudy("1.2.4")])
    assert the_study(by_accession, [SourceStudy("1.2.3")]).study_instance_uid == "1.2.3"


# --- Retries ------------------------------------------------------------------------------------------------


def test_the_retry_budget_is_bounded_and_covers_the_poll_interval() -> None:
    policy = PullRetryPolicy(max_attempts=6, initial_backoff_s=2, max_backoff_s=10, attempt_timeout_s=60)
    assert [policy.backoff_s(attempt) for attempt in range(1, 6)] == [2, 4, 8, 10, 10]
    assert policy.total_backoff_s == 34
    assert policy.budget_s == 6 * 60 + 34
    assert policy.max_poll_interval_ms == (6 * 60 + 34 + 60) * 1000
    assert PullRetryPolicy(1, 1, 1, 1).total_backoff_s == 0
    with pytest.raises(ValueError, match="backoff"):
        PullRetryPolicy(max_attempts=2, initial_backoff_s=5, max_backoff_s=1, attempt_timeout_s=1)
    with pytest.raises(ValueError, match="attempt"):
        PullRetryPolicy(max_attempts=0, initial_backoff_s=1, max_backoff_s=1, attempt_timeout_s=1)
