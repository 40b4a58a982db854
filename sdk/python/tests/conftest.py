"""Import sluice_worker from this checkout's src/ so `python3 -m pytest sdk/python` works without
installing it. src/ goes first even when the package is installed: an installed copy (e.g. one
`pip install ./sdk/python` put into the project venv) may be older than the tree under test."""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
