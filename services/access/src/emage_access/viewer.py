"""``/viewer/``: the OHIF v3 viewer, served by the gateway and configured against its own ``/dicomweb/``.

The viewer is OHIF's prebuilt static bundle (``npm pack @ohif/app``, its ``dist/`` folder), pointed at by
``EMAGE_ACCESS_VIEWER_DIR``. Without that setting the deployment has no viewer and ``/viewer/`` answers a
404 problem saying so.

Three things make the bundle work here rather than at the root of a site of its own:

* **Sub-path.** The build assumes it is served at ``/``: ``index.html`` sets ``window.PUBLIC_URL="/"`` and
  loads ``/app.bundle….js``, webpack's runtime loads chunks, workers and WebAssembly from
  ``__webpack_require__.p = "/"``, and the stylesheet loads its font from ``url(/…)``. Those few references
  are rewritten to ``/viewer/`` as the files are served (once per file, kept in memory), so the unmodified
  npm tarball is what is deployed and verified.
* **Configuration.** ``app-config.js`` is generated from the settings: one DICOMweb data source, the gateway's
  public ``/dicomweb`` (which decides and audits every request), and OIDC authorization code + PKCE at the
  browser-facing issuer with the public client ``emage-web``. When the portal's share-link page left a link
  session in ``sessionStorage`` (:data:`LINK_SESSION_KEY`), the same script configures the viewer without
  OIDC, sends the link's bearer token, and makes it read-only.
* **Reports.** OHIF stores a measurement report (DICOM SR) with STOW-RS on ``POST /studies``; the gateway
  lets a radiologist add to a study only when the study is named in the path (``POST /studies/{study}``),
  so the generated configuration has the data source's store name the report's study.

Client routes (``/viewer/viewer?StudyInstanceUIDs=…``, ``/viewer/callback``) fall back to ``index.html``;
content-hashed files are cached for a year, everything else is revalidated. Every answer carries a
Content-Security-Policy: scripts from the gateway only (plus the two inline scripts of ``index.html`` by
hash), WebAssembly compilation (the image codecs) but no ``eval``, workers from the gateway or ``blob:``,
and connections only to the gateway and the OIDC issuer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from emage_access.settings import Settings
from emage_common.web import public_base_url

PREFIX: Final = "/viewer"
BASE_PATH: Final = PREFIX + "/"
DATA_SOURCE_NAME: Final = "emage"
LINK_SESSION_KEY: Final = "emage.linkSession"
"""``sessionStorage`` key of the link session the portal's share-link page hands over (JSON ``token``,
``studyInstanceUid``, ``expiresAt``)."""

US_MULTIFRAME_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.3.1"
READ_ONLY_MESSAGE: Final = (
    "Examen partagé en lecture seule : rien ne peut être enregistré. "
    "(Shared exam, read-only: nothing is saved.)"
)
"""What OHIF shows when a share link's viewer is asked to store a report (French first, like the portal)."""

NOT_INSTALLED_DETAIL: Final = (
    "This deployment has no image viewer: set EMAGE_ACCESS_VIEWER_DIR to an OHIF build to serve one here."
)

#: A content hash in a file name (``app.bundle.0f6159c501addfe9.js``, ``0ddf166f7a343eda.wasm``): such a
#: file never changes under its name, so browsers may keep it.
_HASHED_NAME: Final = re.compile(r"(?:^|\.)[0-9a-f]{16}\.[a-z0-9]+$")
IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"

# What of the build refers to the site root, by file type: only these exact forms, so that nothing else in
# the code is touched.
_WEBPACK_PUBLIC_PATH: Final = b'__webpack_require__.p = "/";'
_CSS_ROOT_URL: Final = re.compile(rb"url\(/(?!/)")
_MANIFEST_ROOT_PATH: Final = re.compile(rb'"/(?=assets/)')
_INLINE_SCRIPT: Final = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_ROOT_ATTRIBUTE: Final = re.compile(r'\b(src|href|content)="/(?!/)')

_MEDIA_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
}


def _media_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _rebase(name: str, content: bytes, base: bytes) -> bytes:
    """``content`` of the file ``name`` with its references to the site root moved under ``base``."""
    if name.endswith((".js", ".mjs")):
        return content.replace(_WEBPACK_PUBLIC_PATH, b'__webpack_require__.p = "' + base + b'";')
    if name.endswith(".css"):
        return _CSS_ROOT_URL.sub(b"url(" + base, content)
    if name.endswith((".json", ".webmanifest")):
        return _MANIFEST_ROOT_PATH.sub(b'"' + base, content)
    return content


def _etag(content: bytes) -> str:
    return '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


@dataclass
class ViewerBundle:
    """The OHIF build in ``root``, served under :data:`BASE_PATH`."""

    root: Path
    base: str = BASE_PATH
    index_html: bytes = field(init=False)
    inline_script_hashes: tuple[str, ...] = field(init=False)
    _rebased: dict[str, tuple[bytes, str] | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        index = self.root / "index.html"
        if not index.is_file():
            raise ValueError(f"{self.root} is not an OHIF build: it has no index.html")
        html = index.read_text(encoding="utf-8")
        html = html.replace('window.PUBLIC_URL="/"', f"window.PUBLIC_URL={json.dumps(self.base)}")
        html = _ROOT_ATTRIBUTE.sub(lambda match: f'{match.group(1)}="{self.base}', html)
        self.index_html = html.encode()
        self.inline_script_hashes = tuple(
            "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
            for script in _INLINE_SCRIPT.findall(html)
        )

    def file(self, relative: str) -> Path | None:
        """The regular file at ``relative`` inside the build, None for anything else (or outside it)."""
        if not relative or any(
            part in ("", ".", "..") or part.startswith(".") for part in relative.split("/")
        ):
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def rebased(self, path: Path) -> tuple[bytes, str] | None:
        """The content and ETag of ``path`` rebased under :attr:`base`; None when it needs no change."""
        key = str(path)
        if key not in self._rebased:
            if path.suffix.lower() in (".js", ".mjs", ".css", ".json", ".webmanifest"):
                content = path.read_bytes()
                changed = _rebase(path.name, content, self.base.encode())
                self._rebased[key] = (changed, _etag(changed)) if changed != content else None
            else:
                self._rebased[key] = None
        return self._rebased[key]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings, inline_script_hashes: tuple[str, ...] = ()) -> str:
    """The policy of every viewer answer (a worker's policy is its own script's, so scripts carry it too).

    ``'wasm-unsafe-eval'``: the image codecs (JPEG 2000, JPEG-LS, HTJ2K…) are WebAssembly; no ``eval``.
    ``blob:`` workers, images, media and objects: Cornerstone decodes in workers, thumbnails and PDF reports
    are fetched with the bearer token and shown from ``blob:`` URLs (a PDF in an ``<object>``). The issuer:
    OIDC discovery, token and silent renew.
    """
    issuer = _origin(settings.browser_issuer)
    directives = {
        "default-src": "'self'",
        "script-src": " ".join(("'self'", "'wasm-unsafe-eval'", *inline_script_hashes)),
        "worker-src": "'self' blob:",
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data: blob:",
        "media-src": "'self' blob:",
        "font-src": "'self' data:",
        "connect-src": f"'self' {issuer} data: blob:",
        "frame-src": f"'self' {issuer}",
        "manifest-src": "'self'",
        "object-src": "'self' blob:",
        "base-uri": "'self'",
        "form-action": f"'self' {issuer}",
        "frame-ancestors": "'self'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


# The configuration script. ``window.config`` is a function (OHIF's appInit calls it with the services
# manager): that is how a link session's token reaches OHIF's authentication service, and how the data
# source's store gets the report's study in its URL. Settings arrive as JSON in place of __EMAGE__.
_APP_CONFIG_TEMPLATE: Final = """\
/* e-mage: OHIF configuration generated by the access gateway from its settings (emage_access.viewer). */
(function () {
  'use strict';
  var emage = __EMAGE__;

  /** The link session the portal's share-link page left for this tab, if it is still valid. */
  function readLinkSession() {
    var raw;
    try {
      raw = window.sessionStorage.getItem(emage.linkSessionKey);
    } catch (error) {
      return null;
    }
    if (!raw) {
      return null;
    }
    try {
      var session = JSON.parse(raw);
      if (!session || typeof session.token !== 'string' || !session.token) {
        return null;
      }
      if (session.expiresAt && Date.parse(session.expiresAt) <= Date.now()) {
        window.sessionStorage.removeItem(emage.linkSessionKey);
        return null;
      }
      return session;
    } catch (error) {
      return null;
    }
  }

  var link = readLinkSession();
  window.emageViewer = { mode: link ? 'link' : 'oidc', readOnly: Boolean(link) };

  /**
   * Store reports (DICOM SR) at POST /studies/{their study}: OHIF's dicomweb data source posts to /studies,
   * which the gateway only grants to uploads of new studies. Read-only: refuse before anything is sent.
   */
  function adaptStore(dataSource, readOnly) {
    if (!dataSource || !dataSource.store || dataSource.store.emageAdapted) {
      return;
    }
    var store = dataSource.store.dicom;
    dataSource.store.emageAdapted = true;
    dataSource.store.dicom = function (dataset, request, dicomDict) {
      if (readOnly) {
        return Promise.reject(new Error(emage.readOnlyMessage));
      }
      var study = dataset && !(dataset instanceof ArrayBuffer) ? dataset.StudyInstanceUID : undefined;
      var client = dataSource.retrieve.getWadoDicomWebClient();
      if (!study || !client) {
        return store(dataset, request, dicomDict);
      }
      var storeInstances = client.storeInstances;
      client.storeInstances = function (options) {
        return storeInstances.call(client, Object.assign({}, options, { studyInstanceUID: study }));
      };
      return Promise.resolve(store(dataset, request, dicomDict)).finally(function () {
        client.storeInstances = storeInstances;
      });
    };
  }

  /**
   * Play ultrasound multi-frame instances held as MPEG-4/HEVC video (PS3.5 §8.2.7-8) as videos: OHIF's video
   * handler checks the transfer syntax (metadata 0008,3002) but only for the video SOP classes, and would
   * otherwise show the bit stream as a stack of frames. JPEG cine loops are left to the image stack.
   */
  function playVideoUltrasound(handler) {
    if (handler && handler.sopClassUids) {
      emage.videoSopClasses.forEach(function (uid) {
        if (handler.sopClassUids.indexOf(uid) < 0) {
          handler.sopClassUids.push(uid);
        }
      });
    }
  }

  /**
   * Videos fetched with the bearer token. OHIF 3.13's video viewport sets <video src> to the display set's
   * rendered URL (.../rendered), a request that carries no Authorization header, so the gateway refuses it.
   * The handler also gives each video display set getVideoUrl(): the data source's authenticated fetch of
   * that URL, kept as a blob: URL. It is started as the display set is made; the viewport is given the blob:
   * URL (Cornerstone's imageUrlModule metadata) and the display set is mounted once it is there.
   */
  function fetchVideosWithToken(handler, services) {
    if (!handler || !handler.getDisplaySetsFromSeries || handler.emageAdapted) {
      return;
    }
    handler.emageAdapted = true;
    var videos = {};
    var makeDisplaySets = handler.getDisplaySetsFromSeries;
    handler.getDisplaySetsFromSeries = function () {
      var displaySets = makeDisplaySets.apply(this, arguments) || [];
      awaitVideosBeforeMounting(services, videos);
      displaySets.forEach(function (displaySet) {
        var imageId = displaySet.imageIds && displaySet.imageIds[0];
        if (!imageId || typeof displaySet.getVideoUrl !== 'function') {
          return;
        }
        if (!videos[imageId]) {
          videos[imageId] = Promise.resolve(displaySet.getVideoUrl())
            .then(function (fetched) {
              return (fetched && fetched.url) || null;
            })
            .catch(function (error) {
              console.warn('e-mage: the video could not be fetched', error);
              return null;
            });
        }
        var video = videos[imageId];
        videos[displaySet.displaySetInstanceUID] = video.then(function (url) {
          if (url) {
            displaySet.videoUrl = url;
            window.cornerstone.utilities.genericMetadataProvider.add(imageId, {
              type: 'imageUrlModule',
              metadata: { rendered: url }
            });
          }
          return url;
        });
      });
      return displaySets;
    };
  }

  /** The viewport data of display sets whose video is being fetched is made once the fetch is over. */
  function awaitVideosBeforeMounting(services, videos) {
    var cache = services.cornerstoneCacheService;
    if (!cache || !cache.createViewportData || cache.emageAdapted) {
      return;
    }
    cache.emageAdapted = true;
    var createViewportData = cache.createViewportData;
    cache.createViewportData = function (displaySets) {
      var self = this;
      var args = arguments;
      var fetching = (displaySets || [])
        .map(function (displaySet) {
          return displaySet && videos[displaySet.displaySetInstanceUID];
        })
        .filter(Boolean);
      return Promise.all(fetching).then(function () {
        return createViewportData.apply(self, args);
      });
    };
  }

  var dicomweb = {
    friendlyName: 'e-mage',
    name: emage.dataSource,
    wadoUriRoot: emage.dicomweb,
    qidoRoot: emage.dicomweb,
    wadoRoot: emage.dicomweb,
    qidoSupportsIncludeField: true,
    supportsFuzzyMatching: false,
    supportsWildcard: true,
    supportsReject: false,
    dicomUploadEnabled: false,
    imageRendering: 'wadors',
    thumbnailRendering: 'thumbnail',
    thumbnailRequestStrategy: 'fetch',
    enableStudyLazyLoad: true,
    staticWado: false,
    // PDFs and videos by their rendered URL, fetched with the bearer token and shown from a blob: URL (for
    // videos, fetchVideosWithToken does what OHIF's video viewport does not).
    singlepart: 'pdf,video',
    bulkDataURI: { enabled: true, relativeResolution: 'studies' },
    omitQuotationForMultipartRequest: true
  };

  var config = {
    routerBasename: emage.routerBasename,
    extensions: [],
    modes: [],
    customizationService: {},
    showStudyList: !link,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    allowMultiSelectExport: false,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
    showErrorDetails: 'dev',
    defaultDataSourceName: emage.dataSource,
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: emage.dataSource,
        configuration: dicomweb
      }
    ],
    httpErrorHandler: function (error) {
      // 401: the sign-in or the link session expired; 403/404: the gateway refused (it never says more).
      console.warn('e-mage: request refused', error && error.status);
    }
  };
  if (!link) {
    config.oidc = [
      {
        authority: emage.oidc.authority,
        client_id: emage.oidc.clientId,
        redirect_uri: emage.oidc.redirectUri,
        post_logout_redirect_uri: emage.oidc.postLogoutRedirectUri,
        response_type: 'code',
        scope: 'openid',
        automaticSilentRenew: true,
        revokeAccessTokenOnSignout: true
      }
    ];
  }

  window.config = function (context) {
    var services = context.servicesManager;
    dicomweb.onConfiguration = function (configuration) {
      // Called as the data source initialises, once OHIF registered its services and extensions.
      if (link) {
        services.services.userAuthenticationService.setServiceImplementation({
          getAuthorizationHeader: function () {
            return { Authorization: 'Bearer ' + link.token };
          }
        });
      }
      var extensions = services._extensionManager;
      if (extensions) {
        adaptStore((extensions.getDataSources(emage.dataSource) || [])[0], Boolean(link));
        var videoHandler = extensions.getModuleEntry(emage.videoHandler);
        playVideoUltrasound(videoHandler);
        fetchVideosWithToken(videoHandler, services.services);
      }
      return configuration;
    };
    return config;
  };
})();
"""


def app_config_js(settings: Settings, public_base: str) -> str:
    """The viewer's ``app-config.js`` for a gateway whose public root is ``public_base`` (ends with ``/``)."""
    viewer = public_base + BASE_PATH.lstrip("/")
    values = {
        "dataSource": DATA_SOURCE_NAME,
        "dicomweb": public_base + "dicomweb",
        "routerBasename": PREFIX,
        "linkSessionKey": LINK_SESSION_KEY,
        "readOnlyMessage": READ_ONLY_MESSAGE,
        "videoHandler": "@ohif/extension-dicom-video.sopClassHandlerModule.dicom-video",
        "videoSopClasses": [US_MULTIFRAME_IMAGE_STORAGE],
        "oidc": {
            "authority": settings.browser_issuer,
            "clientId": settings.web_client_id,
            "redirectUri": viewer + "callback",
            # Not the viewer's root: OHIF matches this path (unstripped of the base) as a route of its own.
            "postLogoutRedirectUri": viewer + "signed-out",
        },
    }
    return _APP_CONFIG_TEMPLATE.replace("__EMAGE__", json.dumps(values, indent=2, sort_keys=True))


def _not_modified(request: Request, etag: str) -> bool:
    return etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(","))


def _gateway_root(request: Request) -> str:
    """The gateway's public root (``https://host/``): the viewer is served at ``/viewer/`` of the same."""
    base = public_base_url(request)
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}/"


def router(settings: Settings) -> APIRouter:
    """The ``/viewer`` routes: the OHIF build of ``settings.viewer_dir``, or a 404 problem without one."""
    routes = APIRouter(include_in_schema=False)
    if settings.viewer_dir is None:

        async def not_installed(path: str = "") -> Response:
            raise HTTPException(404, NOT_INSTALLED_DETAIL)

        routes.add_api_route(PREFIX, not_installed, methods=["GET", "HEAD"])
        routes.add_api_route(PREFIX + "/{path:path}", not_installed, methods=["GET", "HEAD"])
        return routes

    bundle = ViewerBundle(settings.viewer_dir)
    policy = content_security_policy(settings, bundle.inline_script_hashes)

    def headers(cache_control: str, **more: str) -> dict[str, str]:
        return {"Cache-Control": cache_control, "Content-Security-Policy": policy, **more}

    async def redirect_to_root() -> Response:
        return RedirectResponse(BASE_PATH, status_code=308)

    async def app_config(request: Request) -> Response:
        script = app_config_js(settings, _gateway_root(request))
        return Response(
            script, media_type=_MEDIA_TYPES[".js"], headers=headers(REVALIDATE, Vary="Host, X-Forwarded-Host")
        )

    async def asset(request: Request, path: str = "") -> Response:
        found = bundle.file(path)
        if found is None:
            if "." in path.rsplit("/", 1)[-1]:
                raise HTTPException(404, "No such file in the viewer.")
            # A client route of the single-page application (/viewer/viewer, /viewer/callback...).
            return Response(bundle.index_html, media_type=_MEDIA_TYPES[".html"], headers=headers(REVALIDATE))
        cache_control = IMMUTABLE if _HASHED_NAME.search(found.name) else REVALIDATE
        rebased = await run_in_threadpool(bundle.rebased, found)
        if rebased is None:
            return FileResponse(found, media_type=_media_type(found), headers=headers(cache_control))
        content, etag = rebased
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers(cache_control, ETag=etag))
        return Response(content, media_type=_media_type(found), headers=headers(cache_control, ETag=etag))

    routes.add_api_route(PREFIX, redirect_to_root, methods=["GET", "HEAD"])
    routes.add_api_route(BASE_PATH + "app-config.js", app_config, methods=["GET", "HEAD"])
    routes.add_api_route(PREFIX + "/{path:path}", asset, methods=["GET", "HEAD"])
    return routes
