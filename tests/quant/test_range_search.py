"""Conv-input ranges chosen by the output error (edgesr/quant/range_search.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set
from edgesr.quant.range_search import fake_quant, qparams, search_ranges
from edgesr.spec import Spec

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1)


@pytest.mark.parametrize("symmetric,signed,lo,hi", [(False, False, -3.2, 55.0), (False, False, 0.0, 7.5),
                                                     (True, True, -4.0, 9.0), (False, True, -1.0, 2.0)])
def test_fake_quant_is_what_ort_writes_and_runs(symmetric, signed, lo, hi):
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qtype = TensorProto.INT8 if signed else TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
    zp_ort, scale_ort = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric=symmetric)
    scale, zp, _, _ = qparams(lo, hi, symmetric, signed)
    assert scale == pytest.approx(float(scale_ort), rel=1e-6) and zp == int(zp_ort)
    # the values ORT's QuantizeLinear -> DequantizeLinear produce on those parameters
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", qtype, [], [zp])])
    from edgesr.quant.evaluate import make_session

    x = np.random.default_rng(0).normal(0, 20, 5000).astype(np.float32)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    y = make_session(m.SerializeToString(), 1).run(None, {"x": x})[0]
    np.testing.assert_allclose(fake_quant(x, lo, hi, symmetric, signed), y, atol=1e-5 * scale)


class _HeavyTail(torch.nn.Module):
    """conv -> cube -> conv: the middle tensor is heavy-tailed (a few values set min-max)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        return torch.nn.functional.pixel_shuffle(self.b(h * h * h), 2)


def _model(tmp_path):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    net = _HeavyTail().eval()
    with torch.no_grad():
        net.a.weight.mul_(3.0)
    return export_onnx(net, Spec(arch="x", scale=2), tmp_path / "heavy.onnx", simplify=False).path


def test_a_heavy_tailed_input_gets_a_narrower_range_and_a_smaller_output_error(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    from edgesr.quant.evaluate import tensors_over_batches

    m = onnx.load(str(_model(tmp_path)))
    conv_b = [n for n in m.graph.node if n.op_type == "Conv"][1]
    t = conv_b.input[0]
    rng = np.random.default_rng(0)
    patches = rng.random((8, 3, 24, 24), dtype=np.float32)
    x = np.concatenate([v[0] for v in tensors_over_batches(m, [t], patches, 1)])
    ranges = TensorsData(CalibrationMethod.MinMax, {t: (np.float32(x.min()), np.float32(x.max()))})
    rep = search_ranges(m, ranges, patches, {conv_b.name}, symmetric=False, signed=False, threads=1)
    assert [c.tensor for c in rep.changed] == [t], rep
    c = rep.changed[0]
    assert c.factor < 1.0 and c.error < c.error_minmax
    assert rep.output_error is not None and rep.output_error_minmax is not None
    assert rep.output_error < rep.output_error_minmax  # the model's output, not only the conv's
    lo, hi = ranges[t].range_value
    assert float(hi) == pytest.approx(float(x.max()) * c.factor, rel=1e-5)
    assert float(lo) == pytest.approx(float(x.min()) * c.factor, rel=1e-5)


def test_session_runs_it_only_where_enabled_and_for_conv_inputs(tmp_path):
    path = _model(tmp_path)
    spec = Spec(arch="x", scale=2)
    ev = held_out_eval_set(2, max_side=96)
    on = QuantConfig(profile="openvino", psnr_budget=None, range_search=True, **FAST)
    with QuantSession(path, spec, on, eval_set=ev) as qs:
        rep = qs.range_report
    # the second conv's input was searched (the first one reads the exact 8-bit picture: skipped)
    assert rep is not None and rep["kept"] + len(rep["changed"]) == 1, rep
    off = QuantConfig(profile="openvino", psnr_budget=None, range_search=False, **FAST)
    with QuantSession(path, spec, off, eval_set=ev) as qs:
        assert qs.range_report is None
    cpu = QuantConfig(profile="cpu", psnr_budget=None, range_search=True, **FAST)  # ORT placement: not applicable
    with QuantSession(path, spec, cpu, eval_set=ev) as qs:
        assert qs.range_report is None
