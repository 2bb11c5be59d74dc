"""Every ETDS-repo checkpoint in ../shared: detection with no hint, strict loading,
the ET pass against the official ET checkpoints, and the behavioural detection rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.archs import fsrcnn, plain
from edgesr.checkpoint import load_state_dict
from edgesr.errors import KeyMismatch, ScaleMismatch
from edgesr.registry import load_model
from edgesr.reparam.et import equivalent_transform_loaded

pytestmark = pytest.mark.shared

_ETDS_SIZES = {"M5C16": "t", "M4C32": "s", "M6C32": "m", "M7C48": "l"}


def expected(rel: str) -> tuple[str, str, int, str]:
    """(arch, form, scale, variant) from the file's name in the ETDS repo's naming scheme."""
    name = Path(rel).stem
    scale = int(re.search(r"_x(\d)", name).group(1))
    size = re.search(r"_(M\d+C\d+)_", name + "_")
    mc = size.group(1).lower() if size else ""
    if name.startswith("ECBSR_ET_"):
        return "ecbsr-et", "deploy", scale, f"ecbsr-et-{mc}-x{scale}"
    if name.startswith("ECBSR_"):
        return "ecbsr", "deploy", scale, f"ecbsr-{mc}-x{scale}"
    if name.startswith("ABPN_ET_"):
        return "abpn", "deploy", scale, f"abpn-{mc}-x{scale}"
    if name.startswith("ABPN_"):
        return "abpn", "training", scale, f"abpn-{mc}-x{scale}"
    if name.startswith("ESPCN_"):
        return "espcn", "deploy", scale, f"espcn-x{scale}"
    if name.startswith("FSRCNN_"):
        return "fsrcnn", "deploy", scale, f"fsrcnn-x{scale}"
    if name.startswith("Plain_"):
        return "plain", "deploy", scale, f"plain-{mc}-x{scale}"
    if name.endswith("_only_ET"):
        return "etds-only-et", "training", scale, f"etds-only-et-{mc}-x{scale}"
    if name.startswith("ETDS_") and "ablations" in rel:  # dual-stream training-form ablations
        return "etds", "training", scale, f"etds-{_ETDS_SIZES[size.group(1)]}-x{scale}"
    if name.startswith("ETDS_"):
        return "etds", "deploy", scale, f"etds-{_ETDS_SIZES[size.group(1)]}-x{scale}"
    raise AssertionError(f"no expectation for {rel}")


FAMILIES = ("ABPN", "ECBSR", "ESPCN", "ETDS", "FSRCNN", "Plain")
ALL = sorted(f"{fam}/{n}" for fam, ns in {
    "ABPN": [f"ABPN{e}_{mc}_x{s}.pth" for e in ("", "_ET") for mc in ("M4C28", "M6C40") for s in (2, 3, 4)],
    "ECBSR": [f"ECBSR{e}_{mc}_x{s}.pth" for e in ("", "_ET") for mc in ("M4C16", "M4C32", "M6C40") for s in (2, 3, 4)],
    "ESPCN": [f"ESPCN_x{s}.pth" for s in (2, 3, 4)],
    "FSRCNN": [f"FSRCNN_x{s}.pth" for s in (2, 3, 4)],
    "Plain": ["Plain_M6C32_x4.pth"],
    "ETDS": [f"ETDS_{mc}_x{s}.pth" for mc in _ETDS_SIZES for s in (2, 3, 4)]
    + [f"ablations/ETDS_M6C32_x4_{a}.pth" for a in ("advance_residual", "normal_loss", "only_ET", "only_residual")],
}.items() for n in ns)


def test_every_file_is_covered(ckpt_dir):
    on_disk = sorted(str(p.relative_to(ckpt_dir)) for fam in FAMILIES for p in (ckpt_dir / fam).rglob("*.pth"))
    assert on_disk == ALL


@pytest.mark.parametrize("rel", ALL)
def test_detected_without_hint(ckpt_dir, rel):
    arch, form, scale, variant = expected(rel)
    lm = load_model(ckpt_dir / rel)
    assert (lm.arch.name, lm.spec.form, lm.spec.scale, lm.spec.variant) == (arch, form, scale, variant)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        y = lm.module(x)
    assert y.shape == (1, 3, 12 * scale, 10 * scale) and torch.isfinite(y).all()


# ---- the ET pass reproduces the official ET checkpoints -------------------------------------

ET_PAIRS = [p for p in ALL if re.match(r"(ECBSR|ABPN)/(ECBSR|ABPN)_M", p)]


def _set5_crop(set5_dir: Path, scale: int) -> torch.Tensor:
    from PIL import Image

    path = sorted((set5_dir / "LR_bicubic" / f"X{scale}").glob("*.png"))[0]
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a[:40, :36].copy()).permute(2, 0, 1)[None]


@pytest.mark.parametrize("rel", ET_PAIRS)
def test_et_matches_official_et_checkpoint(ckpt_dir, set5_dir, rel):
    src = load_model(ckpt_dir / rel)
    official = load_model(ckpt_dir / rel.replace("_M", "_ET_M", 1))
    et = equivalent_transform_loaded(src)
    assert (et.arch.name, et.spec.form, et.spec.variant) == (official.arch.name, "deploy", official.spec.variant)
    assert type(et.module) is type(official.module)
    mine, theirs = et.module.state_dict(), official.module.state_dict()
    assert list(mine) == list(theirs)  # same keys, same order: loadable as the official file
    assert max(float((mine[k] - theirs[k]).abs().max()) for k in mine) < 1e-6
    g = torch.Generator().manual_seed(0)
    xs = [_set5_crop(set5_dir, src.spec.scale), torch.rand(2, 3, 17, 19, generator=g)]
    with torch.no_grad():
        for x in xs:
            ref = src.module(x).clamp(0, 1)
            assert (et.module(x) - official.module(x)).abs().max() < 1e-5
            assert (et.module(x) - ref).abs().max() < 1e-5


def test_only_et_ablation_transforms_to_etds_deploy(ckpt_dir):
    src = load_model(ckpt_dir / "ETDS/ablations/ETDS_M6C32_x4_only_ET.pth")
    et = equivalent_transform_loaded(src)
    assert (et.arch.name, et.spec.variant) == ("etds", "etds-m-x4")  # 29 + 3 carried = 32 channels
    x = torch.rand(2, 3, 16, 14, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (et.module(x) - src.module(x).clamp(0, 1)).abs().max() < 1e-5


# ---- behavioural detection ----------------------------------------------------------------

def test_plain_vs_only_et_by_behaviour(ckpt_dir):
    p_plain, p_res, nearest = plain.residual_errors(load_state_dict(ckpt_dir / "Plain/Plain_M6C32_x4.pth"))
    o_plain, o_res, _ = plain.residual_errors(load_state_dict(ckpt_dir / "ETDS/ablations/ETDS_M6C32_x4_only_ET.pth"))
    assert p_plain * 20 < p_res  # Plain reproduces the image itself
    assert o_res * 20 < o_plain  # only_ET's body adds detail to the nearest-upsampled input ...
    assert o_res * 4 < nearest  # ... and beats nearest upsampling alone


def test_untrained_plain_layout_stays_plain():
    from edgesr.registry import build_variant, detect

    for name, form in (("plain-m6c32-x4", "deploy"), ("etds-only-et-m6c32-x4", "training")):
        sd = build_variant(name, form).module.state_dict()  # random init: no behaviour to read
        assert plain.residual_verdict(sd) is False
        assert detect(sd)[0].name == "plain"


def test_plain_hint_forces_plain_reading(ckpt_dir):
    lm = load_model(ckpt_dir / "ETDS/ablations/ETDS_M6C32_x4_only_ET.pth", arch="plain")
    assert lm.arch.name == "plain"


def test_fsrcnn_scale_by_behaviour(ckpt_dir):
    for s in (2, 3, 4):
        errs = fsrcnn.scale_errors(load_state_dict(ckpt_dir / f"FSRCNN/FSRCNN_x{s}.pth"))
        best = min(errs, key=errs.get)
        assert best == s
        assert all(errs[o] > 20 * errs[s] for o in errs if o != s)


def test_untrained_fsrcnn_needs_a_scale_hint():
    from edgesr.registry import build_variant

    sd = build_variant("fsrcnn-x3", "deploy").module.state_dict()
    with pytest.raises(ScaleMismatch, match="pass --scale"):
        load_model(sd)
    assert load_model(sd, scale=3).spec.variant == "fsrcnn-x3"


# ---- errors --------------------------------------------------------------------------------

WRONG_SCALE = ["ABPN/ABPN_M4C28_x2.pth", "ABPN/ABPN_ET_M4C28_x3.pth", "ECBSR/ECBSR_ET_M4C16_x3.pth",
               "ESPCN/ESPCN_x4.pth", "FSRCNN/FSRCNN_x3.pth", "Plain/Plain_M6C32_x4.pth",
               "ETDS/ablations/ETDS_M6C32_x4_only_ET.pth"]


@pytest.mark.parametrize("rel", WRONG_SCALE)
def test_wrong_scale_hint(ckpt_dir, rel):
    true = expected(rel)[2]
    with pytest.raises(ScaleMismatch, match=f"x{true}"):
        load_model(ckpt_dir / rel, scale=2 if true != 2 else 4)
    assert load_model(ckpt_dir / rel, scale=true).spec.scale == true


# (file, a key that is not needed for detection)
MANGLE = [("ABPN/ABPN_M4C28_x4.pth", "backbone.3.0.weight"), ("ABPN/ABPN_ET_M6C40_x3.pth", "backbone.8.bias"),
          ("ECBSR/ECBSR_ET_M4C32_x2.pth", "backbone.2.1.weight"), ("ESPCN/ESPCN_x3.pth", "conv2.bias"),
          ("FSRCNN/FSRCNN_x2.pth", "mid_part.4.weight"), ("Plain/Plain_M6C32_x4.pth", "backbone_convs.3.weight"),
          ("ETDS/ablations/ETDS_M6C32_x4_only_ET.pth", "backbone_convs.1.bias")]


@pytest.mark.parametrize("rel, key", MANGLE)
def test_missing_extra_misshaped_keys(ckpt_dir, rel, key):
    sd = load_state_dict(ckpt_dir / rel)
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(KeyMismatch, match=rf"missing keys: .*{re.escape(key)}"):
        load_model(missing)
    extra = {**sd, "spurious.weight": torch.zeros(3)}
    with pytest.raises(KeyMismatch, match=r"unexpected keys: spurious\.weight"):
        load_model(extra)
    bad = dict(sd)
    bad[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    with pytest.raises(KeyMismatch, match=rf"shape mismatches: {re.escape(key)}"):
        load_model(bad)
