"""Small building blocks shared by several families."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU()
    if kind == "linear":
        return nn.Identity()
    raise ValueError(f"unsupported activation {kind!r}")


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def repeat_shortcut(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upsampling in channel space (before PixelShuffle)."""
    return torch.repeat_interleave(x, scale * scale, dim=1)


def conv_from_kernel(kernel: torch.Tensor, bias: torch.Tensor, groups: int = 1) -> nn.Conv2d:
    """An nn.Conv2d ('same' zero padding) holding the given kernel and bias."""
    out_c, in_per_group, kh, kw = kernel.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), padding=(kh // 2, kw // 2), groups=groups)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


def pad_with_bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Pad by 1 with each channel's bias value (keeps 1x1->3x3 fusion exact at borders).

    Written as pad(y - b) + b rather than slice assignment so it exports to ONNX with
    dynamic H and W (in-place border writes become Expand nodes with fixed shapes).
    """
    b = bias.view(1, -1, 1, 1)
    return F.pad(y - b, (1, 1, 1, 1), "constant", 0.0) + b
