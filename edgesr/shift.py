"""Parameter-free spatial shifts of channel groups, in four exportable forms.

A shift ``(dy, dx)`` moves a channel group so that ``out[..., y, x] = in[..., y - dy, x - dx]``,
with zeros shifted in at the borders (the convention of ``torch.roll``, but zero-filled).
SCNet's ``Shift8``, ELAN's shift-conv and GhostSR's fixed deploy-time shift are all a list of
``(first_channel, end_channel, dy, dx)`` groups covering every channel in order.

Forms (``mode``), all exact; they differ only in the ONNX graph they produce:

``"slice"``  pad once by the largest offset, one Slice per group, one Concat (Pad/Slice/Concat).
``"roll"``   pad once, ``torch.roll`` per group, crop (the exporter turns roll into Slice+Concat,
             so this is the slice form with twice the slices).
``"conv"``   one fixed depthwise kxk convolution with one-hot kernels.
``"index"``  the reference implementations' form: ``out = zeros_like(x); out[:, a:b] = ...``
             (in-place slice assignment; exported through index_put / ScatterND).

``DEFAULT_MODE`` ("conv") is the one that measured fastest with ONNX Runtime on CPU
(``benchmarks/shift_ops.py``, numbers in ``benchmarks/results/shift_ops.md``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

MODES = ("slice", "roll", "conv", "index")
DEFAULT_MODE = "conv"

Group = tuple[int, int, int, int]  # (first channel, end channel, dy, dx)

# SCNet Shift8 (Aitical/SCNet): eight equal groups, in this order.
SHIFT8 = ((1, 0), (-1, 0), (0, 1), (0, -1), (-1, -1), (-1, 1), (1, -1), (1, 1))
# ELAN ShiftConv2d (xindongzhang/ELAN): four groups of C//5, the rest unshifted.
SHIFT_ELAN = ((0, -1), (0, 1), (-1, 0), (1, 0))


def shift8_groups(channels: int) -> list[Group]:
    """SCNet's Shift8 on `channels` (a multiple of 8)."""
    if channels % 8:
        raise ValueError(f"Shift8 needs a multiple of 8 channels, got {channels}")
    g = channels // 8
    return [(i * g, (i + 1) * g, dy, dx) for i, (dy, dx) in enumerate(SHIFT8)]


def elan_groups(channels: int) -> list[Group]:
    """ELAN's shift: groups of channels // 5 shifted left/right/up/down, the rest identity."""
    g = channels // 5
    groups = [(i * g, (i + 1) * g, dy, dx) for i, (dy, dx) in enumerate(SHIFT_ELAN)]
    groups.append((4 * g, channels, 0, 0))
    return [gr for gr in groups if gr[1] > gr[0]]


def check_groups(groups: Sequence[Group], channels: int | None = None) -> list[Group]:
    checked: list[Group] = [(int(a), int(b), int(dy), int(dx)) for a, b, dy, dx in groups]
    pos = 0
    for a, b, _, _ in checked:
        if a != pos or b <= a:
            raise ValueError(f"shift groups must tile the channels in order, got {checked}")
        pos = b
    if channels is not None and pos != channels:
        raise ValueError(f"shift groups cover {pos} channels, the tensor has {channels}")
    return checked


def _radius(groups: Sequence[Group]) -> int:
    return max([max(abs(dy), abs(dx)) for _, _, dy, dx in groups] + [0])


def _crop(p: int, d: int) -> slice:
    """Rows/cols of a tensor padded by p that hold the input shifted by d."""
    start = p - d
    end = -(p + d)
    return slice(start, end if end != 0 else None)


def shift_slice(x: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
    p = _radius(groups)
    if p == 0:
        return x
    xp = F.pad(x, (p, p, p, p))
    return torch.cat([xp[:, a:b, _crop(p, dy), _crop(p, dx)] for a, b, dy, dx in groups], dim=1)


def shift_roll(x: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
    p = _radius(groups)
    if p == 0:
        return x
    xp = F.pad(x, (p, p, p, p))
    parts = []
    for a, b, dy, dx in groups:
        part = xp[:, a:b]
        if dy or dx:
            part = torch.roll(part, shifts=(dy, dx), dims=(2, 3))
        parts.append(part[:, :, p:-p, p:-p])
    return torch.cat(parts, dim=1)


def shift_index(x: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
    p = _radius(groups)
    if p == 0:
        return x
    xp = F.pad(x, (p, p, p, p))
    out = torch.zeros_like(x)
    for a, b, dy, dx in groups:
        out[:, a:b] = xp[:, a:b, _crop(p, dy), _crop(p, dx)]
    return out


def one_hot_kernel(groups: Sequence[Group], channels: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """(C, 1, k, k) depthwise kernel equal to the shift (k = 2 * radius + 1)."""
    groups = check_groups(groups, channels)
    c = groups[-1][1]
    p = _radius(groups)
    k = torch.zeros(c, 1, 2 * p + 1, 2 * p + 1, dtype=dtype)
    for a, b, dy, dx in groups:
        k[a:b, 0, p - dy, p - dx] = 1.0
    return k


def groups_from_kernel(kernel: torch.Tensor) -> list[Group]:
    """Inverse of `one_hot_kernel` (consecutive channels with the same offset merged).

    Raises ValueError when a channel's kernel is not one-hot (not a pure shift)."""
    c, one, kh, kw = kernel.shape
    if one != 1 or kh != kw or kh % 2 == 0:
        raise ValueError(f"expected a (C, 1, k, k) depthwise kernel with odd k, got {tuple(kernel.shape)}")
    p = kh // 2
    flat = kernel.reshape(c, -1)
    idx = flat.argmax(dim=1)
    hot = torch.zeros_like(flat)
    hot[torch.arange(c), idx] = 1.0
    if not torch.equal(flat, hot):
        raise ValueError("kernel is not one-hot per channel, so it is not a pure shift")
    groups: list[Group] = []
    for ch in range(c):
        i, j = divmod(int(idx[ch]), kw)
        dy, dx = p - i, p - j
        if groups and groups[-1][2:] == (dy, dx):
            a, _, _, _ = groups[-1]
            groups[-1] = (a, ch + 1, dy, dx)
        else:
            groups.append((ch, ch + 1, dy, dx))
    return groups


def shift(x: torch.Tensor, groups: Sequence[Group], mode: str = DEFAULT_MODE,
          kernel: torch.Tensor | None = None) -> torch.Tensor:
    if mode == "slice":
        return shift_slice(x, groups)
    if mode == "roll":
        return shift_roll(x, groups)
    if mode == "index":
        return shift_index(x, groups)
    if mode == "conv":
        k = one_hot_kernel(groups, x.shape[1], x.dtype) if kernel is None else kernel
        return F.conv2d(x, k.to(x.device), padding=k.shape[-1] // 2, groups=k.shape[0])
    raise ValueError(f"unknown shift mode {mode!r}; one of {MODES}")


class ChannelShift(nn.Module):
    """Fixed shift of channel groups. No parameters and no state_dict entries."""

    def __init__(self, groups: Sequence[Group], mode: str = DEFAULT_MODE):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown shift mode {mode!r}; one of {MODES}")
        self.groups = check_groups(groups)
        self.channels = self.groups[-1][1]
        self.mode = mode
        self.register_buffer("kernel", one_hot_kernel(self.groups), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift(x, self.groups, self.mode, self.kernel)

    def extra_repr(self) -> str:
        offs = sorted({(dy, dx) for _, _, dy, dx in self.groups})
        return f"channels={self.channels}, groups={len(self.groups)}, offsets={offs}, mode={self.mode}"


def set_shift_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every `ChannelShift` in `model` (in place) to `mode`; returns the model."""
    if mode not in MODES:
        raise ValueError(f"unknown shift mode {mode!r}; one of {MODES}")
    for m in model.modules():
        if isinstance(m, ChannelShift):
            m.mode = mode
    return model
