"""The portal at ``/portal/`` and the IID launch at ``/iid``: static pages, their configuration, headers.

The portal is static files (HTML, CSS, JavaScript ES modules: nothing to build) shipped inside this package
under ``static/``; the browser signs in with the issuer itself (authorization code + PKCE) and calls the
gateway's own ``/api/v1`` and ``/dicomweb`` with its access token, so everything it shows was decided and
audited like any other request. The gateway adds what the files cannot say themselves:

* ``/portal/config.json``: the issuer browsers reach and the two public clients (professionals, patients);
* strict headers on every page: a Content Security Policy without inline script (``script-src 'self'``;
  the only other origin is the issuer's, for the token endpoint), ``nosniff``, no framing, and
  ``Referrer-Policy: no-referrer`` — a share link's secret is in the URL fragment of ``/portal/link``, and
  no request the page makes may carry the page's URL anywhere;
* the IID launch (:mod:`emage_access.portal.iid`): parameters checked here, a ``400`` page for a launch it
  cannot serve, else the landing page with the QIDO-RS plan in a ``<meta>`` element (no inline script).
"""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from emage_access.portal.iid import IID_ALIAS_PATH, IID_PATH, InvalidLaunchError, Problem, parse_launch
from emage_access.settings import Settings

STATIC_DIR: Final = Path(__file__).parent / "static"
PORTAL_PREFIX: Final = "/portal"
VIEWER_PATH: Final = "/viewer/viewer"
"""The viewer route that opens studies (``?StudyInstanceUIDs=uid1,uid2``)."""

PAGES: Final = {"": "index.html", "link": "link.html", "callback": "callback.html"}
"""Portal pages by path below ``/portal/``."""

_ASSET_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_IID_PLAN_PLACEHOLDER: Final = "__IID_PLAN__"

router = APIRouter(include_in_schema=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    """The portal's CSP: only its own scripts and styles; the issuer's origin only for ``fetch``."""
    issuer = _origin(settings.browser_issuer)
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            # The share link's QR code is an SVG data URI from the creation answer.
            "img-src 'self' data:",
            f"connect-src 'self' {issuer}",
            "font-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        )
    )


def secure(response: Response, settings: Settings) -> Response:
    """Add the portal's security headers to ``response``."""
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    # Revalidated on every load (ETag/Last-Modified): an upgrade of the gateway is seen at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


def portal_config(settings: Settings) -> dict[str, object]:
    """What the browser needs to sign in and to find the platform's parts."""
    return {
        "issuer": settings.browser_issuer,
        "clients": {"professional": settings.web_client_id, "patient": settings.patient_client_id},
        "scope": "openid profile",
        "viewerPath": VIEWER_PATH,
        "dicomwebPath": "/dicomweb",
        "apiPath": "/api/v1",
    }


@router.get("/portal")
async def portal_root() -> Response:
    """``/portal`` → ``/portal/`` (relative URLs of the page resolve below it)."""
    return RedirectResponse(f"{PORTAL_PREFIX}/", status_code=308)


@router.get("/portal/config.json")
async def config(request: Request) -> Response:
    """The portal's configuration, built from the gateway's settings."""
    settings = _settings(request)
    return secure(JSONResponse(portal_config(settings)), settings)


@router.get("/portal/{path:path}")
async def portal_file(path: str, request: Request) -> Response:
    """A portal page (``/portal/``, ``/portal/link``, ``/portal/callback``) or one of its assets."""
    settings = _settings(request)
    if path in PAGES:
        return secure(FileResponse(STATIC_DIR / PAGES[path], media_type="text/html; charset=utf-8"), settings)
    asset = _asset(path)
    if asset is None:
        raise HTTPException(404, "No such page.")
    return secure(FileResponse(asset, media_type=_ASSET_TYPES[asset.suffix]), settings)


def _asset(path: str) -> Path | None:
    """The static file ``path`` names, only inside ``static/`` and only of a served type."""
    if not path or path.startswith("/") or "\\" in path:
        return None
    candidate = (STATIC_DIR / path).resolve()
    root = STATIC_DIR.resolve()
    if root not in candidate.parents or candidate.suffix not in _ASSET_TYPES or not candidate.is_file():
        return None
    return candidate


@cache
def _iid_template() -> str:
    return (STATIC_DIR / "iid.html").read_text(encoding="utf-8")


async def iid_launch(request: Request) -> Response:
    """RAD-106 Invoke Image Display: a ``400`` page for a launch that cannot be served, else the landing."""
    settings = _settings(request)
    try:
        plan = parse_launch(request.query_params.multi_items())
    except InvalidLaunchError as error:
        return secure(HTMLResponse(bad_launch_page(error.problems), status_code=400), settings)
    encoded = html.escape(json.dumps(plan.as_json(), separators=(",", ":")), quote=True)
    page = _iid_template().replace(_IID_PLAN_PLACEHOLDER, encoded)
    return secure(HTMLResponse(page), settings)


for _path in (IID_PATH, IID_ALIAS_PATH):
    router.add_api_route(_path, iid_launch, methods=["GET"], response_class=HTMLResponse)


def bad_launch_page(problems: list[Problem]) -> str:
    """The ``400`` page of a refused launch: each problem in French, then in English."""
    french = "".join(f"<li>{html.escape(problem.fr)}</li>" for problem in problems)
    english = "".join(f"<li>{html.escape(problem.en)}</li>" for problem in problems)
    return f"""<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Demande d'affichage invalide — e-mage</title>
<link rel="stylesheet" href="{PORTAL_PREFIX}/portal.css">
</head>
<body>
<header class="banner"><p class="brand">e-mage</p></header>
<main id="main" class="page">
<section class="card" aria-labelledby="fr-title">
<h1 id="fr-title">Demande d'affichage invalide</h1>
<p>Le lien ouvert par votre logiciel de soins ne permet pas d'afficher les images :</p>
<ul class="problems">{french}</ul>
<p>Signalez-le à l'éditeur ou au service informatique : la documentation d'intégration décrit
les paramètres attendus (IHE IID, RAD-106).</p>
</section>
<section class="card" lang="en" aria-labelledby="en-title">
<h2 id="en-title">Invalid image display request</h2>
<p>The link your care software opened cannot display images:</p>
<ul class="problems">{english}</ul>
<p>Please report it to the vendor or your IT department: the integration guide describes the
expected parameters (IHE IID, RAD-106).</p>
</section>
</main>
</body>
</html>
"""
