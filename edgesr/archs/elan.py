"""ELAN (Zhang et al., ECCV 2022, "Efficient Long-Range Attention Network for Image SR").

Blocks (ELAB) alternate a local feature extractor (LFE: two shift-convs, a fixed one-pixel shift
of four channel groups followed by a 1x1 conv) and group-wise multi-scale self-attention (GMSA:
1x1 conv + BatchNorm, channels split in three, each attending within non-overlapping windows of
its own size, windows cyclically shifted by half a window in every other block; attention maps
computed once per ELAB and shared by its following layers). The input is reflect-padded to a
multiple of the windows' LCM and the output cropped. Key layout follows the official code
(xindongzhang/ELAN): ``sub_mean``/``add_mean`` (fixed 1x1 MeanShift convs, rgb_range 255),
``head.0``, ``body.N.modules_lfe.lfe_i.conv{0,1}.shift_conv.{weight,conv1x1}``,
``body.N.modules_gmsa.gmsa_i.{project_inp.{0,1},project_out}``, ``tail.0``.

Forms: ``training`` is that layout (the shift is a frozen depthwise one-hot conv in the
checkpoint, BatchNorm separate). ``deploy`` replaces the one-hot conv by an `edgesr.shift`
ChannelShift (keys ``conv{0,1}.conv1x1``) and folds BatchNorm into ``project_inp`` (exact).
The network takes [0, 1] input and scales it to the official 0..255 range inside.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..shift import DEFAULT_MODE, ChannelShift, elan_groups, groups_from_kernel, one_hot_kernel
from ..spec import Spec
from .common import conv_from_kernel

RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_RANGE = 255.0


class MeanShift(nn.Conv2d):
    def __init__(self, rgb_range: float, sign: int = -1, colors: int = 3):
        super().__init__(colors, colors, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(colors).view(colors, colors, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN[:colors]))
        for p in self.parameters():
            p.requires_grad = False


class ShiftConv2d(TrainingBlock, nn.Module):
    """Training form (official ``ShiftConv2d1`` under a ``shift_conv`` wrapper)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.shift_conv = nn.Module()
        # A frozen nn.Parameter in the official code; a buffer here (same state_dict key) so that
        # optimisers and parameter counts leave it alone.
        self.shift_conv.register_buffer("weight", one_hot_kernel(elan_groups(cin)))
        self.shift_conv.conv1x1 = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.shift_conv.weight
        y = F.conv2d(x, w, padding=w.shape[-1] // 2, groups=w.shape[0])
        return self.shift_conv.conv1x1(y)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        groups = groups_from_kernel(self.shift_conv.weight)  # raises unless it is a pure shift
        c = self.shift_conv.conv1x1
        dep = ShiftConvDeploy(c.in_channels, c.out_channels, groups)
        dep.conv1x1.load_state_dict(c.state_dict())
        return dep


class ShiftConvDeploy(nn.Module):
    def __init__(self, cin: int, cout: int, groups=None, shift_mode: str = DEFAULT_MODE):
        super().__init__()
        self.shift = ChannelShift(groups or elan_groups(cin), shift_mode)
        self.conv1x1 = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(self.shift(x))


class ConvBN(TrainingBlock, nn.Sequential):
    """1x1 conv + BatchNorm (training form of ``project_inp``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
        # Features live in the 0..255 range here; unit-variance running stats would leave an
        # untrained model's q.q^T logits at ~1e4 (softmax saturated, numerically chaotic).
        # Checkpoints overwrite these buffers; training updates them from batch statistics.
        self[1].running_var.fill_(RGB_RANGE ** 2)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        conv, bn = self[0], self[1]
        return conv_from_kernel(*K.fuse_conv_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                bn.weight, bn.bias, bn.eps))


class LFE(nn.Module):
    def __init__(self, channels: int, exp_ratio: int, form: str):
        super().__init__()
        sc = ShiftConv2d if form == "training" else ShiftConvDeploy
        self.conv0 = sc(channels, channels * exp_ratio)
        self.conv1 = sc(channels * exp_ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(F.relu(self.conv0(x)))


def _to_windows(x: torch.Tensor, ws: int, parts: int) -> torch.Tensor:
    """b (parts c) (h dh) (w dw) -> parts (b h w) (dh dw) c"""
    b, c2, h, w = x.shape
    c = c2 // parts
    x = x.reshape(b, parts, c, h // ws, ws, w // ws, ws).permute(1, 0, 3, 5, 4, 6, 2)
    return x.reshape(parts, -1, ws * ws, c)


def _from_windows(y: torch.Tensor, ws: int, b, h, w) -> torch.Tensor:
    """(b h w) (dh dw) c -> b c (h dh) (w dw)"""
    c = y.shape[-1]
    y = y.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    return y.reshape(b, c, h, w)


class GMSA(nn.Module):
    def __init__(self, channels: int, shifts: int, window_sizes, calc_attn: bool, form: str):
        super().__init__()
        self.shifts, self.window_sizes, self.calc_attn = shifts, tuple(window_sizes), calc_attn
        out = channels * 2 if calc_attn else channels
        self.split_chns = [out // 3] * 3
        self.project_inp = ConvBN(channels, out) if form == "training" else nn.Conv2d(channels, out, 1)
        self.project_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, prev_atns=None):
        b, _, h, w = x.shape
        xs = torch.split(self.project_inp(x), self.split_chns, dim=1)
        ys, atns = [], []
        for idx, x_ in enumerate(xs):
            ws = self.window_sizes[idx]
            if self.shifts > 0:
                x_ = torch.roll(x_, shifts=(-ws // 2, -ws // 2), dims=(2, 3))
            if prev_atns is None:
                q, v = _to_windows(x_, ws, 2)
                atn = (q @ q.transpose(-2, -1)).softmax(dim=-1)
            else:
                atn = prev_atns[idx]
                v = _to_windows(x_, ws, 1)[0]
            y_ = _from_windows(atn @ v, ws, b, h, w)
            if self.shifts > 0:
                y_ = torch.roll(y_, shifts=(ws // 2, ws // 2), dims=(2, 3))
            ys.append(y_)
            atns.append(atn)
        return self.project_out(torch.cat(ys, dim=1)), atns


class ELAB(nn.Module):
    def __init__(self, channels: int, exp_ratio: int, shifts: int, window_sizes, shared_depth: int, form: str):
        super().__init__()
        self.shared_depth = shared_depth
        self.modules_lfe = nn.ModuleDict({f"lfe_{i}": LFE(channels, exp_ratio, form) for i in range(shared_depth + 1)})
        self.modules_gmsa = nn.ModuleDict({f"gmsa_{i}": GMSA(channels, shifts, window_sizes, i == 0, form)
                                           for i in range(shared_depth + 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        atn = None
        for i in range(1 + self.shared_depth):
            x = self.modules_lfe[f"lfe_{i}"](x) + x
            y, atn = self.modules_gmsa[f"gmsa_{i}"](x, atn)
            x = y + x
        return x


class ELAN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, m_elan: int = 24, c_elan: int = 60, n_share: int = 1,
                 r_expand: int = 2, window_sizes=(4, 8, 16), form: str = "training"):
        super().__init__()
        if c_elan % 3 or (c_elan * 2 // 3) % 2:
            raise ValueError("ELAN needs c_elan divisible by 3 with an even third (e.g. 60)")
        self.scale, self.window_sizes = scale, tuple(window_sizes)
        self.sub_mean = MeanShift(RGB_RANGE, -1, colors)
        self.add_mean = MeanShift(RGB_RANGE, 1, colors)
        self.head = nn.Sequential(nn.Conv2d(colors, c_elan, 3, padding=1))
        self.body = nn.Sequential(*[ELAB(c_elan, r_expand, i % 2, window_sizes, n_share, form)
                                    for i in range(m_elan // (1 + n_share))])
        self.tail = nn.Sequential(nn.Conv2d(c_elan, colors * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    @property
    def lcm(self) -> int:
        m = 1
        for ws in self.window_sizes:
            m = m * ws // math.gcd(m, ws)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        m = self.lcm
        x = F.pad(x * RGB_RANGE, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        x = self.head(self.sub_mean(x))
        x = self.add_mean(self.tail(self.body(x) + x))
        return x[:, :, : h * self.scale, : w * self.scale] / RGB_RANGE


# ---- registry entry ---------------------------------------------------------------------

_LFE = "body.0.modules_lfe.lfe_0.conv0."


def _detect(sd) -> str | None:
    if "head.0.weight" in sd and "body.0.modules_gmsa.gmsa_0.project_out.weight" in sd:
        if _LFE + "shift_conv.weight" in sd and "body.0.modules_gmsa.gmsa_0.project_inp.1.running_var" in sd:
            return "training"
        if _LFE + "conv1x1.weight" in sd and "body.0.modules_gmsa.gmsa_0.project_inp.weight" in sd:
            return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    head = sd["head.0.weight"]
    colors, c = head.shape[1], head.shape[0]
    n_share = count_indexed({k.replace("modules_lfe.lfe_", "modules_lfe.lfe."): v for k, v in sd.items()},
                            "body.0.modules_lfe.lfe") - 1
    key = _LFE + ("shift_conv.conv1x1.weight" if form == "training" else "conv1x1.weight")
    s = scale_from_channels(sd["tail.0.weight"].shape[0], colors, scale, arch="elan")
    # window sizes are not in the weights: the official [4, 8, 16].
    return dict(colors=colors, scale=s, m_elan=count_indexed(sd, "body") * (1 + n_share), c_elan=c,
                n_share=n_share, r_expand=sd[key].shape[0] // c, window_sizes=(4, 8, 16))


def _build(hp: dict, form: str) -> nn.Module:
    hp = dict(hp)
    hp["window_sizes"] = tuple(hp.get("window_sizes", (4, 8, 16)))
    return ELAN(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    m = 1
    for ws in hp.get("window_sizes", (4, 8, 16)):
        m = m * ws // math.gcd(m, ws)
    return Spec(arch="elan", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                min_size=m // 2 + 1, receptive_field=None, fp16_safe=False, hyperparams=dict(hp))


VARIANTS = (
    Variant("elan-light-x4", dict(m_elan=24, c_elan=60, n_share=1, r_expand=2, window_sizes=(4, 8, 16), scale=4,
                                  colors=3), "ELAN-light (official config)"),
    Variant("elan-c24m4-x4", dict(m_elan=4, c_elan=24, n_share=1, r_expand=2, window_sizes=(4, 8, 16), scale=4,
                                  colors=3), "small, for tests"),
)

ARCH = Architecture(
    name="elan",
    description="ELAN-light: shift-conv LFE + group-wise multi-scale window self-attention -> shifts + fused BN",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="xindongzhang/ELAN (ECCV 2022)",
)
