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
