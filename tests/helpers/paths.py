"""Where things are, independent of which tests/<area>/ folder asks."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DATA = TESTS / "data"  # stand-ins for users' code (tests/data/user_repo), kept as users write it
