"""The patient and professional portal (``/portal/``) and the IHE IID launch (``/iid``), in the gateway.

See :mod:`emage_access.portal.routes` for what is served and why, :mod:`emage_access.portal.iid` for the
launch parameters, :mod:`emage_access.portal.qr` for share-link QR codes.
"""

from emage_access.portal.routes import router

__all__ = ["router"]
