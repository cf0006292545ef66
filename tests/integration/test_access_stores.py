"""The access service's MongoDB stores and its sharing routes, on the real mongod.

The stores: shares, share links (atomic opens under concurrency, throttling, lockout), link sessions,
break-the-glass grants, and ``share.changed`` announcements that survive an unavailable publisher.

The routes: ``/api/v1`` shares, share links and break-the-glass, served by the real
:class:`~emage_access.decisions.AccessDecider` over these stores, with the catalog replaced by a table of
study attributes, Kafka by a recording publisher and the OIDC bearer by a persona header (authentication is
tested on its own). Each test works in a database of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from emage_access import sharing_api
from emage_access.adapters.mongo import (
    LINK_SESSIONS,
    SHARE_LINKS,
    SHARES,
    MongoBreakGlassStore,
    MongoLinkStore,
    MongoShareStore,
    ShareAnnouncer,
    ensure_indexes,
)
from emage_access.auth import current_principal
from emage_access.decisions import AccessDecider
from emage_access.domain.consent_view import InMemoryConsentView
from emage_access.domain.links import (
    IssuedLink,
    LinkOpening,
    LinkRefusal,
    LinkRequest,
    LinkSettings,
    NotRevocableError,
    SecondFactor,
    issue_link,
    start_session,
)
from emage_access.domain.policy import BreakGlass, PolicySettings, StudyAttributes
from emage_access.domain.principal import Principal, Role
from emage_access.domain.sharing import ShareRecord, ShareRequest, SharingSettings, create_share
from emage_common.events import (
    ACCESS_DECIDED_TOPIC,
    SHARE_CHANGED_TOPIC,
    AccessDecided,
    CloudEvent,
    PatientIdentity,
    ShareChanged,
)
from emage_common.settings import ServiceSettings
from emage_common.web import create_service_app

pytestmark = pytest.mark.integration

FACILITY_A = "750000001"
FACILITY_B = "690000002"
PATIENT_1 = PatientIdentity.model_validate(
    {
        "patient_id": "IPP-A-000001",
        "issuer_of_patient_id": FACILITY_A,
        "ins": {"matricule": "285047505612322", "oid": "1.2.250.1.213.1.4.10"},
    }
)
A1 = StudyAttributes("1.2.826.0.1.3680043.8.498.9101", FACILITY_A, PATIENT_1.patient_key)
B1 = StudyAttributes("1.2.826.0.1.3680043.8.498.9102", FACILITY_B, "pid:690000002:IPP-B-000002")
UNKNOWN_UID = "1.2.826.0.1.3680043.8.498.9199"
BIRTH_DATE = "19800521"
GRANTEE = "10100000065"
"""``referrer-b``'s RPPS number: whom the stores' tests share with."""

PERSONAS: dict[str, Principal] = {
    "radiologist-a": Principal("sub-rad-a", Role.RADIOLOGIST, rpps="10100000016", facility_finess=FACILITY_A),
    "colleague-a": Principal("sub-col-a", Role.RADIOLOGIST, rpps="10100000099", facility_finess=FACILITY_A),
    "nurse-a": Principal("sub-nurse-a", Role.NURSE, rpps="10100000032", facility_finess=FACILITY_A),
    "radiologist-b": Principal("sub-rad-b", Role.RADIOLOGIST, rpps="10100000057", facility_finess=FACILITY_B),
    "referrer-b": Principal("sub-ref-b", Role.REFERRING_PHYSICIAN, rpps=GRANTEE, facility_finess=FACILITY_B),
    "patient-1": Principal("sub-patient-1", Role.PATIENT, patient=PATIENT_1),
    "dpo": Principal("sub-dpo", Role.DPO),
}
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
FAST = LinkSettings(retry_delay=timedelta(milliseconds=5), max_retry_delay=timedelta(milliseconds=50))


@pytest.fixture
async def database(mongo_uri: str) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    name = f"access_it_{uuid.uuid4().hex[:12]}"
    try:
        database = client[name]
        await ensure_indexes(database)
        yield database
    finally:
        await client.drop_database(name)
        await client.close()


class RecordingPublisher:
    """Stands for Kafka: keeps what is published; ``failing`` makes publication fail like a lost broker."""

    def __init__(self) -> None:
        self.events: list[tuple[str, CloudEvent]] = []
        self.failing = False

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None:
        if self.failing:
            raise ConnectionError("broker unavailable")
        self.events.append((topic, event))

    def share_changes(self) -> list[ShareChanged]:
        return [event.data_as(ShareChanged) for topic, event in self.events if topic == SHARE_CHANGED_TOPIC]

    def decisions(self) -> list[AccessDecided]:
        return [event.data_as(AccessDecided) for topic, event in self.events if topic == ACCESS_DECIDED_TOPIC]


def _share(
    persona: str = "patient-1",
    study: StudyAttributes | None = None,
    *,
    expires_at: datetime = NOW + DAY,
    now: datetime = NOW,
) -> ShareRecord:
    """A share to :data:`GRANTEE` of ``study``, or of all the patient's studies."""
    request = ShareRequest(GRANTEE, expires_at, None if study is None else study.study_instance_uid)
    return create_share(PERSONAS[persona], request, study, now=now, settings=SharingSettings())


def _link(
    factor: SecondFactor = SecondFactor.NONE, *, max_uses: int | None = None, expires_at: datetime = NOW + DAY
) -> IssuedLink:
    request = LinkRequest(A1.study_instance_uid, expires_at, max_uses=max_uses, second_factor=factor)
    return issue_link(
        PERSONAS["patient-1"], request, A1, patient_birth_date=BIRTH_DATE, now=NOW, settings=LinkSettings()
    )


async def _open(
    links: MongoLinkStore,
    secret: str,
    *,
    now: datetime = NOW,
    birth_date: str | None = None,
    one_time_code: str | None = None,
    settings: LinkSettings = FAST,
) -> LinkOpening:
    return await links.open(
        secret, birth_date=birth_date, one_time_code=one_time_code, now=now, settings=settings
    )


# --- Shares -------------------------------------------------------------------------------------------------


async def test_shares_are_listed_by_sharer_grantee_and_patient(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    store = MongoShareStore(database)
    radiologist, patient = PERSONAS["radiologist-a"], PERSONAS["patient-1"]
    by_radiologist = _share("radiologist-a", A1)
    by_patient = _share(expires_at=NOW + 2 * DAY, now=NOW + timedelta(seconds=1))
    await store.create(by_radiologist)
    await store.create(by_patient)

    assert await store.get(by_radiologist.share_id) == by_radiologist
    assert [r.share_id for r in await store.created_by(radiologist.subject)] == [by_radiologist.share_id]
    assert [r.share_id for r in await store.granted_to(GRANTEE)] == [
        by_patient.share_id,
        by_radiologist.share_id,
    ]
    assert [r.share_id for r in await store.of_patient(patient.patient_keys)] == [
        by_patient.share_id,
        by_radiologist.share_id,
    ]
    assert {share.share_id for share in await store.shares_to(GRANTEE)} == {
        by_radiologist.share_id,
        by_patient.share_id,
    }
    assert await store.shares_to("10100000099") == []


async def test_revocation_is_for_the_sharer_or_the_patient_and_idempotent(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    store = MongoShareStore(database)
    record = _share("radiologist-a", A1)
    await store.create(record)
    with pytest.raises(NotRevocableError):
        await store.revoke(record.share_id, PERSONAS["colleague-a"], NOW)
    assert await store.revoke("no-such-share", PERSONAS["patient-1"], NOW) is None

    revoked = await store.revoke(record.share_id, PERSONAS["patient-1"], NOW + timedelta(hours=1))
    assert revoked is not None
    assert revoked.revoked_at == NOW + timedelta(hours=1)
    assert revoked.revision == 2
    again = await store.revoke(record.share_id, PERSONAS["radiologist-a"], NOW + timedelta(hours=2))
    assert again == revoked
    [share] = await store.shares_to(GRANTEE)
    assert share.revoked


async def test_concurrent_revocations_make_one_change(database: AsyncDatabase[dict[str, Any]]) -> None:
    store = MongoShareStore(database)
    record = _share()
    await store.create(record)
    results = await asyncio.gather(
        *(store.revoke(record.share_id, PERSONAS["patient-1"], NOW) for _ in range(10))
    )
    assert {result.revision for result in results if result is not None} == {2}


async def test_no_acknowledged_change_is_lost_when_the_publisher_fails(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    shares, links = MongoShareStore(database), MongoLinkStore(database)
    publisher = RecordingPublisher()
    announcer = ShareAnnouncer(shares, links, publisher)
    record = _share()
    await shares.create(record)
    issued = _link()
    await links.create(issued.link)

    publisher.failing = True
    with pytest.raises(ConnectionError):
        await announcer.announce_pending()
    await shares.revoke(record.share_id, PERSONAS["patient-1"], NOW + timedelta(minutes=1))

    publisher.failing = False
    assert await announcer.announce_pending() == 2
    changes = {change.share_id: change for change in publisher.share_changes()}
    assert changes[record.share_id].revision == 2
    assert changes[record.share_id].status == "revoked"
    assert changes[issued.link.link_id].recipient.kind == "link"
    assert await announcer.announce_pending() == 0


async def test_a_change_made_while_announcing_stays_pending(database: AsyncDatabase[dict[str, Any]]) -> None:
    shares = MongoShareStore(database)
    record = _share()
    await shares.create(record)
    [pending] = await shares.unannounced(10)
    await shares.revoke(record.share_id, PERSONAS["patient-1"], NOW)
    await shares.mark_announced(pending.share_id, pending.revision)  # revision 1 published, 2 is not
    [still] = await shares.unannounced(10)
    assert still.revision == 2


# --- Share links --------------------------------------------------------------------------------------------


async def test_a_stored_link_holds_no_secret_no_code_no_birth_date(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    links = MongoLinkStore(database)
    by_code, by_birth_date = _link(SecondFactor.ONE_TIME_CODE), _link(SecondFactor.BIRTH_DATE)
    await links.create(by_code.link)
    await links.create(by_birth_date.link)
    stored = repr(await database[SHARE_LINKS].find().to_list())
    for issued in (by_code, by_birth_date):
        assert issued.secret not in stored
        assert issued.secret[32:] not in stored
    assert by_code.one_time_code is not None
    assert by_code.one_time_code not in stored
    assert BIRTH_DATE not in stored
    assert await links.get(by_code.link.link_id) == by_code.link


async def test_opening_counts_uses_and_starts_sessions(database: AsyncDatabase[dict[str, Any]]) -> None:
    links = MongoLinkStore(database)
    issued = _link(max_uses=2)
    await links.create(issued.link)

    first = await _open(links, issued.secret)
    assert first.opened
    assert first.link is not None
    assert first.link.uses == 1
    session = start_session(first.link, now=NOW, settings=FAST)
    await links.save_session(session)
    assert "." not in session.token
    assert await links.session(session.token, now=NOW) == session.session
    stored = repr(await database[LINK_SESSIONS].find().to_list())
    assert session.token[32:] not in stored

    assert (await _open(links, issued.secret)).opened
    third = await _open(links, issued.secret)
    assert third.refusal is LinkRefusal.EXHAUSTED
    # The last opener's session goes on: a used-up link still backs the sessions it started.
    assert await links.session(session.token, now=NOW) is not None


@pytest.mark.parametrize(
    ("secret_of", "refusal"),
    [
        (lambda issued: "not a secret", LinkRefusal.UNKNOWN),
        (lambda issued: "0" * 32 + "x" * 43, LinkRefusal.UNKNOWN),
        (lambda issued: issued.link.link_id + "x" * 43, LinkRefusal.WRONG_SECRET),
        (lambda issued: issued.secret + ".", LinkRefusal.UNKNOWN),
    ],
)
async def test_a_wrong_secret_opens_nothing_and_counts_nothing(
    database: AsyncDatabase[dict[str, Any]], secret_of: Callable[[IssuedLink], str], refusal: LinkRefusal
) -> None:
    links = MongoLinkStore(database)
    issued = _link(max_uses=1)
    await links.create(issued.link)
    opening = await _open(links, secret_of(issued))
    assert opening.refusal is refusal
    assert await links.get(issued.link.link_id) == issued.link


async def test_ten_concurrent_opens_of_a_single_use_link_open_it_once(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    links = MongoLinkStore(database)
    issued = _link(max_uses=1)
    await links.create(issued.link)
    openings = await asyncio.gather(*(_open(links, issued.secret) for _ in range(10)))
    assert sum(opening.opened for opening in openings) == 1
    assert {opening.refusal for opening in openings if not opening.opened} == {LinkRefusal.EXHAUSTED}
    stored = await links.get(issued.link.link_id)
    assert stored is not None
    assert stored.uses == 1


async def test_concurrent_second_factor_guesses_are_serialised(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    links = MongoLinkStore(database)
    issued = _link(SecondFactor.ONE_TIME_CODE)
    await links.create(issued.link)
    openings = await asyncio.gather(
        *(_open(links, issued.secret, one_time_code=f"{guess:08d}") for guess in range(10))
    )
    refusals = [opening.refusal for opening in openings]
    assert refusals.count(LinkRefusal.FACTOR_WRONG) == 1
    assert refusals.count(LinkRefusal.THROTTLED) == 9
    stored = await links.get(issued.link.link_id)
    assert stored is not None
    assert stored.failures == 1


async def test_wrong_factors_throttle_then_lock_the_link(database: AsyncDatabase[dict[str, Any]]) -> None:
    links = MongoLinkStore(database)
    settings = LinkSettings(max_failures=3, retry_delay=timedelta(seconds=1))
    issued = _link(SecondFactor.BIRTH_DATE)
    await links.create(issued.link)
    at = NOW

    async def attempt(birth_date: str | None) -> LinkRefusal | None:
        opening = await _open(links, issued.secret, birth_date=birth_date, now=at, settings=settings)
        return opening.refusal

    assert await attempt(None) is LinkRefusal.FACTOR_MISSING
    assert await attempt("19800522") is LinkRefusal.FACTOR_WRONG
    assert await attempt(BIRTH_DATE) is LinkRefusal.THROTTLED  # right, but too soon after a wrong one
    at += timedelta(seconds=2)
    assert await attempt("1980-05-21") is None  # the pause is over; both spellings of the date are accepted
    at += timedelta(seconds=1)
    for _ in range(2):
        assert await attempt("19800101") is LinkRefusal.FACTOR_WRONG
        at += timedelta(minutes=1)
    stored = await links.get(issued.link.link_id)
    assert stored is not None
    assert stored.failures == 3
    assert stored.locked_at is not None
    assert await attempt(BIRTH_DATE) is LinkRefusal.LOCKED


async def test_revoked_and_expired_links_refuse_and_end_their_sessions(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    links = MongoLinkStore(database)
    issued = _link()
    await links.create(issued.link)
    opening = await _open(links, issued.secret)
    assert opening.link is not None
    session = start_session(opening.link, now=NOW, settings=FAST)
    await links.save_session(session)

    expiry = issued.link.expires_at
    assert (await _open(links, issued.secret, now=expiry)).refusal is LinkRefusal.EXPIRED
    assert await links.session(session.token, now=session.session.expires_at) is None
    forged = session.token[:-1] + ("B" if session.token.endswith("A") else "A")
    assert await links.session(forged, now=NOW) is None

    with pytest.raises(NotRevocableError):
        await links.revoke(issued.link.link_id, PERSONAS["radiologist-a"], NOW)
    revoked = await links.revoke(issued.link.link_id, PERSONAS["patient-1"], NOW)
    assert revoked is not None
    assert revoked.revision == 2
    assert await links.session(session.token, now=NOW) is None
    refused = await _open(links, issued.secret)
    assert refused.refusal is LinkRefusal.REVOKED
    assert await links.revoke(issued.link.link_id, PERSONAS["patient-1"], NOW + DAY) == revoked


async def test_indexes_are_idempotent_and_sessions_expire_by_ttl(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    await ensure_indexes(database)
    indexes = await database[LINK_SESSIONS].index_information()
    assert indexes["expiry"]["expireAfterSeconds"] == 0
    assert "unannounced" in await database[SHARES].index_information()


# --- Break the glass ----------------------------------------------------------------------------------------


async def test_break_glass_grants_in_force_and_held(database: AsyncDatabase[dict[str, Any]]) -> None:
    store = MongoBreakGlassStore(database)
    current = BreakGlass(
        "10100000065", A1.study_instance_uid, "Unconscious patient", NOW, NOW + timedelta(hours=1)
    )
    past = BreakGlass("10100000065", B1.study_instance_uid, "Earlier emergency", NOW - DAY, NOW - DAY / 2)
    await store.record("g1", current)
    await store.record("g2", past)
    assert await store.grants_of("10100000065", now=NOW) == [current]
    assert await store.grants_of("10100000016", now=NOW) == []
    assert [(r.grant_id, r.grant) for r in await store.held_by("10100000065")] == [
        ("g1", current),
        ("g2", past),
    ]


# --- Routes -------------------------------------------------------------------------------------------------


class Directory:
    """The catalog's study attributes, as a table."""

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        return {A1.study_instance_uid: A1, B1.study_instance_uid: B1}.get(study_instance_uid)


class Gateway:
    """The sharing routes over the real stores and decider; ``as_(persona)`` picks who calls."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.publisher = RecordingPublisher()
        self.birth_dates: dict[str, str | None] = {A1.study_instance_uid: BIRTH_DATE}
        app: FastAPI = create_service_app(
            ServiceSettings(service_name="access", http_port=8080),
            title="e-mage access",
            version="test",
            readiness={},
            routers=[sharing_api.router],
        )
        shares, links, grants = (
            MongoShareStore(database),
            MongoLinkStore(database),
            MongoBreakGlassStore(database),
        )
        app.state.shares, app.state.links, app.state.break_glass = shares, links, grants
        app.state.link_sessions = links
        policy = PolicySettings()
        app.state.sharing_settings = SharingSettings(links=FAST, policy=policy)
        app.state.decider = AccessDecider(
            directory=Directory(),
            consent=InMemoryConsentView(),
            shares=shares,
            break_glass=grants,
            publisher=self.publisher,  # type: ignore[arg-type]
            settings=policy,
        )

        async def birth_date(study_instance_uid: str) -> str | None:
            return self.birth_dates.get(study_instance_uid)

        app.state.patient_birth_date = birth_date

        def persona(request: Request) -> Principal:
            return PERSONAS[request.headers["x-test-persona"]]

        app.dependency_overrides[current_principal] = persona
        app.dependency_overrides[sharing_api.get_event_sink] = lambda: self.publisher
        self.app = app
        self.links = links
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

    async def request(self, persona: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {} if persona is None else {"x-test-persona": persona}
        return await self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def gateway(database: AsyncDatabase[dict[str, Any]]) -> AsyncIterator[Gateway]:
    gateway = Gateway(database)
    try:
        yield gateway
    finally:
        await gateway.client.aclose()


def _share_body(
    study: str | None = A1.study_instance_uid, grantee: str = GRANTEE, days: int = 30
) -> dict[str, Any]:
    return {
        "study_instance_uid": study,
        "grantee_rpps": grantee,
        "expires_at": (NOW + days * DAY).isoformat(),
    }


def _link_body(study: str = A1.study_instance_uid, days: int = 1, **extra: Any) -> dict[str, Any]:
    return {"study_instance_uid": study, "expires_at": (NOW + days * DAY).isoformat(), **extra}


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    body.pop("request_id", None)
    return body


async def test_a_radiologist_shares_a_study_of_their_facility(gateway: Gateway) -> None:
    response = await gateway.request("radiologist-a", "POST", "/api/v1/shares", json=_share_body())
    assert response.status_code == 201, response.text
    share = response.json()
    assert share["study_instance_uid"] == A1.study_instance_uid
    assert share["grantee_rpps"] == GRANTEE
    assert share["shared_by_facility"] == FACILITY_A
    assert share["status"] == "active"
    assert not share["all_studies"]

    [change] = gateway.publisher.share_changes()
    assert (change.share_id, change.revision, change.status) == (share["share_id"], 1, "active")
    [decision] = gateway.publisher.decisions()
    assert (decision.action, decision.decision, decision.study_instance_uid) == (
        "share",
        "allow",
        A1.study_instance_uid,
    )

    for persona in ("radiologist-a", "referrer-b", "patient-1"):
        listed = await gateway.request(persona, "GET", "/api/v1/shares")
        assert [s["share_id"] for s in listed.json()["shares"]] == [share["share_id"]], persona
    assert (await gateway.request("radiologist-b", "GET", "/api/v1/shares")).json() == {"shares": []}


async def test_sharing_a_study_one_may_not_share_looks_like_an_unknown_study(gateway: Gateway) -> None:
    unknown = await gateway.request("radiologist-b", "POST", "/api/v1/shares", json=_share_body(UNKNOWN_UID))
    assert unknown.status_code == 404
    for persona, study in [("radiologist-b", A1), ("nurse-a", A1), ("patient-1", B1), ("dpo", A1)]:
        response = await gateway.request(
            persona, "POST", "/api/v1/shares", json=_share_body(study.study_instance_uid)
        )
        assert response.status_code == 404, (persona, study)
        assert _problem(response) == _problem(unknown)
    assert gateway.publisher.share_changes() == []
    assert all(decision.decision == "deny" for decision in gateway.publisher.decisions())


async def test_a_patient_shares_their_whole_record(gateway: Gateway) -> None:
    response = await gateway.request("patient-1", "POST", "/api/v1/shares", json=_share_body(study=None))
    assert response.status_code == 201, response.text
    assert response.json()["all_studies"]
    assert response.json()["shared_by_facility"] is None
    [change] = gateway.publisher.share_changes()
    assert change.all_studies
    assert change.patient_key == PATIENT_1.patient_key


@pytest.mark.parametrize(
    ("persona", "body", "status"),
    [
        ("radiologist-a", _share_body(study=None), 422),  # a professional shares one study
        ("radiologist-a", _share_body(days=366), 422),
        ("radiologist-a", _share_body(days=-1), 422),
        ("radiologist-a", _share_body(grantee="10100000016"), 422),  # to oneself
        ("radiologist-a", _share_body(grantee="123"), 422),
        ("radiologist-a", {**_share_body(), "expires_at": "2030-01-01T00:00:00"}, 422),  # no offset
        ("radiologist-a", {**_share_body(), "study_instance_uid": "1.02.3"}, 422),
    ],
)
async def test_malformed_shares_are_refused_before_any_decision(
    gateway: Gateway, persona: str, body: dict[str, Any], status: int
) -> None:
    response = await gateway.request(persona, "POST", "/api/v1/shares", json=body)
    assert response.status_code == status, response.text
    assert _problem(response)["status"] == status
    assert gateway.publisher.events == []


async def test_revoking_a_share(gateway: Gateway) -> None:
    created = await gateway.request("radiologist-a", "POST", "/api/v1/shares", json=_share_body())
    share_id = created.json()["share_id"]
    path = f"/api/v1/shares/{share_id}"
    for persona in ("colleague-a", "referrer-b"):
        assert (await gateway.request(persona, "DELETE", path)).status_code == 404
    assert (await gateway.request("patient-1", "DELETE", "/api/v1/shares/unknown")).status_code == 404
    assert (await gateway.request("patient-1", "DELETE", path)).status_code == 204
    assert (await gateway.request("radiologist-a", "DELETE", path)).status_code == 204
    assert [(c.revision, c.status) for c in gateway.publisher.share_changes()] == [
        (1, "active"),
        (2, "revoked"),
    ]
    listed = await gateway.request("referrer-b", "GET", "/api/v1/shares")
    assert listed.json()["shares"][0]["status"] == "revoked"


async def test_a_share_link_opens_its_study_for_its_uses_only(gateway: Gateway) -> None:
    created = await gateway.request("patient-1", "POST", "/api/v1/share-links", json=_link_body(max_uses=1))
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["url"] == f"/portal/link#{link['secret']}"
    assert link["one_time_code"] is None
    assert link["second_factor"] == "none"
    assert link["uses"] == 0

    opened = await gateway.request(None, "POST", "/api/v1/share-links/open", json={"secret": link["secret"]})
    assert opened.status_code == 200, opened.text
    session = opened.json()
    assert session["token_type"] == "Bearer"
    assert session["study_instance_uid"] == A1.study_instance_uid
    assert 0 < session["expires_in"] <= 3600
    held = await gateway.links.session(session["access_token"], now=datetime.now(UTC))
    assert held is not None
    assert held.link_id == link["link_id"]

    listed = await gateway.request("patient-1", "GET", "/api/v1/share-links")
    [entry] = listed.json()["links"]
    assert entry["uses"] == 1
    assert entry["status"] == "exhausted"
    assert "secret" not in entry
    assert link["secret"] not in listed.text

    actions = [(d.action, d.decision, d.principal.role) for d in gateway.publisher.decisions()]
    assert actions == [("create_link", "allow", "patient"), ("open_link", "allow", "link_holder")]
    [change] = gateway.publisher.share_changes()
    assert change.recipient.kind == "link"
    assert link["secret"] not in change.model_dump_json()


async def test_every_refused_open_gets_the_same_answer(gateway: Gateway) -> None:
    async def create(**extra: Any) -> dict[str, Any]:
        response = await gateway.request(
            "radiologist-a", "POST", "/api/v1/share-links", json=_link_body(**extra)
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def open_(secret: str, **factor: str) -> httpx.Response:
        return await gateway.request(
            None, "POST", "/api/v1/share-links/open", json={"secret": secret, **factor}
        )

    used_up = await create(max_uses=1)
    assert (await open_(used_up["secret"])).status_code == 200
    revoked = await create()
    assert (
        await gateway.request("patient-1", "DELETE", f"/api/v1/share-links/{revoked['link_id']}")
    ).status_code == 204
    by_code = await create(second_factor="one_time_code")
    by_birth_date = await create(second_factor="birth_date")
    refusals = {
        "used up": await open_(used_up["secret"]),
        "revoked": await open_(revoked["secret"]),
        "unknown": await open_("0" * 32 + "A" * 43),
        "malformed": await open_("garbage"),
        "wrong secret": await open_(by_code["link_id"] + "A" * 43),
        "code missing": await open_(by_code["secret"]),
        "code wrong": await open_(by_code["secret"], one_time_code="00000000"),
        "birth date wrong": await open_(by_birth_date["secret"], birth_date="2001-01-01"),
    }
    bodies = {name: (response.status_code, _problem(response)) for name, response in refusals.items()}
    assert set(map(repr, bodies.values())) == {
        repr(
            (
                403,
                {
                    "type": "about:blank",
                    "title": "Forbidden",
                    "status": 403,
                    "detail": "The link cannot be opened.",
                },
            )
        )
    }, bodies
    await asyncio.sleep(0.1)  # past the pause of the wrong factors
    assert (await open_(by_code["secret"], one_time_code=by_code["one_time_code"])).status_code == 200
    assert (await open_(by_birth_date["secret"], birth_date=BIRTH_DATE)).status_code == 200


async def test_a_link_to_a_study_one_may_not_share_looks_like_an_unknown_study(gateway: Gateway) -> None:
    unknown = await gateway.request(
        "radiologist-a", "POST", "/api/v1/share-links", json=_link_body(UNKNOWN_UID)
    )
    assert unknown.status_code == 404
    for persona in ("radiologist-b", "nurse-a"):
        response = await gateway.request(persona, "POST", "/api/v1/share-links", json=_link_body())
        assert response.status_code == 404
        assert _problem(response) == _problem(unknown)
    too_long = _link_body(days=31)
    assert (
        await gateway.request("radiologist-a", "POST", "/api/v1/share-links", json=too_long)
    ).status_code == 422


async def test_a_birth_date_link_needs_the_record_s_birth_date(gateway: Gateway) -> None:
    gateway.birth_dates[A1.study_instance_uid] = None
    body = _link_body(second_factor="birth_date")
    response = await gateway.request("radiologist-a", "POST", "/api/v1/share-links", json=body)
    assert response.status_code == 422
    assert "birth date" in _problem(response)["detail"]
    assert gateway.publisher.share_changes() == []


async def test_revoking_a_link_is_for_its_creator_or_the_patient(gateway: Gateway) -> None:
    link = (await gateway.request("radiologist-a", "POST", "/api/v1/share-links", json=_link_body())).json()
    path = f"/api/v1/share-links/{link['link_id']}"
    assert (await gateway.request("colleague-a", "DELETE", path)).status_code == 404
    assert (await gateway.request("radiologist-a", "DELETE", path)).status_code == 204
    assert (await gateway.request("patient-1", "DELETE", path)).status_code == 204
    listed = (await gateway.request("patient-1", "GET", "/api/v1/share-links")).json()["links"]
    assert [entry["status"] for entry in listed] == ["revoked"]
    assert [c.revision for c in gateway.publisher.share_changes()] == [1, 2]


async def test_breaking_the_glass(gateway: Gateway) -> None:
    body = {
        "study_instance_uid": A1.study_instance_uid,
        "justification": "  Unconscious patient in the emergency room,\nprior CT needed.  ",
        "duration_minutes": 60,
    }
    response = await gateway.request("referrer-b", "POST", "/api/v1/break-glass", json=body)
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["justification"] == "Unconscious patient in the emergency room, prior CT needed."
    assert grant["in_force"]
    opened_at = datetime.fromisoformat(grant["opened_at"])
    assert datetime.fromisoformat(grant["expires_at"]) - opened_at == timedelta(minutes=60)
    [decision] = gateway.publisher.decisions()
    assert (decision.action, decision.basis, decision.justification) == (
        "break_glass",
        "break_glass",
        grant["justification"],
    )
    listed = (await gateway.request("referrer-b", "GET", "/api/v1/break-glass")).json()["grants"]
    assert [g["grant_id"] for g in listed] == [grant["grant_id"]]
    assert (await gateway.request("patient-1", "GET", "/api/v1/break-glass")).json() == {"grants": []}


@pytest.mark.parametrize(
    ("persona", "changes", "status"),
    [
        ("referrer-b", {"justification": "   too short "}, 422),
        ("referrer-b", {"justification": "x" * 2001}, 422),
        ("referrer-b", {"duration_minutes": 241}, 422),
        ("referrer-b", {"duration_minutes": 0}, 422),
        ("referrer-b", {"study_instance_uid": UNKNOWN_UID}, 404),
        ("nurse-a", {}, 404),
        ("patient-1", {}, 404),
        ("dpo", {}, 404),
    ],
)
async def test_refused_break_glass(
    gateway: Gateway, persona: str, changes: dict[str, Any], status: int
) -> None:
    body = {
        "study_instance_uid": A1.study_instance_uid,
        "justification": "Unconscious patient in the emergency room",
        "duration_minutes": 60,
        **changes,
    }
    response = await gateway.request(persona, "POST", "/api/v1/break-glass", json=body)
    assert response.status_code == status, response.text
    assert (await gateway.request(persona, "GET", "/api/v1/break-glass")).json() == {"grants": []}
    if status == 422:
        assert gateway.publisher.decisions() == []
