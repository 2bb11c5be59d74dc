"""Acceptance: INT8 (trt profile, run in ONNX Runtime) within 0.10 dB of fp32 on Set5 x4.

Real checkpoints from ../shared, deploy forms, the DEFAULT calibration data (package
sample photographs, not Set5) and the default mixed-precision budget, which is checked on
held-out sample images - Set5 is only the final exam here.
"""

from __future__ import annotations

import onnx
import pytest

from edgesr.quant import QuantConfig, check_trt_qdq, quantize_model
from edgesr.quant import testset_eval_set as load_eval_pairs  # not "test*": pytest would collect it

MODELS = [("ETDS", "ETDS_M5C16_x4"), ("ETDS", "ETDS_M6C32_x4"), ("ECBSR", "ECBSR_M4C16_x4"),
          ("ABPN", "ABPN_M4C28_x4")]
BUDGET = 0.10


@pytest.fixture(scope="module")
def set5_x4(set5_dir):
    return load_eval_pairs(set5_dir, 4)


@pytest.fixture(scope="module")
def fp32_exports(ckpt_dir, tmp_path_factory):
    """Deploy-form fp32 ONNX of each model, exported once per session."""
    from edgesr.export.onnx import export_onnx
    from edgesr.registry import load_model
    from edgesr.reparam import reparameterize

    out = tmp_path_factory.mktemp("fp32")
    paths = {}
    for family, name in MODELS:
        lm = load_model(ckpt_dir / family / f"{name}.pth")
        paths[name] = (export_onnx(reparameterize(lm.module), lm.spec, out / f"{name}.onnx").path, lm.spec)
    return paths


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", [m for _, m in MODELS])
def test_int8_trt_holds_set5_psnr(name, fp32_exports, set5_x4, tmp_path):
    path, spec = fp32_exports[name]
    cfg = QuantConfig(profile="trt", threads=1, progress=False)  # default calibration + budget
    res = quantize_model(path, tmp_path / f"{name}_int8.onnx", spec, cfg, test_set=set5_x4)
    report = (f"{name}: Set5 fp32 {res.test_psnr_fp32:.3f} int8 {res.test_psnr_int8:.3f} "
              f"(drop {res.test_drop:.3f} dB); held-out drop {res.drop:.3f}; "
              f"float layers: {res.float_layers or 'none'}")
    print(report)
    assert res.calibration["images"] and not any(n.lower().startswith(("baby", "bird", "butterfly", "head", "woman"))
                                                 for n in res.calibration["images"])
    assert res.test_psnr_fp32 > 30.5, report  # the export is the published model
    assert res.test_drop <= BUDGET, report
    assert isinstance(res.float_layers, list) and set(res.float_layers) <= set(res.layers)
    m = onnx.load(str(res.path))
    assert check_trt_qdq(m) == []
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) > 0
