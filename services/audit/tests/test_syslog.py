"""RFC 5424 messages, octet-counted for TCP and TLS (RFC 6587 §3.4.1, RFC 5425 §4.3)."""

from __future__ import annotations

import pytest

from emage_audit.domain.syslog import BOM, header_field, octet_counted, syslog_message


def test_an_atna_message_header() -> None:
    message = syslog_message(
        b"<AuditMessage/>",
        timestamp="2025-03-12T13:05:00.123456Z",
        hostname="audit-0.emage",
        app_name="emage-audit",
        procid="42",
    )
    assert message == (
        b"<85>1 2025-03-12T13:05:00.123456Z audit-0.emage emage-audit 42 IHE+RFC-3881 - "
        + BOM
        + b"<AuditMessage/>"
    )


def test_empty_fields_are_the_nil_value_and_others_printable_ascii() -> None:
    message = syslog_message(b"x", timestamp="2025-03-12T13:05:00Z", hostname=None, app_name="app name é")
    assert message.startswith(b"<85>1 2025-03-12T13:05:00Z - app_name__ - IHE+RFC-3881 - ")
    assert header_field("a" * 300, 255) == "a" * 255


@pytest.mark.parametrize("timestamp", ["2025-03-12 13:05:00Z", "2025-03-12T13:05:00.1234567Z", "yesterday"])
def test_timestamps_outside_rfc_5424_are_refused(timestamp: str) -> None:
    with pytest.raises(ValueError, match="TIMESTAMP"):
        syslog_message(b"x", timestamp=timestamp, hostname="h", app_name="a")


def test_octet_counting_counts_bytes_not_characters() -> None:
    message = "<85>1 - - - - - - é☃".encode()
    framed = octet_counted(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(message) == 23
    assert rest == message


def test_frames_follow_each_other_on_the_stream() -> None:
    stream = octet_counted(b"first") + octet_counted(b"second message")
    assert stream == b"5 first14 second message"
