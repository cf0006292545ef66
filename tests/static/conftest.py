"""Makes the ``emage_static`` helper package importable by the tests beside it.

The suite runs with ``--import-mode=importlib``, which puts no test directory on ``sys.path``.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
