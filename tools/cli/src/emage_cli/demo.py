"""``emage demo``: the demo data set of ``make run``, generated once into a cache and imported.

The set is the generator's default: for each dev patient of the local realm (``patient-1`` at CHU Alpha,
``patient-2`` at Clinique Beta) a chest radiograph, a chest-abdomen-pelvis CT, a brain MRI, an
echocardiogram (cine and H.264 video) and, for patient-1, a screening mammogram, each with its PDF report.
A fixed seed makes it the same on every machine, so importing it again finds only duplicates.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

from emage_cli import __version__
from emage_cli.synthetic.generator import GenerationRequest, generate

DEMO_SEED: Final = 20260101
DEMO_FORMAT: Final = 2
"""Bumped whenever the generator's output changes (2: care relationships in the identification sequences),
so that a cached demo set of an older format is never loaded."""
DEMO_REQUEST: Final = GenerationRequest(patients=2, slices=200, frames=40, seed=DEMO_SEED)
_COMPLETE_SUFFIX: Final = ".complete"


def default_cache_dir() -> Path:
    """``$EMAGE_CACHE/demo`` (the Makefile's download cache, default ``~/.cache/emage``)."""
    base = Path(os.environ.get("EMAGE_CACHE") or Path.home() / ".cache" / "emage")
    return base / "demo"


def demo_dataset(cache_dir: Path, *, regenerate: bool = False) -> Path:
    """The folder of the demo set for this version and seed, generated on first use.

    A folder is used only once its generation completed (a marker file beside it says so): an interrupted
    run starts over instead of importing half a study.
    """
    folder = cache_dir / f"v{__version__}-format{DEMO_FORMAT}-seed{DEMO_SEED}"
    marker = folder.with_name(folder.name + _COMPLETE_SUFFIX)
    if regenerate or not marker.exists():
        marker.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        generate(folder, DEMO_REQUEST)
        marker.touch()
    return folder
