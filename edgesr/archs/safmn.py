"""SAFMN (Sun et al., ICCV 2023, "Spatially-Adaptive Feature Modulation for Efficient Image SR").

Blocks: channel LayerNorm -> SAFM (channels split in four: a 3x3 depthwise conv at full
resolution and at 1/2, 1/4, 1/8 resolution after adaptive max pooling, nearest upsampling back,
1x1 aggregation, GELU gate on the input) -> LayerNorm -> CCM (3x3 conv, GELU, 1x1). Key layout
follows the official code (sunny2109/SAFMN; same as spandrel's copy): ``to_feat``,
``feats.N.{norm1,norm2}.{weight,bias}``, ``feats.N.safm.{mfr.i, aggr}``, ``feats.N.ccm.ccm.{0,2}``,
``to_img.0``.

One form, two poolings: ONNX has no adaptive max pooling whose output size is a function of a
dynamic input size (``aten::adaptive_max_pool2d`` exports with the output size frozen at the
traced shape, or fails). ``pool="exact"`` (the default) computes the same windows as
PyTorch (start = floor(i*n/m), end = ceil((i+1)*n/m)) with Range/Gather/Max, so any H/W
exports exactly; ``pool="adaptive"`` is the reference ``F.adaptive_max_pool2d``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ExportError
from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..spec import Spec

POOLS = ("exact", "adaptive")


class UnsupportedOperator(ExportError):
    """An operator the target backend cannot express; the message names both."""


class LayerNorm2d(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _adaptive_max_1d(x: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    """adaptive_max_pool along `dim` to size n // k, with PyTorch's window bounds."""
    n = x.shape[dim]
    out = n // k
    j = torch.arange(out, device=x.device)
    start = torch.div(j * n, out, rounding_mode="floor")
    end = torch.div((j + 1) * n + out - 1, out, rounding_mode="floor")
    res = None
    for t in range(2 * k + 1):  # every window is shorter than 2k + 2 when out = n // k >= 1
        g = x.index_select(dim, torch.minimum(start + t, end - 1))
        res = g if res is None else torch.maximum(res, g)
    return res


def adaptive_max_pool_exact(x: torch.Tensor, k: int) -> torch.Tensor:
    """== F.adaptive_max_pool2d(x, (h // k, w // k)) for any h, w >= k, exportable with dynamic sizes."""
    return _adaptive_max_1d(_adaptive_max_1d(x, 2, k), 3, k)


class SAFM(nn.Module):
    def __init__(self, dim: int, n_levels: int = 4, pool: str = "exact"):
        super().__init__()
        self.n_levels, self.pool = n_levels, pool
        c = dim // n_levels
        self.mfr = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, groups=c) for _ in range(n_levels))
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xc = x.chunk(self.n_levels, dim=1)
        out = [self.mfr[0](xc[0])]
        for i in range(1, self.n_levels):
            k = 2 ** i
            if self.pool == "exact":
                s = adaptive_max_pool_exact(xc[i], k)
            elif torch.onnx.is_in_onnx_export():  # fixed-size converters (jit / torch.export) may trace it
                raise UnsupportedOperator(
                    "aten::adaptive_max_pool2d with an output size that follows the input size has no ONNX "
                    "equivalent (backend: ONNX export / ONNX Runtime, dynamic H/W); build SAFMN with "
                    "pool='exact' (the same windows via Range/Gather/Max)")
            else:
                s = F.adaptive_max_pool2d(xc[i], (h // k, w // k))
            out.append(F.interpolate(self.mfr[i](s), size=(h, w), mode="nearest"))
        return F.gelu(self.aggr(torch.cat(out, dim=1))) * x


class CCM(nn.Module):
    def __init__(self, dim: int, growth_rate: float = 2.0):
        super().__init__()
        hidden = int(dim * growth_rate)
        self.ccm = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    def __init__(self, dim: int, ffn_scale: float = 2.0, pool: str = "exact"):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(dim), LayerNorm2d(dim)
        self.safm = SAFM(dim, pool=pool)
        self.ccm = CCM(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.safm(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


class SAFMN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0,
                 pool: str = "exact"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}")
        self.to_feat = nn.Conv2d(colors, dim, 3, padding=1)
        self.feats = nn.Sequential(*[AttBlock(dim, ffn_scale, pool) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(nn.Conv2d(dim, colors * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_feat(x)
        return self.to_img(self.feats(x) + x)


def set_pool(model: nn.Module, pool: str) -> nn.Module:
    for m in model.modules():
        if isinstance(m, SAFM):
            m.pool = pool
    return model


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "to_feat.weight" in sd and "feats.0.safm.aggr.weight" in sd and "to_img.0.weight" in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["to_feat.weight"]
    colors, dim = w.shape[1], w.shape[0]
    s = scale_from_channels(sd["to_img.0.weight"].shape[0], colors, scale, arch="safmn")
    return dict(colors=colors, scale=s, dim=dim, n_blocks=count_indexed(sd, "feats"),
                ffn_scale=sd["feats.0.ccm.ccm.0.weight"].shape[0] / dim)


def _build(hp: dict, form: str) -> nn.Module:
    return SAFMN(**hp)


def _describe(hp: dict, form: str) -> Spec:
    # the 1/8-resolution branch needs at least 8 pixels per side
    return Spec(arch="safmn", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                min_size=8, receptive_field=None, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = (
    Variant("safmn-x4", dict(dim=36, n_blocks=8, ffn_scale=2.0, scale=4, colors=3), "SAFMN (official: 36 x 8)"),
    Variant("safmn-f16b2-x4", dict(dim=16, n_blocks=2, ffn_scale=2.0, scale=4, colors=3), "small, for tests"),
)

ARCH = Architecture(
    name="safmn",
    description="SAFMN: multi-scale spatially-adaptive feature modulation + conv channel mixer",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="sunny2109/SAFMN (ICCV 2023)",
)
