"""UIDs for synthetic instances: the ``2.25`` root of UUID-derived UIDs (PS3.5 §B.2, ISO/IEC 9834-8)."""

from __future__ import annotations

import random
import uuid


class UidFactory:
    """Mints ``2.25.<decimal of a version-4 UUID>`` UIDs from a seeded generator.

    The same seed gives the same UIDs, so a regenerated data set re-imports as duplicates instead of as new
    studies; different seeds give UIDs as unique as random UUIDs are.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self) -> str:
        return f"2.25.{uuid.UUID(int=self._rng.getrandbits(128), version=4).int}"
