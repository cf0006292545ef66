"""e-mage service — Ingest.

The only reader and writer of pixel bytes (STOW-RS, DIMSE C-STORE SCP, pulls from source PACS).
"""

__version__ = "0.1.0"
