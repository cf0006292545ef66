"""RFC 5424 syslog messages carrying DICOM audit messages, framed for TCP by octet counting (RFC 6587 §3.4.1,
the framing RFC 5425 mandates over TLS), as IHE ITI-20 "Record Audit Event" sends them.

ITI-20 fixes the header: facility 10 (security/authorization), severity 5 (notice), MSGID ``IHE+RFC-3881``,
no structured data, and the MSG is the UTF-8 XML of the audit message after a byte order mark.
"""

from __future__ import annotations

import re
from typing import Final

FACILITY_AUTHPRIV: Final = 10
SEVERITY_NOTICE: Final = 5
MSGID_ATNA: Final = "IHE+RFC-3881"
BOM: Final = b"\xef\xbb\xbf"
NILVALUE: Final = "-"

_PRINTUSASCII: Final = re.compile(r"[\x21-\x7e]+")
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


def header_field(value: str | None, max_length: int) -> str:
    """A header field (RFC 5424 §6.2): printable US-ASCII without spaces, truncated, ``-`` when empty."""
    if not value:
        return NILVALUE
    printable = "".join(char if _PRINTUSASCII.fullmatch(char) else "_" for char in value)
    return printable[:max_length]


def syslog_message(
    msg: bytes,
    *,
    timestamp: str,
    hostname: str | None,
    app_name: str | None,
    procid: str | None = None,
    msgid: str = MSGID_ATNA,
) -> bytes:
    """One RFC 5424 message: ``<85>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``.

    ``timestamp`` is RFC 3339 with at most 6 fractional digits (§6.2.3); ``msg`` is UTF-8 (§6.4).
    """
    if _RFC3339.fullmatch(timestamp) is None:
        raise ValueError(f"{timestamp!r} is not an RFC 5424 TIMESTAMP")
    priority = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE
    header = " ".join(
        (
            f"<{priority}>1",
            timestamp,
            header_field(hostname, 255),
            header_field(app_name, 48),
            header_field(procid, 128),
            header_field(msgid, 32),
            NILVALUE,
        )
    )
    return header.encode("ascii") + b" " + BOM + msg


def octet_counted(message: bytes) -> bytes:
    """The frame of one message on a TCP or TLS stream: ``MSG-LEN SP SYSLOG-MSG`` (RFC 6587 §3.4.1)."""
    return str(len(message)).encode("ascii") + b" " + message
