"""e-mage service — Consent: patient consents and oppositions (FHIR Consent shape); emits consent.changed."""

__version__ = "0.1.0"
