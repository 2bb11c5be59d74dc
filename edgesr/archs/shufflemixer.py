"""ShuffleMixer (Sun et al., NeurIPS 2022, "ShuffleMixer: An Efficient ConvNet for Image SR").

Feature-mixing blocks of two shuffle-mixing layers (bias-free channel LayerNorm -> split
point-wise MLP on half the channels -> channel shuffle (8 groups); large-kernel depthwise conv;
a second norm + split MLP) and a conv FFN (3x3 to dim+16, SiLU, 1x1). 1x1 conv + PixelShuffle +
SiLU upsampling, a 3x3 tail, plus a bilinear upsampling of the input. Key layout follows the
official code (sunny2109/ShuffleMixer, ``basicsr/archs/shufflemixer_arch.py``): ``to_feat``,
``blocks.N.net.{0,1}.{norm1.body, norm2.body, spatial, mlp1.fc.{0,2}, mlp2.fc.{0,2}}``,
``blocks.N.conv.{0,2}``, ``upsapling.{0,3}`` (sic), ``tail``.

One form. The channel shuffle exports as Reshape/Transpose/Reshape, the norm as
ReduceMean/Sub/Pow/Sqrt/Div.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed
from ..errors import ScaleMismatch
from ..spec import Spec


class BiasFreeLayerNorm(nn.Module):
    """Official ``LayerNorm(dim)`` (BiasFree): normalises over channels, keys ``body.weight``."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Module()
        self.body.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.body.weight.view(1, -1, 1, 1)


def channel_shuffle(x: torch.Tensor, groups: int = 8) -> torch.Tensor:
    """b (g d) h w -> b (d g) h w"""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class SplitPointMlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 2):
        super().__init__()
        hidden = int(dim // 2 * mlp_ratio)
        self.fc = nn.Sequential(nn.Conv2d(dim // 2, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, dim // 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([self.fc(x1), x2], dim=1), 8)


class SMLayer(nn.Module):
    def __init__(self, dim: int, kernel_size: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.norm2 = BiasFreeLayerNorm(dim), BiasFreeLayerNorm(dim)
        self.spatial = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.mlp1, self.mlp2 = SplitPointMlp(dim, mlp_ratio), SplitPointMlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp1(self.norm1(x)) + x
        x = self.spatial(x)
        return self.mlp2(self.norm2(x)) + x


class FMBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, mlp_ratio: int = 2):
        super().__init__()
        self.net = nn.Sequential(SMLayer(dim, kernel_size, mlp_ratio), SMLayer(dim, kernel_size, mlp_ratio))
        self.conv = nn.Sequential(nn.Conv2d(dim, dim + 16, 3, padding=1), nn.SiLU(), nn.Conv2d(dim + 16, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net(x) + x
        return self.conv(x) + x


class ShuffleMixer(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, n_feats: int = 64, kernel_size: int = 7, n_blocks: int = 5,
                 mlp_ratio: int = 2):
        super().__init__()
        if n_feats % 16:
            raise ValueError("ShuffleMixer needs n_feats divisible by 16 (8-group shuffle of halves)")
        self.scale = scale
        self.to_feat = nn.Conv2d(colors, n_feats, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[FMBlock(n_feats, kernel_size, mlp_ratio) for _ in range(n_blocks)])
        if scale == 4:
            self.upsapling = nn.Sequential(nn.Conv2d(n_feats, n_feats * 4, 1), nn.PixelShuffle(2), nn.SiLU(),
                                           nn.Conv2d(n_feats, n_feats * 4, 1), nn.PixelShuffle(2), nn.SiLU())
        elif scale in (2, 3):
            self.upsapling = nn.Sequential(nn.Conv2d(n_feats, n_feats * scale * scale, 1), nn.PixelShuffle(scale),
                                           nn.SiLU())
        else:
            raise ScaleMismatch(f"ShuffleMixer supports x2, x3, x4, not x{scale}")
        self.tail = nn.Conv2d(n_feats, colors, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.tail(self.upsapling(self.blocks(self.to_feat(x)))) + base


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "to_feat.weight" in sd and "blocks.0.net.0.norm1.body.weight" in sd and "upsapling.0.weight" in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["to_feat.weight"]
    colors, nf = w.shape[1], w.shape[0]
    if "upsapling.3.weight" in sd:
        s = 4
    else:
        s = {4: 2, 9: 3}.get(sd["upsapling.0.weight"].shape[0] // nf, 0)
        if not s:
            raise ScaleMismatch("shufflemixer: upsampling conv fits no scale")
    if scale is not None and scale != s:
        raise ScaleMismatch(f"--scale {scale} does not match the checkpoint (shufflemixer x{s})")
    hidden = sd["blocks.0.net.0.mlp1.fc.0.weight"].shape[0]
    return dict(colors=colors, scale=s, n_feats=nf, kernel_size=sd["blocks.0.net.0.spatial.weight"].shape[-1],
                n_blocks=count_indexed(sd, "blocks"), mlp_ratio=hidden // (nf // 2))


def _build(hp: dict, form: str) -> nn.Module:
    return ShuffleMixer(**hp)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="shufflemixer", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=None, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = (
    Variant("shufflemixer-x4", dict(n_feats=64, kernel_size=7, n_blocks=5, mlp_ratio=2, scale=4, colors=3),
            "ShuffleMixer (official: 64 feats, 7x7, 5 blocks)"),
    Variant("shufflemixer-tiny-x4", dict(n_feats=32, kernel_size=3, n_blocks=5, mlp_ratio=2, scale=4, colors=3),
            "ShuffleMixer-Tiny (32 feats, 3x3)"),
    Variant("shufflemixer-f16b1-x4", dict(n_feats=16, kernel_size=3, n_blocks=1, mlp_ratio=2, scale=4, colors=3),
            "small, for tests"),
)

ARCH = Architecture(
    name="shufflemixer",
    description="ShuffleMixer: split point-wise MLPs + channel shuffle + large depthwise convs",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="sunny2109/ShuffleMixer (NeurIPS 2022)",
)
