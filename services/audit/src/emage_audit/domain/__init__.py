"""The audit trail's rules, free of I/O: the hash chain, its checkpoints and verification, what each domain
event becomes in the trail, and how the trail is shown (French or English), exported (FHIR AuditEvent, DICOM
PS3.15 audit messages) and sent (RFC 5424 syslog)."""
