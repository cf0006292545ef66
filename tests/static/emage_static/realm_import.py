"""The production ``KeycloakRealmImport`` of ``deploy/k8s/engines/keycloak``, derived from the local realm.

The local realm (``deploy/local/keycloak/realm-emage.json``) is the one the integration tests exercise: its
roles, client scopes and claim mappers are what the access service reads. Production keeps all of that and
drops what only development may have: the users (with their published passwords and TOTP secrets), the
confidential ``emage-dev-cli`` client and its secret, the loopback redirect URIs. It adds the Pro Santé
Connect identity provider. The manifest is generated, and a test checks the committed file is what this module
produces, so the two realms cannot drift apart. Regenerate with::

    uv run --frozen python tests/static/emage_static/realm_import.py
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_REALM = REPO_ROOT / "deploy" / "local" / "keycloak" / "realm-emage.json"
REALM_IMPORT = REPO_ROOT / "deploy" / "k8s" / "engines" / "keycloak" / "realm-import.yaml"

#: The public origin of the platform (the Ingress host of the production overlay).
PUBLIC_ORIGIN = "https://emage.example.org"

#: Clients that exist for local development only.
DEV_ONLY_CLIENTS = frozenset({"emage-dev-cli"})

#: Pro Santé Connect (ANS) production endpoints. The client id and secret come from the registration of the
#: platform with the ANS, through the import's placeholders (Secret "keycloak-psc").
PSC_ISSUER = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
PSC_IDENTITY_PROVIDER: dict[str, Any] = {
    "alias": "psc",
    "displayName": "Pro Santé Connect",
    "providerId": "oidc",
    "enabled": True,
    "trustEmail": False,
    "storeToken": False,
    "firstBrokerLoginFlowAlias": "first broker login",
    "config": {
        "issuer": PSC_ISSUER,
        # PSC wants the level of assurance asked for explicitly.
        "authorizationUrl": "https://wallet.esw.esante.gouv.fr/auth?acr_values=eidas1",
        "tokenUrl": f"{PSC_ISSUER}/protocol/openid-connect/token",
        "userInfoUrl": f"{PSC_ISSUER}/protocol/openid-connect/userinfo",
        "jwksUrl": f"{PSC_ISSUER}/protocol/openid-connect/certs",
        "useJwksUrl": "true",
        "validateSignature": "true",
        "clientId": "${PSC_CLIENT_ID}",
        "clientSecret": "${PSC_CLIENT_SECRET}",
        "clientAuthMethod": "client_secret_basic",
        "defaultScope": "openid scope_all",
        "syncMode": "FORCE",
        "pkceEnabled": "true",
        "pkceMethod": "S256",
    },
}
#: The RPPS number of the professional (PSC's ``SubjectNameID``) becomes the ``rpps`` user attribute, which
#: the ``emage-professional`` client scope puts in the tokens.
PSC_MAPPERS: list[dict[str, Any]] = [
    {
        "name": "rpps from SubjectNameID",
        "identityProviderAlias": "psc",
        "identityProviderMapper": "oidc-user-attribute-idp-mapper",
        "config": {"syncMode": "FORCE", "claim": "SubjectNameID", "user.attribute": "rpps"},
    },
    {
        "name": "family name",
        "identityProviderAlias": "psc",
        "identityProviderMapper": "oidc-user-attribute-idp-mapper",
        "config": {"syncMode": "FORCE", "claim": "family_name", "user.attribute": "lastName"},
    },
    {
        "name": "given name",
        "identityProviderAlias": "psc",
        "identityProviderMapper": "oidc-user-attribute-idp-mapper",
        "config": {"syncMode": "FORCE", "claim": "given_name", "user.attribute": "firstName"},
    },
]


def production_realm(local: dict[str, Any]) -> dict[str, Any]:
    """The local realm made fit for production (see the module docstring)."""
    realm = copy.deepcopy(local)
    realm.pop("users", None)
    realm["sslRequired"] = "all"
    clients = []
    for client in realm.get("clients", []):
        if client["clientId"] in DEV_ONLY_CLIENTS:
            continue
        client = dict(client)
        client["redirectUris"] = [f"{PUBLIC_ORIGIN}/*"]
        client["webOrigins"] = [PUBLIC_ORIGIN]
        client["description"] = client.get("description", "").replace(" LOCAL DEVELOPMENT ONLY", "").strip()
        client["attributes"] = {
            **client.get("attributes", {}),
            "post.logout.redirect.uris": f"{PUBLIC_ORIGIN}/*",
        }
        clients.append(client)
    realm["clients"] = clients
    realm["identityProviders"] = [copy.deepcopy(PSC_IDENTITY_PROVIDER)]
    realm["identityProviderMappers"] = copy.deepcopy(PSC_MAPPERS)
    return realm


def realm_import_manifest(local: dict[str, Any] | None = None) -> dict[str, Any]:
    if local is None:
        local = json.loads(LOCAL_REALM.read_text(encoding="utf-8"))
    return {
        "apiVersion": "k8s.keycloak.org/v2alpha1",
        "kind": "KeycloakRealmImport",
        "metadata": {"name": "emage"},
        "spec": {
            "keycloakCRName": "keycloak",
            "placeholders": {
                "PSC_CLIENT_ID": {"secret": {"name": "keycloak-psc", "key": "client-id"}},
                "PSC_CLIENT_SECRET": {"secret": {"name": "keycloak-psc", "key": "client-secret"}},
            },
            "realm": production_realm(local),
        },
    }


HEADER = """\
# GENERATED by tests/static/emage_static/realm_import.py from deploy/local/keycloak/realm-emage.json: the
# local realm without its users, its development-only client and loopback URIs, plus the Pro Santé Connect
# identity provider. Do not edit: change the local realm or the generator, then regenerate (a static test
# compares).
"""


def render_realm_import() -> str:
    body = yaml.safe_dump(realm_import_manifest(), sort_keys=False, allow_unicode=True, width=120)
    return HEADER + body


def main() -> int:
    REALM_IMPORT.write_text(render_realm_import(), encoding="utf-8")
    print(f"wrote {REALM_IMPORT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
