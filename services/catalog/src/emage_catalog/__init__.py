"""e-mage service — Catalog.

Study/series/instance documents built from instance.stored; QIDO-RS and WADO-RS metadata.
"""

__version__ = "0.1.0"
