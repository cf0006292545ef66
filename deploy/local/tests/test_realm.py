"""Static checks of the dev realm export (deploy/local/keycloak/realm-emage.json): no Keycloak needed.

What a live Keycloak does with it (tokens, refused logins) is checked by the integration tests; here only
what the file must say, so that a careless edit fails in milliseconds: roles, users and their claims
(consistent with ``dev_users.py``), the claim mappers, the second-factor flows, and that every secret in it
is an obviously local-development one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emage_devstack import dev_users
from emage_devstack.dev_users import DEV_USERS, DEV_USERS_BY_NAME, DevUser
from emage_devstack.keycloak import REALM_FILE

Json = dict[str, Any]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> Json:
    keys = [key for key, _ in pairs]
    duplicates = {key for key in keys if keys.count(key) > 1}
    assert not duplicates, f"duplicate JSON keys {duplicates}"
    return dict(pairs)


@pytest.fixture(scope="module")
def realm() -> Json:
    data: Json = json.loads(Path(REALM_FILE).read_text(), object_pairs_hook=_no_duplicate_keys)
    return data


def _by(items: list[Json], key: str, value: str) -> Json:
    matches = [item for item in items if item.get(key) == value]
    assert len(matches) == 1, f"expected exactly one {key}={value!r}, found {len(matches)}"
    return matches[0]


def _scope(realm: Json, name: str) -> Json:
    return _by(realm["clientScopes"], "name", name)


def _mapper(scope: Json, name: str) -> Json:
    return _by(scope["protocolMappers"], "name", name)


def _client(realm: Json, client_id: str) -> Json:
    return _by(realm["clients"], "clientId", client_id)


def _user(realm: Json, username: str) -> Json:
    return _by(realm["users"], "username", username)


def _flow(realm: Json, alias: str) -> Json:
    return _by(realm["authenticationFlows"], "alias", alias)


def _config(realm: Json, alias: str) -> dict[str, str]:
    config: dict[str, str] = _by(realm["authenticatorConfig"], "alias", alias)["config"]
    return config


def _attribute(user: Json, name: str) -> str | None:
    values = user.get("attributes", {}).get(name)
    if values is None:
        return None
    assert isinstance(values, list), f"{user['username']}.{name} must be a list"
    assert len(values) == 1, f"{user['username']}.{name} must be one value"
    value: str = values[0]
    return value


# --- realm, roles, policies ---------------------------------------------------------------------------


def test_realm_is_emage_and_marked_dev_only(realm: Json) -> None:
    assert realm["realm"] == dev_users.REALM
    assert realm["enabled"] is True
    assert "LOCAL DEVELOPMENT ONLY" in realm["displayName"]


def test_realm_roles(realm: Json) -> None:
    names = {role["name"] for role in realm["roles"]["realm"]}
    assert set(dev_users.REALM_ROLES) <= names
    assert set(dev_users.REALM_ROLES) == {
        "radiologist",
        "referring_physician",
        "nurse",
        "imaging_technician",
        "patient",
        "dpo",
    }
    # The default role grants nothing, so that a token's roles are exactly the persona's role.
    default_role = realm["defaultRole"]["name"]
    assert _by(realm["roles"]["realm"], "name", default_role).get("composite") is False


def test_token_lifespan_brute_force_and_otp_policy(realm: Json) -> None:
    assert realm["accessTokenLifespan"] == 300
    assert realm["bruteForceProtected"] is True
    assert realm["permanentLockout"] is False
    assert realm["otpPolicyType"] == "totp"
    assert realm["otpPolicyAlgorithm"] == "HmacSHA1"
    assert realm["otpPolicyDigits"] == 6
    assert realm["otpPolicyPeriod"] == 30


# --- users --------------------------------------------------------------------------------------------------


def test_users_are_exactly_the_dev_users(realm: Json) -> None:
    assert sorted(user["username"] for user in realm["users"]) == sorted(DEV_USERS_BY_NAME)
    assert len(DEV_USERS_BY_NAME) == len(DEV_USERS)
    assert {u.username for u in DEV_USERS} >= {
        "radiologist-a",
        "referrer-a",
        "nurse-a",
        "technician-a",
        "dpo",
        "radiologist-b",
        "patient-1",
        "patient-2",
    }


@pytest.mark.parametrize("dev", DEV_USERS, ids=lambda u: u.username)
def test_user_matches_dev_users_table(realm: Json, dev: DevUser) -> None:
    user = _user(realm, dev.username)
    assert user["id"] == dev.subject, "fixed IDs keep 'sub' stable across realm edits and machines"
    assert user["enabled"] is True
    assert user["emailVerified"] is True
    assert (user["firstName"], user["lastName"], user["email"]) == (dev.first_name, dev.last_name, dev.email)
    assert user["realmRoles"] == [dev.role]
    assert not user.get("requiredActions"), "a pending required action makes the password grant fail"
    assert _attribute(user, "rpps") == dev.rpps
    assert _attribute(user, "facility") == dev.facility_finess
    assert _attribute(user, "facility_name") == dev.facility_name
    assert _attribute(user, "patient_id") == dev.patient_id
    assert _attribute(user, "patient_id_issuer") == dev.patient_id_issuer
    assert _attribute(user, "ins") == dev.ins


@pytest.mark.parametrize("dev", DEV_USERS, ids=lambda u: u.username)
def test_password_is_username_and_not_temporary(realm: Json, dev: DevUser) -> None:
    passwords = [c for c in _user(realm, dev.username)["credentials"] if c["type"] == "password"]
    assert len(passwords) == 1
    assert passwords[0]["value"] == dev.username == dev.password
    assert passwords[0].get("temporary") is False


@pytest.mark.parametrize("dev", DEV_USERS, ids=lambda u: u.username)
def test_staff_have_the_dev_totp_patients_none(realm: Json, dev: DevUser) -> None:
    otps = [c for c in _user(realm, dev.username)["credentials"] if c["type"] == "otp"]
    if not dev.is_staff:
        assert otps == []
        assert dev.totp_secret is None
        return
    assert len(otps) == 1
    secret = json.loads(otps[0]["secretData"])
    data = json.loads(otps[0]["credentialData"])
    assert secret == {"value": dev.totp_secret}
    assert data == {
        "subType": "totp",
        "digits": 6,
        "counter": 0,
        "period": 30,
        "algorithm": "HmacSHA1",
        "secretEncoding": "BASE32",
    }
    assert dev.totp_secret is not None
    assert len(base64.b32decode(dev.totp_secret)) >= 16  # valid base32, >= 128 bits as RFC 4226 asks
    code = dev.totp_now()
    assert len(code) == 6
    assert code.isdigit()


def test_professionals_and_patients_identities_are_valid(realm: Json) -> None:
    from emage_common.events import Ins, PatientIdentity, Principal

    facilities = {f.finess: f.name for f in dev_users.FACILITIES}
    assert facilities == {"750000001": "CHU Alpha", "690000002": "Clinique Beta"}
    for dev in DEV_USERS:
        if dev.role == "patient":
            assert dev.ins is not None
            assert dev.patient_id is not None
            assert dev.patient_id_issuer is not None
            ins = Ins(matricule=dev.ins, oid=dev_users.INS_TEST_OID)  # checks the control key
            PatientIdentity(patient_id=dev.patient_id, issuer_of_patient_id=dev.patient_id_issuer, ins=ins)
            assert dev.patient_id_issuer in facilities
            assert _attribute(_user(realm, dev.username), "ins_oid") == dev_users.INS_TEST_OID
            assert dev.rpps is None
            assert dev.facility is None
        else:
            Principal(subject=dev.username, role=dev.role, rpps=dev.rpps, facility_finess=dev.facility_finess)  # type: ignore[arg-type]
            assert dev.patient_id is None
            assert dev.ins is None
            if dev.role != "dpo":
                assert dev.rpps is not None
                assert _luhn_ok(dev.rpps), f"{dev.username}: RPPS key"
                assert dev.facility is not None
                assert dev.facility.finess in facilities
    rpps = [u.rpps for u in DEV_USERS if u.rpps]
    assert len(rpps) == len(set(rpps))


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(number)):
        digit = int(char) * (2 if i % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def test_facilities_split_as_documented() -> None:
    by_name = DEV_USERS_BY_NAME
    for name in ("radiologist-a", "referrer-a", "nurse-a", "technician-a"):
        assert by_name[name].facility == dev_users.FACILITY_A
    assert by_name["radiologist-b"].facility == dev_users.FACILITY_B
    assert by_name["dpo"].facility is None


def test_no_account_is_both_patient_and_staff(realm: Json) -> None:
    # The second factor is required of every account that is *not* a patient (fail closed for new roles);
    # an account holding both would log in with a password only.
    for user in realm["users"]:
        roles = set(user["realmRoles"])
        assert not ("patient" in roles and roles & set(dev_users.STAFF_ROLES)), user["username"]


# --- claims -------------------------------------------------------------------------------------------------


def _in_access_and_id_token(mapper: Json) -> bool:
    config = mapper["config"]
    return config.get("access.token.claim") == "true" and config.get("id.token.claim") == "true"


@pytest.mark.parametrize(
    ("scope", "claim"),
    [
        ("emage-professional", "rpps"),
        ("emage-professional", "facility"),
        ("emage-professional", "facility_name"),
        ("emage-patient", "patient_id"),
        ("emage-patient", "patient_id_issuer"),
        ("emage-patient", "ins"),
        ("emage-patient", "ins_oid"),
    ],
)
def test_identity_claims_come_from_user_attributes(realm: Json, scope: str, claim: str) -> None:
    mapper = _mapper(_scope(realm, scope), claim)
    assert mapper["protocolMapper"] == "oidc-usermodel-attribute-mapper"
    assert mapper["config"]["user.attribute"] == claim
    assert mapper["config"]["claim.name"] == claim
    assert _in_access_and_id_token(mapper)


def test_roles_top_level_claim_and_realm_access(realm: Json) -> None:
    roles = _scope(realm, "roles")
    top = _mapper(roles, "roles (top-level claim)")
    assert top["protocolMapper"] == "oidc-usermodel-realm-role-mapper"
    assert top["config"]["claim.name"] == "roles"
    assert top["config"]["multivalued"] == "true"
    assert _in_access_and_id_token(top)
    assert _mapper(roles, "realm roles")["config"]["claim.name"] == "realm_access.roles"


def test_audience_emage_api_in_access_tokens(realm: Json) -> None:
    mapper = _mapper(_scope(realm, "emage-api"), "audience emage-api")
    assert mapper["protocolMapper"] == "oidc-audience-mapper"
    assert mapper["config"]["included.custom.audience"] == dev_users.API_AUDIENCE == "emage-api"
    assert mapper["config"]["access.token.claim"] == "true"


def test_amr_and_acr_mappers(realm: Json) -> None:
    acr = _scope(realm, "acr")
    assert _mapper(acr, "amr")["protocolMapper"] == "oidc-amr-mapper"
    assert _mapper(acr, "acr loa level")["protocolMapper"] == "oidc-acr-mapper"
    assert _in_access_and_id_token(_mapper(acr, "amr"))
    assert json.loads(realm["attributes"]["acr.loa.map"]) == {
        dev_users.ACR_PASSWORD: 1,
        dev_users.ACR_PASSWORD_OTP: 2,
    }


def test_sub_claim_scope_exists(realm: Json) -> None:
    # Keycloak >= 25 puts "sub" in access tokens only through the "basic" scope's mapper.
    assert _mapper(_scope(realm, "basic"), "sub")["protocolMapper"] == "oidc-sub-mapper"


def test_user_profile_declares_the_identity_attributes(realm: Json) -> None:
    (component,) = realm["components"]["org.keycloak.userprofile.UserProfileProvider"]
    profile = json.loads(component["config"]["kc.user.profile.config"][0])
    declared = {attribute["name"]: attribute for attribute in profile["attributes"]}
    for name in ("rpps", "facility", "facility_name", "patient_id", "patient_id_issuer", "ins", "ins_oid"):
        assert declared[name]["permissions"]["edit"] == ["admin"], f"users must not edit their {name}"


# --- clients ------------------------------------------------------------------------------------------------


def test_web_client_public_pkce_standard_flow(realm: Json) -> None:
    web = _client(realm, dev_users.WEB_CLIENT_ID)
    assert web["publicClient"] is True
    assert web["standardFlowEnabled"] is True
    assert web["implicitFlowEnabled"] is False
    assert web["directAccessGrantsEnabled"] is False
    assert web["attributes"]["pkce.code.challenge.method"] == "S256"
    assert set(web["redirectUris"]) >= {
        "http://127.0.0.1:8080/*",
        "http://localhost:8080/*",
        "http://127.0.0.1:18080/*",
        "http://localhost:18080/*",
    }
    assert "emage-professional" in web["defaultClientScopes"]


def test_patient_client_public_pkce(realm: Json) -> None:
    portal = _client(realm, dev_users.PATIENT_CLIENT_ID)
    assert portal["publicClient"] is True
    assert portal["directAccessGrantsEnabled"] is False
    assert portal["attributes"]["pkce.code.challenge.method"] == "S256"
    assert "emage-patient" in portal["defaultClientScopes"]
    assert "emage-professional" not in portal["defaultClientScopes"]


def test_dev_cli_client_confidential_direct_grant(realm: Json) -> None:
    cli = _client(realm, dev_users.DEV_CLIENT_ID)
    assert cli["publicClient"] is False
    assert cli["directAccessGrantsEnabled"] is True
    assert cli["standardFlowEnabled"] is False
    assert cli["secret"] == dev_users.DEV_CLIENT_SECRET
    assert "LOCAL DEVELOPMENT ONLY" in cli["description"]


@pytest.mark.parametrize(
    "client_id", [dev_users.WEB_CLIENT_ID, dev_users.PATIENT_CLIENT_ID, dev_users.DEV_CLIENT_ID]
)
def test_clients_get_the_api_audience_roles_and_acr(realm: Json, client_id: str) -> None:
    scopes = set(_client(realm, client_id)["defaultClientScopes"])
    assert {"basic", "roles", "acr", "emage-api"} <= scopes
    known = {scope["name"] for scope in realm["clientScopes"]}
    assert scopes <= known, f"unknown scopes {scopes - known}"


# --- second factor ------------------------------------------------------------------------------------------


def _executions(realm: Json, alias: str) -> list[Json]:
    return sorted(_flow(realm, alias)["authenticationExecutions"], key=lambda e: e["priority"])


def _staff_second_factor(realm: Json, top_alias: str, otp_authenticator: str) -> None:
    """The top flow reaches, after the password, a conditional sub-flow 'not a patient -> OTP at LoA 2'."""

    def walk(alias: str) -> Iterator[Json]:
        for execution in _executions(realm, alias):
            yield execution
            if execution.get("authenticatorFlow"):
                yield from walk(execution["flowAlias"])

    executions = list(walk(top_alias))
    password = next(
        e
        for e in executions
        if e.get("authenticator") in ("auth-username-password-form", "direct-grant-validate-password")
    )
    assert password["requirement"] == "REQUIRED"
    assert _config(realm, password["authenticatorConfig"])["default.reference.value"] == "pwd"

    (sub_flow,) = [e for e in executions if e.get("authenticatorFlow") and e["requirement"] == "CONDITIONAL"]
    inner = _executions(realm, sub_flow["flowAlias"])
    role = _by(inner, "authenticator", "conditional-user-role")
    assert _config(realm, role["authenticatorConfig"]) == {"condUserRole": "patient", "negate": "true"}
    loa = _by(inner, "authenticator", "conditional-level-of-authentication")
    assert _config(realm, loa["authenticatorConfig"])["loa-condition-level"] == "2"
    otp = _by(inner, "authenticator", otp_authenticator)
    assert otp["requirement"] == "REQUIRED"
    assert _config(realm, otp["authenticatorConfig"])["default.reference.value"] == "otp"
    assert {e["requirement"] for e in inner} == {"REQUIRED"}


def test_direct_grant_requires_totp_of_staff(realm: Json) -> None:
    assert realm["directGrantFlow"] == "emage direct grant"
    _staff_second_factor(realm, "emage direct grant", "direct-grant-validate-otp")


def test_browser_flow_requires_totp_of_staff(realm: Json) -> None:
    assert realm["browserFlow"] == "emage browser"
    _staff_second_factor(realm, "emage browser", "auth-otp-form")


def test_amr_references_outlive_the_login(realm: Json) -> None:
    # Keycloak drops an amr value once execution time + default.reference.maxAge is past; the default max age
    # is 0, which would empty "amr" on every refreshed token.
    for config in realm["authenticatorConfig"]:
        if "default.reference.value" in config["config"]:
            assert int(config["config"]["default.reference.maxAge"]) >= realm["ssoSessionMaxLifespan"]


def test_every_flow_and_config_reference_resolves(realm: Json) -> None:
    aliases = {flow["alias"] for flow in realm["authenticationFlows"]}
    configs = {config["alias"] for config in realm["authenticatorConfig"]}
    for flow in realm["authenticationFlows"]:
        for execution in flow["authenticationExecutions"]:
            if execution.get("authenticatorFlow"):
                assert execution["flowAlias"] in aliases
            if "authenticatorConfig" in execution:
                assert execution["authenticatorConfig"] in configs


# --- secrets ------------------------------------------------------------------------------------------------


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def test_only_dev_secrets(realm: Json) -> None:
    forbidden = (
        "privateKey",
        "certificate",
        "hashedSaltedValue",
        "salt",
        "clientSecret",
        "smtpServer",
        "identityProviders",
        "keystore",
        "password",
    )
    for path, _ in _walk(realm):
        leaf = path.rsplit(".", 1)[-1]
        assert leaf not in forbidden, f"{path}: no key material, hash, IdP or SMTP secret in the dev realm"
    secrets = [(path, value) for path, value in _walk(realm) if path.endswith(".secret")]
    assert secrets == [(secrets[0][0], dev_users.DEV_CLIENT_SECRET)], "only the dev client has a secret"
    assert "local-dev-only" in dev_users.DEV_CLIENT_SECRET
    confidential = [c["clientId"] for c in realm["clients"] if not c.get("publicClient")]
    assert confidential == [dev_users.DEV_CLIENT_ID]
    for user in realm["users"]:
        for credential in user["credentials"]:
            if credential["type"] == "password":
                assert credential["value"] == user["username"]
            else:
                assert credential["type"] == "otp"
                assert json.loads(credential["secretData"])["value"].startswith("DEVONLY")
                assert "LOCAL DEVELOPMENT ONLY" in credential["userLabel"]
