"""e-mage service — Audit: the append-only, hash-chained trail of every access decision and domain event."""

__version__ = "0.1.0"
