"""RLFN (Kong et al., NTIRE 2022 ESR winner): residual local feature network.

Nothing to fuse: a loader for the deploy form only. Key layout follows bytedance/RLFN
``model/{rlfn,rlfn_s,rlfn_ntire}.py`` + ``model/block.py``: ``conv_1``, ``block_1..N``
(RLFB: ``c1_r``, ``c2_r``, ``c3_r`` 3x3 convs with LeakyReLU(0.05), residual, ``c5`` 1x1,
``esa.{conv1, conv_f, conv2, conv3, conv4}``), ``conv_2``, ``upsampler.0``.
Output: PixelShuffle(upsampler.0(conv_2(blocks) + conv_1(x))).

The released NTIRE model runs on [0, 255] (``test_demo.py`` multiplies the input by 255
and divides the output by 255); the module takes [0, 1] and scales by ``img_range``.
ESA's strided conv + 7x7/3 max-pool need H, W >= 15.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import KeyMismatch
from ..architecture import Architecture, Variant, scale_from_channels
from ..spec import Spec

ESA_MIN_SIZE = 15
# LR-pixel radius of one ESA: 3x3/2 conv -> 7x7/3 max-pool -> 3x3 conv -> bilinear resize
# spans about 33 input pixels and the pooled grid drifts with the image size; 32 bounds it.
ESA_RADIUS = 32


class ESA(nn.Module):
    """Enhanced spatial attention as used by RLFN (and RepRFN)."""

    def __init__(self, esa_channels: int, n_feats: int):
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(n_feats, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        c3 = F.interpolate(self.conv3(v_max), (x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        m = torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))
        return x * m


class RLFB(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int | None = None, esa_channels: int = 16):
        super().__init__()
        mid = mid_channels or in_channels
        self.c1_r = nn.Conv2d(in_channels, mid, 3, padding=1)
        self.c2_r = nn.Conv2d(mid, mid, 3, padding=1)
        self.c3_r = nn.Conv2d(mid, in_channels, 3, padding=1)
        self.c5 = nn.Conv2d(in_channels, in_channels, 1)
        self.esa = ESA(esa_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.c1_r(x), 0.05)
        out = F.leaky_relu(self.c2_r(out), 0.05)
        out = F.leaky_relu(self.c3_r(out), 0.05)
        return self.esa(self.c5(out + x))


class RLFN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, feature_channels: int = 52, mid_channels: int | None = None,
                 num_blocks: int = 6, esa_channels: int = 16, img_range: float = 255.0):
        super().__init__()
        self.num_blocks, self.img_range = num_blocks, img_range
        self.conv_1 = nn.Conv2d(colors, feature_channels, 3, padding=1)
        for i in range(1, num_blocks + 1):
            setattr(self, f"block_{i}", RLFB(feature_channels, mid_channels, esa_channels))
        self.conv_2 = nn.Conv2d(feature_channels, feature_channels, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(feature_channels, colors * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_1(x * self.img_range)
        h = feat
        for i in range(1, self.num_blocks + 1):
            h = getattr(self, f"block_{i}")(h)
        return self.upsampler(self.conv_2(h) + feat) / self.img_range


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if ("conv_1.weight" in sd and "block_1.c1_r.weight" in sd and "block_1.c5.weight" in sd
            and "block_1.esa.conv1.weight" in sd and "conv_2.weight" in sd and "upsampler.0.weight" in sd):
        return "deploy"
    return None


_BLOCK = re.compile(r"^block_(\d+)\.")


def _infer(sd, form: str, scale: int | None) -> dict:
    ids = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if ids != list(range(1, len(ids) + 1)):
        raise KeyMismatch(f"rlfn: block numbering is not 1..N: {ids}")
    try:
        first, up = sd["conv_1.weight"], sd["upsampler.0.weight"]
        mid = sd["block_1.c1_r.weight"].shape[0]
        esa = sd["block_1.esa.conv1.weight"].shape[0]
    except KeyError as e:
        raise KeyMismatch(f"rlfn: checkpoint lacks {e.args[0]!r}") from None
    colors, feats = first.shape[1], first.shape[0]
    s = scale_from_channels(up.shape[0], colors, scale, arch="rlfn")
    return dict(colors=colors, scale=s, feature_channels=feats, mid_channels=mid, num_blocks=len(ids),
                esa_channels=esa)


def _build(hp: dict, form: str) -> nn.Module:
    hp = dict(hp)
    if hp.get("mid_channels") is None:
        hp["mid_channels"] = hp.get("feature_channels", 52)
    return RLFN(**hp)


def _describe(hp: dict, form: str) -> Spec:
    rf = 1 + hp.get("num_blocks", 6) * (3 + ESA_RADIUS) + 1 + 1
    return Spec(arch="rlfn", scale=hp["scale"], in_channels=hp.get("colors", 3), out_channels=hp.get("colors", 3),
                form=form, min_size=ESA_MIN_SIZE, receptive_field=rf, fp16_safe=True, hyperparams=dict(hp))


_SIZES = {"": (52, 52, 6), "-s": (48, 48, 6)}
VARIANTS = tuple(
    Variant(f"rlfn{n}-x{s}", dict(feature_channels=f, mid_channels=m, num_blocks=b, scale=s), "")
    for n, (f, m, b) in _SIZES.items() for s in (2, 3, 4)
) + (Variant("rlfn-ntire-x4", dict(feature_channels=46, mid_channels=48, num_blocks=4, scale=4),
             "bytedance/RLFN model_zoo/rlfn_ntire_x4.pth"),)

ARCH = Architecture(
    name="rlfn",
    description="RLFN: residual local feature blocks with ESA attention (nothing to fuse; loader only)",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="bytedance/RLFN model/block.py, model/rlfn*.py",
)
