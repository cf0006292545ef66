"""OIDC bearer-token validation against a fake issuer served in-process through ``httpx.MockTransport``.

The attacks are the ones RFC 8725 §2 lists (``alg=none``, RSA/HMAC confusion, substitution of issuer or
audience, replay past expiry) plus key rotation and forged-``kid`` floods against the JWKS endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from emage_common.oidc import (
    Claims,
    DiscoveryError,
    OidcValidator,
    TokenError,
    authentication_methods,
    satisfies_second_factor,
)
from emage_common.settings import OidcSettings

ISSUER = "https://idp.test/realms/emage"
AUDIENCE = "emage-api"
JWKS_PATH = "/realms/emage/protocol/openid-connect/certs"
OMIT = object()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class FakeIssuer:
    """An OIDC issuer: discovery document, JWK Set, and a signer for tokens."""

    def __init__(self) -> None:
        self.private_keys: dict[str, tuple[Any, str]] = {
            "rsa-1": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
            "ec-1": (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        }
        self.published: list[str] = ["rsa-1", "ec-1"]
        self.discovery_issuer = ISSUER
        self.jwks_available = True
        self.jwks_requests = 0
        self.discovery_requests = 0

    def add_key(self, kid: str, key_size: int = 2048) -> None:
        self.private_keys[kid] = (rsa.generate_private_key(public_exponent=65537, key_size=key_size), "RS256")
        self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        key, alg = self.private_keys[kid]
        algorithm = RSAAlgorithm if alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": alg}

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/realms/emage/.well-known/openid-configuration":
            self.discovery_requests += 1
            return httpx.Response(
                200,
                json={
                    "issuer": self.discovery_issuer,
                    "jwks_uri": f"https://idp.test{JWKS_PATH}",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                },
            )
        if request.url.path == JWKS_PATH:
            self.jwks_requests += 1
            if not self.jwks_available:
                return httpx.Response(503)
            return httpx.Response(200, json={"keys": [self.jwk(kid) for kid in self.published]})
        return httpx.Response(404)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "f3b1c2d4-professional",
            "iat": now,
            "exp": now + 300,
            "amr": ["pwd", "otp"],
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def token(self, kid: str = "rsa-1", *, alg: str | None = None, **overrides: Any) -> str:
        key, key_alg = self.private_keys[kid]
        return jwt.encode(self.claims(**overrides), key, algorithm=alg or key_alg, headers={"kid": kid})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def validator(issuer: FakeIssuer, clock: FakeClock) -> OidcValidator:
    return OidcValidator(
        ISSUER,
        AUDIENCE,
        jwks_cache_seconds=300,
        leeway=30,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle)),
        jwks_min_refresh_seconds=10,
        clock=clock,
    )


async def _reason(validator: OidcValidator, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        await validator.validate(token)
    return caught.value.reason


async def test_valid_rsa_and_ec_tokens_are_accepted(issuer: FakeIssuer, validator: OidcValidator) -> None:
    for kid in ("rsa-1", "ec-1"):
        claims = await validator.validate(issuer.token(kid))
        assert isinstance(claims, Claims)
        assert claims.subject == "f3b1c2d4-professional"
        assert claims.raw["aud"] == AUDIENCE
    # Both keys came from one discovery and one JWKS fetch.
    assert (issuer.discovery_requests, issuer.jwks_requests) == (1, 1)


async def test_alg_none_is_refused(issuer: FakeIssuer, validator: OidcValidator) -> None:
    unsigned = jwt.encode(issuer.claims(), "", algorithm="none", headers={"kid": "rsa-1"})
    assert await _reason(validator, unsigned) == "algorithm_not_allowed"
    # Refused before any key was looked up.
    assert issuer.jwks_requests == 0


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    issuer: FakeIssuer, validator: OidcValidator
) -> None:
    """The classic confusion: an HMAC whose secret is the issuer's public key PEM (RFC 8725 §2.1)."""
    public_pem = (
        issuer.private_keys["rsa-1"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = _b64url(json.dumps(issuer.claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64url(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    assert await _reason(validator, f"{header}.{payload}.{signature}") == "algorithm_not_allowed"


async def test_algorithm_outside_the_allow_list_is_refused(
    issuer: FakeIssuer, validator: OidcValidator
) -> None:
    assert await _reason(validator, issuer.token("rsa-1", alg="RS512")) == "algorithm_not_allowed"


async def test_key_of_the_wrong_type_never_verifies(issuer: FakeIssuer, validator: OidcValidator) -> None:
    """An ES256 header naming an RSA key's kid finds no usable key (RFC 8725 §3.1)."""
    ec_key = issuer.private_keys["ec-1"][0]
    forged = jwt.encode(issuer.claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert await _reason(validator, forged) == "unknown_key"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iat": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iss": "https://evil.test/realms/emage"}, "invalid_issuer"),
        ({"aud": "another-api"}, "invalid_audience"),
        ({"exp": OMIT}, "missing_claim"),
        ({"iat": OMIT}, "missing_claim"),
        ({"sub": OMIT}, "missing_claim"),
    ],
)
async def test_invalid_claims_are_refused(
    issuer: FakeIssuer, validator: OidcValidator, overrides: dict[str, Any], reason: str
) -> None:
    assert await _reason(validator, issuer.token(**overrides)) == reason


async def test_leeway_tolerates_small_clock_skew(issuer: FakeIssuer, validator: OidcValidator) -> None:
    now = int(time.time())
    claims = await validator.validate(issuer.token(exp=now - 10, nbf=now + 10, iat=now + 10))
    assert claims.subject


async def test_tampered_signature_is_refused(issuer: FakeIssuer, validator: OidcValidator) -> None:
    header, payload, signature = issuer.token().split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    assert await _reason(validator, tampered) == "invalid_signature"


async def test_tampered_payload_is_refused(issuer: FakeIssuer, validator: OidcValidator) -> None:
    header, _, signature = issuer.token().split(".")
    elevated = _b64url(json.dumps(issuer.claims(sub="someone-else")).encode())
    assert await _reason(validator, f"{header}.{elevated}.{signature}") == "invalid_signature"


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "x" * 20_000])
async def test_malformed_tokens_are_refused(validator: OidcValidator, garbage: str) -> None:
    assert await _reason(validator, garbage) == "malformed"


async def test_unknown_kid_is_refused(issuer: FakeIssuer, validator: OidcValidator) -> None:
    issuer.add_key("rsa-unpublished")
    issuer.published.remove("rsa-unpublished")
    assert await _reason(validator, issuer.token("rsa-unpublished")) == "unknown_key"


async def test_weak_rsa_key_is_not_trusted(issuer: FakeIssuer, validator: OidcValidator) -> None:
    issuer.add_key("rsa-1024", key_size=1024)
    with pytest.warns(InsecureKeyLengthWarning):
        token = issuer.token("rsa-1024")
    assert await _reason(validator, token) == "unknown_key"


async def test_rotated_key_is_picked_up(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token("rsa-1"))
    issuer.add_key("rsa-2")
    clock.now += 11  # past the refetch rate limit, well within the cache lifetime
    claims = await validator.validate(issuer.token("rsa-2"))
    assert claims.subject
    assert issuer.jwks_requests == 2


async def test_rotation_within_the_rate_limit_waits(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token("rsa-1"))
    issuer.add_key("rsa-2")
    assert await _reason(validator, issuer.token("rsa-2")) == "unknown_key"
    clock.now += 10
    assert (await validator.validate(issuer.token("rsa-2"))).subject
    assert issuer.jwks_requests == 2


async def test_forged_kid_storm_does_not_hammer_the_issuer(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    rsa_key = issuer.private_keys["rsa-1"][0]

    def forged() -> str:
        return jwt.encode(issuer.claims(), rsa_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})

    results = await asyncio.gather(
        *(validator.validate(forged()) for _ in range(200)), return_exceptions=True
    )
    assert all(isinstance(result, TokenError) and result.reason == "unknown_key" for result in results)
    assert issuer.jwks_requests == 1

    clock.now += 5
    for _ in range(50):
        assert await _reason(validator, forged()) == "unknown_key"
    assert issuer.jwks_requests == 1

    clock.now += 10
    for _ in range(50):
        assert await _reason(validator, forged()) == "unknown_key"
    assert issuer.jwks_requests == 2


async def test_jwks_is_cached_then_refreshed(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    for _ in range(5):
        await validator.validate(issuer.token())
    assert issuer.jwks_requests == 1
    clock.now += 301
    await validator.validate(issuer.token())
    assert issuer.jwks_requests == 2
    assert issuer.discovery_requests == 1


async def test_removed_key_stops_verifying_after_refresh(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token("ec-1"))
    issuer.published.remove("ec-1")
    clock.now += 301
    assert await _reason(validator, issuer.token("ec-1")) == "unknown_key"


async def test_discovery_issuer_mismatch_is_refused(issuer: FakeIssuer, validator: OidcValidator) -> None:
    issuer.discovery_issuer = "https://attacker.test/realms/emage"
    with pytest.raises(DiscoveryError) as caught:
        await validator.validate(issuer.token())
    assert caught.value.reason == "issuer_unavailable"
    assert issuer.jwks_requests == 0


async def test_unreachable_issuer_fails_closed(clock: FakeClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    validator = OidcValidator(
        ISSUER, AUDIENCE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(refuse)), clock=clock
    )
    token = FakeIssuer().token()
    with pytest.raises(DiscoveryError):
        await validator.validate(token)


async def test_issuer_outage_keeps_the_cached_keys(
    issuer: FakeIssuer, validator: OidcValidator, clock: FakeClock
) -> None:
    token = issuer.token()
    await validator.validate(token)
    issuer.jwks_available = False
    clock.now += 301
    assert (await validator.validate(token)).subject
    assert issuer.jwks_requests == 2


def test_symmetric_or_unknown_algorithms_cannot_be_configured() -> None:
    for algorithms in (("HS256",), ("RS256", "none"), ()):
        with pytest.raises(ValueError, match="algorithms"):
            OidcValidator(ISSUER, AUDIENCE, algorithms=algorithms)


async def test_from_settings(issuer: FakeIssuer) -> None:
    settings = OidcSettings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_algorithms=("ES256",))
    async with OidcValidator.from_settings(
        settings, http_client=httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle))
    ) as validator:
        assert validator.algorithms == frozenset({"ES256"})
        assert (await validator.validate(issuer.token("ec-1"))).subject
        assert await _reason(validator, issuer.token("rsa-1")) == "algorithm_not_allowed"


def test_authentication_methods_reads_amr() -> None:
    assert authentication_methods({"amr": ["pwd", "otp", 3]}) == {"pwd", "otp"}
    assert authentication_methods({"amr": "otp"}) == set()
    assert authentication_methods({}) == set()
    assert authentication_methods(Claims(subject="s", raw={"amr": ["hwk"]})) == {"hwk"}


@pytest.mark.parametrize(
    ("claims", "required_amr", "accepted_acr", "expected"),
    [
        ({"amr": ["pwd", "otp"]}, {"pwd", "otp"}, set(), True),
        ({"amr": ["pwd"]}, {"pwd", "otp"}, set(), False),
        ({"amr": ["mfa"]}, {"mfa"}, {"eidas2"}, True),
        ({"acr": "eidas2", "amr": ["pwd"]}, {"otp"}, {"eidas2", "eidas3"}, True),
        ({"acr": "eidas1", "amr": ["pwd"]}, {"otp"}, {"eidas2"}, False),
        ({"acr": "eidas1", "amr": ["pwd"]}, set(), set(), False),
        ({}, {"otp"}, {"eidas2"}, False),
    ],
)
def test_satisfies_second_factor(
    claims: dict[str, Any], required_amr: set[str], accepted_acr: set[str], expected: bool
) -> None:
    assert satisfies_second_factor(claims, required_amr, accepted_acr) is expected
