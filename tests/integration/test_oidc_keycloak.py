"""Tokens issued by the real Keycloak of the stack, validated by the platform — and forgeries refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from emage_common.oidc import OidcValidator, TokenError
from emage_devstack.dev_users import DEV_USERS, TokenRequestError, password_grant
from emage_devstack.stack import Stack

PROFESSIONALS = [user for user in DEV_USERS if user.is_staff]
PATIENTS = [user for user in DEV_USERS if not user.is_staff]


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def radiologist_token(keycloak_issuer: str) -> str:
    return str(password_grant(keycloak_issuer, "radiologist-a")["access_token"])


@pytest.mark.parametrize("user", PROFESSIONALS, ids=lambda u: u.username)
async def test_a_professional_token_with_its_second_factor_validates(keycloak_issuer: str, user: Any) -> None:
    token = password_grant(keycloak_issuer, user.username)["access_token"]
    async with OidcValidator(keycloak_issuer, "emage-api") as validator:
        claims = (await validator.validate(token)).raw
    assert {"pwd", "otp"} <= set(claims["amr"])
    assert user.role in claims["roles"]
    if user.facility is not None:
        assert claims["rpps"] == user.rpps
        assert claims["facility"] == user.facility.finess


@pytest.mark.parametrize("user", PATIENTS, ids=lambda u: u.username)
async def test_a_patient_token_carries_the_patient_identity(keycloak_issuer: str, user: Any) -> None:
    token = password_grant(keycloak_issuer, user.username)["access_token"]
    async with OidcValidator(keycloak_issuer, "emage-api") as validator:
        claims = (await validator.validate(token)).raw
    assert claims["roles"] == ["patient"] or "patient" in claims["roles"]
    assert (claims["patient_id"], claims["patient_id_issuer"], claims["ins"]) == (
        user.patient_id,
        user.patient_id_issuer,
        user.ins,
    )
    assert "otp" not in claims.get("amr", [])


def test_a_professional_without_the_second_factor_gets_no_token(keycloak_issuer: str) -> None:
    with pytest.raises(TokenRequestError) as refused:
        password_grant(keycloak_issuer, "radiologist-a", totp=False)
    assert refused.value.status_code in (400, 401)
    with pytest.raises(TokenRequestError):
        password_grant(keycloak_issuer, "radiologist-a", password="wrong")


async def test_alg_none_is_refused(keycloak_issuer: str, radiologist_token: str) -> None:
    header, claims = _unverified(radiologist_token)
    forged = f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']}).encode())}."
    forged += f"{_b64(json.dumps(claims).encode())}."
    async with OidcValidator(keycloak_issuer, "emage-api") as validator:
        with pytest.raises(TokenError):
            await validator.validate(forged)


async def test_hs256_signed_with_the_issuer_public_key_is_refused(
    keycloak_issuer: str, radiologist_token: str
) -> None:
    header, claims = _unverified(radiologist_token)
    async with httpx.AsyncClient() as http:
        discovery = await http.get(f"{keycloak_issuer}/.well-known/openid-configuration")
        jwks = (await http.get(discovery.json()["jwks_uri"])).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public_pem = RSAAlgorithm.from_jwk(json.dumps(jwk)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': header['kid']}).encode())}"
    signing_input += f".{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    async with OidcValidator(keycloak_issuer, "emage-api") as validator:
        with pytest.raises(TokenError) as refused:
            await validator.validate(f"{signing_input}.{_b64(signature)}")
    assert refused.value.reason == "algorithm_not_allowed"


async def test_an_expired_token_is_refused(keycloak_issuer: str, radiologist_token: str) -> None:
    _, claims = _unverified(radiologist_token)
    async with OidcValidator(keycloak_issuer, "emage-api", leeway=30) as validator:
        await validator.validate(radiologist_token)
        with time_machine.travel(claims["exp"] + 31, tick=False), pytest.raises(TokenError) as refused:
            await validator.validate(radiologist_token)
    assert refused.value.reason == "expired"


async def test_wrong_audience_and_wrong_issuer_are_refused(
    keycloak_issuer: str, radiologist_token: str
) -> None:
    async with OidcValidator(keycloak_issuer, "another-api") as validator:
        with pytest.raises(TokenError) as refused:
            await validator.validate(radiologist_token)
    assert refused.value.reason == "invalid_audience"
    # Keycloak's master realm is a real, different issuer on the same server.
    master = keycloak_issuer.rsplit("/realms/", 1)[0] + "/realms/master"
    async with OidcValidator(master, "emage-api") as validator:
        with pytest.raises(TokenError) as refused:
            await validator.validate(radiologist_token)
    assert refused.value.reason in {"invalid_issuer", "unknown_key"}


def test_the_gateway_knows_the_caller_and_refuses_forgeries(services: Stack) -> None:
    issuer = services.keycloak.issuer
    gateway = services.service_url("access")
    token = password_grant(issuer, "radiologist-b")["access_token"]
    me = httpx.get(f"{gateway}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert me.status_code == 200, me.text
    body = me.json()
    assert (body["rpps"], body["facility"], "radiologist" in body["roles"]) == (
        "10100000057",
        "690000002",
        True,
    )
    assert {"pwd", "otp"} <= set(body["authentication_methods"])

    tampered = token[:-8] + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB")
    refused = httpx.get(f"{gateway}/api/v1/me", headers={"Authorization": f"Bearer {tampered}"}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{gateway}/api/v1/me", timeout=10).status_code == 401
