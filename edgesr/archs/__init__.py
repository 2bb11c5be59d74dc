"""Every architecture family, imported explicitly (no import-time scanning)."""

from . import ecbsr, etds, fmen, reprfn, repsr, rlfn, sesr, span  # noqa: F401
from . import abpn, espcn, et_forms, fsrcnn, plain  # noqa: F401  (ETDS-repo families)
from . import elan, ghostsr, igconv, rdbesa, recurrent, safmn, scnet, shufflemixer  # noqa: F401  (coverage families)
