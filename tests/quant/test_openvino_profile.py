"""The `openvino` INT8 profile's graph: what OpenVINO runs fastest at the same or better picture.

benchmarks/int8_ov_profile.py (docs/int8.md, "OpenVINO findings") showed an int8 residual Add runs as
an f32 eltwise in OpenVINO anyway, and the Q/DQ on its inputs added Convert + zero-point Subtract
passes over full-size tensors (SPAN) or an extra FakeQuantize (ECBSR's output Add).
"""

from __future__ import annotations

import onnx
import pytest
import torch

from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set
from edgesr.registry import build_variant

pytest.importorskip("openvino", reason="needs pip install 'edgesr[openvino]'")

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1, psnr_budget=None)


@pytest.fixture(scope="module")
def ecbsr(tmp_path_factory):
    """ECBSR-M4C16 x2 deploy form: its output is PixelShuffle(body(x) + repeat(x)), a residual Add."""
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    v = build_variant("ecbsr-m4c16-x2", form="deploy")
    d = tmp_path_factory.mktemp("ecbsr")
    return export_onnx(v.module.eval(), v.spec, d / "ecbsr.onnx", simplify=False).path, v.spec


def _dequantized_inputs(model, op_type: str) -> list[list[bool]]:
    """For each node of `op_type`: which of its data inputs come from a DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [[producer.get(t) is not None and producer[t].op_type == "DequantizeLinear" for t in n.input[:2]]
            for n in model.graph.node if n.op_type == op_type]


@pytest.mark.parametrize("profile", ["openvino", "trt"])
def test_residual_add_is_int8_only_where_the_runtime_uses_it(ecbsr, profile, tmp_path):
    path, spec = ecbsr
    with QuantSession(path, spec, QuantConfig(profile=profile, **FAST), eval_set=held_out_eval_set(2, max_side=64)) as qs:
        kinds = {layer.op_type for layer in qs.layers}
        m = onnx.load(str(qs.build(tmp_path / "all_int8.onnx")))
    adds = _dequantized_inputs(m, "Add")
    assert adds, "the model has a residual Add"
    convs = _dequantized_inputs(m, "Conv")
    assert convs and all(inp == [True, True] for inp in convs)  # every conv reads int8 data and weights
    if profile == "openvino":
        assert "Add" not in kinds  # not a layer of the search either
        assert all(not any(inp) for inp in adds)
    else:  # TensorRT fuses a quantized residual Add into the conv before it
        assert "Add" in kinds and all(all(inp) for inp in adds)


class _Gate(torch.nn.Module):
    """SPAN's block tail: one conv output read by the next conv (int8) and by a Sigmoid gate (float)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        f = self.a(x)
        g = self.b(f) * (torch.sigmoid(f) - 0.5)
        return torch.nn.functional.pixel_shuffle(self.up(g), 2)


def test_float_consumers_read_the_float_tensor(tmp_path):
    from edgesr.export.onnx import export_onnx
    from edgesr.quant.float_layers import float_consumers_read_float
    from edgesr.spec import Spec

    torch.manual_seed(0)
    spec = Spec(arch="x", scale=2)
    path = export_onnx(_Gate().eval(), spec, tmp_path / "gate.onnx", simplify=False).path
    cfg = QuantConfig(profile="openvino", **FAST)
    with QuantSession(path, spec, cfg, eval_set=held_out_eval_set(2, max_side=64)) as qs:
        m = onnx.load(str(qs.build(tmp_path / "q.onnx")))
        float_b = next(layer.name for layer in qs.layers if "/b/" in layer.name)
        mixed = onnx.load(str(qs.build(tmp_path / "mixed.onnx", [float_b])))
    producer = {o: n for n in m.graph.node for o in n.output}
    sig = next(n for n in m.graph.node if n.op_type == "Sigmoid")
    assert producer[sig.input[0]].op_type == "Conv"  # the conv's float output, no Q/DQ copy
    assert all(row == [True, True] for row in _dequantized_inputs(m, "Conv"))  # the convs stay int8
    assert float_consumers_read_float(m) == []  # nothing left to rewire
    used = {t for n in m.graph.node for t in n.input} | {o.name for o in m.graph.output}
    assert all(n.output[0] in used for n in m.graph.node)  # no dangling Q/DQ
    # a conv the search keeps float reads float too (no quantization noise on its input)
    producer = {o: n for n in mixed.graph.node for o in n.output}
    b = next(n for n in mixed.graph.node if n.name == float_b)
    assert producer[b.input[0]].op_type == "Conv" and b.input[1] not in producer
