"""A patient's access log in plain words: who (name, profession, facility), when (Paris time), which exam,
what they did and on what basis — in French, or in English on request.

Pure functions of a record (and of what the trail knows of the exam): the API fetches, this module words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from emage_audit.domain.entries import ExamFacts
from emage_common.events import parse_rfc3339

Language = Literal["fr", "en"]

PARIS: Final = ZoneInfo("Europe/Paris")

_MONTHS: Final[Mapping[Language, tuple[str, ...]]] = {
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}

_PROFESSIONS: Final[Mapping[str, Mapping[Language, str]]] = {
    "radiologist": {"fr": "radiologue", "en": "radiologist"},
    "referring_physician": {"fr": "médecin prescripteur", "en": "referring physician"},
    "nurse": {"fr": "infirmier ou infirmière", "en": "nurse"},
    "imaging_technician": {"fr": "manipulateur ou manipulatrice en radiologie", "en": "imaging technician"},
    "patient": {"fr": "patient", "en": "patient"},
    "dpo": {"fr": "délégué à la protection des données", "en": "data protection officer"},
    "admin": {"fr": "administrateur", "en": "administrator"},
    "link_holder": {"fr": "détenteur d'un lien de partage", "en": "holder of a share link"},
}

_BASES: Final[Mapping[str, Mapping[Language, str]]] = {
    "care": {"fr": "dans le cadre de vos soins", "en": "for your care"},
    "consent": {"fr": "avec votre consentement", "en": "with your consent"},
    "share": {"fr": "grâce à un partage", "en": "through a share"},
    "link": {"fr": "grâce à un lien de partage", "en": "through a share link"},
    "break_glass": {
        "fr": "en urgence, sans votre consentement (bris de glace)",
        "en": "in an emergency, without your consent (break-the-glass)",
    },
    "own_record": {"fr": "car il s'agit de votre dossier", "en": "as it is your own record"},
    "audit_role": {"fr": "pour le contrôle des accès", "en": "to review the access log"},
}


@dataclass(frozen=True, slots=True)
class _Act:
    fr_done: str
    """Third person, passé composé: "a ouvert les images de"."""
    fr_infinitive: str
    en_done: str
    en_infinitive: str
    about_exam: bool = True


_ACTS: Final[Mapping[str, _Act]] = {
    "search": _Act("a recherché", "rechercher", "searched for", "search for"),
    "read_metadata": _Act(
        "a consulté la description de",
        "consulter la description de",
        "viewed the details of",
        "view the details of",
    ),
    "retrieve": _Act(
        "a ouvert les images de", "ouvrir les images de", "opened the images of", "open the images of"
    ),
    "rendered": _Act(
        "a affiché les images de",
        "afficher les images de",
        "displayed the images of",
        "display the images of",
    ),
    "download": _Act("a téléchargé", "télécharger", "downloaded", "download"),
    "store": _Act("a ajouté des images à", "ajouter des images à", "added images to", "add images to"),
    "correct_metadata": _Act(
        "a corrigé la description de",
        "corriger la description de",
        "corrected the details of",
        "correct the details of",
    ),
    "share": _Act("a partagé", "partager", "shared", "share"),
    "revoke_share": _Act(
        "a retiré un partage de", "retirer un partage de", "withdrew a share of", "withdraw a share of"
    ),
    "create_link": _Act(
        "a créé un lien de partage vers",
        "créer un lien de partage vers",
        "created a share link to",
        "create a share link to",
    ),
    "revoke_link": _Act(
        "a désactivé un lien de partage vers",
        "désactiver un lien de partage vers",
        "revoked a share link to",
        "revoke a share link to",
    ),
    "open_link": _Act(
        "a ouvert par un lien de partage",
        "ouvrir par un lien de partage",
        "opened through a share link",
        "open through a share link",
    ),
    "break_glass": _Act(
        "a déclenché un accès d'urgence (bris de glace) à",
        "déclencher un accès d'urgence (bris de glace) à",
        "broke the glass to open",
        "break the glass to open",
    ),
    "read_audit": _Act(
        "a consulté le journal des accès",
        "consulter le journal des accès",
        "read the access log",
        "read the access log",
        about_exam=False,
    ),
    "verify_audit": _Act(
        "a vérifié le journal des accès",
        "vérifier le journal des accès",
        "verified the access log",
        "verify the access log",
        about_exam=False,
    ),
}

_MODALITIES: Final[Mapping[str, Mapping[Language, str]]] = {
    "CT": {"fr": "Scanner", "en": "CT scan"},
    "MR": {"fr": "IRM", "en": "MRI"},
    "CR": {"fr": "Radiographie", "en": "X-ray"},
    "DX": {"fr": "Radiographie", "en": "X-ray"},
    "US": {"fr": "Échographie", "en": "Ultrasound"},
    "MG": {"fr": "Mammographie", "en": "Mammogram"},
    "PT": {"fr": "TEP", "en": "PET scan"},
    "NM": {"fr": "Scintigraphie", "en": "Nuclear medicine scan"},
    "XA": {"fr": "Angiographie", "en": "Angiography"},
}


def local_time(instant: str | datetime) -> datetime:
    """An RFC 3339 instant (or aware datetime) in Paris time."""
    moment = parse_rfc3339(instant) if isinstance(instant, str) else instant
    return moment.astimezone(PARIS)


def spoken_date(moment: datetime, lang: Language) -> str:
    month = _MONTHS[lang][moment.month - 1]
    day = "1er" if lang == "fr" and moment.day == 1 else str(moment.day)
    return f"{day} {month} {moment.year}"


def spoken_time(instant: str | datetime, lang: Language) -> str:
    """``12 mars 2025 à 14:05`` / ``12 March 2025 at 14:05 (Paris time)``."""
    moment = local_time(instant)
    if lang == "fr":
        return f"{spoken_date(moment, lang)} à {moment:%H:%M}"
    return f"{spoken_date(moment, lang)} at {moment:%H:%M} (Paris time)"


def _words(
    table: Mapping[str, Mapping[Language, str]],
    key: str,
    lang: Language,
    unknown: Mapping[Language, str] | None = None,
) -> str:
    """``key`` in words from ``table``; a key it does not know as ``unknown`` says (by default, as is)."""
    return table.get(key, {"fr": key, "en": key} if unknown is None else unknown)[lang]


def profession(role: str, lang: Language) -> str:
    return _words(_PROFESSIONS, role, lang)


def basis_words(basis: str | None, lang: Language) -> str | None:
    return None if basis is None else _words(_BASES, basis, lang)


def exam_label(study_instance_uid: str, facts: ExamFacts | None, lang: Language) -> str:
    """``Scanner du 10 mars 2025 (THORAX)`` when the trail saw the exam archived, else its UID."""
    if facts is None:
        return ("examen " if lang == "fr" else "exam ") + study_instance_uid
    unknown: Mapping[Language, str] = {"fr": f"Examen {facts.modality}", "en": f"{facts.modality} exam"}
    label = _words(_MODALITIES, facts.modality, lang, unknown)
    if facts.study_date is not None and len(facts.study_date) == 8 and facts.study_date.isdigit():
        date = datetime(int(facts.study_date[:4]), int(facts.study_date[4:6]), int(facts.study_date[6:]))
        label += (" du " if lang == "fr" else " of ") + spoken_date(date, lang)
    if facts.study_description:
        label += f" ({facts.study_description})"
    return label


@dataclass(frozen=True, slots=True)
class Who:
    role: str
    name: str | None
    profession: str
    facility: str | None
    is_you: bool

    @property
    def named(self) -> bool:
        """Whether :meth:`words` name a person with an apposition (their profession), to set off by commas."""
        return not self.is_you and self.role != "link_holder"

    def words(self, lang: Language) -> str:
        if self.is_you:
            return "vous" if lang == "fr" else "you"
        if self.role == "link_holder":
            # No account behind a share link: nobody to name.
            return (
                "une personne disposant d'un lien de partage"
                if lang == "fr"
                else "someone holding a share link"
            )
        name = self.name or ("un professionnel" if lang == "fr" else "a professional")
        facility = f" ({self.facility})" if self.facility else ""
        return f"{name}, {self.profession}{facility}"


def who(principal: Mapping[str, Any], lang: Language, *, reader_subject: str | None) -> Who:
    role = str(principal.get("role", ""))
    return Who(
        role=role,
        name=principal.get("name"),
        profession=profession(role, lang),
        facility=principal.get("facility_name") or principal.get("facility_finess"),
        is_you=reader_subject is not None and principal.get("subject") == reader_subject,
    )


def _tried(infinitive: str) -> str:
    return ("a tenté d'" if infinitive[0] in "aeéèêiîoôuhy" else "a tenté de ") + infinitive


@dataclass(frozen=True, slots=True)
class AccessLogLine:
    """One line of a patient's access log."""

    seq: int
    time: str
    """When, in Paris time, ISO 8601 with its offset."""
    when: str
    who: Who
    action: str
    study_instance_uid: str | None
    exam: str | None
    basis: str | None
    decision: str
    break_glass: bool
    justification: str | None
    text: str


def access_log_line(
    seq: int,
    data: Mapping[str, Any],
    facts: ExamFacts | None,
    lang: Language,
    *,
    reader_subject: str | None = None,
) -> AccessLogLine:
    """The line an ``access.decided`` record makes in the log of the patient ``reader_subject``."""
    act = _ACTS.get(data["action"], _Act(data["action"], data["action"], data["action"], data["action"]))
    person = who(data["principal"], lang, reader_subject=reader_subject)
    study = data.get("study_instance_uid")
    exam = exam_label(study, facts, lang) if study is not None else None
    allowed = data["decision"] == "allow"
    basis = basis_words(data.get("basis"), lang) if allowed else None
    justification = data.get("justification")
    when = spoken_time(data["decided_at"], lang)
    if lang == "fr":
        verb = act.fr_done if allowed else _tried(act.fr_infinitive)
        if person.is_you:
            verb = "avez " + verb.removeprefix("a ")
        target = (
            f" votre examen « {exam} »"
            if act.about_exam and exam
            else (" vos examens" if act.about_exam else "")
        )
        text = f"Le {when}, {person.words(lang)}{',' if person.named else ''} {verb}{target}"
        text += f", {basis}." if basis else (" : accès refusé." if not allowed else ".")
        if justification and data.get("basis") == "break_glass":
            text += f" Motif indiqué : « {justification} »."
    else:
        verb = act.en_done if allowed else "tried to " + act.en_infinitive
        target = (
            f" your exam “{exam}”" if act.about_exam and exam else (" your exams" if act.about_exam else "")
        )
        subject = person.words(lang)
        text = f"On {when}, {subject[0].upper() + subject[1:]}{',' if person.named else ''} {verb}{target}"
        text += f", {basis}." if basis else (": access denied." if not allowed else ".")
        if justification and data.get("basis") == "break_glass":
            text += f" Stated reason: “{justification}”."
    return AccessLogLine(
        seq=seq,
        time=local_time(data["decided_at"]).isoformat(),
        when=when,
        who=person,
        action=data["action"],
        study_instance_uid=study,
        exam=exam,
        basis=basis,
        decision=data["decision"],
        break_glass=data.get("basis") == "break_glass" or data["action"] == "break_glass",
        justification=justification,
        text=text,
    )


def alert_text(
    principal: Mapping[str, Any],
    study_instance_uid: str | None,
    facts: ExamFacts | None,
    justification: str | None,
    first_at: datetime,
    lang: Language,
) -> str:
    """What a break-the-glass alert tells the patient and the DPO."""
    person = who(principal, lang, reader_subject=None).words(lang)
    exam = exam_label(study_instance_uid, facts, lang) if study_instance_uid else None
    when = spoken_time(first_at, lang)
    if lang == "fr":
        text = (
            f"Accès d'urgence (bris de glace) à votre examen « {exam} »"
            if exam
            else "Accès d'urgence (bris de glace)"
        )
        text += f" par {person}, le {when}."
        return text + (f" Motif indiqué : « {justification} »." if justification else "")
    text = (
        f"Emergency access (break-the-glass) to your exam “{exam}”"
        if exam
        else "Emergency access (break-the-glass)"
    )
    text += f" by {person}, on {when}."
    return text + (f" Stated reason: “{justification}”." if justification else "")
