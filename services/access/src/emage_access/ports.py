"""What the gateway's request path needs from its stores and from the catalog, as protocols.

The adapters (MongoDB for the access service's own database, HTTP for the catalog) implement them; the
decider and the routes depend only on these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from emage_access.domain.links import LinkSession
from emage_access.domain.policy import BreakGlass, Share, StudyAttributes


class StudyDirectory(Protocol):
    """The catalog's answer to "what is this study, for the policy?"."""

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        """The study's access attributes, or None when the catalog does not hold it."""
        ...


class ShareStore(Protocol):
    """Shares to professionals, in the access service's database."""

    async def shares_to(self, grantee_rpps: str) -> list[Share]:
        """Every share naming ``grantee_rpps``, revoked and expired ones included (the policy says why)."""
        ...


class BreakGlassStore(Protocol):
    """Break-the-glass grants, in the access service's database."""

    async def grants_of(self, holder_rpps: str, *, now: datetime) -> list[BreakGlass]:
        """The grants of ``holder_rpps`` that have not expired at ``now``."""
        ...


class LinkSessionStore(Protocol):
    """Sessions opened on share links (after the second factor, when the link has one)."""

    async def session(self, token: str, *, now: datetime) -> LinkSession | None:
        """The session a bearer token names, when it exists, is unexpired and its link still in force."""
        ...
