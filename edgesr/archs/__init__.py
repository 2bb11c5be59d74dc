"""Every architecture family, listed explicitly (no import-time scanning).

`ARCHITECTURES` is the registry's list, in the order `edgesr.registry.detect` breaks priority
ties. Families import `edgesr.architecture`, never the registry.
"""

from . import ecbsr, etds, fmen, reprfn, repsr, rlfn, sesr, span
from . import abpn, espcn, et_forms, fsrcnn, plain  # ETDS-repo families
from . import elan, ghostsr, igconv, omnisr, rdbesa, recurrent, safmn, scnet, shufflemixer, swinir  # coverage

ARCHITECTURES = (
    ecbsr.ARCH, etds.ARCH, fmen.ARCH, rlfn.ARCH, reprfn.ARCH, repsr.ARCH, sesr.ARCH, span.ARCH,
    abpn.ARCH, espcn.ARCH, et_forms.ARCH, fsrcnn.ARCH, plain.PLAIN, plain.ONLY_ET,
    elan.ARCH, ghostsr.ARCH, igconv.ARCH, omnisr.ARCH, rdbesa.ARCH, recurrent.ARCH, safmn.ARCH, scnet.ARCH,
    shufflemixer.ARCH, swinir.ARCH,
)
