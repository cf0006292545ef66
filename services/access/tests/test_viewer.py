"""``/viewer/``: the OHIF build served under a sub-path, its generated configuration, its security headers.

A small stand-in of OHIF's ``dist/`` (same index.html shape, a hashed bundle setting webpack's public path, a
stylesheet with a root-relative font, WebAssembly) is enough for the serving rules; the generated
``app-config.js`` is run in Node (when installed) against stand-ins of OHIF's services manager and data
source.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from emage_access.api import create_app
from emage_access.settings import Settings
from emage_access.viewer import IMMUTABLE, LINK_SESSION_KEY, NOT_INSTALLED_DETAIL, REVALIDATE, app_config_js

ISSUER = "http://keycloak.internal:8080/realms/emage"
BROWSER_ISSUER = "https://login.example.test/realms/emage"
BUNDLE = "app.bundle.0f6159c501addfe9.js"
WASM = "0ddf166f7a343eda.wasm"

INDEX_HTML = (
    '<!doctype html><html lang="en"><head><meta name="msapplication-TileImage" content="/assets/tile.png">'
    '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json">'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    f'<script defer src="/{BUNDLE}"></script><link href="/app.bundle.css" rel="stylesheet"></head>'
    '<body><div id="root"></div></body></html>'
)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX_HTML)
    (root / "app-config.js").write_text("window.config = {};  // OHIF's own default, never served")
    (root / BUNDLE).write_text(
        'var x = 1;\n__webpack_require__.p = "/";\nload(__webpack_require__.p + "1.js");\n'
    )
    (root / "plain.js").write_text("console.log('no root path here');\n")
    (root / "app.bundle.css").write_text(
        "@font-face{src:url(/a34f9d1faa5f3315.woff2)} .x{background:url(//cdn)}"
    )
    (root / "manifest.json").write_text('{"icons": [{"src": "/assets/icon.png"}], "start_url": "/"}')
    (root / WASM).write_bytes(b"\0asm\1\0\0\0")
    (root / "assets" / "icon.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.txt").write_text("outside the build")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


def _client(viewer_dir: Path | None, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(oidc_issuer=ISSUER, viewer_dir=viewer_dir, **settings)))


@pytest.fixture
def client(dist: Path) -> TestClient:
    return _client(dist, web_oidc_issuer=BROWSER_ISSUER)


# --- A deployment without the viewer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/viewer", "/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/a.js"]
)
def test_without_a_viewer_build_every_viewer_path_is_a_404_problem_saying_so(path: str) -> None:
    response = _client(None).get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == NOT_INSTALLED_DETAIL


def test_a_viewer_directory_that_is_not_an_ohif_build_stops_the_gateway(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no index\.html"):
        _client(tmp_path)


# --- The single-page application under /viewer/ -----------------------------------------------------------


def test_the_root_redirects_to_the_trailing_slash(client: TestClient) -> None:
    response = client.get("/viewer", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == "/viewer/"


def test_index_html_is_rebased_under_viewer(client: TestClient) -> None:
    response = client.get("/viewer/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == REVALIDATE
    html = response.text
    assert html.count('window.PUBLIC_URL="/viewer/"') == 2
    assert 'window.PUBLIC_URL="/"' not in html
    assert f'src="/viewer/{BUNDLE}"' in html
    assert 'src="/viewer/app-config.js"' in html
    assert 'href="/viewer/manifest.json"' in html
    assert 'content="/viewer/assets/tile.png"' in html
    assert not re.search(r'(src|href)="/(?!viewer/)', html)


@pytest.mark.parametrize(
    "route",
    ["/viewer/viewer?StudyInstanceUIDs=1.2.840.1", "/viewer/callback?code=x&state=y", "/viewer/viewer/tmtv"],
)
def test_client_routes_fall_back_to_index_html(client: TestClient, route: str) -> None:
    response = client.get(route)
    assert response.status_code == 200
    assert 'window.PUBLIC_URL="/viewer/"' in response.text


@pytest.mark.parametrize("path", ["/viewer/missing.js", "/viewer/assets/missing.png"])
def test_a_missing_file_is_a_404_not_the_application(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/viewer/escape.txt", "/viewer/%2e%2e/secret.txt", "/viewer/.hidden"])
def test_nothing_outside_the_build_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "outside the build" not in response.text


def test_webpack_loads_chunks_workers_and_wasm_from_the_sub_path(client: TestClient) -> None:
    response = client.get(f"/viewer/{BUNDLE}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert '__webpack_require__.p = "/viewer/";' in response.text
    assert '__webpack_require__.p = "/";' not in response.text


def test_hashed_files_are_cached_for_a_year_and_others_revalidated(client: TestClient) -> None:
    assert client.get(f"/viewer/{BUNDLE}").headers["cache-control"] == IMMUTABLE
    wasm = client.get(f"/viewer/{WASM}")
    assert wasm.headers["cache-control"] == IMMUTABLE
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.content == b"\0asm\1\0\0\0"
    for path in (
        "/viewer/plain.js",
        "/viewer/app.bundle.css",
        "/viewer/assets/icon.png",
        "/viewer/app-config.js",
    ):
        assert client.get(path).headers["cache-control"] == REVALIDATE, path


def test_the_stylesheet_and_manifest_point_under_the_sub_path(client: TestClient) -> None:
    css = client.get("/viewer/app.bundle.css").text
    assert "url(/viewer/a34f9d1faa5f3315.woff2)" in css
    assert "url(//cdn)" in css, "protocol-relative URLs are left alone"
    manifest = client.get("/viewer/manifest.json").json()
    assert manifest["icons"][0]["src"] == "/viewer/assets/icon.png"


def test_unchanged_files_are_served_as_they_are(client: TestClient, dist: Path) -> None:
    response = client.get("/viewer/plain.js")
    assert response.content == (dist / "plain.js").read_bytes()


def test_a_rebased_file_answers_304_to_its_etag(client: TestClient) -> None:
    first = client.get(f"/viewer/{BUNDLE}")
    again = client.get(f"/viewer/{BUNDLE}", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_head_answers_like_get_without_a_body(client: TestClient) -> None:
    response = client.head("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 200
    assert response.content == b""


# --- Content-Security-Policy -----------------------------------------------------------------------------


def _policy(response: Any) -> dict[str, list[str]]:
    header = response.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in header.split(";")) if d}


def test_the_policy_allows_exactly_the_inline_scripts_of_index_html(client: TestClient) -> None:
    response = client.get("/viewer/")
    scripts = re.findall(r"<script>(.*?)</script>", response.text)
    assert len(scripts) == 2
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts
    }
    script_src = _policy(response)["script-src"]
    assert hashes <= set(script_src)
    assert "'wasm-unsafe-eval'" in script_src
    assert "'unsafe-eval'" not in script_src
    assert "'unsafe-inline'" not in script_src


def test_the_policy_reaches_the_gateway_and_the_browser_issuer_only(client: TestClient) -> None:
    policy = _policy(client.get("/viewer/"))
    assert policy["default-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", "https://login.example.test", "data:", "blob:"]
    assert policy["frame-src"] == ["'self'", "https://login.example.test"]
    assert policy["worker-src"] == ["'self'", "blob:"]
    assert policy["object-src"] == ["'self'", "blob:"], "PDF reports, fetched with the token, in an <object>"
    assert policy["frame-ancestors"] == ["'self'"]


def test_every_viewer_answer_carries_the_policy_workers_included(client: TestClient) -> None:
    for path in (f"/viewer/{BUNDLE}", "/viewer/plain.js", f"/viewer/{WASM}", "/viewer/app-config.js"):
        assert "'wasm-unsafe-eval'" in client.get(path).headers["content-security-policy"], path


# --- app-config.js -----------------------------------------------------------------------------------------


def test_app_config_is_generated_from_the_settings_for_the_gateway_s_public_url(client: TestClient) -> None:
    response = client.get("/viewer/app-config.js", headers={"Host": "imagerie.example.test"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    script = response.text
    assert "OHIF's own default" not in script
    assert '"dicomweb": "http://imagerie.example.test/dicomweb"' in script
    assert '"redirectUri": "http://imagerie.example.test/viewer/callback"' in script
    assert f'"authority": "{BROWSER_ISSUER}"' in script
    assert '"clientId": "emage-web"' in script


def test_app_config_follows_the_forwarded_scheme(dist: Path) -> None:
    client = _client(dist)
    script = client.get(
        "/viewer/app-config.js", headers={"Host": "imagerie.example.test", "X-Forwarded-Proto": "https"}
    ).text
    assert '"dicomweb": "https://imagerie.example.test/dicomweb"' in script
    assert f'"authority": "{ISSUER}"' in script, "without a browser issuer, the gateway's own"


_NODE_HARNESS = textwrap.dedent(
    """
    const fs = require('fs');
    const [script, stored] = [fs.readFileSync(process.argv[2], 'utf8'), process.argv[3]];
    const storage = new Map(stored ? [[process.argv[4], stored]] : []);
    global.window = {
      sessionStorage: {
        getItem: (k) => (storage.has(k) ? storage.get(k) : null),
        removeItem: (k) => storage.delete(k),
      },
    };
    eval(script);
    const implementations = [];
    const stored_options = [];
    const client = { storeInstances(options) { stored_options.push(options); return Promise.resolve(); } };
    const dataSource = {
      store: { dicom: (dataset) => client.storeInstances({ datasets: [dataset] }) },
      retrieve: { getWadoDicomWebClient: () => client },
    };
    const events = [];
    const rendered = 'https://imagerie.example.test/dicomweb/studies/1/series/2/instances/3/rendered';
    const videoHandler = {
      sopClassUids: ['1.2.840.10008.5.1.4.1.1.77.1.4.1'],
      // As OHIF's handler makes them: videoUrl for <video src>, getVideoUrl to fetch it with the token.
      getDisplaySetsFromSeries: () => [{
        displaySetInstanceUID: 'video-display-set',
        imageIds: ['wadors:https://imagerie.example.test/dicomweb/studies/1/series/2/instances/3/frames/1'],
        videoUrl: rendered,
        getVideoUrl: () => {
          events.push('fetched with the token');
          return new Promise((resolve) => setTimeout(() => resolve({ url: 'blob:video-3' }), 20));
        },
      }],
    };
    global.window.cornerstone = {
      utilities: {
        genericMetadataProvider: { add: (imageId, entry) => events.push(['metadata', imageId, entry]) },
      },
    };
    const cornerstoneCacheService = {
      createViewportData: (displaySets) => {
        events.push(['viewport data', displaySets.map((d) => d.videoUrl)]);
        return Promise.resolve({ data: displaySets });
      },
    };
    const servicesManager = {
      services: {
        userAuthenticationService: { setServiceImplementation: (i) => implementations.push(i) },
        cornerstoneCacheService,
      },
      _extensionManager: {
        getDataSources: (name) => (name === 'emage' ? [dataSource] : []),
        getModuleEntry: (id) =>
          id === '@ohif/extension-dicom-video.sopClassHandlerModule.dicom-video' ? videoHandler : undefined,
      },
    };
    (async () => {
      const config = await window.config({ servicesManager });
      const source = config.dataSources[0].configuration;
      source.onConfiguration(source, {});
      const displaySets = videoHandler.getDisplaySetsFromSeries([]);
      await cornerstoneCacheService.createViewportData(displaySets, {}, dataSource, 0);
      let refusal = null;
      try {
        await dataSource.store.dicom({ StudyInstanceUID: '1.2.3', SOPInstanceUID: '1.2.3.4' });
      } catch (error) {
        refusal = error.message;
      }
      console.log(JSON.stringify({
        config,
        viewer: window.emageViewer,
        authorization: implementations.map((i) => i.getAuthorizationHeader()),
        stored: stored_options.map((o) => o.studyInstanceUID || null),
        refusal,
        videoSopClasses: videoHandler.sopClassUids,
        video: { events, rendered },
        left: storage.has(process.argv[4]),
      }));
    })();
    """
)


def _run_app_config(
    tmp_path: Path, settings: Settings, link_session: dict[str, Any] | None
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    script = tmp_path / "app-config.js"
    script.write_text(app_config_js(settings, "https://imagerie.example.test/"))
    harness = tmp_path / "harness.js"
    harness.write_text(_NODE_HARNESS)
    stored = json.dumps(link_session) if link_session is not None else ""
    result = subprocess.run(
        [node, str(harness), str(script), stored, LINK_SESSION_KEY],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    output: dict[str, Any] = json.loads(result.stdout)
    return output


def test_signed_in_professionals_use_oidc_with_pkce_and_reports_name_their_study(tmp_path: Path) -> None:
    ran = _run_app_config(tmp_path, Settings(oidc_issuer=ISSUER, web_oidc_issuer=BROWSER_ISSUER), None)
    config = ran["config"]
    assert ran["viewer"] == {"mode": "oidc", "readOnly": False}
    assert config["routerBasename"] == "/viewer"
    assert config["showStudyList"] is True
    [oidc] = config["oidc"]
    assert oidc["authority"] == BROWSER_ISSUER
    assert oidc["client_id"] == "emage-web"
    assert oidc["redirect_uri"] == "https://imagerie.example.test/viewer/callback"
    assert oidc["response_type"] == "code"
    assert oidc["scope"] == "openid"
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"] == "emage"
    configuration = source["configuration"]
    for root in ("wadoRoot", "qidoRoot", "wadoUriRoot"):
        assert configuration[root] == "https://imagerie.example.test/dicomweb"
    assert configuration["omitQuotationForMultipartRequest"] is True
    assert configuration["supportsFuzzyMatching"] is False
    assert configuration["thumbnailRendering"] == "thumbnail"
    assert ran["authorization"] == [], "OHIF's OIDC client supplies the token"
    assert ran["stored"] == ["1.2.3"], "STOW goes to /studies/{the report's study}"
    assert ran["refusal"] is None
    assert ran["videoSopClasses"] == ["1.2.840.10008.5.1.4.1.1.77.1.4.1", "1.2.840.10008.5.1.4.1.1.3.1"], (
        "ultrasound multi-frame instances held as video go to OHIF's video handler"
    )
    _assert_videos_are_fetched_with_the_token(ran["video"])


def _assert_videos_are_fetched_with_the_token(video: dict[str, Any]) -> None:
    """The video is fetched with the token as its display set is made, given to Cornerstone as a blob: URL,
    and only then is the viewport's data made (else OHIF puts the bare rendered URL in <video src>)."""
    image_id = "wadors:https://imagerie.example.test/dicomweb/studies/1/series/2/instances/3/frames/1"
    assert video["events"] == [
        "fetched with the token",
        ["metadata", image_id, {"type": "imageUrlModule", "metadata": {"rendered": "blob:video-3"}}],
        ["viewport data", ["blob:video-3"]],
    ]


def test_a_link_session_configures_a_read_only_viewer_with_its_token(tmp_path: Path) -> None:
    session = {"token": "opaque-link-token", "studyInstanceUid": "1.2.3", "expiresAt": "2999-01-01T00:00:00Z"}
    ran = _run_app_config(tmp_path, Settings(oidc_issuer=ISSUER), session)
    config = ran["config"]
    assert ran["viewer"] == {"mode": "link", "readOnly": True}
    assert "oidc" not in config
    assert config["showStudyList"] is False
    assert ran["authorization"] == [{"Authorization": "Bearer opaque-link-token"}]
    assert ran["stored"] == [], "nothing is sent"
    assert "read-only" in ran["refusal"]
    _assert_videos_are_fetched_with_the_token(ran["video"])


@pytest.mark.parametrize(
    "stored",
    [
        {"token": "t", "studyInstanceUid": "1.2.3", "expiresAt": "2000-01-01T00:00:00Z"},
        {"studyInstanceUid": "1.2.3"},
        "not json",
    ],
)
def test_an_expired_or_malformed_link_session_falls_back_to_signing_in(tmp_path: Path, stored: Any) -> None:
    ran = _run_app_config(tmp_path, Settings(oidc_issuer=ISSUER), stored)
    assert ran["viewer"]["mode"] == "oidc"
    assert "oidc" in ran["config"]
    if isinstance(stored, dict) and stored.get("expiresAt", "").startswith("2000"):
        assert ran["left"] is False, "an expired session is removed from the tab's storage"
