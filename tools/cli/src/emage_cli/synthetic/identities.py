"""Who the synthetic studies are of and where they were acquired.

The first two patients are the patients of the local Keycloak realm (``patient-1`` at CHU Alpha, ``patient-2``
at Clinique Beta, see ``emage_devstack.dev_users``), so that logging in as them shows their own exams; further
patients are drawn from French name lists with valid INS matricules of the *test* INS-NIR authority. Every
identifier here is fictitious.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date

#: INS assigning authority of *test* identities (INS-NIR, test): these are not real people.
INS_TEST_OID = "1.2.250.1.213.1.4.10"


@dataclass(frozen=True)
class Professional:
    """A health professional named in a study: referring physician or operator (imaging technician)."""

    name: str
    """Person Name (PN, PS3.5 §6.2.1): family name ^ given name."""
    rpps: str | None = None
    """RPPS number, when the professional is one of the realm's users: the studies then identify them by it
    (Person Identification Code Sequence), and the access policy recognises them."""


@dataclass(frozen=True)
class Facility:
    """A healthcare facility: its FINESS number issues its patients' IDs (Issuer of Patient ID)."""

    finess: str
    name: str
    patient_id_prefix: str
    accession_prefix: str
    station: str
    referring_physicians: tuple[Professional, ...]
    operators: tuple[Professional, ...]


#: The realm's referrer-a and technician-a (``emage_devstack.dev_users``): CHU Alpha's exams are ordered by
#: the one and acquired by the other, so that logging in as them shows the exams they are in charge of.
REFERRER_A = Professional("LEFEVRE^Marc", rpps="10100000024")
TECHNICIAN_A = Professional("MOREAU^Julien", rpps="10100000040")

CHU_ALPHA = Facility(
    finess="750000001",
    name="CHU Alpha",
    patient_id_prefix="IPP-A-",
    accession_prefix="A",
    station="CHUA",
    referring_physicians=(REFERRER_A,),
    operators=(TECHNICIAN_A,),
)
# The realm has no referring physician nor technician at Clinique Beta: its professionals are named only.
CLINIQUE_BETA = Facility(
    finess="690000002",
    name="Clinique Beta",
    patient_id_prefix="IPP-B-",
    accession_prefix="B",
    station="CLIB",
    referring_physicians=(Professional("ROUX^Isabelle"), Professional("GIRARD^Antoine")),
    operators=(Professional("GARNIER^Lucas"),),
)
FACILITIES = (CHU_ALPHA, CLINIQUE_BETA)


@dataclass(frozen=True)
class Patient:
    """A patient as the facility's RIS knows them (PS3.3 §C.7.1.1 Patient Module)."""

    patient_id: str
    facility: Facility
    family_name: str
    given_name: str
    sex: str
    birth_date: date
    ins: str | None

    @property
    def patient_name(self) -> str:
        """Person Name (PN, PS3.5 §6.2.1): family name component ^ given name component."""
        return f"{self.family_name}^{self.given_name}"

    @property
    def issuer_of_patient_id(self) -> str:
        return self.facility.finess


DEV_PATIENTS = (
    Patient("IPP-A-000001", CHU_ALPHA, "DURAND", "Jeanne", "F", date(1985, 4, 12), "285047505612322"),
    Patient("IPP-B-000002", CLINIQUE_BETA, "MARTIN", "Paul", "M", date(1962, 11, 3), "162116912304526"),
)

_FAMILY_NAMES = (
    "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DUBOIS", "MOREAU", "LAURENT", "SIMON", "MICHEL",
    "LEFEBVRE", "LEROY", "ROUSSEAU", "DAVID", "BERTRAND", "MOREL", "FOURNIER", "GIRAUD", "BONNET", "FRANÇOIS",
)  # fmt: skip
_GIVEN_NAMES = {
    "F": ("Hélène", "Marie", "Camille", "Léa", "Chloé", "Inès", "Manon", "Élise", "Anaïs", "Zoé"),
    "M": ("Lucas", "Hugo", "Gabriel", "Louis", "Jules", "Théo", "Noé", "Raphaël", "Étienne", "Benoît"),
}


def ins_control_key(body: str) -> str:
    """The 2-digit key of a 13-character NIR: 97 - (NIR mod 97), Corse's 2A/2B counted as 19/18."""
    numeric = body.replace("2A", "19").replace("2B", "18")
    return f"{97 - int(numeric) % 97:02d}"


def synthetic_ins(sex: str, birth_date: date, rng: random.Random) -> str:
    """A well-formed INS-NIR matricule (sex, year, month, département, commune, order, key)."""
    body = (
        f"{1 if sex == 'M' else 2}{birth_date.year % 100:02d}{birth_date.month:02d}"
        f"{rng.choice(('75', '69', '13', '33', '59'))}{rng.randrange(1, 999):03d}{rng.randrange(1, 999):03d}"
    )
    return body + ins_control_key(body)


def patient_roster(count: int, rng: random.Random) -> tuple[Patient, ...]:
    """``count`` patients: the dev patients first, then synthetic ones alternating between the facilities."""
    patients = list(DEV_PATIENTS[:count])
    for number in range(len(patients) + 1, count + 1):
        facility = FACILITIES[number % len(FACILITIES)]
        sex = rng.choice(("F", "M"))
        birth_date = date(rng.randrange(1935, 2015), rng.randrange(1, 13), rng.randrange(1, 29))
        patients.append(
            Patient(
                patient_id=f"{facility.patient_id_prefix}{number:06d}",
                facility=facility,
                family_name=rng.choice(_FAMILY_NAMES),
                given_name=rng.choice(_GIVEN_NAMES[sex]),
                sex=sex,
                birth_date=birth_date,
                ins=synthetic_ins(sex, birth_date, rng),
            )
        )
    return tuple(patients)
