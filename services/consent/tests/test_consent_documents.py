"""The MongoDB documents of records and consents, and the listing filters, without a server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import FacilityGrantee, ShareGrantee
from emage_consent.adapters.mongo import (
    consent_from_document,
    consent_to_document,
    query_filter,
    record_from_document,
    record_to_document,
    state_filter,
)
from emage_consent.domain import rules
from emage_consent.domain.model import Consent, ConsentState, InformationGiven, Period
from emage_consent.domain.rules import GrantDraft, OppositionDraft
from emage_consent.ports import ConsentQuery

NOW = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)
KEY = "pid:750000001:IPP-0001"
NURSE = ForwardedPrincipal(
    subject="n", role="nurse", name="Claire", rpps="10100000032", facility_finess="750000001"
)
PATIENT = ForwardedPrincipal(subject="p", role="patient", patient_keys=(KEY,))


def test_records_and_consents_round_trip() -> None:
    draft = GrantDraft(
        KEY,
        FacilityGrantee(finess="690000002"),
        "1.2.3",
        Period(NOW, NOW + timedelta(days=1)),
        InformationGiven(text="Explained.", notice_code="N-3"),
    )
    first = rules.grant(NURSE, draft, consent_id="c", now=NOW)
    consent = Consent.opened(first)
    closing = consent.closing("revoke", by=rules.recorder_of(PATIENT), now=NOW, reason="why")
    revoked = consent.after(closing)
    for record in (first, closing):
        document = record_to_document(record, 7)
        assert document["sequence"] == 7
        assert record_from_document(document) == record
    for state in (consent, revoked):
        assert consent_from_document(consent_to_document(state)) == state
    share = Consent.opened(
        rules.grant(PATIENT, GrantDraft(KEY, ShareGrantee(share_id="s")), consent_id="s", now=NOW)
    )
    assert consent_from_document(consent_to_document(share)) == share
    opposition = rules.oppose(PATIENT, OppositionDraft(KEY), consent_id="o", now=NOW)
    assert record_from_document(record_to_document(opposition, 1)).grantee is None


def _matches(query: dict[str, object], document: dict[str, object]) -> bool:
    """A small evaluator of the operators the filters use ($and, $or, $in, $lte, $gt, equality, null)."""
    for field, condition in query.items():
        if field == "$and":
            if not all(_matches(part, document) for part in condition):  # type: ignore[attr-defined]
                return False
        elif field == "$or":
            if not any(_matches(part, document) for part in condition):  # type: ignore[attr-defined]
                return False
        elif isinstance(condition, dict):
            value = document.get(field)
            for operator, operand in condition.items():
                if operator == "$in" and value not in operand:
                    return False
                if operator == "$lte" and not (value is not None and value <= operand):
                    return False
                if operator == "$gt" and not (value is not None and value > operand):
                    return False
        elif document.get(field) != condition:
            return False
    return True


@pytest.mark.parametrize("state", ["active", "scheduled", "expired", "revoked", "lifted"])
def test_the_status_filter_selects_exactly_the_consents_in_that_status(state: ConsentState) -> None:
    hour = timedelta(hours=1)
    by = rules.recorder_of(PATIENT)
    grant = Consent.opened(
        rules.grant(
            PATIENT, GrantDraft(KEY, FacilityGrantee(finess="690000002")), consent_id="g", now=NOW - 3 * hour
        )
    )
    opposition = Consent.opened(
        rules.oppose(PATIENT, OppositionDraft(KEY), consent_id="o", now=NOW - 3 * hour)
    )
    periods = (
        Period(),
        Period(NOW - hour),
        Period(NOW),
        Period(NOW + hour),
        Period(None, NOW),
        Period(None, NOW + hour),
    )
    consents = [replace(consent, period=period) for consent in (grant, opposition) for period in periods]
    consents.append(grant.after(grant.closing("revoke", by=by, now=NOW - hour, reason=None)))
    consents.append(opposition.after(opposition.closing("lift", by=by, now=NOW - hour, reason=None)))
    assert {consent.state(NOW) for consent in consents} == {
        "active",
        "scheduled",
        "expired",
        "revoked",
        "lifted",
    }
    for consent in consents:
        document = consent_to_document(consent)
        assert _matches(state_filter(state, NOW), document) == (consent.state(NOW) == state), consent


def test_the_query_filter_combines_patient_provision_and_status() -> None:
    assert query_filter(ConsentQuery(), NOW) == {}
    assert query_filter(ConsentQuery((KEY,)), NOW) == {"patient_key": {"$in": [KEY]}}
    combined = query_filter(ConsentQuery((KEY,), "deny", "lifted"), NOW)
    assert combined == {
        "$and": [
            {"patient_key": {"$in": [KEY]}},
            {"provision": "deny"},
            {"status": "inactive", "provision": "deny"},
        ]
    }
