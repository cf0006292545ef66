"""The professional directory in the access service's MongoDB database: collection ``professionals``.

One document per RPPS number (``_id``), with the folded words of the name in ``name_words`` (a multikey
index serves the anchored prefix searches) and the display fields as the professional's token stated them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from emage_access.professionals import Professional, SearchTerms, fold, name_words

Document = dict[str, Any]

PROFESSIONALS: Final = "professionals"
_INDEXES: Final = [
    IndexModel([("name_words", ASCENDING)], name="name_words"),
    IndexModel([("sort_name", ASCENDING)], name="sort_name"),
]


def search_filter(terms: SearchTerms) -> Document:
    """The MongoDB filter of ``terms``: an RPPS prefix, or every word a prefix of some word of the name."""
    if terms.rpps_prefix is not None:
        return {"_id": {"$regex": f"^{re.escape(terms.rpps_prefix)}"}}
    return {"$and": [{"name_words": {"$regex": f"^{re.escape(word)}"}} for word in terms.words]}


def _professional(document: Document) -> Professional:
    return Professional(
        rpps=document["_id"],
        name=document.get("name"),
        role=document["role"],
        facility_finess=document.get("facility_finess"),
        facility_name=document.get("facility_name"),
    )


class MongoDirectory:
    """The gateway's :class:`~emage_access.professionals.ProfessionalDirectory`."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._entries: AsyncCollection[Document] = database[PROFESSIONALS]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self._entries.create_indexes(_INDEXES)

    async def record(self, professional: Professional, now: datetime) -> None:
        """See :meth:`~emage_access.professionals.ProfessionalDirectory.record`."""
        await self._entries.update_one(
            {"_id": professional.rpps},
            {
                "$set": {
                    "name": professional.name,
                    "name_words": name_words(professional.name),
                    "sort_name": fold(professional.name or ""),
                    "role": professional.role,
                    "facility_finess": professional.facility_finess,
                    "facility_name": professional.facility_name,
                    "last_seen": now,
                },
                "$setOnInsert": {"first_seen": now},
            },
            upsert=True,
        )

    async def search(self, terms: SearchTerms, limit: int) -> list[Professional]:
        """See :meth:`~emage_access.professionals.ProfessionalDirectory.search`."""
        cursor = self._entries.find(search_filter(terms)).sort([("sort_name", ASCENDING), ("_id", ASCENDING)])
        return [_professional(document) async for document in cursor.limit(limit)]
