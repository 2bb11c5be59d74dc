"""Every architecture family, imported explicitly (no import-time scanning)."""

from . import ecbsr, etds, fmen, reprfn, repsr, rlfn, sesr, span  # noqa: F401
from . import abpn, espcn, et_forms, fsrcnn, plain  # noqa: F401  (ETDS-repo families)
from . import elan, ghostsr, igconv, omnisr, rdbesa, recurrent, safmn, scnet, shufflemixer, swinir  # noqa: F401,E501  (coverage)
