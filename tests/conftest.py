"""Make the in-tree packages and test helpers importable without an install."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("runtime", "converter", "models", "fleet", "tests"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
