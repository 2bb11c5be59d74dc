"""INT8 of a graph with a 1-output-channel conv (a spatial attention gate, as in NTIRE 2022 teams
24 and 42): its per-channel weight scale has shape (1,), which bias correction turned into a
Python float; NumPy 2.4 refuses that for a 1-D array, so quantization died with an internal
TypeError ("only 0-dimensional arrays can be converted to Python scalars")."""

from __future__ import annotations

import torch
from torch import nn


class GatedSR(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1)
        self.tail, self.shuffle = nn.Conv2d(8, 48, 3, padding=1), nn.PixelShuffle(4)

    def forward(self, x):
        f = torch.relu(self.body(x))
        return self.shuffle(self.tail(f * torch.sigmoid(self.gate(f))))


def test_int8_of_a_graph_with_a_one_output_conv(tmp_path):
    from edgesr.export.onnx import export_onnx
    from edgesr.quant import QuantConfig, quantize_model
    from edgesr.spec import Spec

    torch.manual_seed(0)
    spec = Spec(arch="gated", scale=4)
    export_onnx(GatedSR().eval(), spec, tmp_path / "m.onnx")
    res = quantize_model(tmp_path / "m.onnx", tmp_path / "q.onnx", spec,
                         QuantConfig(profile="trt", psnr_budget=None, num_patches=4, progress=False))
    assert (tmp_path / "q.onnx").is_file() and abs(res.drop) < 1.0
