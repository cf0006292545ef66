"""CloudEvents envelope conformance, DICOM UID validation and payload models."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from emage_common.events import (
    ACCESS_DECIDED_TOPIC,
    ACQUISITION_TOPIC,
    CONSENT_CHANGED_TOPIC,
    DOMAIN_TOPICS,
    EVENT_DATA_MODELS,
    INSTANCE_STORED_TOPIC,
    SHARE_CHANGED_TOPIC,
    STUDY_CHANGED_TOPIC,
    AccessDecided,
    Acquisition,
    CloudEvent,
    ConsentChanged,
    InstanceStored,
    InvalidEnvelopeError,
    InvalidEventDataError,
    PatientIdentity,
    ShareChanged,
    StudyChanged,
    UnknownEventTypeError,
    data_model_for_topic,
    data_model_for_type,
    decode_data,
    dlq_topic,
    is_valid_uid,
    make_event,
    validate_uid,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.10001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10001.1"
SOP_UID = "1.2.826.0.1.3680043.8.498.10001.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# A published INS-NIR test identity (OID 1.2.250.1.213.1.4.10) with a valid control key.
TEST_INS = {"matricule": "279035121518989", "oid": "1.2.250.1.213.1.4.10"}
BAD_KEY = {"matricule": "279035121518988"}  # same matricule, wrong control key


def instance_stored_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "study_instance_uid": STUDY_UID,
        "series_instance_uid": SERIES_UID,
        "sop_instance_uid": SOP_UID,
        "sop_class_uid": CT_IMAGE_STORAGE,
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "object_key": f"studies/{STUDY_UID}/{SOP_UID}.dcm",
        "size_bytes": 526_336,
        "sha256": "a" * 64,
        "facility_finess": "750712184",
        "patient": {"patient_id": "IPP-0042", "issuer_of_patient_id": "750712184", "ins": TEST_INS},
        "modality": "CT",
        "stored_at": "2026-03-02T08:15:30.250Z",
        "dicom_json": {
            "00080016": {"vr": "UI", "Value": [CT_IMAGE_STORAGE]},
            "00080018": {"vr": "UI", "Value": [SOP_UID]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DUPONT^JEANNE"}]},
            "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
            "0020000E": {"vr": "UI", "Value": [SERIES_UID]},
            "7FE00010": {"vr": "OW", "BulkDataURI": f"/studies/{STUDY_UID}/bulk/7FE00010"},
        },
    }
    payload.update(overrides)
    return payload


def instance_stored(**overrides: Any) -> InstanceStored:
    return InstanceStored.model_validate(instance_stored_payload(**overrides))


def access_decided_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "request_id": "req-7f3a",
        "principal": {
            "subject": "f0e1d2c3",
            "role": "radiologist",
            "rpps": "10101010101",
            "facility_finess": "750712184",
        },
        "action": "retrieve",
        "study_instance_uid": STUDY_UID,
        "patient_key": "ins:1.2.250.1.213.1.4.10:279035121518989",
        "decision": "allow",
        "basis": "care",
        "reason": "same facility, care relationship",
        "decided_at": "2026-03-02T08:20:00Z",
    }
    payload.update(overrides)
    return payload


# --- Envelope: CloudEvents 1.0 JSON format ------------------------------------------------------------------


def test_event_round_trips_through_bytes() -> None:
    event = make_event(instance_stored(), "/emage/ingest", subject=SOP_UID).model_copy(
        update={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"}
    )
    decoded = CloudEvent.from_bytes(event.to_bytes())
    assert decoded == event
    assert decoded.data_as(InstanceStored) == instance_stored()
    assert decode_data(decoded) == instance_stored()


def test_serialized_envelope_conforms_to_the_json_format() -> None:
    event = make_event(instance_stored(), "/emage/ingest").model_copy(
        update={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "extensions": {"comexampleothervalue": 5},
        }
    )
    members = json.loads(event.to_bytes())

    # Required attributes (spec "REQUIRED Attributes").
    assert members["specversion"] == "1.0"
    assert members["id"]
    assert members["source"] == "/emage/ingest"
    assert members["type"] == "fr.emage.instance.stored.v1"
    # Extension attributes are top-level members with lower-case alphanumeric names (JSON format §2).
    assert members["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert members["partitionkey"] == STUDY_UID
    assert members["comexampleothervalue"] == 5
    assert "extensions" not in members
    assert all(re.fullmatch(r"[a-z0-9]+", name) for name in members if name != "data")
    # Timestamp in RFC 3339 UTC; JSON data as a JSON value (§3.1.1); unset attributes omitted.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", members["time"])
    assert members["datacontenttype"] == "application/json"
    assert isinstance(members["data"], dict)
    assert "subject" not in members
    assert "tracestate" not in members
    assert None not in members.values()


def test_spec_example_with_binary_data_decodes() -> None:
    """JSON format §3.2, first example: data_base64 becomes bytes, extensions are kept."""
    raw = json.dumps(
        {
            "specversion": "1.0",
            "type": "com.example.someevent",
            "source": "/mycontext",
            "id": "A234-1234-1234",
            "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value",
            "comexampleothervalue": 5,
            "datacontenttype": "application/vnd.apache.thrift.binary",
            "data_base64": base64.b64encode(b"\x00\x01thrift").decode(),
        }
    ).encode()
    event = CloudEvent.from_bytes(raw)
    assert event.data == b"\x00\x01thrift"
    assert event.extensions == {"comexampleextension1": "value", "comexampleothervalue": 5}
    assert event.time == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    assert json.loads(event.to_bytes()) == json.loads(raw)


def test_spec_example_with_xml_string_data_and_null_attribute_decodes() -> None:
    """JSON format §3.2: a null attribute is unset (§2.2); non-JSON data travels as a string."""
    raw = (
        b'{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","id":"B234-1234-1234",'
        b'"time":"2018-04-05T17:31:00Z","unsetextension":null,"subject":null,'
        b'"datacontenttype":"application/xml","data":"<much wow=\\"xml\\"/>"}'
    )
    event = CloudEvent.from_bytes(raw)
    assert event.subject is None
    assert "unsetextension" not in event.extensions
    assert event.data == '<much wow="xml"/>'


def test_absent_datacontenttype_means_json_and_absent_time_stays_absent() -> None:
    raw = b'{"specversion":"1.0","type":"t","source":"urn:uuid:6e8bc430","id":"D","data":"just a string"}'
    event = CloudEvent.from_bytes(raw)
    assert event.datacontenttype is None
    assert event.time is None
    assert event.data == "just a string"
    assert json.loads(event.to_bytes()) == json.loads(raw)


def test_explicit_null_data_is_distinct_from_absent_data() -> None:
    """JSON format §3.1.1: ``"data": null`` is an explicit null payload, not the absence of data."""
    with_null = CloudEvent.from_bytes(b'{"specversion":"1.0","type":"t","source":"/s","id":"1","data":null}')
    without = CloudEvent.from_bytes(b'{"specversion":"1.0","type":"t","source":"/s","id":"1"}')
    assert with_null.has_data
    assert not without.has_data
    assert json.loads(with_null.to_bytes())["data"] is None
    assert "data" not in json.loads(without.to_bytes())


HEAD = b'{"specversion":"1.0","type":"t","source":"/s","id":"1",'


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe not utf-8 json", "not JSON"),
        (b"[]", "an array"),
        (b'{"specversion":"0.3","type":"t","source":"/s","id":"1"}', "CloudEvents 0.3"),
        (b'{"type":"t","source":"/s","id":"1"}', "no specversion"),
        (b'{"specversion":"1.0","source":"/s","id":"1"}', "no type"),
        (b'{"specversion":"1.0","type":"t","id":"1"}', "no source"),
        (b'{"specversion":"1.0","type":"t","source":"/s","id":null}', "null id"),
        (b'{"specversion":"1.0","type":"t","source":"/s","id":""}', "empty id"),
        (b'{"specversion":"1.0","type":"t","source":"a b","id":"1"}', "source not a URI-reference"),
        (HEAD + b'"time":"2018-04-05"}', "date, not date-time"),
        (HEAD + b'"time":"2018-04-05T17:31:00"}', "no offset"),
        (HEAD + b'"dataschema":"/relative"}', "relative schema"),
        (HEAD + b'"datacontenttype":"json"}', "bad media type"),
        (HEAD + b'"Upper":"x"}', "upper-case extension"),
        (HEAD + b'"my_ext":"x"}', "underscore extension"),
        (HEAD + b'"ext":{"a":1}}', "object extension"),
        (HEAD + b'"ext":4294967296}', "integer out of range"),
        (HEAD + b'"ext":NaN}', "NaN is not JSON"),
        (HEAD + b'"data":1,"data_base64":"AA=="}', "both data"),
        (HEAD + b'"data_base64":"***"}', "bad Base64"),
        (b'{"specversion":"1.0","type":"t\\u0000","source":"/s","id":"1"}', "control character"),
        (
            b'{"specversion":"1.0","type":"t","source":"/s","id":"1","datacontenttype":"text/plain","data":{}}',
            "non-JSON content type with a JSON object",
        ),
    ],
)
def test_invalid_envelope_is_rejected_with_a_precise_error(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidEnvelopeError):
        CloudEvent.from_bytes(raw)


def test_unknown_type_and_mismatched_payload_raise_distinct_errors() -> None:
    foreign = CloudEvent(source="/elsewhere", type="com.example.unknown", data={})
    with pytest.raises(UnknownEventTypeError):
        decode_data(foreign)
    stored = make_event(instance_stored(), "/emage/ingest")
    with pytest.raises(InvalidEventDataError, match="does not carry"):
        stored.data_as(StudyChanged)
    garbage = stored.model_copy(update={"data": {"study_instance_uid": "not a uid"}})
    with pytest.raises(InvalidEventDataError):
        garbage.data_as(InstanceStored)


def test_make_event_keys_by_partition_key_unless_overridden() -> None:
    assert make_event(instance_stored(), "/emage/ingest").partitionkey == STUDY_UID
    assert make_event(instance_stored(), "/emage/ingest", key="k").partitionkey == "k"


def test_envelope_is_immutable() -> None:
    event = make_event(instance_stored(), "/emage/ingest")
    with pytest.raises(ValidationError):
        event.type = "other"  # type: ignore[misc]


# --- DICOM UID, PS3.5 §9.1 ----------------------------------------------------------------------------------

# Decimal renderings of integers never have a leading zero; 7 components of at most 8 digits stay within 64.
component = st.integers(min_value=0, max_value=10**8 - 1).map(str)
valid_uids = st.lists(component, min_size=1, max_size=7).map(".".join)
zero_led_components = st.integers(min_value=0, max_value=9999).map(lambda n: f"0{n}")
long_uids = st.lists(st.integers(min_value=10**15, max_value=10**19).map(str), min_size=4, max_size=8).map(
    ".".join
)


@given(valid_uids)
def test_well_formed_uids_are_valid(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@given(valid_uids, st.integers(min_value=0, max_value=6), zero_led_components)
def test_component_with_leading_zero_is_invalid(uid: str, position: int, zero_led: str) -> None:
    components = uid.split(".")
    components[position % len(components)] = zero_led
    assert not is_valid_uid(".".join(components))


@given(valid_uids, st.sampled_from(["", ".", "..", "a", " ", "\x00", "-1", "\u0661"]))
def test_empty_component_or_foreign_character_is_invalid(uid: str, insertion: str) -> None:
    for candidate in (f".{uid}", f"{uid}.", f"{uid}.{insertion}", f"{insertion}.{uid}"):
        assert not is_valid_uid(candidate)


@given(long_uids)
def test_uid_longer_than_64_characters_is_invalid(uid: str) -> None:
    with pytest.raises(ValueError, match="at most 64"):
        validate_uid(uid)


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2.1", True),
        ("0", True),
        ("1.0.2", True),
        ("1.2.3." + "9" * 58, True),
        ("1.2.3." + "9" * 59, False),
        ("1.02.3", False),
        ("1..2", False),
        ("1.2.", False),
        ("1.2.3\x00", False),
        ("", False),
    ],
)
def test_uid_examples(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


# --- Payload models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"sop_instance_uid": "1.2.03"}, "UID component with a leading zero"),
        ({"study_instance_uid": 1.2}, "a number, not a UID string"),
        ({"size_bytes": -1}, "negative size"),
        ({"size_bytes": "526336"}, "size as a string"),
        ({"sha256": "A" * 64}, "upper-case digest"),
        ({"sha256": "a" * 63}, "short digest"),
        ({"facility_finess": "7507121"}, "FINESS too short"),
        ({"modality": "ct"}, "modality not a CS code"),
        ({"object_key": "studies/../other"}, "path traversal in the object key"),
        ({"stored_at": "2026-03-02T08:15:30"}, "naive timestamp"),
        ({"stored_at": 1_772_439_330}, "epoch seconds"),
        ({"unexpected": True}, "unknown field"),
        ({"dicom_json": {"0020000d": {"vr": "UI"}}}, "lower-case tag"),
        ({"dicom_json": {"0020000D": {"Value": [STUDY_UID]}}}, "attribute without vr"),
        ({"dicom_json": {"00080018": {"vr": "UI", "Value": ["1.2.3"]}}}, "metadata contradicts the SOP UID"),
        ({"patient": {"patient_id": "IPP\\1", "issuer_of_patient_id": "X"}}, "backslash in an LO value"),
        ({"patient": {"patient_id": "I" * 65, "issuer_of_patient_id": "X"}}, "LO longer than 64"),
        (
            {"patient": {"patient_id": "P", "issuer_of_patient_id": "X", "ins": TEST_INS | BAD_KEY}},
            "INS control key",
        ),
        (
            {"patient": {"patient_id": "P", "issuer_of_patient_id": "X", "ins": TEST_INS | {"oid": "1.2.3"}}},
            "INS assigning authority",
        ),
    ],
)
def test_instance_stored_rejects_garbage(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        instance_stored(**overrides)


def test_instance_stored_normalises_time_to_utc_and_is_frozen() -> None:
    stored = instance_stored(stored_at=datetime(2026, 3, 2, 9, 15, tzinfo=timezone(timedelta(hours=1))))
    assert stored.stored_at == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)
    assert stored.model_dump(mode="json")["stored_at"] == "2026-03-02T08:15:00Z"
    with pytest.raises(ValidationError):
        stored.size_bytes = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"basis": None}, "allowed without a basis"),
        ({"decision": "deny"}, "denied with a basis"),
        ({"basis": "break_glass"}, "break-the-glass without justification"),
        ({"principal": {"subject": "s", "role": "surgeon"}}, "unknown role"),
        ({"action": "delete"}, "unknown action"),
        ({"reason": ""}, "empty reason"),
    ],
)
def test_access_decided_rejects_inconsistent_decisions(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        AccessDecided.model_validate(access_decided_payload(**overrides))


def test_break_glass_with_justification_is_valid() -> None:
    decided = AccessDecided.model_validate(
        access_decided_payload(basis="break_glass", justification="unconscious patient in the ER")
    )
    assert decided.partition_key() == "ins:1.2.250.1.213.1.4.10:279035121518989"


def test_access_decided_without_patient_is_keyed_by_subject() -> None:
    denied = AccessDecided.model_validate(
        access_decided_payload(decision="deny", basis=None, patient_key=None, study_instance_uid=None)
    )
    assert denied.partition_key() == "sub:f0e1d2c3"


def test_consent_period_must_be_ordered_and_grantee_is_discriminated() -> None:
    consent: dict[str, Any] = {
        "consent_id": "c-1",
        "revision": 2,
        "patient_key": "ins:1.2.250.1.213.1.4.10:279035121518989",
        "status": "inactive",
        "provision": "permit",
        "grantee": {"kind": "professional", "rpps": "10101010101"},
        "changed_at": "2026-03-02T08:00:00Z",
    }
    assert ConsentChanged.model_validate(consent).partition_key() == consent["patient_key"]
    with pytest.raises(ValidationError):
        ConsentChanged.model_validate(consent | {"grantee": {"kind": "professional", "finess": "750712184"}})
    with pytest.raises(ValidationError):
        ConsentChanged.model_validate(
            consent | {"valid_from": "2026-03-02T00:00:00Z", "valid_until": "2026-03-01T00:00:00Z"}
        )
    with pytest.raises(ValidationError):
        ConsentChanged.model_validate(consent | {"revision": 0})


def test_share_needs_a_study_and_a_recipient() -> None:
    share: dict[str, Any] = {
        "share_id": "s-1",
        "revision": 1,
        "patient_key": "pid:750712184:IPP-0042",
        "study_instance_uids": [STUDY_UID],
        "shared_by": "patient-sub",
        "recipient": {"kind": "link", "link_id": "l-9"},
        "status": "active",
        "expires_at": "2026-04-01T00:00:00Z",
        "changed_at": "2026-03-02T08:00:00Z",
    }
    assert ShareChanged.model_validate(share).study_instance_uids == (STUDY_UID,)
    with pytest.raises(ValidationError):
        ShareChanged.model_validate(share | {"study_instance_uids": []})
    with pytest.raises(ValidationError):
        ShareChanged.model_validate(share | {"all_studies": True})
    whole_record = ShareChanged.model_validate(share | {"study_instance_uids": [], "all_studies": True})
    assert whole_record.all_studies


def test_an_opposition_may_name_no_grantee_but_a_permit_must() -> None:
    opposition: dict[str, Any] = {
        "consent_id": "c-2",
        "revision": 1,
        "patient_key": "pid:750712184:IPP-0042",
        "status": "active",
        "provision": "deny",
        "changed_at": "2026-03-02T08:00:00Z",
    }
    assert ConsentChanged.model_validate(opposition).grantee is None
    with pytest.raises(ValidationError):
        ConsentChanged.model_validate(opposition | {"provision": "permit"})


def test_acquisition_sources_and_partition_key() -> None:
    acquisition: dict[str, Any] = {
        "facility_finess": "2A0000014",
        "accession_number": "ACC-2026-0001",
        "patient": {"patient_id": "IPP-0042", "issuer_of_patient_id": "2A0000014"},
        "referring_physician_rpps": "10101010101",
        "performing_technician": "mtechnicien",
        "source": {"kind": "dimse", "ae_title": "RIS_PACS", "host": "pacs.chu.local", "port": 11112},
    }
    announced = Acquisition.model_validate(acquisition)
    assert announced.partition_key() == "2A0000014/ACC-2026-0001"
    with_uid = Acquisition.model_validate(acquisition | {"study_instance_uid": STUDY_UID})
    assert with_uid.partition_key() == STUDY_UID
    dicomweb = Acquisition.model_validate(
        acquisition | {"source": {"kind": "dicomweb", "base_url": "https://pacs.chu.fr/dicom-web"}}
    )
    assert str(dicomweb.model_dump(mode="json")["source"]["base_url"]).startswith("https://pacs.chu.fr")
    for bad_source in (
        {"kind": "dimse", "ae_title": "A" * 17, "host": "pacs", "port": 104},
        {"kind": "dimse", "ae_title": "PACS", "host": "pacs", "port": 70000},
        {"kind": "dicomweb", "base_url": "ftp://pacs"},
        {"kind": "wado-uri", "base_url": "https://pacs"},
    ):
        with pytest.raises(ValidationError):
            Acquisition.model_validate(acquisition | {"source": bad_source})


def test_patient_key_prefers_ins_and_cannot_collide() -> None:
    qualified = PatientIdentity.model_validate(
        {"patient_id": "IPP-0042", "issuer_of_patient_id": "750712184", "ins": TEST_INS}
    )
    assert qualified.patient_key == "ins:1.2.250.1.213.1.4.10:279035121518989"
    left = PatientIdentity(patient_id="b:c", issuer_of_patient_id="a")
    right = PatientIdentity(patient_id="c", issuer_of_patient_id="a:b")
    assert left.patient_key != right.patient_key


# --- Registry -----------------------------------------------------------------------------------------------


def test_registry_maps_each_type_to_one_topic_and_model() -> None:
    assert set(DOMAIN_TOPICS) == {
        ACQUISITION_TOPIC,
        INSTANCE_STORED_TOPIC,
        STUDY_CHANGED_TOPIC,
        CONSENT_CHANGED_TOPIC,
        SHARE_CHANGED_TOPIC,
        ACCESS_DECIDED_TOPIC,
    }
    assert len(DOMAIN_TOPICS) == len(EVENT_DATA_MODELS) == 6
    for event_type, model in EVENT_DATA_MODELS.items():
        assert event_type == "fr." + model.topic
        assert data_model_for_type(event_type) is model
        assert data_model_for_topic(model.topic) is model
    assert dlq_topic(INSTANCE_STORED_TOPIC) == "emage.instance.stored.v1.dlq"
    with pytest.raises(UnknownEventTypeError):
        data_model_for_type("fr.emage.instance.deleted.v1")
