"""Omni-SR (Wang et al., CVPR 2023, "Omni Aggregation Networks for Lightweight Image SR").

Omni self-attention blocks (OSA): MBConv, window ("block") self-attention with a relative
position bias, gated conv FFN, window channel attention, FFN, dilated ("grid") self-attention,
FFN, grid channel attention, FFN; groups (OSAG) of blocks end in a 1x1 conv, a residual and
ESA. The input is zero-padded to a multiple of the window and the output cropped. Key layout
follows the official code (Francis0625/Omni-SR, same as spandrel's copy): ``input``,
``residual_layer.N.residual_layer.{M.layer.0..12, block_num}``, ``residual_layer.N.esa.*``,
``output``, ``up.0``; attention ``fn.{to_qkv, rel_pos_bias, to_out.0}``, channel attention
``fn.{temperature, qkv, qkv_dwconv, project_out}``, FFN ``fn.{project_in, dwconv, project_out}``.

One form. Every window rearrangement is a Reshape/Transpose with sizes computed from the input
shape, so the ONNX has dynamic H/W.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..spec import Spec
from .rlfn import ESA  # Omni-SR's ESA is RFANet's without conv_max / conv3_, as RLFN's


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class SqueezeExcitation(nn.Module):
    def __init__(self, dim: int, shrinkage_rate: float = 0.25):
        super().__init__()
        hidden = int(dim * shrinkage_rate)
        # indices as the official Sequential(Reduce, Linear, SiLU, Linear, Sigmoid, Rearrange)
        self.gate = nn.Sequential(nn.Identity(), nn.Linear(dim, hidden, bias=False), nn.SiLU(),
                                  nn.Linear(hidden, dim, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class MBConvResidual(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fn = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
                                nn.GELU(), SqueezeExcitation(dim), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def _rel_pos_indices(w: int) -> torch.Tensor:
    pos = torch.arange(w)
    grid = torch.stack(torch.meshgrid(pos, pos, indexing="ij")).reshape(2, -1).t()  # (w*w, 2)
    rel = grid[:, None, :] - grid[None, :, :] + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Official ``Attention``; works on (B', w*w, d) token windows."""

    def __init__(self, dim: int, dim_head: int, window_size: int, with_pe: bool = True):
        super().__init__()
        self.heads, self.scale, self.with_pe = dim // dim_head, dim_head ** -0.5, with_pe
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))
        if with_pe:
            self.rel_pos_bias = nn.Embedding((2 * window_size - 1) ** 2, self.heads)
            self.register_buffer("rel_pos_indices", _rel_pos_indices(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.to_qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        sim = q @ k.transpose(-2, -1)
        if self.with_pe:
            sim = sim + self.rel_pos_bias(self.rel_pos_indices).permute(2, 0, 1)
        out = (sim.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.to_out(out)


class PreNormResidual(nn.Module):
    """LayerNorm over channels (channels-last tokens) + fn + residual, on window tokens."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


class ConvPreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


class GatedConvFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 1):
        super().__init__()
        h = int(dim * mult)
        self.project_in = nn.Conv2d(dim, h * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(h * 2, h * 2, 3, padding=1, groups=h * 2, bias=False)
        self.project_out = nn.Conv2d(h, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class ChannelAttention(nn.Module):
    """Official ``Channel_Attention`` (grid=False) / ``Channel_Attention_grid`` (grid=True)."""

    def __init__(self, dim: int, heads: int, window_size: int, grid: bool):
        super().__init__()
        self.heads, self.ps, self.grid = heads, window_size, grid
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        p, hd = self.ps, self.heads
        t = t.reshape(b, hd, c // hd, h // p, p, w // p, p)
        if self.grid:  # b (head d) (h ph) (w pw) -> b (ph pw) head d (h w)
            return t.permute(0, 4, 6, 1, 2, 3, 5).reshape(b, p * p, hd, c // hd, -1)
        return t.permute(0, 3, 5, 1, 2, 4, 6).reshape(b, -1, hd, c // hd, p * p)

    def _merge(self, o: torch.Tensor, b, c, h, w) -> torch.Tensor:
        p, hd = self.ps, self.heads
        if self.grid:
            o = o.reshape(b, p, p, hd, c // hd, h // p, w // p).permute(0, 3, 4, 5, 1, 6, 2)
        else:
            o = o.reshape(b, h // p, w // p, hd, c // hd, p, p).permute(0, 3, 4, 1, 5, 2, 6)
        return o.reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (self._split(t) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out(self._merge(attn @ v, b, c, h, w))


class _ToWindows(nn.Module):
    """b d H W -> (b X Y) (w w) d; block: H = (X w), grid: H = (w X)."""

    def __init__(self, w: int, grid: bool):
        super().__init__()
        self.w, self.grid = w, grid

    def forward(self, x: torch.Tensor):
        b, d, h, ww = x.shape
        w = self.w
        if self.grid:
            t = x.reshape(b, d, w, h // w, w, ww // w).permute(0, 3, 5, 2, 4, 1)
        else:
            t = x.reshape(b, d, h // w, w, ww // w, w).permute(0, 2, 4, 3, 5, 1)
        return t.reshape(-1, w * w, d), (b, d, h, ww)


def _from_windows(t: torch.Tensor, shape, w: int, grid: bool) -> torch.Tensor:
    b, d, h, ww = shape
    t = t.reshape(b, h // w, ww // w, w, w, d)
    if grid:
        return t.permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, ww)
    return t.permute(0, 5, 1, 3, 2, 4).reshape(b, d, h, ww)


class OSABlock(nn.Module):
    """Official ``OSA_Block.layer`` indices: 0 MBConv, 2 block attention, 4/6/10/12 FFN, 5 channel
    attention, 8 grid attention, 11 grid channel attention; 1/3/7/9 are the (key-less) Rearranges."""

    WINDOW_STAGES = {2: False, 8: True}  # index -> grid?

    def __init__(self, dim: int = 64, window_size: int = 8, with_pe: bool = True):
        super().__init__()
        self.w = window_size
        ff = lambda: ConvPreNormResidual(dim, GatedConvFeedForward(dim))  # noqa: E731
        ca = lambda grid: ConvPreNormResidual(dim, ChannelAttention(dim, 4, window_size, grid))  # noqa: E731
        att = lambda: PreNormResidual(dim, WindowAttention(dim, dim // 4, window_size, with_pe))  # noqa: E731
        self.layer = nn.Sequential(MBConvResidual(dim), nn.Identity(), att(), nn.Identity(), ff(), ca(False), ff(),
                                   nn.Identity(), att(), nn.Identity(), ff(), ca(True), ff())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, m in enumerate(self.layer):
            if i in self.WINDOW_STAGES:
                grid = self.WINDOW_STAGES[i]
                t, shape = _ToWindows(self.w, grid)(x)
                x = _from_windows(m(t), shape, self.w, grid)
            elif not isinstance(m, nn.Identity):
                x = m(x)
        return x


class OSAG(nn.Module):
    def __init__(self, dim: int, bias: bool, block_num: int, window_size: int, pe: bool):
        super().__init__()
        self.residual_layer = nn.Sequential(*[OSABlock(dim, window_size, pe) for _ in range(block_num)],
                                            nn.Conv2d(dim, dim, 1, bias=bias))
        self.esa = ESA(max(dim // 4, 16), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.esa(self.residual_layer(x) + x)


class OmniSR(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, num_feat: int = 64, block_num: int = 1, res_num: int = 5,
                 window_size: int = 8, pe: bool = True, bias: bool = True):
        super().__init__()
        if num_feat % 4:
            raise ValueError("Omni-SR needs num_feat divisible by 4 (4 heads)")
        self.scale, self.window_size = scale, window_size
        self.input = nn.Conv2d(colors, num_feat, 3, padding=1, bias=bias)
        self.residual_layer = nn.Sequential(*[OSAG(num_feat, bias, block_num, window_size, pe)
                                              for _ in range(res_num)])
        self.output = nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=bias)
        self.up = nn.Sequential(nn.Conv2d(num_feat, colors * scale * scale, 3, padding=1, bias=bias),
                                nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        m = self.window_size
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        residual = self.input(x)
        out = self.output(self.residual_layer(residual)) + residual
        return self.up(out)[:, :, : h * self.scale, : w * self.scale]


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if ("input.weight" in sd and "residual_layer.0.residual_layer.0.layer.0.fn.0.weight" in sd
            and "residual_layer.0.esa.conv1.weight" in sd and "up.0.weight" in sd):
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["input.weight"]
    colors, nf = w.shape[1], w.shape[0]
    s = scale_from_channels(sd["up.0.weight"].shape[0], colors, scale, arch="omnisr")
    key = "residual_layer.0.residual_layer.0.layer.2.fn.rel_pos_bias.weight"
    pe = key in sd
    ws = (int(round(sd[key].shape[0] ** 0.5)) + 1) // 2 if pe else 8
    return dict(colors=colors, scale=s, num_feat=nf, block_num=count_indexed(sd, "residual_layer.0.residual_layer") - 1,
                res_num=count_indexed(sd, "residual_layer"), window_size=ws, pe=pe, bias="input.bias" in sd)


def _build(hp: dict, form: str) -> nn.Module:
    return OmniSR(**hp)


def _describe(hp: dict, form: str) -> Spec:
    # ESA's stride-2 conv + 7x7/3 max-pool need >= 15 pixels after padding to the window multiple
    ws = hp.get("window_size", 8)
    padded = -(-15 // ws) * ws  # smallest window multiple >= 15
    return Spec(arch="omnisr", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                min_size=padded - ws + 1, receptive_field=None, fp16_safe=False,
                hyperparams=dict(hp))


VARIANTS = (
    Variant("omnisr-x4", dict(num_feat=64, block_num=1, res_num=5, window_size=8, pe=True, bias=True, scale=4,
                              colors=3), "Omni-SR (official: 64 feats, 5 OSAGs)"),
    Variant("omnisr-f16-x4", dict(num_feat=16, block_num=1, res_num=1, window_size=8, pe=True, bias=True, scale=4,
                                  colors=3), "small, for tests"),
)

ARCH = Architecture(
    name="omnisr",
    description="Omni-SR: omni self-attention (block + grid window attention, channel attention) groups + ESA",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="Francis0625/Omni-SR (CVPR 2023); spandrel architectures/OmniSR",
)
