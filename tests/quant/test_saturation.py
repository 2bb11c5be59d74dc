"""Ranges of Tanh / Sigmoid inputs end where the activation saturates (edgesr/quant/saturation.py)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set
from edgesr.quant.saturation import saturation_bound
from edgesr.spec import Spec

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1)


class _TanhNet(torch.nn.Module):
    """ESPCN-like: conv -> tanh -> conv -> pixel shuffle -> sigmoid, one channel saturated hard."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 12, 3, padding=1)
        with torch.no_grad():
            self.a.bias[0] = 300.0  # tanh(300 + ...) = 1: a channel far into saturation

    def forward(self, x):
        return torch.sigmoid(torch.nn.functional.pixel_shuffle(self.b(torch.tanh(self.a(x))), 2))


def test_bounds_are_half_an_output_step():
    t, s = saturation_bound("Tanh"), saturation_bound("Sigmoid")
    assert 1 - math.tanh(t) == pytest.approx(1 / 255, rel=1e-6)  # half of the 2/255 step of [-1, 1]
    assert 1 - 1 / (1 + math.exp(-s)) == pytest.approx(0.5 / 255, rel=1e-6)


def test_a_saturated_channel_does_not_set_the_range(tmp_path):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    spec = Spec(arch="x", scale=2)
    path = export_onnx(_TanhNet().eval(), spec, tmp_path / "tanh.onnx", simplify=False).path
    ev = held_out_eval_set(2, max_side=96)
    with QuantSession(path, spec, QuantConfig(profile="cpu", psnr_budget=None, **FAST), eval_set=ev) as qs:
        clipped = qs.saturation_clipped
        assert max(hi for _, hi in clipped.values()) > 250  # the calibrated range reached 300
        m = onnx.load(str(qs.build(tmp_path / "int8.onnx")))
        drop = qs.psnr_fp32 - qs.psnr_int8_all
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    tanh_in = next(n.input[0] for n in m.graph.node if n.op_type == "Tanh")
    dq = next(n for n in m.graph.node if n.output[0] == tanh_in)
    assert dq.op_type == "DequantizeLinear"
    assert float(inits[dq.input[1]]) <= 2 * saturation_bound("Tanh") / 255 * 1.001
    assert drop < 0.5, drop  # the full range (300) left the other channels ~1 level: >10 dB
    assert np.isfinite(drop)
