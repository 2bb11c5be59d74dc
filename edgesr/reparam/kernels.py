"""Pure math for structural reparameterization.

Every function takes and returns (kernel, bias) tensors and mutates nothing. A kernel
is (out, in/groups, kh, kw); a bias is (out,). Padding conventions: the fused conv is
a "same"-padded (zero padding) conv of the largest kernel size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KB = tuple[Tensor, Tensor]

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
EDGE_MASKS = {"sobelx": SOBEL_X, "sobely": SOBEL_Y, "laplacian": LAPLACIAN}


def edge_mask(kind: str, channels: int, dtype=torch.float32) -> Tensor:
    """Fixed depthwise (channels, 1, 3, 3) mask used by ECB edge branches."""
    m = torch.tensor(EDGE_MASKS[kind], dtype=dtype)
    return m.expand(channels, 1, 3, 3).clone()


def zero_bias(kernel: Tensor) -> Tensor:
    return torch.zeros(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)


def pad_kernel(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a centred odd kxk kernel to size x size (e.g. 1x1 -> 3x3)."""
    kh, kw = kernel.shape[-2:]
    if (size - kh) % 2 or (size - kw) % 2 or kh > size or kw > size:
        raise ValueError(f"cannot centre-pad a {kh}x{kw} kernel to {size}x{size}")
    ph, pw = (size - kh) // 2, (size - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def identity_kernel(channels: int, size: int = 3, groups: int = 1, dtype=torch.float32) -> Tensor:
    """Kernel of a conv that returns its input unchanged (in == out == channels)."""
    per_group = channels // groups
    k = torch.zeros(channels, per_group, size, size, dtype=dtype)
    c = size // 2
    for i in range(channels):
        k[i, i % per_group, c, c] = 1.0
    return k


def depthwise_to_dense(kernel: Tensor) -> Tensor:
    """(C, 1, k, k) depthwise kernel -> (C, C, k, k) dense kernel."""
    c = kernel.shape[0]
    dense = torch.zeros(c, c, *kernel.shape[-2:], dtype=kernel.dtype, device=kernel.device)
    idx = torch.arange(c)
    dense[idx, idx] = kernel[:, 0]
    return dense


def fuse_conv_bn(kernel: Tensor, bias: Tensor | None, bn_mean: Tensor, bn_var: Tensor,
                 bn_weight: Tensor | None, bn_bias: Tensor | None, eps: float) -> KB:
    """conv -> BatchNorm(eval) as one conv."""
    bias = zero_bias(kernel) if bias is None else bias
    gamma = torch.ones_like(bn_mean) if bn_weight is None else bn_weight
    beta = torch.zeros_like(bn_mean) if bn_bias is None else bn_bias
    std = torch.sqrt(bn_var + eps)
    t = gamma / std
    return kernel * t.reshape(-1, 1, 1, 1), beta + (bias - bn_mean) * t


def bn_as_conv(bn_mean: Tensor, bn_var: Tensor, bn_weight: Tensor | None, bn_bias: Tensor | None,
               eps: float, size: int = 3, groups: int = 1) -> KB:
    """A BatchNorm on an identity branch, as a size x size conv."""
    k = identity_kernel(bn_mean.shape[0], size, groups, dtype=bn_mean.dtype)
    return fuse_conv_bn(k, None, bn_mean, bn_var, bn_weight, bn_bias, eps)


def add_branches(*branches: KB) -> KB:
    """Sum of parallel convs (same input, same stride) -> one conv of the largest size."""
    size = max(max(k.shape[-2:]) for k, _ in branches)  # both dims: 3x1 + 1x3 -> 3x3
    kernel = sum(pad_kernel(k, size) for k, _ in branches)
    bias = sum(b for _, b in branches)
    return kernel, bias


def merge_1x1_kxk(k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor) -> KB:
    """1x1 conv (k0, b0) followed by a kxk conv (k1, b1) -> one kxk conv.

    Exact when the 1x1 output is padded with its bias value b0 at the borders (as ECBSR's
    SeqConv3x3 does), or when the kxk conv is unpadded. With plain zero padding of the
    intermediate the border pixels differ; use `merge_1x1_kxk_zero_pad` semantics instead.
    """
    kernel = F.conv2d(k1, k0.permute(1, 0, 2, 3))
    bias = (k1 * b0.reshape(1, -1, 1, 1)).sum(dim=(1, 2, 3)) + b1
    return kernel, bias


def merge_1x1_depthwise(k0: Tensor, b0: Tensor, dw_kernel: Tensor, dw_bias: Tensor) -> KB:
    """1x1 conv followed by a depthwise kxk conv (bias-padded borders) -> one kxk conv."""
    return merge_1x1_kxk(k0, b0, depthwise_to_dense(dw_kernel), dw_bias)


def merge_kxk_1x1(k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor) -> KB:
    """kxk conv (k0, b0) followed by a 1x1 conv (k1, b1) -> one kxk conv (exact, any padding)."""
    w1 = k1[:, :, 0, 0]  # (out, mid)
    kernel = torch.einsum("om,mihw->oihw", w1, k0)
    bias = w1 @ b0 + b1
    return kernel, bias


def merge_sequential_kxk(k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor) -> KB:
    """Two stacked unpadded convs (ka then kb) -> one (ka+kb-1) conv, valid-padding semantics.

    Kernels may be non-square: the result is (kah+kbh-1) x (kaw+kbw-1).
    """
    kah, kaw = k0.shape[-2:]
    kernel = F.conv2d(k1, k0.permute(1, 0, 2, 3).flip(-1, -2), padding=(kah - 1, kaw - 1))
    bias = (k1.sum(dim=(2, 3)) @ b0) + b1
    return kernel, bias


# ---- BatchNorm before a conv, residuals, collapsible blocks (RepSR/SESR/SPAN/FMEN/RepRFN) ----

def bn_scale_shift(bn_mean: Tensor, bn_var: Tensor, bn_weight: Tensor | None, bn_bias: Tensor | None,
                   eps: float) -> tuple[Tensor, Tensor]:
    """BatchNorm(eval) as y = scale * x + shift (per channel); `shift` is what BN maps 0 to."""
    gamma = torch.ones_like(bn_mean) if bn_weight is None else bn_weight
    beta = torch.zeros_like(bn_mean) if bn_bias is None else bn_bias
    scale = gamma / torch.sqrt(bn_var + eps)
    return scale, beta - bn_mean * scale


def fuse_bn_conv(bn_mean: Tensor, bn_var: Tensor, bn_weight: Tensor | None, bn_bias: Tensor | None,
                 eps: float, kernel: Tensor, bias: Tensor | None) -> KB:
    """BatchNorm(eval) followed by a conv (groups=1) -> one conv.

    Exact when the conv's padding is applied to the input *before* the BN, i.e. the BN
    output is padded with the BN shift (FMEN's HFAB does this explicitly). With the BN
    output zero-padded instead, border pixels differ.
    """
    scale, shift = bn_scale_shift(bn_mean, bn_var, bn_weight, bn_bias, eps)
    bias = zero_bias(kernel) if bias is None else bias
    fused_bias = bias + kernel.sum(dim=(2, 3)) @ shift
    return kernel * scale.reshape(1, -1, 1, 1), fused_bias


def add_identity(kernel: Tensor, bias: Tensor, groups: int = 1) -> KB:
    """conv(x) + x as one conv (needs out == in; kernel odd-sized and square)."""
    out_c, _, kh, kw = kernel.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"identity needs an odd square kernel, got {kh}x{kw}")
    ident = identity_kernel(out_c, kh, groups, dtype=kernel.dtype).to(kernel.device)
    if ident.shape != kernel.shape:
        raise ValueError(f"identity needs in == out channels, got kernel {tuple(kernel.shape)}")
    return kernel + ident, bias


def merge_1x1_kxk_1x1(k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor) -> KB:
    """1x1 -> kxk -> 1x1 chain as one kxk conv.

    Same border rule as `merge_1x1_kxk`: exact when the first 1x1's output is padded with
    its bias (e.g. SPAN's Conv3XC zero-pads the *input* of the first 1x1).
    """
    k, b = merge_1x1_kxk(k0, b0, k1, b1)
    return merge_kxk_1x1(k, b, k2, b2)

