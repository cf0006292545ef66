"""The gateway's bearer authentication against a local issuer: keys made here, served by a mock transport."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from emage_access.api import create_app
from emage_access.settings import Settings
from emage_common.oidc import OidcValidator

ISSUER = "https://idp.example.test/realms/emage"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issuer_transport(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/.well-known/openid-configuration"):
        return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"})
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key())) | {"kid": "k1", "use": "sig", "alg": "RS256"}
    return httpx.Response(200, json={"keys": [jwk]})


def _token(**overrides: object) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "emage-api",
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "name": "Alice Martin",
        "roles": ["radiologist"],
        "rpps": "10000000001",
        "facility": "750000001",
        "amr": ["pwd", "otp"],
    } | overrides
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def client() -> TestClient:
    app = create_app(Settings(oidc_issuer=ISSUER))
    app.state.oidc = OidcValidator(
        ISSUER, "emage-api", http_client=httpx.AsyncClient(transport=httpx.MockTransport(_issuer_transport))
    )
    return TestClient(app)


def test_me_describes_the_authenticated_professional(client: TestClient) -> None:
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {_token()}"})
    assert response.status_code == 200
    assert response.json() == {
        "subject": "user-1",
        "name": "Alice Martin",
        "roles": ["radiologist"],
        "rpps": "10000000001",
        "facility": "750000001",
        "facility_name": None,
        "patient_id": None,
        "authentication_methods": ["otp", "pwd"],
    }


def test_no_token_gets_a_bearer_challenge(client: TestClient) -> None:
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "token",
    [
        _token(exp=int(time.time()) - 3600),
        _token(aud="another-api"),
        _token(iss="https://evil.example.test/realms/emage"),
        jwt.encode({"sub": "x", "iss": ISSUER, "aud": "emage-api"}, key="", algorithm="none"),
        "not-a-jwt",
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "alg-none", "garbage"],
)
def test_invalid_tokens_are_refused_without_detail(client: TestClient, token: str) -> None:
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "Traceback" not in response.text
    assert response.json()["detail"] == "The access token is not valid."


def test_staff_without_a_second_factor_are_asked_to_step_up(client: TestClient) -> None:
    token = _token(amr=["pwd"], acr="eidas1")
    response = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_user_authentication"'


@pytest.mark.parametrize(
    "claims",
    [
        {"roles": ["radiologist", "patient"]},
        {"roles": ["offline_access"]},
        {"rpps": None},
        {"facility": "not-a-finess"},
    ],
    ids=["two-roles", "no-platform-role", "no-rpps", "bad-facility"],
)
def test_genuine_tokens_of_nobody_the_platform_serves_are_forbidden(
    client: TestClient, claims: dict[str, object]
) -> None:
    response = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {_token(**claims)}"})
    assert response.status_code == 403
    assert response.json()["detail"] == "This account may not use e-mage."


def test_a_share_link_token_is_not_an_identity(client: TestClient) -> None:
    response = client.get("/api/v1/me", headers={"Authorization": "Bearer opaque-link-session-token"})
    assert response.status_code == 401
