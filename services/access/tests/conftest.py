"""Fixtures of the gateway route tests: the app with a local OIDC issuer (keys made here, mock transport)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jwt.algorithms import RSAAlgorithm

from emage_access.api import create_app
from emage_access.settings import Settings
from emage_common.oidc import OidcValidator

ISSUER = "https://idp.example.test/realms/emage"
BROWSER_ISSUER = "https://login.example.test/realms/emage"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

PROFESSIONAL_CLAIMS = {
    "sub": "sub-radiologist-b",
    "name": "Paul Girard",
    "roles": ["radiologist"],
    "rpps": "10100000057",
    "facility": "690000002",
    "facility_name": "Clinique Beta",
    "amr": ["pwd", "otp"],
}
PATIENT_CLAIMS = {
    "sub": "sub-patient-1",
    "name": "Jeanne Durand",
    "roles": ["patient"],
    "patient_id": "IPP-1",
    "patient_id_issuer": "750000001",
    "amr": ["pwd"],
}


def _issuer_transport(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/.well-known/openid-configuration"):
        return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"})
    jwk = json.loads(RSAAlgorithm.to_jwk(_KEY.public_key())) | {"kid": "k1", "use": "sig", "alg": "RS256"}
    return httpx.Response(200, json={"keys": [jwk]})


@pytest.fixture
def patient_claims() -> dict[str, object]:
    """Claims of a patient of CHU Alpha (``pid:750000001:IPP-1``)."""
    return dict(PATIENT_CLAIMS)


@pytest.fixture
def professional_claims() -> dict[str, object]:
    """Claims of a radiologist of Clinique Beta, with their second factor."""
    return dict(PROFESSIONAL_CLAIMS)


@pytest.fixture
def signed() -> Callable[[dict[str, object]], str]:
    """Sign claims as the test issuer: an access token the app accepts."""

    def sign(claims: dict[str, object]) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": "emage-api", "iat": now, "exp": now + 300} | claims
        return jwt.encode(payload, _KEY, algorithm="RS256", headers={"kid": "k1"})

    return sign


@pytest.fixture
def gateway_app() -> FastAPI:
    """The gateway's app (no lifespan: no MongoDB, no Kafka), trusting the test issuer."""
    app = create_app(Settings(oidc_issuer=ISSUER, web_oidc_issuer=BROWSER_ISSUER))
    app.state.oidc = OidcValidator(
        ISSUER, "emage-api", http_client=httpx.AsyncClient(transport=httpx.MockTransport(_issuer_transport))
    )
    return app
