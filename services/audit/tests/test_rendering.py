"""A patient's access log in plain French (or English): who, when (Paris time), which exam, on what basis."""

from __future__ import annotations

from datetime import UTC, datetime
from types import ModuleType

from emage_audit.domain.entries import ExamFacts, entry_of
from emage_audit.domain.rendering import access_log_line, alert_text, exam_label, spoken_time

CT = ExamFacts("1.2.3", "CT", "20250310", "THORAX")


def line(audit: ModuleType, lang: str = "fr", facts: ExamFacts | None = CT, **kwargs: object) -> object:
    entry = entry_of(audit.access_event(**kwargs))
    return access_log_line(7, entry.data, facts, lang, reader_subject="kc-patient-1")  # type: ignore[arg-type]


def test_french_line_says_who_when_which_exam_and_on_what_basis(audit: ModuleType) -> None:
    rendered = line(audit)
    assert rendered.text == (
        "Le 12 mars 2025 à 14:05, Alice Martin, radiologue (CHU Alpha), a ouvert les images de votre examen "
        "« Scanner du 10 mars 2025 (THORAX) », dans le cadre de vos soins."
    )
    assert rendered.time == "2025-03-12T14:05:00+01:00"
    assert rendered.who.profession == "radiologue"
    assert rendered.who.facility == "CHU Alpha"
    assert rendered.basis == "dans le cadre de vos soins"


def test_english_on_request(audit: ModuleType) -> None:
    rendered = line(audit, "en", basis="consent", reason="consent_to_facility")
    assert rendered.text == (
        "On 12 March 2025 at 14:05 (Paris time), Alice Martin, radiologist (CHU Alpha), opened the images of "
        "your exam “CT scan of 10 March 2025 (THORAX)”, with your consent."
    )


def test_summer_time_is_paris_local_time(audit: ModuleType) -> None:
    rendered = line(audit, at=datetime(2025, 7, 1, 8, 30, tzinfo=UTC))
    assert rendered.when == "1er juillet 2025 à 10:30"
    assert rendered.time == "2025-07-01T10:30:00+02:00"


def test_every_basis_has_words(audit: ModuleType) -> None:
    words = {
        basis: line(audit, basis=basis, justification="Urgence vitale, patient inconscient.").basis
        for basis in ("care", "consent", "share", "link", "break_glass", "own_record", "audit_role")
    }
    assert words == {
        "care": "dans le cadre de vos soins",
        "consent": "avec votre consentement",
        "share": "grâce à un partage",
        "link": "grâce à un lien de partage",
        "break_glass": "en urgence, sans votre consentement (bris de glace)",
        "own_record": "car il s'agit de votre dossier",
        "audit_role": "pour le contrôle des accès",
    }


def test_break_the_glass_shows_its_justification(audit: ModuleType) -> None:
    rendered = line(audit, basis="break_glass", justification=audit.JUSTIFICATION)
    assert rendered.break_glass
    assert rendered.text.endswith(f"(bris de glace). Motif indiqué : « {audit.JUSTIFICATION} ».")


def test_a_refused_attempt_says_so(audit: ModuleType) -> None:
    rendered = line(audit, decision="deny", reason="no_relationship")
    assert rendered.text.endswith(
        "a tenté d'ouvrir les images de votre examen « Scanner du 10 mars 2025 (THORAX) » : accès refusé."
    )
    english = line(audit, "en", decision="deny", reason="no_relationship", action="download")
    assert english.text.endswith(
        "tried to download your exam “CT scan of 10 March 2025 (THORAX)”: access denied."
    )


def test_the_patient_reading_their_own_acts_is_you(audit: ModuleType) -> None:
    rendered = line(
        audit, principal=audit.PATIENT_1_PRINCIPAL, action="download", basis="own_record", reason="own_record"
    )
    assert rendered.who.is_you
    assert rendered.text.startswith("Le 12 mars 2025 à 14:05, vous avez téléchargé votre examen")


def test_a_share_link_holder_is_nobody_by_name(audit: ModuleType) -> None:
    holder = {"subject": "link:abc", "role": "link_holder"}
    rendered = line(audit, principal=holder, action="open_link", basis="link", reason="share_link")
    assert (
        "une personne disposant d'un lien de partage a ouvert par un lien de partage votre examen"
        in rendered.text
    )


def test_an_exam_the_trail_never_saw_archived_is_named_by_its_uid(audit: ModuleType) -> None:
    rendered = line(audit, facts=None)
    assert f"« examen {audit.STUDY_1} »" in rendered.text
    assert exam_label("1.2", ExamFacts("1.2", "XC", None, None), "en") == "XC exam"


def test_spoken_time() -> None:
    moment = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    assert spoken_time(moment, "fr") == "1er janvier 2026 à 00:30"
    assert spoken_time(moment, "en") == "1 January 2026 at 00:30 (Paris time)"


def test_alert_text(audit: ModuleType) -> None:
    text = alert_text(audit.RADIOLOGIST_B, "1.2.3", CT, audit.JUSTIFICATION, audit.NOW, "fr")
    assert text == (
        "Accès d'urgence (bris de glace) à votre examen « Scanner du 10 mars 2025 (THORAX) » par Bruno "
        "Petit, radiologue (Clinique Beta), le 12 mars 2025 à 14:05. "
        f"Motif indiqué : « {audit.JUSTIFICATION} »."
    )
    assert alert_text(audit.RADIOLOGIST_B, None, None, None, audit.NOW, "en").startswith(
        "Emergency access (break-the-glass) by Bruno Petit, radiologist (Clinique Beta), on 12 March 2025"
    )
