"""The professional directory: find a health professional by name or RPPS to share with them.

Patients (and professionals) share by RPPS number, which nobody knows by heart. In France the identity,
profession and place of practice of health professionals are public (the *Annuaire Santé* publishes them);
the platform keeps its own directory of the professionals who use it, so a patient can find "Dr Martin at
Clinique Beta" without leaving the portal:

* **what is recorded**: a professional's RPPS, display name, platform role, facility (FINESS and name) —
  the claims of their own authenticated access token (Pro Santé Connect's, or the dev realm's) — with when
  they were first and last seen. Nothing else (no e-mail, no subject identifier, no activity);
* **when**: each time the gateway authenticates a professional's token (:class:`DirectoryRecorder`, an ASGI
  middleware that reads the principal the request was decided for, after the answer is sent), at most once
  per :data:`REFRESH_INTERVAL` per process unless their facts changed. A professional is listed once they
  have used the platform; the dev realm's professionals are, once they have signed in;
* **who searches**: any authenticated user of the platform (``GET /api/v1/professionals?q=``), with a
  name part or an RPPS prefix of at least :data:`MIN_QUERY_LENGTH` characters, at most :data:`MAX_RESULTS`
  answers — a directory lookup, not an export. Share-link sessions cannot search.

The directory lives in the access service's database (``professionals``, :mod:`emage_access.adapters.
professionals`); a deployment wired to the national directory could fill the same collection from its
extracts.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final, Protocol

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Receive, Scope, Send

from emage_access.auth import current_principal
from emage_access.domain.principal import HEALTH_PROFESSIONAL_ROLES, Principal

_log = logging.getLogger(__name__)

MIN_QUERY_LENGTH: Final = 2
MAX_RESULTS: Final = 20
REFRESH_INTERVAL: Final = 600.0
"""Seconds during which a professional seen again with the same facts is not written again."""
_MAX_REMEMBERED: Final = 10_000


@dataclass(frozen=True, slots=True)
class Professional:
    """A directory entry: public facts about a health professional, as their token stated them."""

    rpps: str
    name: str | None
    role: str
    facility_finess: str | None
    facility_name: str | None

    @classmethod
    def of(cls, principal: Principal) -> Professional:
        if principal.rpps is None:
            raise ValueError("a professional of the directory has an RPPS number")
        return cls(
            rpps=principal.rpps,
            name=principal.name,
            role=principal.role.value,
            facility_finess=principal.facility_finess,
            facility_name=principal.facility_name,
        )


class ProfessionalDirectory(Protocol):
    """Where directory entries are kept (:class:`~emage_access.adapters.professionals.MongoDirectory`)."""

    async def record(self, professional: Professional, now: datetime) -> None:
        """Add ``professional`` or update their facts; ``now`` is when they were seen."""
        ...

    async def search(self, terms: SearchTerms, limit: int) -> list[Professional]:
        """Entries matching ``terms``, by name, at most ``limit``."""
        ...


# Letters NFKD does not decompose, spelled as a French keyboard types them ("Cœur" is found by "coeur").
_UNDECOMPOSED: Final = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "đ": "d", "ł": "l"})


def fold(text: str) -> str:
    """``text`` lower-cased without accents, so "Hélène" is found by "helene" (NFKD, marks dropped)."""
    decomposed = unicodedata.normalize("NFKD", text)
    unmarked = "".join(char for char in decomposed if not unicodedata.combining(char))
    return unmarked.casefold().translate(_UNDECOMPOSED)


def name_words(name: str | None) -> list[str]:
    """The folded words of a name, as the directory indexes them ("Jean-Marc Dupré" → jean, marc, dupre)."""
    if not name:
        return []
    words = "".join(char if char.isalnum() else " " for char in fold(name)).split()
    return sorted(set(words))


@dataclass(frozen=True, slots=True)
class SearchTerms:
    """A directory query: an RPPS prefix (digits only), or name-word prefixes that must all match."""

    rpps_prefix: str | None
    words: tuple[str, ...]

    @classmethod
    def parse(cls, query: str) -> SearchTerms | None:
        """The terms of ``query``, None when it is too short to search with."""
        compact = query.strip()
        if compact.isascii() and compact.isdigit():
            return cls(compact[:11], ()) if len(compact) >= MIN_QUERY_LENGTH else None
        words = tuple(word for word in name_words(compact) if word)
        if sum(len(word) for word in words) < MIN_QUERY_LENGTH:
            return None
        return cls(None, words[:5])


class ProfessionalOut(BaseModel):
    """A professional as the directory shows them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rpps": "10100000057",
                    "name": "Paul Girard",
                    "role": "radiologist",
                    "facility_finess": "690000002",
                    "facility_name": "Clinique Beta",
                }
            ]
        }
    )

    rpps: str
    name: str | None
    role: str
    facility_finess: str | None
    facility_name: str | None

    @classmethod
    def of(cls, professional: Professional) -> ProfessionalOut:
        return cls(
            rpps=professional.rpps,
            name=professional.name,
            role=professional.role,
            facility_finess=professional.facility_finess,
            facility_name=professional.facility_name,
        )


class ProfessionalList(BaseModel):
    """Professionals matching a query, by name."""

    professionals: list[ProfessionalOut]


router = APIRouter(prefix="/api/v1", tags=["professionals"])


async def _directory(request: Request) -> ProfessionalDirectory:
    directory: ProfessionalDirectory = request.app.state.professionals
    return directory


@router.get(
    "/professionals",
    response_model=ProfessionalList,
    summary="Find a health professional by name or RPPS (to share with them)",
    description="Professionals who have used the platform: RPPS, name, role and facility, the public facts "
    "of the national directory. `q` is part of a name (every word must start a word of the name) or the "
    f"start of an RPPS number, at least {MIN_QUERY_LENGTH} characters; at most {MAX_RESULTS} answers.",
)
async def search_professionals(
    q: Annotated[str, Query(max_length=100, description="Name words or an RPPS prefix.")],
    _principal: Annotated[Principal, Depends(current_principal)],
    directory: Annotated[ProfessionalDirectory, Depends(_directory)],
    limit: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = MAX_RESULTS,
) -> ProfessionalList:
    terms = SearchTerms.parse(q)
    if terms is None:
        return ProfessionalList(professionals=[])
    found = await directory.search(terms, limit)
    return ProfessionalList(professionals=[ProfessionalOut.of(entry) for entry in found])


class DirectoryRecorder:
    """ASGI middleware: records the professional a request was made by, once its answer is sent.

    The gateway's authentication dependencies leave the principal in ``request.state.caller``; reading it
    here, after the response, keeps the directory off every route's code and off the answer's latency. A
    failure to record is logged and never fails the request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._seen: dict[str, tuple[Professional, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] != "http":
            return
        caller = scope.get("state", {}).get("caller")
        if not isinstance(caller, Principal) or caller.role not in HEALTH_PROFESSIONAL_ROLES:
            return
        directory: ProfessionalDirectory | None = getattr(scope["app"].state, "professionals", None)
        if directory is None:
            return
        professional = Professional.of(caller)
        if not self._due(professional):
            return
        try:
            await directory.record(professional, datetime.now(UTC))
        except Exception:  # the directory is a convenience: the request it rides on has succeeded
            _log.warning("professional %s not recorded in the directory", professional.rpps, exc_info=True)
            self._seen.pop(professional.rpps, None)

    def _due(self, professional: Professional) -> bool:
        """Whether ``professional`` should be written now (new facts, or not written for a while)."""
        now = time.monotonic()
        last = self._seen.get(professional.rpps)
        if last is not None and last[0] == professional and now - last[1] < REFRESH_INTERVAL:
            return False
        if len(self._seen) >= _MAX_REMEMBERED:
            self._seen.clear()
        self._seen[professional.rpps] = (professional, now)
        return True
