"""Every architecture family, imported explicitly (no import-time scanning)."""

from . import ecbsr, etds  # noqa: F401
