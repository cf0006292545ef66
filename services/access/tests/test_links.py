"""Share links as pure rules: secrets and their digests, creation, the states that refuse an open, lockout."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from emage_access.domain.links import (
    LINK_REFUSED_DETAIL,
    CapabilityToken,
    GrantRequestError,
    IssuedLink,
    LinkRefusal,
    LinkRequest,
    LinkSession,
    LinkSettings,
    NotRevocableError,
    SecondFactor,
    SecretDigest,
    ShareLink,
    at_store_precision,
    decide_link,
    issue_link,
    normalize_birth_date,
    revoke_link,
    start_session,
)
from emage_access.domain.policy import Action, Reason, StudyAttributes
from emage_access.domain.principal import Principal, Role
from emage_common.events import PatientIdentity

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SETTINGS = LinkSettings()
STUDY = StudyAttributes(
    study_instance_uid="1.2.826.0.1.3680043.8.498.1",
    facility_finess="750000001",
    patient_key="ins:1.2.250.1.213.1.4.10:285047505612322",
)
PATIENT = Principal(
    "patient-sub",
    Role.PATIENT,
    patient=PatientIdentity.model_validate(
        {
            "patient_id": "IPP-A-000001",
            "issuer_of_patient_id": "750000001",
            "ins": {"matricule": "285047505612322", "oid": "1.2.250.1.213.1.4.10"},
        }
    ),
)
RADIOLOGIST = Principal("radiologist-sub", Role.RADIOLOGIST, rpps="10100000016", facility_finess="750000001")
STRANGER = Principal("other-sub", Role.RADIOLOGIST, rpps="10100000057", facility_finess="690000002")


def _issue(
    factor: SecondFactor = SecondFactor.NONE,
    *,
    max_uses: int | None = None,
    birth_date: str | None = "19800521",
    principal: Principal = PATIENT,
) -> IssuedLink:
    request = LinkRequest(STUDY.study_instance_uid, NOW + 7 * DAY, max_uses=max_uses, second_factor=factor)
    return issue_link(principal, request, STUDY, patient_birth_date=birth_date, now=NOW, settings=SETTINGS)


# --- Secrets ------------------------------------------------------------------------------------------------


def test_a_minted_token_carries_at_least_128_random_bits_and_no_dot() -> None:
    token = CapabilityToken.mint()
    assert len(token.secret) >= 43  # token_urlsafe(32): 256 bits in base64url
    assert "." not in token.value  # the gateway tells it from a JWS by that
    assert CapabilityToken.parse(token.value) == token
    assert CapabilityToken.mint() != token


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0" * 32,
        "0" * 31 + "x" + "abc",
        "A" * 32 + "secret",  # identifiers are lowercase hexadecimal
        "0" * 32 + "has.dot",
        "0" * 32 + "has space",
        "0" * 32 + "\ud800",
        "0" * 32 + "a" * 300,
    ],
)
def test_a_value_that_cannot_be_a_token_is_none(value: str) -> None:
    assert CapabilityToken.parse(value) is None


def test_a_digest_matches_its_secret_only_and_is_salted() -> None:
    first, second = SecretDigest.of("secret"), SecretDigest.of("secret")
    assert first.matches("secret")
    assert second.matches("secret")
    assert not first.matches("secreT")
    assert not first.matches("")
    assert first.salt != second.salt
    assert first.digest != second.digest
    assert b"secret" not in first.digest + first.salt


def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    issued = _issue(SecondFactor.ONE_TIME_CODE)
    token = CapabilityToken.parse(issued.secret)
    assert token is not None
    assert issued.link.secret_matches(token)
    assert issued.one_time_code is not None
    assert issued.link.factor_matches(issued.one_time_code)
    assert len(calls) == 2


# --- Creation -----------------------------------------------------------------------------------------------


def test_a_new_link_stores_digests_never_the_secret_or_the_factor() -> None:
    issued = _issue(SecondFactor.ONE_TIME_CODE)
    link = issued.link
    stored = repr(dataclasses.asdict(link))
    token = CapabilityToken.parse(issued.secret)
    assert token is not None
    assert token.identifier == link.link_id
    assert token.secret not in stored
    assert issued.one_time_code is not None
    assert issued.one_time_code not in stored
    assert link.secret.matches(token.secret)
    assert link.created_by == PATIENT.subject
    assert link.shared_by_facility is None
    assert link.patient_key == STUDY.patient_key
    assert link.uses == 0
    assert link.failures == 0


def test_a_one_time_code_has_the_configured_digits() -> None:
    issued = _issue(SecondFactor.ONE_TIME_CODE)
    assert issued.one_time_code is not None
    assert len(issued.one_time_code) == SETTINGS.one_time_code_digits
    assert issued.one_time_code.isdigit()


def test_a_birth_date_link_expects_the_record_s_birth_date() -> None:
    link = _issue(SecondFactor.BIRTH_DATE, birth_date="19800521").link
    assert link.factor_matches("19800521")
    assert link.presented_factor(birth_date="1980-05-21", one_time_code=None) == "19800521"
    assert "19800521" not in repr(dataclasses.asdict(link))


@pytest.mark.parametrize("birth_date", [None, "", "1980", "19801341", "unknown"])
def test_a_birth_date_link_needs_a_known_birth_date(birth_date: str | None) -> None:
    with pytest.raises(GrantRequestError) as refused:
        _issue(SecondFactor.BIRTH_DATE, birth_date=birth_date)
    assert refused.value.reason == "birth_date_unknown"


def test_a_professional_s_link_records_their_facility() -> None:
    assert _issue(principal=RADIOLOGIST).link.shared_by_facility == "750000001"


@pytest.mark.parametrize(
    ("expires_at", "reason"),
    [
        (NOW - DAY, "expiry_past"),
        (NOW, "expiry_past"),
        (NOW + 30 * DAY + timedelta(seconds=1), "expiry_too_far"),
        (datetime(2026, 3, 5, 12, 0), "expiry_naive"),
        (NOW + timedelta(seconds=1), None),
        (NOW + 30 * DAY, None),
    ],
)
def test_expiry_is_mandatory_future_and_bounded(expires_at: datetime, reason: str | None) -> None:
    request = LinkRequest(STUDY.study_instance_uid, expires_at)
    if reason is None:
        link = issue_link(PATIENT, request, STUDY, patient_birth_date=None, now=NOW, settings=SETTINGS).link
        assert link.expires_at == expires_at
    else:
        with pytest.raises(GrantRequestError) as refused:
            issue_link(PATIENT, request, STUDY, patient_birth_date=None, now=NOW, settings=SETTINGS)
        assert refused.value.reason == reason


def test_a_use_limit_is_at_least_one() -> None:
    with pytest.raises(GrantRequestError):
        _issue(max_uses=0)


@pytest.mark.parametrize(
    ("value", "normalised"),
    [("19800521", "19800521"), ("1980-05-21", "19800521"), (" 19800521 ", "19800521"), ("19800230", None)],
)
def test_birth_dates_are_normalised(value: str, normalised: str | None) -> None:
    assert normalize_birth_date(value) == normalised


def test_settings_refuse_a_short_one_time_code() -> None:
    with pytest.raises(ValueError, match="6 to 12"):
        LinkSettings(one_time_code_digits=5)


# --- States that refuse an open -----------------------------------------------------------------------------

BASE = _issue(max_uses=2).link


@pytest.mark.parametrize(
    ("link", "at", "refusal"),
    [
        (BASE, NOW, None),
        (dataclasses.replace(BASE, revoked_at=NOW), NOW + DAY, LinkRefusal.REVOKED),
        (BASE, BASE.expires_at, LinkRefusal.EXPIRED),
        (BASE, BASE.expires_at + DAY, LinkRefusal.EXPIRED),
        (dataclasses.replace(BASE, locked_at=NOW), NOW, LinkRefusal.LOCKED),
        (dataclasses.replace(BASE, uses=2), NOW, LinkRefusal.EXHAUSTED),
        (dataclasses.replace(BASE, uses=1), NOW, None),
        (dataclasses.replace(BASE, next_attempt_at=NOW + timedelta(seconds=1)), NOW, LinkRefusal.THROTTLED),
        (dataclasses.replace(BASE, next_attempt_at=NOW), NOW, None),
        # Revoked wins over every other state, then expired, locked, exhausted.
        (
            dataclasses.replace(BASE, revoked_at=NOW, locked_at=NOW, uses=2),
            BASE.expires_at,
            LinkRefusal.REVOKED,
        ),
        (dataclasses.replace(BASE, locked_at=NOW, uses=2), BASE.expires_at, LinkRefusal.EXPIRED),
        (dataclasses.replace(BASE, locked_at=NOW, uses=2), NOW, LinkRefusal.LOCKED),
    ],
)
def test_refusals_before_any_attempt(link: ShareLink, at: datetime, refusal: LinkRefusal | None) -> None:
    assert link.refusal(at) == refusal


def test_every_refusal_has_the_one_public_answer() -> None:
    # The reasons are audit codes; what a client sees is one sentence that names none of them.
    assert LINK_REFUSED_DETAIL == "The link cannot be opened."
    for refusal in LinkRefusal:
        assert refusal.value not in LINK_REFUSED_DETAIL


def test_wrong_factors_lock_the_link_after_the_configured_number() -> None:
    link = _issue(SecondFactor.ONE_TIME_CODE).link
    at = NOW
    pauses = []
    for _ in range(SETTINGS.max_failures - 1):
        link = link.after_wrong_factor(at, SETTINGS)
        assert link.status(at) == "active"
        assert link.next_attempt_at is not None
        pauses.append(link.next_attempt_at - at)
        at = link.next_attempt_at
    assert pauses == [timedelta(seconds=2), timedelta(seconds=4), timedelta(seconds=8), timedelta(seconds=16)]
    link = link.after_wrong_factor(at, SETTINGS)
    assert link.failures == SETTINGS.max_failures
    assert link.locked_at == at
    assert link.refusal(at + DAY) is LinkRefusal.LOCKED
    # A later count never unlocks it nor shortens the pause.
    again = link.after_wrong_factor(at, SETTINGS)
    assert again.locked_at == at
    assert again.next_attempt_at is not None
    assert link.next_attempt_at is not None
    assert again.next_attempt_at >= link.next_attempt_at


def test_the_pause_is_capped() -> None:
    settings = LinkSettings(max_failures=100, max_retry_delay=timedelta(minutes=1))
    assert settings.delay_after(1) == timedelta(seconds=2)
    assert settings.delay_after(10) == timedelta(minutes=1)
    assert settings.delay_after(10_000) == timedelta(minutes=1)


def test_an_attempt_holds_off_the_next_one_for_the_retry_delay() -> None:
    link = _issue(SecondFactor.ONE_TIME_CODE).link
    until = link.attempt_slot_until(NOW, SETTINGS)
    assert until == NOW + SETTINGS.retry_delay
    held = dataclasses.replace(link, next_attempt_at=until)
    assert held.refusal(NOW + timedelta(milliseconds=500)) is LinkRefusal.THROTTLED
    assert held.refusal(until) is None


@pytest.mark.parametrize(
    ("factor", "birth_date", "code", "presented"),
    [
        (SecondFactor.NONE, "19800521", "123456", None),
        (SecondFactor.BIRTH_DATE, None, "123456", None),
        (SecondFactor.BIRTH_DATE, "", None, None),
        (SecondFactor.BIRTH_DATE, "21/05/1980", None, "21/05/1980"),
        (SecondFactor.ONE_TIME_CODE, "19800521", None, None),
        (SecondFactor.ONE_TIME_CODE, None, "1234 5678", "12345678"),
    ],
)
def test_the_presented_factor_is_the_one_of_the_link_s_kind(
    factor: SecondFactor, birth_date: str | None, code: str | None, presented: str | None
) -> None:
    link = _issue(factor).link
    assert link.presented_factor(birth_date=birth_date, one_time_code=code) == presented


# --- Revocation and sessions --------------------------------------------------------------------------------


def test_the_creator_or_the_patient_revokes_and_twice_is_once() -> None:
    link = _issue(principal=RADIOLOGIST).link
    with pytest.raises(NotRevocableError):
        revoke_link(link, STRANGER, NOW)
    by_patient = revoke_link(link, PATIENT, NOW)
    assert by_patient.revoked_at == NOW
    assert by_patient.revoked_by == PATIENT.subject
    assert by_patient.revision == link.revision + 1
    assert revoke_link(by_patient, RADIOLOGIST, NOW + DAY) is by_patient
    assert revoke_link(link, RADIOLOGIST, NOW).revoked_by == RADIOLOGIST.subject


def test_a_session_lasts_an_hour_and_never_beyond_its_link() -> None:
    link = _issue().link
    issued = start_session(link, now=NOW, settings=SETTINGS)
    assert issued.session.expires_at == NOW + timedelta(hours=1)
    assert issued.session.link_id == link.link_id
    assert issued.session.study_instance_uid == STUDY.study_instance_uid
    token = CapabilityToken.parse(issued.token)
    assert token is not None
    assert token.identifier == issued.session.session_id
    assert issued.digest.matches(token.secret)
    assert token.secret not in repr(issued.digest)
    late = start_session(link, now=link.expires_at - timedelta(minutes=5), settings=SETTINGS)
    assert late.session.expires_at == link.expires_at


def test_a_session_is_read_only_on_its_study() -> None:
    session = LinkSession("s", "l", STUDY.study_instance_uid, STUDY.patient_key, NOW + DAY)
    assert decide_link(session, Action.RETRIEVE, STUDY.study_instance_uid, NOW).allowed
    assert decide_link(session, Action.SEARCH, None, NOW).allowed
    assert (
        decide_link(session, Action.STORE, STUDY.study_instance_uid, NOW).reason
        == Reason.ACTION_NOT_PERMITTED_FOR_ROLE
    )
    assert (
        decide_link(session, Action.SHARE, STUDY.study_instance_uid, NOW).reason
        == Reason.ACTION_NOT_PERMITTED_FOR_ROLE
    )
    assert decide_link(session, Action.RETRIEVE, "1.2.3", NOW).reason == Reason.NOT_LINKED_STUDY
    assert (
        decide_link(session, Action.RETRIEVE, STUDY.study_instance_uid, NOW + DAY).reason
        == Reason.LINK_EXPIRED
    )


def test_instants_are_kept_to_the_millisecond() -> None:
    assert at_store_precision(NOW.replace(microsecond=123_456)) == NOW.replace(microsecond=123_000)
