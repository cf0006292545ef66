"""Bearer-token validation against any OpenID Connect issuer.

The issuer is found by OpenID Connect Discovery 1.0 (``<issuer>/.well-known/openid-configuration``, §4) and
its signing keys by the ``jwks_uri`` it announces (RFC 7517 JWK Set). Tokens are JWS-signed JWTs
(RFC 7515, RFC 7519) checked along the JWT Best Current Practices (RFC 8725):

* the ``alg`` header is checked against an allow-list of asymmetric algorithms *before* any key is looked
  up (RFC 8725 §2.1, §3.1): ``none`` and every ``HS*`` are refused outright, so a token "signed" with an
  RSA public key used as an HMAC secret never reaches a verifier;
* the key must fit the algorithm (RFC 8725 §3.1: RSA key for RS*/PS*, the right curve for ES*, and the
  JWK's own ``alg``/``use``/``key_ops`` when it states them), and RSA keys shorter than 2048 bits are
  refused (RFC 7518 §3.3);
* ``iss`` and ``aud`` must match (RFC 8725 §3.8, §3.9), ``exp``, ``iat`` and ``sub`` must be present and
  ``exp``/``nbf``/``iat`` are checked with a small leeway for clock skew (RFC 7519 §4.1).

The JWK Set is cached; a token whose ``kid`` is unknown triggers one refetch (the issuer rotated its keys)
but at most once per ``jwks_min_refresh_seconds``, so a flood of forged ``kid`` values cannot turn the
gateway into an amplifier against the issuer.

What a validated token *means* (roles, facility, second factor policy) is the access service's business;
:func:`authentication_methods` and :func:`satisfies_second_factor` only read the standard claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import jwt

from emage_common.settings import OidcSettings

logger = logging.getLogger(__name__)

TokenErrorReason = Literal[
    "malformed",
    "algorithm_not_allowed",
    "unknown_key",
    "invalid_signature",
    "expired",
    "not_yet_valid",
    "invalid_issuer",
    "invalid_audience",
    "missing_claim",
    "invalid_claim",
    "issuer_unavailable",
]

# JWS "alg" → (JWK "kty", required "crv" or None), RFC 7518 §3.1 and RFC 8037 §3.1. Only asymmetric
# algorithms appear: a shared-secret algorithm has no place in validating a third party's tokens.
_ALGORITHM_KEY_TYPES: Final[Mapping[str, tuple[str, str | None]]] = MappingProxyType(
    {
        "RS256": ("RSA", None),
        "RS384": ("RSA", None),
        "RS512": ("RSA", None),
        "PS256": ("RSA", None),
        "PS384": ("RSA", None),
        "PS512": ("RSA", None),
        "ES256": ("EC", "P-256"),
        "ES384": ("EC", "P-384"),
        "ES512": ("EC", "P-521"),
        "EdDSA": ("OKP", "Ed25519"),
    }
)

# Far above any real access token (Keycloak's with many roles stay under 8 KiB); bounds the work spent on
# garbage before anything is parsed.
_MAX_TOKEN_LENGTH: Final = 16 * 1024


class TokenError(Exception):
    """The bearer token is not acceptable; ``reason`` is a short machine-friendly code.

    The reason never carries token content or issuer internals, so it may be returned to the client
    (RFC 6750 §3 ``error_description``) and written to the audit trail as is.
    """

    def __init__(self, reason: TokenErrorReason) -> None:
        super().__init__(reason)
        self.reason: TokenErrorReason = reason


class DiscoveryError(TokenError):
    """The issuer's discovery document or JWK Set could not be obtained or is not trustworthy.

    A subclass of :class:`TokenError` (reason ``issuer_unavailable``) so that a caller catching only
    ``TokenError`` still fails closed; a gateway may catch it first to answer 503 instead of 401.
    """

    def __init__(self) -> None:
        super().__init__("issuer_unavailable")


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of a token: ``subject`` (``sub``) and the full, read-only claim set."""

    subject: str
    raw: Mapping[str, Any]


class OidcValidator:
    """Validates JWT bearer tokens issued by one OIDC issuer for one audience.

    Safe to share between concurrent requests of one event loop. Close it with :meth:`aclose` (or use it
    as an async context manager) when it created its own HTTP client.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("RS256", "ES256", "PS256"),
        jwks_cache_seconds: float = 300,
        leeway: float = 30,
        http_client: httpx.AsyncClient | None = None,
        *,
        jwks_min_refresh_seconds: float = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        allowed = tuple(algorithms)
        unsupported = [alg for alg in allowed if alg not in _ALGORITHM_KEY_TYPES]
        if not allowed or unsupported:
            raise ValueError(
                f"algorithms must be a non-empty subset of {sorted(_ALGORITHM_KEY_TYPES)}; got {unsupported}"
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms: frozenset[str] = frozenset(allowed)
        self._jwks_cache_seconds = jwks_cache_seconds
        self._jwks_min_refresh_seconds = jwks_min_refresh_seconds
        self._leeway = leeway
        self._clock = clock
        self._owns_http_client = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)

        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._keys: list[Mapping[str, Any]] | None = None
        self._keys_expire_at = 0.0
        self._last_fetch_attempt: float | None = None
        self._generation = 0
        self._prepared: dict[tuple[int, str], jwt.PyJWK] = {}

    @classmethod
    def from_settings(
        cls, settings: OidcSettings, *, http_client: httpx.AsyncClient | None = None
    ) -> OidcValidator:
        """Build a validator from a service's :class:`~emage_common.settings.OidcSettings`."""
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            algorithms=settings.oidc_algorithms,
            jwks_cache_seconds=settings.oidc_jwks_cache_seconds,
            leeway=settings.oidc_leeway_seconds,
            http_client=http_client,
        )

    async def __aenter__(self) -> OidcValidator:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this validator created it."""
        if self._owns_http_client:
            await self._http.aclose()

    async def validate(self, token: str) -> Claims:
        """Verify ``token`` (the compact JWS of an ``Authorization: Bearer`` header) and return its claims.

        Raises :class:`TokenError` for any token that is not acceptable and :class:`DiscoveryError` when
        the issuer's keys cannot be obtained.
        """
        if len(token) > _MAX_TOKEN_LENGTH:
            raise TokenError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("malformed") from None

        alg = header.get("alg")
        # The allow-list is checked before any key is touched (RFC 8725 §3.1): the header is attacker
        # controlled and must not choose how the signature is interpreted.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("algorithm_not_allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed")

        key = await self._signing_key(kid, alg)
        try:
            payload = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid") from None
        except jwt.InvalidIssuerError:
            raise TokenError("invalid_issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenError("invalid_audience") from None
        except jwt.MissingRequiredClaimError:
            raise TokenError("missing_claim") from None
        except jwt.InvalidSignatureError:
            raise TokenError("invalid_signature") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError("algorithm_not_allowed") from None
        except jwt.DecodeError:
            raise TokenError("malformed") from None
        except jwt.InvalidKeyError:
            # The issuer's key is too weak to trust (RSA under 2048 bits).
            raise TokenError("unknown_key") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid_claim") from None

        subject = payload["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenError("invalid_claim")
        return Claims(subject=subject, raw=MappingProxyType(payload))

    async def _signing_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        if self._keys is None or self._clock() >= self._keys_expire_at:
            await self._refresh(self._generation)
        key = self._find_key(kid, alg)
        if key is None:
            # Unknown kid: the issuer may have rotated its keys since the last fetch (OIDC Core §10.1.1).
            await self._refresh(self._generation)
            key = self._find_key(kid, alg)
        if key is None:
            raise TokenError("unknown_key")
        return key

    def _find_key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        candidates = [
            index
            for index, jwk in enumerate(self._keys or ())
            if (kid is None or jwk.get("kid") == kid) and _key_fits_algorithm(jwk, alg)
        ]
        # Without a kid the choice is only safe when one key can possibly match (OIDC Core §10.1).
        if not candidates or (kid is None and len(candidates) > 1):
            return None
        index = candidates[0]
        prepared = self._prepared.get((index, alg))
        if prepared is None:
            try:
                prepared = jwt.PyJWK(dict((self._keys or [])[index]), algorithm=alg)
            except jwt.PyJWTError:
                logger.warning("oidc: issuer published an unusable JWK", extra={"kid": kid, "alg": alg})
                return None
            self._prepared[(index, alg)] = prepared
        return prepared

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request refreshed the keys while this one waited for the lock
            now = self._clock()
            if (
                self._last_fetch_attempt is not None
                and now - self._last_fetch_attempt < self._jwks_min_refresh_seconds
            ):
                if self._keys is None:
                    raise DiscoveryError
                return
            self._last_fetch_attempt = now
            try:
                keys = await self._fetch_jwks()
            except DiscoveryError:
                # Re-discover next time: the jwks_uri itself may have moved.
                self._jwks_uri = None
                if self._keys is None:
                    raise
                logger.warning("oidc: JWKS refresh failed, keeping the previously fetched keys")
                return
            self._keys = keys
            self._prepared.clear()
            self._keys_expire_at = now + self._jwks_cache_seconds
            self._generation += 1

    async def _fetch_jwks(self) -> list[Mapping[str, Any]]:
        jwks_uri = self._jwks_uri or await self._discover()
        document = await self._get_json(jwks_uri)
        keys = document.get("keys")
        if not isinstance(keys, list):
            logger.warning("oidc: JWK Set without a 'keys' array", extra={"jwks_uri": jwks_uri})
            raise DiscoveryError
        self._jwks_uri = jwks_uri
        return [key for key in keys if isinstance(key, dict)]

    async def _discover(self) -> str:
        """Read ``jwks_uri`` from the issuer's discovery document (OpenID Connect Discovery 1.0 §4)."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        # §4.3: the issuer in the document MUST be identical to the one the configuration was fetched
        # for; otherwise a hijacked or misrouted document could substitute another issuer's keys.
        if document.get("issuer") != self.issuer:
            logger.warning(
                "oidc: discovery issuer mismatch",
                extra={"expected_issuer": self.issuer, "document_issuer": document.get("issuer")},
            )
            raise DiscoveryError
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _acceptable_key_url(jwks_uri, self.issuer):
            logger.warning(
                "oidc: discovery document lacks an acceptable jwks_uri", extra={"issuer": self.issuer}
            )
            raise DiscoveryError
        return jwks_uri

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("oidc: fetching %s failed: %s", url, type(exc).__name__)
            raise DiscoveryError from exc
        if not isinstance(document, dict):
            logger.warning("oidc: %s is not a JSON object", url)
            raise DiscoveryError
        return document


def _key_fits_algorithm(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether ``jwk`` may verify a signature made with ``alg`` (RFC 7517 §4, RFC 8725 §3.1)."""
    kty, crv = _ALGORITHM_KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return False
    if "alg" in jwk and jwk["alg"] != alg:
        return False
    if "use" in jwk and jwk["use"] != "sig":
        return False
    key_ops = jwk.get("key_ops")
    return key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops)


def _acceptable_key_url(url: str, issuer: str) -> bool:
    """The JWKS must come over TLS (Discovery §3) unless the issuer itself is a plain-HTTP local one."""
    scheme = urlsplit(url).scheme
    issuer_scheme = urlsplit(issuer).scheme
    return scheme == "https" or (scheme == "http" and issuer_scheme == "http")


def authentication_methods(claims: Claims | Mapping[str, Any]) -> set[str]:
    """The ``amr`` values of a token (OIDC Core §2, values from RFC 8176, e.g. ``pwd``, ``otp``, ``mfa``).

    A missing or malformed ``amr`` yields an empty set, so any policy built on it fails closed.
    """
    raw = claims.raw if isinstance(claims, Claims) else claims
    amr = raw.get("amr")
    if not isinstance(amr, list):
        return set()
    return {method for method in amr if isinstance(method, str)}


def satisfies_second_factor(
    claims: Claims | Mapping[str, Any], required_amr: Set[str], accepted_acr: Set[str]
) -> bool:
    """Whether the authentication behind ``claims`` meets a second-factor requirement.

    True when the ``acr`` claim (OIDC Core §2) is one of ``accepted_acr``, or when ``amr`` contains every
    method of ``required_amr`` (e.g. ``{"mfa"}`` or ``{"pwd", "otp"}``). An empty set disables its
    branch rather than matching everything, so ``satisfies_second_factor(c, set(), set())`` is False.
    """
    raw = claims.raw if isinstance(claims, Claims) else claims
    acr = raw.get("acr")
    if accepted_acr and isinstance(acr, str) and acr in accepted_acr:
        return True
    return bool(required_amr) and required_amr <= authentication_methods(raw)
