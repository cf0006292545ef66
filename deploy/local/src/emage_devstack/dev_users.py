"""The dev users of the local Keycloak realm ``emage`` and how to get tokens for them.

LOCAL DEVELOPMENT ONLY. Every password, TOTP secret and client secret below is public (it is in this
repository and in ``deploy/local/keycloak/realm-emage.json``) and protects nothing: it exists so that
scripts and tests can log in as each persona. None of it may ever be used outside a developer's machine.

The table mirrors the realm export; ``deploy/local/tests/test_realm.py`` checks that both agree.

Claims a token carries (see the realm's client scopes):

* every user: ``sub``, ``preferred_username``, ``roles`` (realm role names), ``realm_access``,
  ``aud`` containing ``emage-api`` (access token), ``amr``, ``acr``;
* professionals, as Pro Santé Connect provides them: ``rpps`` (11 digits), ``facility`` (FINESS, 9 digits),
  ``facility_name``;
* patients: ``patient_id``, ``patient_id_issuer`` (the facility's FINESS as issuer of patient ID), ``ins``
  (15-character INS matricule) and ``ins_oid`` (the INS assigning authority, a *test identities* OID).

Staff accounts (every role but ``patient``) must present a TOTP code; patients log in with a password only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

REALM = "emage"
API_AUDIENCE = "emage-api"

DEV_CLIENT_ID = "emage-dev-cli"
#: Client secret of the confidential dev client. LOCAL DEVELOPMENT ONLY: public, protects nothing.
DEV_CLIENT_SECRET = "local-dev-only-emage-dev-cli-secret-not-for-production"
WEB_CLIENT_ID = "emage-web"
PATIENT_CLIENT_ID = "emage-patient"

#: ``acr`` values of the realm's ``acr.loa.map``: level 1 = password only, level 2 = password + TOTP.
ACR_PASSWORD = "eidas1"
ACR_PASSWORD_OTP = "eidas2"

#: Namespace of the fixed Keycloak user IDs (so ``sub`` is the same on every machine and after realm edits).
DEV_USER_ID_NAMESPACE = uuid.UUID("6f1c3a52-6d0e-4c1e-9a37-0e3d5b7a2c10")

#: INS assigning authority of *test* identities (INS-NIR, test): these are not real people.
INS_TEST_OID = "1.2.250.1.213.1.4.10"

STAFF_ROLES = ("radiologist", "referring_physician", "nurse", "imaging_technician", "dpo")
REALM_ROLES = (*STAFF_ROLES, "patient")


@dataclass(frozen=True)
class Facility:
    finess: str
    name: str


FACILITY_A = Facility(finess="750000001", name="CHU Alpha")
FACILITY_B = Facility(finess="690000002", name="Clinique Beta")
FACILITIES = (FACILITY_A, FACILITY_B)


@dataclass(frozen=True)
class DevUser:
    """One persona of the dev realm. Password = username."""

    username: str
    role: str
    first_name: str
    last_name: str
    email: str
    facility: Facility | None = None
    rpps: str | None = None
    patient_id: str | None = None
    patient_id_issuer: str | None = None
    ins: str | None = None
    #: Base32 TOTP secret (HmacSHA1, 6 digits, 30 s). LOCAL DEVELOPMENT ONLY.
    totp_secret: str | None = None

    @property
    def password(self) -> str:
        return self.username

    @property
    def subject(self) -> str:
        """The token ``sub``: the Keycloak user ID, fixed in the realm export."""
        return str(uuid.uuid5(DEV_USER_ID_NAMESPACE, self.username))

    @property
    def facility_finess(self) -> str | None:
        return self.facility.finess if self.facility else None

    @property
    def facility_name(self) -> str | None:
        return self.facility.name if self.facility else None

    @property
    def is_staff(self) -> bool:
        """Staff accounts need a second factor (TOTP); patients do not."""
        return self.role != "patient"

    def totp_now(self) -> str:
        """The current TOTP code of this user (``pyotp``, imported lazily: a dev dependency)."""
        if self.totp_secret is None:
            raise ValueError(f"{self.username} has no TOTP credential")
        import pyotp

        return str(pyotp.TOTP(self.totp_secret, digits=6, interval=30).now())


DEV_USERS: tuple[DevUser, ...] = (
    DevUser(
        "radiologist-a",
        "radiologist",
        "Claire",
        "Dubois",
        "radiologist-a@chu-alpha.example.org",
        facility=FACILITY_A,
        rpps="10100000016",
        totp_secret="DEVONLYD3S2AKSWOKLPJDDURJH4FGZPE",
    ),
    DevUser(
        "referrer-a",
        "referring_physician",
        "Marc",
        "Lefevre",
        "referrer-a@chu-alpha.example.org",
        facility=FACILITY_A,
        rpps="10100000024",
        totp_secret="DEVONLYGAB2BJOONAAE2GDWIWSIG5ZKN",
    ),
    DevUser(
        "nurse-a",
        "nurse",
        "Sophie",
        "Bernard",
        "nurse-a@chu-alpha.example.org",
        facility=FACILITY_A,
        rpps="10100000032",
        totp_secret="DEVONLYUR52H5AXUS4MVDAOIHJ5TQND6",
    ),
    DevUser(
        "technician-a",
        "imaging_technician",
        "Julien",
        "Moreau",
        "technician-a@chu-alpha.example.org",
        facility=FACILITY_A,
        rpps="10100000040",
        totp_secret="DEVONLYG2VZGLZPX6A5ZZ25THQIS5BXW",
    ),
    DevUser(
        "dpo",
        "dpo",
        "Nadia",
        "Benali",
        "dpo@emage.example.org",
        totp_secret="DEVONLYQ5A3NLZHO5XD432MKAE6GVAIA",
    ),
    DevUser(
        "radiologist-b",
        "radiologist",
        "Thomas",
        "Petit",
        "radiologist-b@clinique-beta.example.org",
        facility=FACILITY_B,
        rpps="10100000057",
        totp_secret="DEVONLYIZCRPI6JXKMPLT4OXA6BSRWBL",
    ),
    DevUser(
        "patient-1",
        "patient",
        "Jeanne",
        "Durand",
        "patient-1@patients.example.org",
        patient_id="IPP-A-000001",
        patient_id_issuer=FACILITY_A.finess,
        ins="285047505612322",
    ),
    DevUser(
        "patient-2",
        "patient",
        "Paul",
        "Martin",
        "patient-2@patients.example.org",
        patient_id="IPP-B-000002",
        patient_id_issuer=FACILITY_B.finess,
        ins="162116912304526",
    ),
)

DEV_USERS_BY_NAME: dict[str, DevUser] = {user.username: user for user in DEV_USERS}


class TokenRequestError(RuntimeError):
    """The token endpoint refused the request; ``status_code`` and the OAuth error ``body`` say why."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(f"token request refused ({status_code}): {body}")
        self.status_code = status_code
        self.body = body


def password_grant(
    issuer: str,
    username: str,
    *,
    password: str | None = None,
    totp: bool = True,
    client_id: str = DEV_CLIENT_ID,
    client_secret: str | None = DEV_CLIENT_SECRET,
    scope: str = "openid",
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Tokens for a dev user by the resource owner password grant (RFC 6749 §4.3) on the dev client.

    Sends ``grant_type=password``, ``client_id``, ``client_secret`` (unless None: public client),
    ``username``, ``password`` (default: the username), ``scope`` (default ``openid``, so an ID token comes
    too) and, when ``totp`` is true and the user has a TOTP secret, ``totp=<current 6-digit code>``.
    ``totp=False`` leaves the code out (a staff account is then refused).

    Returns the token response (``access_token``, ``id_token``, ``refresh_token``, ``expires_in``…);
    raises :class:`TokenRequestError` when the server refuses (e.g. 401 ``invalid_grant``).
    """
    import httpx

    user = DEV_USERS_BY_NAME.get(username)
    form = {
        "grant_type": "password",
        "client_id": client_id,
        "username": username,
        "password": password if password is not None else username,
        "scope": scope,
    }
    if client_secret is not None:
        form["client_secret"] = client_secret
    if totp and user is not None and user.totp_secret is not None:
        form["totp"] = user.totp_now()
    response = httpx.post(f"{issuer.rstrip('/')}/protocol/openid-connect/token", data=form, timeout=timeout)
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"error": "invalid_response", "error_description": response.text[:500]}
    if response.status_code != 200:
        raise TokenRequestError(response.status_code, body)
    return body
