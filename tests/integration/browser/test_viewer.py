"""OHIF at ``/viewer/`` in headless Chromium against the real stack (Keycloak, gateway, services).

A radiologist signs in through Keycloak's real login and TOTP forms (authorization code + PKCE), opens a CT
and an ultrasound generated like the demo data (a 24-slice CT with a frame of reference, a 20-frame JPEG
cine loop and its H.264 video), and works as in clinic: the image renders, the wheel scrolls the stack,
window/level, zoom, MPR, the cine loop plays, a length measurement is saved as a DICOM SR through STOW-RS
and comes back in a QIDO search. A nurse cannot save; a share link's session opens the viewer read-only.

What the page shows is read from OHIF's own state (``window.cornerstone``, ``window.services``, the viewport
overlays) and from pixels of the viewport's screenshot; what reached the archive is read back through the
gateway. Screenshots of the main states are written as artifacts.
"""

from __future__ import annotations

import asyncio
import io
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from browser import keycloak_sign_in, screenshot
from gateway_world import FACILITY_A, Tokens
from PIL import Image
from playwright.async_api import BrowserContext, Page, Request, expect

from emage_cli.synthetic.generator import GenerationRequest, generate
from emage_common.access_contract import FACILITY_HEADER, STUDY_ACCESS_ATTRIBUTES_PATH
from emage_devstack.stack import Stack

TIMEOUT_MS = 60_000
CT_SLICES = 24
US_FRAMES = 20
PATIENT_1_BIRTH_DATE = "19850412"
"""``patient-1`` (CHU Alpha) of the generator's roster, whose studies these are."""
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
MPEG4 = "1.2.840.10008.1.2.4.102"
BOUNDARY = "emage-viewer-it"

pytestmark = pytest.mark.timeout(600)


# --- The studies ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewerStudies:
    ct: str
    us: str
    cine_series: str
    video_series: str


@pytest.fixture(scope="module")
def studies(services: Stack) -> ViewerStudies:
    """patient-1's CT and echocardiogram, written by the demo generator and stored at CHU Alpha."""
    with tempfile.TemporaryDirectory(prefix="emage-viewer-") as folder:
        written = generate(
            Path(folder),
            GenerationRequest(kinds=("ct", "us"), patients=1, slices=CT_SLICES, frames=US_FRAMES, seed=4242),
            workers=1,
        )
        with httpx.Client(base_url=services.service_url("ingest"), timeout=120) as ingest:
            for instance in written:
                part = instance.path.read_bytes()
                body = (
                    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + part
                    + f"\r\n--{BOUNDARY}--\r\n".encode()
                )
                response = ingest.post(
                    "/studies",
                    content=body,
                    headers={
                        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                        FACILITY_HEADER: FACILITY_A,
                        "Accept": "application/dicom+json",
                    },
                )
                assert response.status_code == 200, response.text
    ct = next(i.study_instance_uid for i in written if i.sop_class_uid == CT_IMAGE)
    us_loops = [i for i in written if i.sop_class_uid == US_MULTIFRAME]
    cine = next(i for i in us_loops if i.transfer_syntax_uid != MPEG4)
    video = next(i for i in us_loops if i.transfer_syntax_uid == MPEG4)
    _await_catalogued(services, ct, cine.study_instance_uid)
    return ViewerStudies(ct, cine.study_instance_uid, cine.series_instance_uid, video.series_instance_uid)


def _await_catalogued(services: Stack, *study_uids: str) -> None:
    deadline = time.monotonic() + 60
    for uid in study_uids:
        url = services.service_url("catalog") + STUDY_ACCESS_ATTRIBUTES_PATH.format(study=uid)
        while httpx.get(url, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"study {uid} never catalogued"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway_url(services: Stack) -> str:
    return services.service_url("access")


@pytest.fixture
async def api(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as client:
        yield client


# --- Driving OHIF -----------------------------------------------------------------------------------------


def viewer_url(gateway: str, study: str) -> str:
    return f"{gateway}/viewer/viewer?StudyInstanceUIDs={study}"


async def open_as(page: Page, gateway: str, study: str, username: str) -> None:
    """Open ``study`` in the viewer as ``username``: OHIF sends the browser to Keycloak, and back."""
    await page.goto(viewer_url(gateway, study))
    await page.wait_for_url(re.compile(r"/protocol/openid-connect/auth\?"), timeout=TIMEOUT_MS)
    assert "code_challenge_method=S256" in page.url, "the viewer signs in with PKCE"
    await keycloak_sign_in(page, username)
    await page.wait_for_url(re.compile(r"/viewer/viewer\?StudyInstanceUIDs="), timeout=TIMEOUT_MS)
    await wait_for_image(page)


@pytest.fixture(autouse=True)
async def seasoned_user(browser_context: BrowserContext) -> None:
    """A user who has taken OHIF's onboarding tour and acknowledged its notice in this tab already.

    Both overlays would otherwise sit over the viewport on first use; OHIF keeps these choices in the
    browser's storage, which is where they are set here.
    """
    await browser_context.add_init_script(
        "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
        "sessionStorage.setItem('investigationalUseDialog', 'acknowledged');"
    )


async def wait_for_image(page: Page) -> None:
    """Until the first viewport shows an image (its overlay reads ``(n/count)``)."""
    await expect(page.locator("[data-cy=viewport-overlay-bottom-right]").first).to_contain_text(
        re.compile(r"\(\d+/\d+\)"), timeout=TIMEOUT_MS
    )
    await page.wait_for_function("() => window.cornerstone && cornerstone.getEnabledElements().length > 0")


async def viewports(page: Page) -> list[dict[str, Any]]:
    """Cornerstone's viewports: id, type (stack, orthographic, video), image index and count, zoom, VOI."""
    state: list[dict[str, Any]] = await page.evaluate(
        """() => cornerstone.getEnabledElements().map(({ viewportId, viewport }) => {
            const props = viewport.getProperties ? viewport.getProperties() : {};
            return {
                id: viewportId,
                type: viewport.type,
                index: viewport.getCurrentImageIdIndex ? viewport.getCurrentImageIdIndex() : null,
                count: viewport.getImageIds ? viewport.getImageIds().length : null,
                zoom: viewport.getZoom ? viewport.getZoom() : null,
                voi: props.voiRange ? [props.voiRange.lower, props.voiRange.upper] : null,
            };
        })"""
    )
    return state


async def viewport_pixels_spread(page: Page, index: int = 0) -> float:
    """Standard deviation of the grey levels of viewport ``index``'s screenshot: 0 for a blank canvas."""
    canvas = page.locator("[data-cy=viewport-pane] canvas").nth(index)
    png = await canvas.screenshot()
    grey = Image.open(io.BytesIO(png)).convert("L")
    return float(np.asarray(grey, dtype=np.float64).std())


def centre_of(box: dict[str, float] | None) -> tuple[float, float]:
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


async def drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    await page.mouse.move(*start)
    await page.mouse.down()
    await page.mouse.move(*end, steps=12)
    await page.mouse.up()


async def draw_length(page: Page) -> None:
    """A length measurement across the first viewport, confirmed for tracking when OHIF asks."""
    await page.locator("[data-cy=Length-btn]").click()
    x, y = centre_of(await page.locator("[data-cy=viewport-pane]").first.bounding_box())
    await drag(page, (x - 120, y - 60), (x + 60, y + 50))
    track = page.locator("[data-cy=prompt-begin-tracking-yes-btn]")
    await track.click(timeout=TIMEOUT_MS)


# OHIF's labels in the browser's language: the context is French (the portal's first audience).
CREATE_SR = re.compile(r"^\s*(Create SR|Créer SR)\s*$")
SAVE = re.compile(r"^\s*(Save|Enregistrer|Sauvegarder)\s*$")


async def save_report(page: Page, name: str) -> None:
    """Measurements panel → Create SR → name → Save (OHIF's own report dialog)."""
    create = page.get_by_role("button", name=CREATE_SR)
    if not await create.is_visible():
        await page.locator("[data-cy=trackedMeasurements-btn]").click()
    await create.click()
    await page.get_by_placeholder("Report name").fill(name)
    await page.get_by_role("button", name=SAVE).click()


async def sr_series(api: httpx.AsyncClient, token: str, study: str) -> list[dict[str, Any]]:
    """The study's SR series, as QIDO-RS through the gateway answers the radiologist."""
    response = await api.get(
        f"/dicomweb/studies/{study}/series",
        params={"Modality": "SR", "includefield": "0008103E"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json() if response.content else []
    return found


def stores(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.method == "POST" and "/dicomweb/studies" in r.url]


# --- Tests ------------------------------------------------------------------------------------------------


async def test_a_radiologist_signs_in_and_the_ct_renders_and_scrolls(
    page: Page, gateway_url: str, studies: ViewerStudies
) -> None:
    await open_as(page, gateway_url, studies.ct, "radiologist-a")
    [stack] = await viewports(page)
    assert stack["type"] == "stack"
    assert stack["count"] == CT_SLICES
    assert stack["index"] == 0
    assert await viewport_pixels_spread(page) > 10, "the CT slice is drawn, not a blank canvas"
    await screenshot(page, "viewer-ct-radiologist")

    x, y = centre_of(await page.locator("[data-cy=viewport-pane]").first.bounding_box())
    await page.mouse.move(x, y)
    for _ in range(5):
        await page.mouse.wheel(0, 120)
        await page.wait_for_timeout(150)
    await expect(page.locator("[data-cy=viewport-overlay-bottom-right]").first).not_to_contain_text(
        f"(1/{CT_SLICES})"
    )
    [scrolled] = await viewports(page)
    assert scrolled["index"] > 0, "the wheel moved through the stack"
    await screenshot(page, "viewer-ct-scrolled")


async def test_window_level_zoom_and_mpr(page: Page, gateway_url: str, studies: ViewerStudies) -> None:
    await open_as(page, gateway_url, studies.ct, "radiologist-a")
    pane = centre_of(await page.locator("[data-cy=viewport-pane]").first.bounding_box())
    [before] = await viewports(page)

    await page.locator("[data-cy=WindowLevel-btn]").click()
    await drag(page, pane, (pane[0] + 80, pane[1] + 60))
    [levelled] = await viewports(page)
    assert levelled["voi"] != before["voi"], "dragging with window/level changes the VOI"

    await page.locator("[data-cy=Zoom-btn]").click()
    await drag(page, pane, (pane[0], pane[1] - 120))
    [zoomed] = await viewports(page)
    assert zoomed["zoom"] != before["zoom"], "dragging with zoom changes the scale"

    await page.locator("[data-cy=Layout]").click()
    await page.get_by_text("MPR", exact=True).first.click()
    await page.wait_for_function(
        "() => cornerstone.getEnabledElements().filter(e => e.viewport.type === 'orthographic').length === 3",
        timeout=TIMEOUT_MS,
    )
    await page.wait_for_timeout(2_000)
    for index in range(3):
        # The 24 slices make a thin slab across the sagittal and coronal planes: less to see, not nothing.
        assert await viewport_pixels_spread(page, index) > 2, f"MPR viewport {index} is drawn"
    await screenshot(page, "viewer-ct-mpr")


async def test_the_ultrasound_cine_loop_plays(page: Page, gateway_url: str, studies: ViewerStudies) -> None:
    await open_as(page, gateway_url, studies.us, "radiologist-a")
    # The hanging protocol opens the echocardiogram on its cine loop, with OHIF's cine player.
    [loop] = await viewports(page)
    assert loop["count"] == US_FRAMES
    assert await viewport_pixels_spread(page) > 10
    await page.locator("[data-cy=cine-player-play-pause]").click()
    seen = set()
    for _ in range(30):
        seen.update(v["index"] for v in await viewports(page))
        await page.wait_for_timeout(100)
    assert len(seen) >= 3, f"the loop advances frame by frame while playing: {sorted(seen)}"
    await screenshot(page, "viewer-us-cine")
    await page.locator("[data-cy=cine-player-play-pause]").click()
    [paused] = await viewports(page)
    await page.wait_for_timeout(500)
    assert (await viewports(page))[0]["index"] == paused["index"], "paused, the loop stays on its frame"


async def test_a_radiologist_saves_a_length_measurement_as_a_structured_report(
    page: Page, gateway_url: str, studies: ViewerStudies, api: httpx.AsyncClient, tokens: Tokens
) -> None:
    before = await sr_series(api, tokens("radiologist-a"), studies.ct)
    posted: list[Request] = []
    page.on("request", lambda request: posted.append(request))
    await open_as(page, gateway_url, studies.ct, "radiologist-a")
    await draw_length(page)
    await screenshot(page, "viewer-ct-length")
    async with page.expect_response(lambda r: r.request.method == "POST") as stored:
        await save_report(page, "Mesure e-mage")
    response = await stored.value
    assert response.status == 200
    assert response.url == f"{gateway_url}/dicomweb/studies/{studies.ct}", "the report names its study"
    assert [r.url for r in stores(posted)] == [response.url]

    deadline = time.monotonic() + 30
    while len(after := await sr_series(api, tokens("radiologist-a"), studies.ct)) <= len(before):
        assert time.monotonic() < deadline, "the report never reached the catalog"
        await asyncio.sleep(0.5)
    descriptions = [s.get("0008103E", {}).get("Value", [None])[0] for s in after]
    assert "Mesure e-mage" in descriptions
    await screenshot(page, "viewer-ct-report-saved")


async def test_a_nurse_cannot_save_a_report(
    page: Page, gateway_url: str, studies: ViewerStudies, api: httpx.AsyncClient, tokens: Tokens
) -> None:
    before = await sr_series(api, tokens("radiologist-a"), studies.ct)
    await open_as(page, gateway_url, studies.ct, "nurse-a")
    await draw_length(page)
    async with page.expect_response(lambda r: r.request.method == "POST") as refused:
        await save_report(page, "Essai infirmier")
    response = await refused.value
    # The study is named: a refused store looks like an unknown study, as every refusal about a study does.
    assert response.status == 404
    # OHIF's report action says it failed (with dicomweb-client's words for an HTTP error).
    await expect(page.get_by_text("request failed").first).to_be_visible(timeout=TIMEOUT_MS)
    await page.wait_for_timeout(2_000)
    await screenshot(page, "viewer-ct-nurse-refused")
    assert await sr_series(api, tokens("radiologist-a"), studies.ct) == before


async def open_link_session(
    page: Page, gateway_url: str, api: httpx.AsyncClient, tokens: Tokens, study_instance_uid: str
) -> dict[str, Any]:
    """radiologist-a makes a share link of the study, it is opened with the birth date, and the session is put
    in this tab's storage as the portal's link page does once the second factor is proven (no Keycloak on
    the way). The opened link's answer (its ``access_token``)."""
    expires = datetime.now(UTC) + timedelta(days=1)
    created = await api.post(
        "/api/v1/share-links",
        json={
            "study_instance_uid": study_instance_uid,
            "expires_at": expires.isoformat(),
            "second_factor": "birth_date",
        },
        headers={"Authorization": f"Bearer {tokens('radiologist-a')}"},
    )
    assert created.status_code == 201, created.text
    opened = await api.post(
        "/api/v1/share-links/open",
        json={"secret": created.json()["secret"], "birth_date": PATIENT_1_BIRTH_DATE},
    )
    assert opened.status_code == 200, opened.text
    session: dict[str, Any] = opened.json()
    await page.goto(f"{gateway_url}/viewer/app-config.js")
    await page.evaluate(
        "(session) => sessionStorage.setItem('emage.linkSession', JSON.stringify(session))",
        {
            "token": session["access_token"],
            "studyInstanceUid": study_instance_uid,
            "expiresAt": expires.isoformat(),
        },
    )
    return session


async def test_a_share_link_opens_the_viewer_read_only(
    page: Page, gateway_url: str, studies: ViewerStudies, api: httpx.AsyncClient, tokens: Tokens
) -> None:
    session = await open_link_session(page, gateway_url, api, tokens, studies.ct)
    posted: list[Request] = []
    page.on("request", lambda request: posted.append(request))
    await page.goto(viewer_url(gateway_url, studies.ct))
    await wait_for_image(page)
    assert "openid-connect" not in page.url
    assert await page.evaluate("() => window.emageViewer") == {"mode": "link", "readOnly": True}
    assert await viewport_pixels_spread(page) > 10
    dicomweb = [r for r in posted if "/dicomweb/" in r.url]
    assert dicomweb, "the viewer read the study through the gateway"
    for request in dicomweb:
        if request.resource_type in ("xhr", "fetch"):
            authorization = (await request.all_headers()).get("authorization")
            assert authorization == f"Bearer {session['access_token']}", request.url
    await screenshot(page, "viewer-link-read-only")

    await draw_length(page)
    await save_report(page, "Essai lien")
    await expect(page.get_by_text("lecture seule", exact=False).first).to_be_visible(timeout=TIMEOUT_MS)
    assert stores(posted) == [], "nothing is sent to the archive from a share link"
    await screenshot(page, "viewer-link-save-refused")


# --- MP4 playback ---------------------------------------------------------------------------------------


VIDEO_STATE = """() => cornerstone.getEnabledElements()
    .filter(({ viewport }) => viewport.type === 'video' && viewport.videoElement)
    .map(({ viewport }) => {
        const video = viewport.videoElement;
        return {
            src: video.src, readyState: video.readyState, currentTime: video.currentTime,
            videoWidth: video.videoWidth, error: video.error && video.error.message,
        };
    })"""


async def open_the_video_series(page: Page) -> None:
    """Double-click the H.264 series in OHIF's study browser: it opens in the active viewport."""
    series = page.locator("[data-cy=study-browser-thumbnail], [data-cy=study-browser-thumbnail-no-image]")
    await series.filter(has_text="H.264").first.dblclick()
    await page.wait_for_function(f"() => ({VIDEO_STATE})().some(v => v.videoWidth > 0)", timeout=TIMEOUT_MS)


async def assert_the_video_plays(page: Page) -> list[dict[str, Any]]:
    """The viewport's <video> has loaded (blob: URL fetched with the token), plays, and time advances."""
    # Metadata (videoWidth) comes before the first frame (readyState HAVE_CURRENT_DATA): wait for both. The
    # state may drop back to HAVE_METADATA while the viewport seeks, so it is awaited, not sampled once.
    await page.wait_for_function(
        f"() => ({VIDEO_STATE})().some(v => v.videoWidth > 0 && v.readyState >= 2)", timeout=TIMEOUT_MS
    )
    [loaded] = await page.evaluate(VIDEO_STATE)
    assert loaded["src"].startswith("blob:"), "the video was fetched with the token, not given as a bare URL"
    assert loaded["error"] is None
    assert loaded["videoWidth"] > 0
    await page.locator("[data-cy=cine-player-play-pause]").click()
    times = set()
    for _ in range(30):
        times.update(state["currentTime"] for state in await page.evaluate(VIDEO_STATE))
        await page.wait_for_timeout(50)
    assert max(times) > 0, f"the video plays: {sorted(times)}"
    assert len(times) >= 3, f"its time advances: {sorted(times)}"
    return list(await page.evaluate(VIDEO_STATE))


def video_requests_refused(responses: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(url, status) for url, status in responses if "/dicomweb/" in url and status >= 400]


async def test_the_ultrasound_h264_series_plays_as_mp4(
    page: Page, gateway_url: str, studies: ViewerStudies
) -> None:
    responses: list[tuple[str, int]] = []
    page.on("response", lambda response: responses.append((response.url, response.status)))
    await open_as(page, gateway_url, studies.us, "radiologist-a")
    await open_the_video_series(page)
    await assert_the_video_plays(page)
    await expect(page.get_by_text("Something went wrong")).to_have_count(0)
    await expect(page.get_by_text("Une erreur s'est produite")).to_have_count(0)
    await screenshot(page, "viewer-us-mp4")
    video_series = [url for url, _ in responses if f"/series/{studies.video_series}/" in url]
    assert any(url.endswith("/rendered") for url in video_series), "the MP4 came from the rendered resource"
    assert video_requests_refused(responses) == [], "no request of the viewer was refused"


async def test_a_share_link_plays_the_h264_series(
    page: Page, gateway_url: str, studies: ViewerStudies, api: httpx.AsyncClient, tokens: Tokens
) -> None:
    token = (await open_link_session(page, gateway_url, api, tokens, studies.us))["access_token"]
    responses: list[tuple[str, int]] = []
    page.on("response", lambda response: responses.append((response.url, response.status)))
    await page.goto(viewer_url(gateway_url, studies.us))
    await wait_for_image(page)
    assert await page.evaluate("() => window.emageViewer") == {"mode": "link", "readOnly": True}
    await open_the_video_series(page)
    await assert_the_video_plays(page)
    await expect(page.get_by_text("Une erreur s'est produite")).to_have_count(0)
    await screenshot(page, "viewer-link-us-mp4")
    assert video_requests_refused(responses) == []

    # The same bytes through the gateway with the link's token, and nothing without it.
    rendered = (
        f"/dicomweb/studies/{studies.us}/series/{studies.video_series}/instances/"
        + (await video_instance(api, token, studies))
        + "/rendered"
    )
    served = await api.get(rendered, headers={"Authorization": f"Bearer {token}", "Accept": "video/mp4"})
    assert served.status_code == 200
    assert served.headers["content-type"] == "video/mp4"
    assert served.content[4:8] == b"ftyp"
    assert (await api.get(rendered, headers={"Accept": "video/mp4"})).status_code == 401


async def video_instance(api: httpx.AsyncClient, token: str, studies: ViewerStudies) -> str:
    response = await api.get(
        f"/dicomweb/studies/{studies.us}/series/{studies.video_series}/instances",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    uid: str = response.json()[0]["00080018"]["Value"][0]
    return uid
