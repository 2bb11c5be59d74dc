"""Every architecture family, listed explicitly (no import-time scanning).

`ARCHITECTURES` is the registry's list, in the order `edgesr.registry.detect` breaks priority
ties. Families import `edgesr.architecture`, never the registry.
"""

from . import (  # ETDS-repo families  # coverage
    abpn,
    ecbsr,
    elan,
    espcn,
    et_forms,
    etds,
    fmen,
    fsrcnn,
    ghostsr,
    igconv,
    omnisr,
    plain,
    rdbesa,
    recurrent,
    reprfn,
    repsr,
    rlfn,
    safmn,
    scnet,
    sesr,
    shufflemixer,
    span,
    swinir,
)

ARCHITECTURES = (
    ecbsr.ARCH, etds.ARCH, fmen.ARCH, rlfn.ARCH, reprfn.ARCH, repsr.ARCH, sesr.ARCH, span.ARCH,
    abpn.ARCH, espcn.ARCH, et_forms.ARCH, fsrcnn.ARCH, plain.PLAIN, plain.ONLY_ET,
    elan.ARCH, ghostsr.ARCH, igconv.ARCH, omnisr.ARCH, rdbesa.ARCH, recurrent.ARCH, safmn.ARCH, scnet.ARCH,
    shufflemixer.ARCH, swinir.ARCH,
)
