"""The portal as the gateway serves it: its configuration, its pages and assets, their security headers, and
the QR code in a share link's creation answer."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from emage_access import sharing_api
from emage_access.decisions import AccessDecider
from emage_access.domain.consent_view import InMemoryConsentView
from emage_access.domain.links import ShareLink
from emage_access.domain.policy import BreakGlass, PolicySettings, Share, StudyAttributes
from emage_access.portal.qr import qr_svg_data_uri
from emage_access.portal.routes import STATIC_DIR, content_security_policy
from emage_access.settings import Settings
from emage_common.kafka import EventPublisher

HTML_PAGES = ("/portal/", "/portal/link", "/portal/callback")


@pytest.fixture
def client(gateway_app: FastAPI) -> TestClient:
    return TestClient(gateway_app)


def test_config_names_the_browser_issuer_and_both_clients(client: TestClient) -> None:
    response = client.get("/portal/config.json")
    assert response.status_code == 200
    assert response.json() == {
        "issuer": "https://login.example.test/realms/emage",
        "clients": {"professional": "emage-web", "patient": "emage-patient"},
        "scope": "openid profile",
        "viewerPath": "/viewer/viewer",
        "dicomwebPath": "/dicomweb",
        "apiPath": "/api/v1",
    }


def test_config_falls_back_to_the_gateway_issuer() -> None:
    settings = Settings(oidc_issuer="https://idp.example.test/realms/emage", patient_client_id="patients")
    assert settings.browser_issuer == "https://idp.example.test/realms/emage"
    policy = content_security_policy(settings)
    assert "connect-src 'self' https://idp.example.test;" in policy


@pytest.mark.parametrize(
    "path", [*HTML_PAGES, "/portal/config.json", "/portal/js/app.js", "/portal/portal.css"]
)
def test_every_portal_answer_has_strict_security_headers(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self' https://login.example.test"
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # The share link's secret is in /portal/link's fragment: no request may carry the page's URL.
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/portal/", "text/html"),
        ("/portal/link", "text/html"),
        ("/portal/js/oidc.js", "text/javascript"),
        ("/portal/portal.css", "text/css"),
    ],
)
def test_pages_and_assets_are_served_with_their_type(
    client: TestClient, path: str, content_type: str
) -> None:
    response = client.get(path)
    assert response.headers["content-type"].startswith(content_type)


def test_the_bare_prefix_redirects_below_it(client: TestClient) -> None:
    response = client.get("/portal", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == "/portal/"


@pytest.mark.parametrize(
    "path",
    [
        "/portal/nope.js",
        "/portal/routes.py",
        "/portal/%2e%2e/routes.py",
        "/portal/..%2fqr.py",
        "/portal/iid.html.bak",
        "/portal/index.html.py",
    ],
)
def test_nothing_outside_the_static_files_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


class _PageAudit(HTMLParser):
    """What a page loads and whether it holds inline script or handlers (the CSP would block both)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "html":
            self.lang = named.get("lang")
        if tag == "script":
            if named.get("src") is None:
                self.inline.append("<script> without src")
            else:
                self.scripts.append(str(named["src"]))
        if tag == "link" and named.get("rel") == "stylesheet":
            self.styles.append(str(named["href"]))
        if tag == "style" or "style" in named:
            self.inline.append(f"inline style on <{tag}>")
        self.inline += [f"{name} on <{tag}>" for name in named if name.startswith("on")]


@pytest.mark.parametrize("page", ["index.html", "link.html", "callback.html", "iid.html"])
def test_pages_are_french_by_default_and_load_only_their_own_files(page: str) -> None:
    audit = _PageAudit()
    audit.feed((STATIC_DIR / page).read_text(encoding="utf-8"))
    assert audit.lang == "fr"
    assert audit.inline == []
    assert audit.scripts
    assert all(src.startswith("/portal/js/") for src in audit.scripts)
    for src in audit.scripts + audit.styles:
        assert (STATIC_DIR / src.removeprefix("/portal/")).is_file(), src


def test_every_module_import_resolves_to_a_served_file() -> None:
    for module in (STATIC_DIR / "js").glob("*.js"):
        for imported in re.findall(r"""from '(\./[\w-]+\.js)'""", module.read_text(encoding="utf-8")):
            assert (module.parent / imported).is_file(), f"{module.name} imports {imported}"


def test_the_package_ships_the_static_files() -> None:
    # The build backend includes every file of the module directory; this guards a rename of the folder.
    assert Path(STATIC_DIR).name == "static"
    assert {path.name for path in STATIC_DIR.glob("*.html")} == {
        "index.html",
        "link.html",
        "callback.html",
        "iid.html",
    }


# --- The QR code of a new share link ----------------------------------------------------------------------

STUDY = StudyAttributes(
    study_instance_uid="1.2.826.0.1.3680043.8.498.7",
    facility_finess="750000001",
    patient_key="pid:750000001:IPP-1",
)


class _Directory:
    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        return STUDY if study_instance_uid == STUDY.study_instance_uid else None


class _NoShares:
    async def shares_to(self, grantee_rpps: str) -> list[Share]:
        return []


class _NoGrants:
    async def grants_of(self, holder_rpps: str, *, now: datetime) -> list[BreakGlass]:
        return []


class _Producer:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None, headers: object) -> None: ...


class _Links:
    def __init__(self) -> None:
        self.created: list[ShareLink] = []

    async def create(self, link: ShareLink) -> None:
        self.created.append(link)


class _Announcer:
    async def announce_pending(self) -> int:
        return 0


async def test_a_new_share_link_comes_with_the_qr_code_of_its_absolute_url(
    gateway_app: FastAPI, signed: Callable[[dict[str, object]], str], patient_claims: dict[str, object]
) -> None:
    publisher = EventPublisher(
        {"bootstrap_servers": "unused", "client_id": "t", "security_protocol": "PLAINTEXT"},
        producer=_Producer(),
    )
    await publisher.start()
    gateway_app.state.decider = AccessDecider(
        directory=_Directory(),
        consent=InMemoryConsentView(),
        shares=_NoShares(),
        break_glass=_NoGrants(),
        publisher=publisher,
        settings=PolicySettings(),
    )
    links = _Links()
    gateway_app.dependency_overrides[sharing_api._links] = lambda: links
    gateway_app.dependency_overrides[sharing_api._announcer] = _Announcer
    client = TestClient(gateway_app, base_url="https://imaging.example.test")
    response = client.post(
        "/api/v1/share-links",
        json={
            "study_instance_uid": STUDY.study_instance_uid,
            "expires_at": (datetime.now(UTC) + timedelta(days=7)).isoformat(),
            "second_factor": "one_time_code",
        },
        headers={"Authorization": f"Bearer {signed(patient_claims)}"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["url"] == f"/portal/link#{body['secret']}"
    assert [link.link_id for link in links.created] == [body["link_id"]]
    qr = body["qr_code"]
    assert qr.startswith("data:image/svg+xml")
    assert "<svg" in unquote(qr)
    assert "<path" in unquote(qr)
    # The QR code holds the absolute URL (the host the creator used) with the secret, nothing else.
    assert qr == qr_svg_data_uri(f"https://imaging.example.test/portal/link#{body['secret']}")
    assert qr != qr_svg_data_uri(f"https://imaging.example.test/portal/link#{body['secret']}x")
