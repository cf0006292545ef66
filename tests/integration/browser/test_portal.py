"""The portal and the IID launch in headless Chromium against the real stack (Keycloak, gateway, services).

Each test drives the pages as a person would: Keycloak's real login forms (with the TOTP step for staff),
the portal's own PKCE sign-in, the gateway's API. The viewer's rendering is the viewer's tests' business:
here a study "opens" when the browser lands on ``/viewer/viewer?StudyInstanceUIDs=<uid>`` (with, for a share
link, the link session in ``sessionStorage``). Screenshots of the main pages are written as artifacts.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from browser import artifacts_dir, keycloak_sign_in, screenshot
from gateway_world import FACILITY_A, RPPS, Study, Tokens, World, await_catalogued, publish_study
from playwright.async_api import Browser, BrowserContext, Page, expect

from emage_devstack.paths import cache_dir
from emage_devstack.stack import Stack

AXE_VERSION = "4.14.1"
IID_ACCESSION_NUMBER = 7301
"""``ACC7301``: the accession number of the study the IID tests launch (unique in the session's catalog)."""
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.timeout(600)


# --- Helpers --------------------------------------------------------------------------------------------


IID_PATIENT_ID = "IPP-A-IID001"


def _publish_iid_study(services: Stack, number: int) -> Study:
    return publish_study(
        services,
        FACILITY_A,
        IID_PATIENT_ID,
        FACILITY_A,
        number=number,  # type: ignore[arg-type]  # forwarded to ct_instance: the accession number ACC<number>
    )


@pytest.fixture(scope="module")
def iid_studies(services: Stack, world: World) -> tuple[Study, Study]:
    """Two studies of one CHU Alpha patient, each with its own accession number, shared with nobody."""
    studies = (
        _publish_iid_study(services, IID_ACCESSION_NUMBER),
        _publish_iid_study(services, IID_ACCESSION_NUMBER + 1),
    )
    await_catalogued(services, *studies)
    return studies


@pytest.fixture(scope="module")
def iid_study(iid_studies: tuple[Study, Study]) -> Study:
    """The study launched by accession number (``ACC7301``)."""
    return iid_studies[0]


@pytest.fixture(autouse=True)
async def blank_viewer(browser_context: BrowserContext) -> None:
    """The viewer answers a blank page here: these tests stop where the viewer's own tests begin."""
    await browser_context.route("**/viewer/**", _blank_viewer)


async def _blank_viewer(route: Any) -> None:
    await route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>viewer</title>")


@pytest.fixture
async def api(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway's API, for what a test sets up or checks outside the browser."""
    async with httpx.AsyncClient(base_url=world.gateway, timeout=60) as client:
        yield client


@pytest.fixture
async def second_context(chromium: Browser) -> AsyncIterator[BrowserContext]:
    """Another person's browser, alongside ``page``'s."""
    context = await chromium.new_context(locale="fr-FR", viewport={"width": 1440, "height": 900})
    await context.route("**/viewer/**", _blank_viewer)
    try:
        yield context
    finally:
        await context.close()


async def sign_in(page: Page, gateway: str, kind: str, username: str) -> None:
    """From the portal's home, sign ``username`` in as ``kind`` (``professional`` or ``patient``)."""
    await page.goto(f"{gateway}/portal/")
    await page.locator(f"#sign-in-{kind}").click()
    await page.wait_for_url(re.compile(r"/protocol/openid-connect/auth"), timeout=TIMEOUT_MS)
    await keycloak_sign_in(page, username)
    await page.wait_for_url(re.compile(r"/portal/"), timeout=TIMEOUT_MS)
    await expect(page.locator("#sign-out")).to_be_visible(timeout=TIMEOUT_MS)


def study_row(page: Page, study: Study) -> Any:
    return page.locator(f'tr[data-study-uid="{study.uid}"]')


async def link_session(page: Page) -> dict[str, Any] | None:
    raw = await page.evaluate("() => sessionStorage.getItem('emage.linkSession')")
    return json.loads(raw) if raw else None


def axe_source() -> str:
    """axe-core's browser bundle, from the npm registry once (``npm pack``), then from the cache."""
    directory = cache_dir() / "npm"
    archive = directory / f"axe-core-{AXE_VERSION}.tgz"
    if not archive.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "pack", f"axe-core@{AXE_VERSION}", "--pack-destination", str(directory), "--silent"],
            check=True,
            timeout=300,
        )
    with tarfile.open(archive) as packed:
        member = packed.extractfile("package/axe.min.js")
        assert member is not None
        return member.read().decode("utf-8")


AXE_PATH = "/portal/test-only-axe.js"
"""Where the tests serve axe-core from (intercepted in the browser): same origin, so the CSP allows it."""


async def assert_accessible(page: Page) -> None:
    """No WCAG 2.x A/AA violation axe-core can detect (labels, contrast, lang, names, structure)."""
    source = axe_source()
    await page.route(
        f"**{AXE_PATH}", lambda route: route.fulfill(body=source, content_type="text/javascript")
    )
    origin = re.match(r"^https?://[^/]+", page.url)
    assert origin is not None
    await page.add_script_tag(url=f"{origin.group(0)}{AXE_PATH}")
    result = await page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}))"
        ".violations.map(v => ({id: v.id, nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    assert result == [], result


async def create_link(
    api: httpx.AsyncClient, token: str, study: Study, expires_at: datetime
) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/share-links",
        json={
            "study_instance_uid": study.uid,
            "expires_at": expires_at.isoformat(),
            "second_factor": "birth_date",
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- Language and accessibility -------------------------------------------------------------------------


async def test_the_sign_in_choice_is_french_and_switches_to_english(page: Page, world: World) -> None:
    await page.goto(f"{world.gateway}/portal/")
    await expect(page.locator("h1")).to_have_text("Bienvenue sur e-mage")
    assert await page.evaluate("document.documentElement.lang") == "fr"
    await expect(page.locator("#sign-in-professional")).to_have_text("Connexion professionnel")
    await expect(page.locator("#sign-in-patient")).to_have_text("Connexion patient")
    await screenshot(page, "portal-login-choice")

    # A callback whose state this browser did not send is refused before any code is redeemed.
    await page.goto(f"{world.gateway}/portal/callback?code=forged&state=forged")
    await expect(page.get_by_role("alert")).to_contain_text("La connexion a échoué : state mismatch")
    assert await page.evaluate("sessionStorage.getItem('emage.oidc.session')") is None
    await page.goto(f"{world.gateway}/portal/")

    await page.locator("#lang-switch").click()
    await expect(page.locator("h1")).to_have_text("Welcome to e-mage")
    assert await page.evaluate("document.documentElement.lang") == "en"
    await expect(page.locator("#lang-switch")).to_have_text("Français")
    await page.reload()
    await expect(page.locator("#sign-in-patient")).to_have_text("Patient sign-in")  # remembered
    await screenshot(page, "portal-login-choice-en")

    # Every string exists in both languages, none empty and none left untranslated by mistake.
    messages = await page.evaluate(
        "async () => Object.entries((await import('/portal/js/i18n.js')).allMessages())"
    )
    assert len(messages) > 150
    for key, (french, english) in messages:
        assert french.strip(), key
        assert english.strip(), key
    assert (
        await page.evaluate("async () => (await import('/portal/js/i18n.js')).formatDicomDate('20261101')")
        == "1 Nov 2026"
    )

    for language in ("fr", "en"):
        await page.evaluate(f"localStorage.setItem('emage.lang', '{language}')")
        for path in ("/portal/", "/portal/link#not-a-real-secret", "/iid?requestType=PATIENT"):
            await page.goto(f"{world.gateway}{path}")
            await expect(page.locator("h1").first).to_be_visible()
            await assert_accessible(page)


# --- Professionals --------------------------------------------------------------------------------------


async def test_a_professional_signs_in_with_the_second_factor_and_searches_their_studies(
    page: Page, world: World
) -> None:
    await sign_in(page, world.gateway, "professional", "radiologist-a")
    await expect(page.locator("#who")).to_contain_text("Claire Dubois")
    await expect(study_row(page, world.a1)).to_be_visible(timeout=TIMEOUT_MS)
    await expect(study_row(page, world.a2)).to_be_visible()
    await expect(study_row(page, world.b1)).to_have_count(0)  # Clinique Beta's: not theirs
    await expect(page.locator("#study-count")).to_contain_text("examens")
    opening = study_row(page, world.a1).get_by_role("link", name=re.compile("Ouvrir"))
    assert await opening.get_attribute("href") == f"/viewer/viewer?StudyInstanceUIDs={world.a1.uid}"
    await screenshot(page, "portal-professional-studies")
    await assert_accessible(page)

    await page.get_by_label("Identifiant patient (IPP)").fill(world.a1.patient_id)
    await page.get_by_role("button", name="Rechercher").click()
    await expect(page.locator("#study-count")).to_have_text("1 examen")
    await expect(study_row(page, world.a1)).to_be_visible()
    await expect(study_row(page, world.a2)).to_have_count(0)

    await page.locator("#lang-switch").click()
    await expect(page.locator("#study-count")).to_have_text("1 study")
    await expect(page.get_by_role("columnheader", name="Modalities")).to_be_visible()

    # An expired access token is renewed with the refresh token, without signing in again.
    session = "JSON.parse(sessionStorage.getItem('emage.oidc.session'))"
    before = await page.evaluate(f"{session}.accessToken")
    await page.evaluate(
        f"() => {{ const s = {session}; s.expiresAt = 0;"
        " sessionStorage.setItem('emage.oidc.session', JSON.stringify(s)); }"
    )
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#study-count")).to_have_text("1 study")
    assert await page.evaluate(f"{session}.accessToken") != before

    # Signing out forgets the tokens and ends the issuer's session: the next sign-in asks for the password.
    await page.locator("#sign-out").click()
    await page.wait_for_url(f"{world.gateway}/portal/", timeout=TIMEOUT_MS)
    await expect(page.locator("#sign-in-professional")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('emage.oidc.session')") is None
    await page.locator("#sign-in-professional").click()
    await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT_MS)


# --- Patients: sharing with a professional ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_study(services: Stack, world: World) -> Study:
    """A study of patient-1 at CHU Alpha for the sharing test alone: the gateway tests that run later expect
    no share, even a revoked one, on the shared world's studies."""
    study = publish_study(services, FACILITY_A, "IPP-A-000001", FACILITY_A)
    await_catalogued(services, study)
    return study


async def test_a_patient_shares_a_study_with_a_radiologist_who_sees_it_until_revoked(
    page: Page,
    second_context: BrowserContext,
    world: World,
    shared_study: Study,
    tokens: Tokens,
    api: httpx.AsyncClient,
) -> None:
    # radiologist-b has used the platform: the directory knows them (recorded from their token).
    await api.get("/dicomweb/studies", headers={"Authorization": f"Bearer {tokens('radiologist-b')}"})
    deadline = time.monotonic() + 10
    while True:
        found = (
            await api.get(
                "/api/v1/professionals",
                params={"q": "petit tho"},
                headers={"Authorization": f"Bearer {tokens('patient-1')}"},
            )
        ).json()["professionals"]
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert found == [
        {
            "rpps": RPPS["radiologist-b"],
            "name": "Thomas Petit",
            "role": "radiologist",
            "facility_finess": "690000002",
            "facility_name": "Clinique Beta",
        }
    ]

    await sign_in(page, world.gateway, "patient", "patient-1")
    await expect(page.get_by_role("heading", name="Mes examens")).to_be_visible()
    await expect(study_row(page, shared_study)).to_be_visible(timeout=TIMEOUT_MS)
    await expect(study_row(page, world.b1)).to_have_count(0)
    await screenshot(page, "portal-patient-exams")

    await study_row(page, shared_study).get_by_role("button", name=re.compile("^Partager cet examen")).click()
    dialog = page.locator("dialog")
    await dialog.get_by_label("Nom ou numéro RPPS du professionnel").fill("Petit")
    await dialog.get_by_role("button", name="Chercher").click()
    await dialog.get_by_role("button", name=re.compile("Thomas Petit")).click()
    await expect(dialog).to_contain_text("Destinataire : Thomas Petit — Radiologue — Clinique Beta")
    await dialog.get_by_role("button", name="Partager", exact=True).click()
    await expect(dialog.locator(".message.success")).to_contain_text("Examen partagé avec Thomas Petit")
    await screenshot(page, "portal-share-dialog")
    await assert_accessible(page)
    await dialog.get_by_role("button", name="Fermer").click()

    colleague = await second_context.new_page()
    await sign_in(colleague, world.gateway, "professional", "radiologist-b")
    await expect(study_row(colleague, shared_study)).to_be_visible(timeout=TIMEOUT_MS)
    await screenshot(colleague, "portal-professional-shared-study")

    await page.goto(f"{world.gateway}/portal/#/shares")
    share = page.locator("tr[data-share-id]", has_text="Thomas Petit")
    await expect(share).to_contain_text("Actif")
    await share.get_by_role("button", name=re.compile("Révoquer")).click()
    await expect(page.locator("main .message.success")).to_have_text("Partage révoqué.")
    await expect(page.locator("tr[data-share-id]", has_text="Thomas Petit")).to_contain_text("Révoqué")

    await colleague.get_by_role("button", name="Rechercher").click()
    await expect(colleague.locator("#study-count")).to_be_visible()
    await expect(study_row(colleague, shared_study)).to_have_count(0)


# --- Share links ----------------------------------------------------------------------------------------


async def test_a_share_link_opens_with_the_right_birth_date_only(
    page: Page, second_context: BrowserContext, world: World
) -> None:
    await sign_in(page, world.gateway, "patient", "patient-1")
    await study_row(page, world.a1).get_by_role("button", name=re.compile("^Créer un lien")).click()
    dialog = page.locator("dialog")
    await dialog.get_by_label("Nombre maximum d'ouvertures").fill("3")
    await dialog.get_by_label("Vérification à l'ouverture").select_option("birth_date")
    await dialog.get_by_role("button", name="Créer le lien").click()
    qr = dialog.locator("#link-qr")
    await expect(qr).to_be_visible()
    assert (await qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    assert await qr.get_attribute("alt") == "QR code du lien de partage"
    url = await dialog.locator("#link-url").inner_text()
    assert re.fullmatch(rf"{re.escape(world.gateway)}/portal/link#[A-Za-z0-9_-]+", url), url
    await screenshot(page, "portal-share-link-qr")
    await assert_accessible(page)

    holder = await second_context.new_page()  # someone without an account
    await holder.goto(url)
    await expect(holder.get_by_role("heading", name="Ouvrir un examen partagé")).to_be_visible()
    await screenshot(holder, "portal-link-landing")
    await holder.get_by_label("Date de naissance du patient").fill("1990-01-01")
    await holder.get_by_role("button", name="Ouvrir l'examen").click()
    await expect(holder.locator("main .message.error")).to_contain_text("Ce lien ne peut pas être ouvert")
    assert await link_session(holder) is None
    await screenshot(holder, "portal-link-refused")
    await assert_accessible(holder)

    await asyncio.sleep(2.5)  # a wrong factor imposes a pause before the next attempt (2 s after the first)
    await holder.get_by_label("Date de naissance du patient").fill("1985-04-12")
    await holder.get_by_role("button", name="Ouvrir l'examen").click()
    await holder.wait_for_url(re.compile(r"/viewer/viewer\?"), timeout=TIMEOUT_MS)
    assert holder.url == f"{world.gateway}/viewer/viewer?StudyInstanceUIDs={world.a1.uid}"
    stored = await link_session(holder)
    assert stored is not None
    assert stored["studyInstanceUid"] == world.a1.uid
    assert datetime.fromisoformat(stored["expiresAt"]) > datetime.now(UTC) + timedelta(minutes=50)
    # The session token reads the study (and nothing else) on /dicomweb, as the viewer will.
    async with httpx.AsyncClient(base_url=world.gateway) as client:
        auth = {"Authorization": f"Bearer {stored['token']}", "Accept": "application/dicom+json"}
        assert (
            await client.get(f"/dicomweb/studies/{world.a1.uid}/metadata", headers=auth)
        ).status_code == 200
        assert (
            await client.get(f"/dicomweb/studies/{world.a2.uid}/metadata", headers=auth)
        ).status_code == 404

    await page.goto(f"{world.gateway}/portal/#/links")
    await expect(page.locator("tr[data-link-id]").first).to_contain_text("1 / 3")


async def test_an_expired_share_link_is_refused(
    page: Page, world: World, tokens: Tokens, api: httpx.AsyncClient
) -> None:
    created = await create_link(api, tokens("patient-1"), world.a1, datetime.now(UTC) + timedelta(seconds=3))
    await asyncio.sleep(4)
    await page.goto(f"{world.gateway}{created['url']}")
    await page.get_by_label("Date de naissance du patient").fill("1985-04-12")
    await page.get_by_role("button", name="Ouvrir l'examen").click()
    await expect(page.locator("main .message.error")).to_contain_text("Ce lien ne peut pas être ouvert")
    assert await link_session(page) is None
    assert "/portal/link" in page.url


# --- IHE IID --------------------------------------------------------------------------------------------


async def test_an_iid_launch_by_accession_number_opens_the_study_in_the_viewer(
    page: Page, world: World, iid_study: Study
) -> None:
    await page.goto(f"{world.gateway}/iid?requestType=STUDY&accessionNumber=ACC{IID_ACCESSION_NUMBER}")
    await page.wait_for_url(re.compile(r"/protocol/openid-connect/auth"), timeout=TIMEOUT_MS)
    await keycloak_sign_in(page, "radiologist-a")
    await page.wait_for_url(re.compile(r"/viewer/viewer\?"), timeout=TIMEOUT_MS)
    assert page.url == f"{world.gateway}/viewer/viewer?StudyInstanceUIDs={iid_study.uid}"


async def test_an_iid_patient_launch_lists_the_patients_studies(
    page: Page, world: World, iid_studies: tuple[Study, Study]
) -> None:
    await page.goto(
        f"{world.gateway}/iid?requestType=PATIENT&patientID={IID_PATIENT_ID}%5E%5E%5E{FACILITY_A}"
    )
    await page.wait_for_url(re.compile(r"/protocol/openid-connect/auth"), timeout=TIMEOUT_MS)
    await keycloak_sign_in(page, "radiologist-a")
    await expect(page.get_by_text("2 examens trouvés, du plus récent au plus ancien.")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    every = page.get_by_role("link", name="Ouvrir les 2 examens dans la visionneuse")
    href = await every.get_attribute("href") or ""
    assert href.startswith("/viewer/viewer?StudyInstanceUIDs=")
    assert set(href.split("=", 1)[1].split(",")) == {study.uid for study in iid_studies}
    await expect(page.get_by_role("link", name=re.compile("^Ouvrir dans la visionneuse"))).to_have_count(2)
    await screenshot(page, "iid-patient-studies")
    await assert_accessible(page)

    # mostRecentResults=1: the most recent study alone, straight in the viewer.
    await page.goto(f"{world.gateway}/iid?requestType=PATIENT&patientID={IID_PATIENT_ID}&mostRecentResults=1")
    await page.wait_for_url(re.compile(r"/viewer/viewer\?"), timeout=TIMEOUT_MS)
    assert page.url.split("=", 1)[1] in {study.uid for study in iid_studies}


async def test_an_iid_launch_for_a_study_the_professional_may_not_see_finds_no_study(
    page: Page, world: World, iid_study: Study
) -> None:
    launch = f"{world.gateway}/iid?requestType=STUDY&accessionNumber=ACC{IID_ACCESSION_NUMBER}"
    await page.goto(launch)
    await page.wait_for_url(re.compile(r"/protocol/openid-connect/auth"), timeout=TIMEOUT_MS)
    await keycloak_sign_in(page, "radiologist-b")  # Clinique Beta: CHU Alpha's study is not theirs
    await expect(page.get_by_role("heading", name="Aucun examen")).to_be_visible(timeout=TIMEOUT_MS)
    assert page.url == launch
    await screenshot(page, "iid-no-study")
    await assert_accessible(page)

    # A patient launch lists nothing either; with SSO the second launch needs no new sign-in.
    await page.goto(f"{world.gateway}/iid?requestType=PATIENT&patientID={IID_PATIENT_ID}^^^{FACILITY_A}")
    await expect(page.get_by_role("heading", name="Aucun examen")).to_be_visible(timeout=TIMEOUT_MS)


async def test_an_iid_launch_the_gateway_cannot_serve_is_a_bilingual_400_page(
    page: Page, world: World
) -> None:
    response = await page.goto(f"{world.gateway}/iid?requestType=SERIES&studyUID=1.2.3")
    assert response is not None
    assert response.status == 400
    await expect(page.get_by_role("heading", name="Demande d'affichage invalide")).to_be_visible()
    await expect(page.locator("section[lang=en]")).to_contain_text("requestType=SERIES is not supported")
    await screenshot(page, "iid-bad-request")


# --- Break the glass, consents, access log, alerts -----------------------------------------------------


@pytest.fixture(scope="module")
def emergency_study(services: Stack, world: World) -> Study:
    """A study of patient-1 at CHU Alpha for the break-the-glass test alone: the grant lasts hours, and the
    gateway tests that run later expect radiologist-b to reach none of the shared world's studies."""
    study = publish_study(services, FACILITY_A, "IPP-A-000001", FACILITY_A)
    await_catalogued(services, study)
    return study


async def test_break_the_glass_is_justified_then_shown_to_the_patient(
    page: Page,
    second_context: BrowserContext,
    world: World,
    emergency_study: Study,
    tokens: Tokens,
    api: httpx.AsyncClient,
) -> None:
    await sign_in(page, world.gateway, "professional", "radiologist-b")
    await page.goto(f"{world.gateway}/portal/#/break-glass")
    await page.get_by_label("UID de l'examen (Study Instance UID)").fill(emergency_study.uid)
    await page.get_by_label("Justification médicale").fill(
        "Patiente inconsciente aux urgences, scanner antérieur nécessaire."
    )
    await page.get_by_role("button", name="Ouvrir l'accès d'urgence").click()
    await expect(page.locator("main .message.success")).to_contain_text("Accès d'urgence ouvert jusqu'au")
    opening = page.get_by_role("link", name="Ouvrir dans la visionneuse")
    assert await opening.get_attribute("href") == f"/viewer/viewer?StudyInstanceUIDs={emergency_study.uid}"
    await screenshot(page, "portal-break-glass")
    await assert_accessible(page)
    # The study read under the grant: the access the patient's log flags.
    read = await api.get(
        f"/dicomweb/studies/{emergency_study.uid}/metadata",
        headers={"Authorization": f"Bearer {tokens('radiologist-b')}"},
    )
    assert read.status_code == 200

    patient = await second_context.new_page()
    await sign_in(patient, world.gateway, "patient", "patient-1")
    await patient.goto(f"{world.gateway}/portal/#/alerts")
    deadline = time.monotonic() + 60
    while await patient.locator("#alerts li").count() == 0 and time.monotonic() < deadline:
        await asyncio.sleep(1)
        await patient.reload()
        await patient.wait_for_load_state("networkidle")
    await expect(patient.locator("#alerts li").first).to_contain_text("scanner antérieur nécessaire")
    await screenshot(patient, "portal-alerts")

    await patient.goto(f"{world.gateway}/portal/#/log")
    await expect(patient.locator("#access-log tbody tr").first).to_be_visible(timeout=TIMEOUT_MS)
    await expect(patient.locator("#access-log")).to_contain_text("Bris de glace")
    await screenshot(patient, "portal-access-log")
    await assert_accessible(patient)
    await patient.locator("#lang-switch").click()
    await expect(patient.get_by_role("heading", name="Who saw my exams")).to_be_visible()
    await expect(patient.locator("#access-log")).to_contain_text("Break the glass")
    await screenshot(patient, "portal-access-log-en")


async def _end_active_consents(api: httpx.AsyncClient, token: str) -> None:
    """Lift or revoke whatever a test left active, so a failure cannot change the decisions of later tests."""
    headers = {"Authorization": f"Bearer {token}"}
    consents = (await api.get("/api/v1/consents", params={"limit": 1000}, headers=headers)).json()["items"]
    for consent in consents:
        if consent["status"] in ("active", "scheduled"):
            act = "oppositions/{}/lift" if consent["provision"] == "deny" else "{}/revoke"
            ended = await api.post(
                f"/api/v1/consents/{act.format(consent['consent_id'])}", json={}, headers=headers
            )
            assert ended.status_code == 200, ended.text


@pytest.fixture
async def patient_1_consents_ended(api: httpx.AsyncClient, tokens: Tokens) -> AsyncIterator[None]:
    yield
    await _end_active_consents(api, tokens("patient-1"))


@pytest.fixture
async def patient_2_consents_ended(api: httpx.AsyncClient, tokens: Tokens) -> AsyncIterator[None]:
    yield
    await _end_active_consents(api, tokens("patient-2"))


@pytest.mark.usefixtures("patient_1_consents_ended")
async def test_a_patient_objects_to_sharing_then_lifts_the_objection(page: Page, world: World) -> None:
    await sign_in(page, world.gateway, "patient", "patient-1")
    await page.goto(f"{world.gateway}/portal/#/consents")
    await page.get_by_role("button", name="Je m'oppose au partage de mes examens").click()
    await expect(page.locator("main .message.success")).to_have_text("Opposition enregistrée.")
    oppositions = page.locator("#consents tbody tr", has_text="Opposition")
    await expect(oppositions).to_have_count(2)  # one per key of the record: INS and local ID
    await screenshot(page, "portal-consents")
    await assert_accessible(page)
    for _ in range(2):
        await (
            oppositions.filter(has_text="Actif")
            .first.get_by_role("button", name="Lever l'opposition")
            .click()
        )
        await expect(page.locator("main .message.success")).to_have_text("Opposition levée.")
    await expect(page.locator("#consents tbody tr", has_text="Actif")).to_have_count(0)


@pytest.mark.usefixtures("patient_2_consents_ended")
async def test_a_patient_allows_a_facility_whose_radiologist_then_reads_the_study_until_revoked(
    page: Page, world: World, tokens: Tokens, api: httpx.AsyncClient
) -> None:
    async def radiologist_a_reads_b1() -> int:
        headers = {"Authorization": f"Bearer {tokens('radiologist-a')}"}
        return (await api.get(f"/dicomweb/studies/{world.b1.uid}/metadata", headers=headers)).status_code

    async def eventually(status: int) -> None:
        deadline = time.monotonic() + 30
        while (current := await radiologist_a_reads_b1()) != status:
            assert time.monotonic() < deadline, f"radiologist-a still gets {current} for B1, not {status}"
            await asyncio.sleep(0.2)

    assert await radiologist_a_reads_b1() == 404
    await sign_in(page, world.gateway, "patient", "patient-2")
    await page.goto(f"{world.gateway}/portal/#/consents")
    form = page.locator("#grant-consent")
    await form.get_by_label("Qui").select_option("facility")
    await form.get_by_label("Numéro FINESS ou RPPS").fill("75000000")
    await form.get_by_role("button", name="Autoriser").click()
    await expect(page.locator("main .message.error")).to_have_text("Un numéro FINESS a 9 caractères.")
    await form.get_by_label("Numéro FINESS ou RPPS").fill(FACILITY_A)
    await form.get_by_role("button", name="Autoriser").click()
    await expect(page.locator("main .message.success")).to_have_text("Consentement enregistré.")
    grants = page.locator("#consents tbody tr", has_text=f"FINESS {FACILITY_A}")
    await expect(grants).to_have_count(2)  # one per key of the record: INS and local ID
    await screenshot(page, "portal-consent-granted")
    await eventually(200)

    for _ in range(2):
        await grants.filter(has_text="Actif").first.get_by_role("button", name="Révoquer").click()
        await expect(page.locator("main .message.success")).to_have_text("Consentement révoqué.")
    await expect(grants.filter(has_text="Actif")).to_have_count(0)
    await eventually(404)


def test_screenshots_were_written() -> None:
    names = {path.stem for path in artifacts_dir().glob("*.png")}
    assert {
        "portal-login-choice",
        "portal-professional-studies",
        "portal-patient-exams",
        "portal-share-dialog",
        "portal-share-link-qr",
        "portal-consents",
        "portal-access-log",
        "portal-link-landing",
    } <= names
