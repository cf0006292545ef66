"""The ``emage`` command line: synthetic DICOM studies, bulk import by STOW-RS (PS3.18 §10.5), demo data."""

__version__ = "0.1.0"
