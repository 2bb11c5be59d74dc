"""The uint8 profiles (`cpu`, `openvino`) prepare with 96-px and 48-px LR calibration patches and keep
the one whose all-int8 graph loses less on the evaluation set (docs/int8.md, "Calibration patch size":
96 px lowered the held-out drop of ETDS-T/M/L, ECBSR and ABPN, not of RLFN / SPAN). ETDS-L x4 is the
model that needed it: with 48-px patches its `openvino` graph lost 0.137 dB on Set5, over the 0.10 dB
target; Set5 is scored after the fact, never part of a choice."""

from __future__ import annotations

import numpy as np
import pytest

from edgesr.quant import QuantConfig, quantize_model
from edgesr.quant import testset_eval_set as load_eval_pairs  # not "test*": pytest would collect it
from edgesr.quant.quantize import SMALL_PATCH, calibration_source
from edgesr.spec import Spec


def test_profile_patch_sizes():
    assert QuantConfig(profile="openvino").quant_profile.calibration_patch == 96
    assert QuantConfig(profile="cpu").quant_profile.calibration_patch == 96
    assert QuantConfig(profile="trt").quant_profile.calibration_patch == 48
    src = calibration_source(Spec(arch="x", scale=2), None, QuantConfig(profile="cpu", num_patches=2, progress=False),
                             "input")
    assert src.patches.shape == (2, 3, 96, 96)


def test_small_calibration_images_fall_back_to_48_px(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(2):  # 200 px: too small for 96 x 4 = 384, fine for 48 x 4 = 192
        Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    spec = Spec(arch="x", scale=4)
    src = calibration_source(spec, tmp_path, QuantConfig(profile="openvino", num_patches=2, progress=False), "input")
    assert src.patches.shape[-1] == SMALL_PATCH
    from edgesr.errors import DatasetError

    with pytest.raises(DatasetError, match="at least"):  # an explicit size is the user's: no fallback
        calibration_source(spec, tmp_path, QuantConfig(profile="openvino", patch_size=96, progress=False), "input")


@pytest.mark.shared
@pytest.mark.slow
def test_etds_l_openvino_holds_set5(ckpt_dir, set5_dir, tmp_path):
    pytest.importorskip("openvino", reason="needs pip install 'edgesr[openvino]'")
    from edgesr.export.onnx import export_onnx
    from edgesr.registry import load_model

    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M7C48_x4.pth")
    path = export_onnx(lm.module.eval(), lm.spec, tmp_path / "fp32.onnx").path
    res = quantize_model(path, tmp_path / "int8.onnx", lm.spec, QuantConfig(profile="openvino", threads=1, progress=False),
                         test_set=load_eval_pairs(set5_dir, 4))
    report = (f"ETDS-L openvino: patches {res.calibration['patch_size']} px; held-out drop {res.drop:.3f}, "
              f"Set5 drop {res.test_drop:.3f}, float layers {res.float_layers}")
    print(report)
    choice = res.calibration["patch_size_choice"]
    assert set(choice["all_int8_drop"]) == {"96", "48"}, report
    assert choice["chosen"] == int(min(choice["all_int8_drop"], key=choice["all_int8_drop"].get)), report
    assert res.calibration["patch_size"] == choice["chosen"] == 96, report
    assert abs(res.psnr_fp32 - res.psnr_int8_all - choice["all_int8_drop"]["96"]) < 1e-9, report
    assert res.within_budget and res.test_drop <= 0.10, report


def test_the_choice_keeps_the_lower_all_int8_drop(tmp_path):
    """A tiny random-weight ETDS x2: both preparations run, the kept one is the lower all-int8 drop on the
    evaluation set, and an explicit patch size makes no choice."""
    import torch

    from edgesr.export.onnx import export_onnx
    from edgesr.quant.calibration import held_out_eval_set
    from edgesr.quant.quantize import QuantSession
    from edgesr.registry import build_variant
    from edgesr.reparam import reparameterize

    torch.manual_seed(0)
    m = build_variant("etds-t-x2", form="training")
    path = export_onnx(reparameterize(m.module).eval(), m.spec, tmp_path / "m.onnx", simplify=False).path
    ev = held_out_eval_set(2, max_side=96)
    fast = dict(num_patches=4, batch_size=4, progress=False, threads=1, psnr_budget=None)
    with QuantSession(path, m.spec, QuantConfig(profile="cpu", **fast), eval_set=ev) as qs:
        c = qs.patch_choice
        assert c is not None and set(c["all_int8_drop"]) == {"96", "48"}
        assert c["chosen"] == int(min(c["all_int8_drop"], key=c["all_int8_drop"].get)) == qs.source.patch_size
        assert abs(qs.psnr_fp32 - qs.psnr_int8_all - c["all_int8_drop"][str(c["chosen"])]) < 1e-9
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(2):  # 150 px: too small for 96 x 2, fine for 48 x 2 - one candidate, no choice
        Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with QuantSession(path, m.spec, QuantConfig(profile="cpu", **fast), calibration=tmp_path, eval_set=ev) as qs:
        assert qs.patch_choice is None and qs.source.patch_size == SMALL_PATCH
    with QuantSession(path, m.spec, QuantConfig(profile="cpu", patch_size=32, **fast), eval_set=ev) as qs:
        assert qs.patch_choice is None and qs.source.patch_size == 32
    with QuantSession(path, m.spec, QuantConfig(profile="trt", **fast), eval_set=ev) as qs:
        assert qs.patch_choice is None and qs.source.patch_size == 48

