"""Claims of the dev realm's personas become principals; a defective token fails with its precise reason."""

from __future__ import annotations

from typing import Any

import pytest

from emage_access.domain.principal import (
    AmbiguousRoleError,
    AuthenticationTooWeakError,
    InvalidClaimError,
    MissingClaimError,
    NoPlatformRoleError,
    NotAuthorisedError,
    Role,
    principal_from_claims,
)
from emage_common.events import Ins, PatientIdentity

# As deploy/local/src/emage_devstack/dev_users.py and the realm export describe them.
RADIOLOGIST_A: dict[str, Any] = {
    "sub": "rad-a",
    "roles": ["radiologist", "offline_access", "default-roles-emage"],
    "rpps": "10100000016",
    "facility": "750000001",
    "facility_name": "CHU Alpha",
    "amr": ["pwd", "otp"],
    "acr": "eidas2",
}
DPO: dict[str, Any] = {"sub": "dpo", "roles": ["dpo"], "amr": ["pwd", "otp"], "acr": "eidas2"}
PATIENT_1: dict[str, Any] = {
    "sub": "patient-1",
    "roles": ["patient"],
    "patient_id": "IPP-A-000001",
    "patient_id_issuer": "750000001",
    "ins": "285047505612322",
    "ins_oid": "1.2.250.1.213.1.4.10",
    "amr": ["pwd"],
    "acr": "eidas1",
}


def test_a_professional_of_the_dev_realm_becomes_a_principal() -> None:
    principal = principal_from_claims(RADIOLOGIST_A)

    assert principal.role is Role.RADIOLOGIST
    assert (principal.subject, principal.rpps, principal.facility_finess) == (
        "rad-a",
        "10100000016",
        "750000001",
    )
    assert principal.facility_name == "CHU Alpha"
    assert principal.authentication_methods == {"pwd", "otp"}
    assert principal.acr == "eidas2"
    assert principal.patient is None
    assert principal.patient_keys == frozenset()


@pytest.mark.parametrize("role", ["radiologist", "referring_physician", "nurse", "imaging_technician", "dpo"])
def test_staff_without_a_second_factor_are_refused(role: str) -> None:
    claims = RADIOLOGIST_A | {"roles": [role], "amr": ["pwd"], "acr": "eidas1"}

    with pytest.raises(AuthenticationTooWeakError) as raised:
        principal_from_claims(claims)
    assert raised.value.reason == "second_factor_required"


@pytest.mark.parametrize(
    ("amr", "acr"),
    [
        (["pwd", "otp"], None),  # the method alone
        (["pwd"], "eidas2"),  # the level of assurance alone
        (None, "eidas2"),
    ],
)
def test_either_the_otp_method_or_the_level_two_acr_is_a_second_factor(
    amr: list[str] | None, acr: str | None
) -> None:
    claims = RADIOLOGIST_A | {"amr": amr, "acr": acr}

    assert principal_from_claims(claims).role is Role.RADIOLOGIST


def test_the_second_factor_requirement_is_configurable() -> None:
    claims = RADIOLOGIST_A | {"amr": ["pwd", "otp"], "acr": "eidas2"}

    with pytest.raises(AuthenticationTooWeakError):
        principal_from_claims(claims, required_amr={"hwk"}, accepted_acr={"eidas3"})
    assert principal_from_claims(claims | {"amr": ["hwk"]}, required_amr={"hwk"}, accepted_acr=set())


def test_a_patient_needs_no_second_factor_and_is_keyed_by_ins_and_by_local_id() -> None:
    principal = principal_from_claims(PATIENT_1)

    assert principal.role is Role.PATIENT
    assert principal.rpps is None
    assert principal.facility_finess is None
    expected = PatientIdentity(
        patient_id="IPP-A-000001",
        issuer_of_patient_id="750000001",
        ins=Ins(matricule="285047505612322", oid="1.2.250.1.213.1.4.10"),
    )
    assert principal.patient == expected
    assert principal.patient_key == "ins:1.2.250.1.213.1.4.10:285047505612322"
    assert principal.patient_keys == {
        "ins:1.2.250.1.213.1.4.10:285047505612322",
        "pid:750000001:IPP-A-000001",
    }


def test_a_patient_without_ins_is_keyed_by_local_id() -> None:
    claims = {key: value for key, value in PATIENT_1.items() if key not in {"ins", "ins_oid"}}

    principal = principal_from_claims(claims)

    assert principal.patient_keys == {"pid:750000001:IPP-A-000001"}


def test_the_dpo_acts_for_no_facility() -> None:
    principal = principal_from_claims(DPO)

    assert principal.role is Role.DPO
    assert principal.rpps is None
    assert principal.facility_finess is None


@pytest.mark.parametrize(
    ("claims", "missing"),
    [
        ({k: v for k, v in RADIOLOGIST_A.items() if k != "rpps"}, "rpps"),
        ({k: v for k, v in RADIOLOGIST_A.items() if k != "facility"}, "facility"),
        (RADIOLOGIST_A | {"rpps": ""}, "rpps"),
        (RADIOLOGIST_A | {"roles": ["nurse"], "facility": None}, "facility"),
        ({k: v for k, v in PATIENT_1.items() if k != "patient_id"}, "patient_id"),
        ({k: v for k, v in PATIENT_1.items() if k != "patient_id_issuer"}, "patient_id_issuer"),
        ({k: v for k, v in PATIENT_1.items() if k != "ins_oid"}, "ins_oid"),
    ],
)
def test_a_claim_the_role_needs_must_be_present(claims: dict[str, Any], missing: str) -> None:
    with pytest.raises(MissingClaimError) as raised:
        principal_from_claims(claims)
    assert raised.value.claim == missing
    assert raised.value.reason == "missing_claim"


@pytest.mark.parametrize(
    ("claims", "invalid"),
    [
        (RADIOLOGIST_A | {"rpps": "1010000001"}, "rpps"),  # 10 digits
        (RADIOLOGIST_A | {"rpps": 10100000016}, "rpps"),  # a number, not a string
        (RADIOLOGIST_A | {"facility": "75000000X"}, "facility"),
        (PATIENT_1 | {"ins": "285047505612323"}, "ins"),  # wrong control key
        (PATIENT_1 | {"ins_oid": "1.2.3"}, "ins"),
        (PATIENT_1 | {"patient_id": "a\\b"}, "patient_id"),
        (RADIOLOGIST_A | {"roles": "radiologist"}, "roles"),
        (RADIOLOGIST_A | {"sub": ""}, "sub"),
    ],
)
def test_a_malformed_claim_is_refused(claims: dict[str, Any], invalid: str) -> None:
    with pytest.raises(InvalidClaimError) as raised:
        principal_from_claims(claims)
    assert raised.value.claim == invalid


@pytest.mark.parametrize(
    "roles",
    [
        ["patient", "radiologist"],
        ["patient", "dpo"],
        ["radiologist", "dpo"],
        ["nurse", "referring_physician"],
    ],
)
def test_several_platform_roles_are_ambiguous(roles: list[str]) -> None:
    with pytest.raises(AmbiguousRoleError):
        principal_from_claims(RADIOLOGIST_A | {"roles": roles})


@pytest.mark.parametrize("roles", [[], ["offline_access"], ["admin"]])
def test_no_platform_role_is_refused(roles: list[str]) -> None:
    with pytest.raises(NoPlatformRoleError):
        principal_from_claims(RADIOLOGIST_A | {"roles": roles})


def test_roles_fall_back_to_keycloak_realm_access() -> None:
    claims = {k: v for k, v in RADIOLOGIST_A.items() if k != "roles"} | {
        "realm_access": {"roles": ["nurse", "uma_authorization"]}
    }

    assert principal_from_claims(claims).role is Role.NURSE


def test_a_token_without_any_roles_claim_is_refused() -> None:
    claims = {k: v for k, v in RADIOLOGIST_A.items() if k != "roles"}

    with pytest.raises(NoPlatformRoleError):
        principal_from_claims(claims)


def test_staff_ignore_patient_claims() -> None:
    principal = principal_from_claims(
        RADIOLOGIST_A | {"patient_id": "IPP-A-000001", "patient_id_issuer": "x"}
    )

    assert principal.patient is None


def test_every_refusal_is_a_not_authorised_with_a_reason() -> None:
    for claims in (RADIOLOGIST_A | {"amr": []} | {"acr": None}, RADIOLOGIST_A | {"roles": []}):
        with pytest.raises(NotAuthorisedError) as raised:
            principal_from_claims(claims)
        assert raised.value.reason in {"second_factor_required", "no_role"}
