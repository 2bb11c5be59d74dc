"""ESPCN (Shi et al., CVPR 2016), the RGB version trained in ECNUSR/ETDS.

``conv1`` 5x5 (colors -> 64) + tanh, ``conv2`` 3x3 (64 -> 32) + tanh, ``conv3`` 3x3
(32 -> colors*s^2), PixelShuffle, sigmoid (applied after the shuffle; the output is
therefore always inside (0, 1)). One form only: there is nothing to reparameterize,
and tanh/sigmoid rule out the Equivalent Transformation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture import Architecture, Variant, scale_from_channels
from ..spec import Spec


class ESPCN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, feat1: int = 64, feat2: int = 32, kernel1: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(colors, feat1, kernel1, padding=kernel1 // 2)
        self.conv2 = nn.Conv2d(feat1, feat2, 3, padding=1)
        self.conv3 = nn.Conv2d(feat2, colors * scale * scale, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return torch.sigmoid(self.pixel_shuffle(self.conv3(x)))


def _detect(sd) -> str | None:
    keys = ("conv1.weight", "conv2.weight", "conv3.weight")
    if not all(k in sd for k in keys) or "conv4.weight" in sd:
        return None
    if sd["conv1.weight"].dim() != 4 or sd["conv3.weight"].dim() != 4:
        return None
    return "deploy"


def _infer(sd, form: str, scale: int | None) -> dict:
    w1 = sd["conv1.weight"]
    colors = w1.shape[1]
    s = scale_from_channels(sd["conv3.weight"].shape[0], colors, scale, arch="espcn")
    return dict(colors=colors, scale=s, feat1=w1.shape[0], feat2=sd["conv2.weight"].shape[0],
                kernel1=w1.shape[-1])


def _build(hp: dict, form: str) -> nn.Module:
    return ESPCN(**hp)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="espcn", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["kernel1"] // 2 + 2, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"espcn-x{s}", dict(colors=3, scale=s, feat1=64, feat2=32, kernel1=5), f"ESPCN_x{s}") for s in (2, 3, 4)
)

ARCH = Architecture(
    name="espcn",
    description="ESPCN: 5x5 conv + tanh, 3x3 conv + tanh, 3x3 conv, PixelShuffle, sigmoid",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="Shi et al. 2016; RGB checkpoints from ECNUSR/ETDS",
)
