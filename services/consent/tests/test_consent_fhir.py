"""Consents as FHIR R5: the mapping of grantee, decision, study, provenance and status, and that every
export is a resource ``fhir.resources`` accepts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.bundle import Bundle
from fhir.resources.consent import Consent as FhirConsent

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import FacilityGrantee, ProfessionalGrantee, ShareGrantee
from emage_consent import fhir
from emage_consent.domain import rules
from emage_consent.domain.model import Consent, ConsentRecord, InformationGiven, Period
from emage_consent.domain.rules import GrantDraft, OppositionDraft

NOW = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)
INS_KEY = "ins:1.2.250.1.213.1.4.10:180017512345618"
PID_KEY = "pid:750000001:IPP%2F0001"
STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT = ForwardedPrincipal(subject="p1", role="patient", patient_keys=(INS_KEY, PID_KEY))
NURSE = ForwardedPrincipal(
    subject="n",
    role="nurse",
    name="Claire Infirmière",
    rpps="10100000032",
    facility_finess="750000001",
    facility_name="CHU Alpha",
)


def granted(grantee: object, **changes: object) -> Consent:
    draft = GrantDraft(**{"patient_key": INS_KEY, "grantee": grantee, **changes})  # type: ignore[arg-type]
    return Consent.opened(
        rules.grant(PATIENT, draft, consent_id="6f1c2d7e-0b7a-4c59-9a51-5f3a3c9f1e20", now=NOW)
    )


@pytest.mark.parametrize(
    ("grantee", "reference"),
    [
        (
            ProfessionalGrantee(rpps="10100000057"),
            {
                "type": "Practitioner",
                "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10100000057"},
            },
        ),
        (
            FacilityGrantee(finess="690000002"),
            {
                "type": "Organization",
                "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "690000002"},
            },
        ),
        (
            ShareGrantee(share_id="s-1"),
            {
                "identifier": {"system": "urn:emage:share", "value": "s-1"},
                "display": "Holder of e-mage share s-1",
            },
        ),
    ],
)
def test_the_grantee_is_the_provision_actor(grantee: object, reference: dict[str, object]) -> None:
    resource = fhir.consent_json(granted(grantee), NOW)
    assert resource["decision"] == "permit"
    [provision] = resource["provision"]
    [actor] = provision["actor"]
    assert actor["reference"] == reference
    assert actor["role"]["coding"][0]["code"] == "IRCP"
    assert resource["grantee"] == [reference]


def test_a_grant_maps_subject_period_status_and_version() -> None:
    consent = granted(ProfessionalGrantee(rpps="10100000057"), period=Period(NOW, NOW + timedelta(days=30)))
    resource = fhir.consent_json(consent, NOW)
    assert resource["resourceType"] == "Consent"
    assert resource["id"] == consent.consent_id
    assert resource["meta"]["versionId"] == "1"
    assert resource["status"] == "active"
    assert resource["subject"] == {
        "type": "Patient",
        "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "180017512345618"},
    }
    assert resource["grantor"] == [resource["subject"]]
    assert resource["period"] == {"start": "2025-03-04T09:15:00Z", "end": "2025-04-03T09:15:00Z"}
    assert resource["date"] == "2025-03-04"
    assert resource["category"][0]["coding"][0]["code"] == "59284-0"
    assert "verification" not in resource
    FhirConsent.model_validate(resource)


@pytest.mark.parametrize(
    ("closed", "at", "status"),
    [(False, NOW, "active"), (True, NOW, "inactive"), (False, NOW + timedelta(days=31), "inactive")],
)
def test_revoked_or_expired_consents_are_inactive(closed: bool, at: datetime, status: str) -> None:
    consent = granted(ProfessionalGrantee(rpps="10100000057"), period=Period(None, NOW + timedelta(days=30)))
    if closed:
        consent = consent.after(
            consent.closing("revoke", by=rules.recorder_of(PATIENT), now=NOW, reason=None)
        )
    resource = fhir.consent_json(consent, at)
    assert resource["status"] == status
    assert resource["meta"]["versionId"] == str(consent.revision)


def test_an_opposition_recorded_at_the_exam_is_a_deny_with_its_provenance() -> None:
    information = InformationGiven(text="Vous pouvez vous opposer au partage.", notice_code="NOTICE-v3")
    record = rules.oppose(
        NURSE, OppositionDraft(PID_KEY, STUDY, information=information), consent_id="o-1", now=NOW
    )
    resource = fhir.consent_json(Consent.opened(record), NOW)
    assert resource["decision"] == "deny"
    assert "grantee" not in resource
    assert resource["subject"] == {
        "type": "Patient",
        "identifier": {"system": "urn:emage:patient-key", "value": PID_KEY},
        "display": "Patient IPP/0001 of 750000001",
    }
    [provision] = resource["provision"]
    assert provision == {
        "data": [
            {
                "meaning": "instance",
                "reference": {
                    "type": "ImagingStudy",
                    "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"},
                },
            }
        ]
    }
    [verification] = resource["verification"]
    assert verification["verified"] is True
    assert verification["verifiedBy"]["identifier"] == {
        "system": "urn:oid:1.2.250.1.71.4.2.1",
        "value": "10100000032",
    }
    assert resource["manager"][0]["identifier"]["value"] == "750000001"
    [attachment] = resource["sourceAttachment"]
    assert base64.b64decode(attachment["data"]).decode() == information.text
    assert resource["policyText"][0]["identifier"] == {
        "system": "urn:emage:information-notice",
        "value": "NOTICE-v3",
    }


def test_an_opposition_to_all_sharing_has_no_provision_at_all() -> None:
    record = rules.oppose(PATIENT, OppositionDraft(INS_KEY), consent_id="o-2", now=NOW)
    resource = fhir.consent_json(Consent.opened(record), NOW)
    assert (resource["decision"], "provision" in resource) == ("deny", False)


def test_a_patients_consents_export_as_a_valid_collection_bundle() -> None:
    consents = [
        granted(ProfessionalGrantee(rpps="10100000057")),
        Consent.opened(rules.oppose(PATIENT, OppositionDraft(INS_KEY), consent_id="o-3", now=NOW)),
    ]
    bundle = fhir.collection_bundle(consents, NOW)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    assert [entry["fullUrl"] for entry in bundle["entry"]] == [f"urn:uuid:{c.consent_id}" for c in consents]
    assert [entry["resource"]["decision"] for entry in bundle["entry"]] == ["permit", "deny"]
    assert fhir.collection_bundle([], NOW)["type"] == "collection"


def test_the_history_bundle_has_every_version_newest_first() -> None:
    consent = granted(ProfessionalGrantee(rpps="10100000057"))
    first = rules.grant(
        PATIENT,
        GrantDraft(INS_KEY, ProfessionalGrantee(rpps="10100000057")),
        consent_id=consent.consent_id,
        now=NOW,
    )
    revocation = consent.closing(
        "revoke", by=rules.recorder_of(PATIENT), now=NOW + timedelta(hours=1), reason=None
    )
    records: list[ConsentRecord] = [first, revocation]
    bundle = fhir.history_bundle(records, NOW + timedelta(hours=2))
    Bundle.model_validate(bundle)
    assert (bundle["type"], bundle["total"]) == ("history", 2)
    assert [(e["resource"]["meta"]["versionId"], e["resource"]["status"]) for e in bundle["entry"]] == [
        ("2", "inactive"),
        ("1", "active"),
    ]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]
    assert bundle["entry"][0]["response"]["etag"] == 'W/"2"'


def test_a_resource_that_is_not_valid_fhir_is_never_returned() -> None:
    resource = fhir.consent_resource(granted(ProfessionalGrantee(rpps="10100000057")), NOW)
    with pytest.raises(fhir.FhirValidationError):
        fhir.validated_consent({**resource, "status": "maybe"})
    with pytest.raises(fhir.FhirValidationError):
        fhir.validated_consent({**resource, "period": {"start": "yesterday"}})
    with pytest.raises(fhir.FhirValidationError):
        fhir.validated_consent({**resource, "scope": "patient-privacy"})
