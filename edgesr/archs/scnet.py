"""SCNet (Wu et al., 2023, arXiv:2307.16140): a fully 1x1-convolutional SR network.

Spatial context comes only from a parameter-free shift (``Shift8``: eight channel groups moved
one pixel in the eight directions, zeros shifted in). Key layout follows the official code
(Aitical/SCNet, ``basicsr/archs/SCNet_arch.py``): ``conv_first``, ``body.N.{conv1,conv2}``,
``upconv{1,2,3}.up_layer.{1,4}`` (bilinear x2 / x3 -> 1x1 -> LeakyReLU(0.02) -> Shift8 -> 1x1),
``conv_hr``, ``conv_last``; the output adds a bilinear upsampling of the input.

There is one form: the shift has no weights, so the checkpoint is the deployable network. Its
ONNX form is chosen by `edgesr.shift` (``shift_mode``); x2 and x3 checkpoints have identical
shapes, so loading one needs ``--scale``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ScaleMismatch
from ..architecture import Architecture, Variant, count_indexed
from ..shift import DEFAULT_MODE, ChannelShift, shift8_groups
from ..spec import Spec


class ResidualBlockShift(nn.Module):
    """x + conv2(relu(shift(conv1(x))))."""

    def __init__(self, num_feat: int, shift_mode: str = DEFAULT_MODE):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 1)
        self.shift = ChannelShift(shift8_groups(num_feat), shift_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.shift(self.conv1(x))))


class UpShiftMLP(nn.Module):
    def __init__(self, num_feat: int, scale: int, shift_mode: str = DEFAULT_MODE):
        super().__init__()
        self.scale = scale
        self.up_layer = nn.Sequential(
            nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
            nn.Conv2d(num_feat, num_feat, 1),
            nn.LeakyReLU(0.02),
            ChannelShift(shift8_groups(num_feat), shift_mode),
            nn.Conv2d(num_feat, num_feat, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_layer(x)


def _up_factors(scale: int) -> list[int]:
    if scale in (2, 3):
        return [scale]
    if scale == 4:
        return [2, 2]
    if scale == 8:
        return [2, 2, 2]
    raise ScaleMismatch(f"SCNet supports x2, x3, x4 and x8, not x{scale}")


class SCNet(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, num_feat: int = 64, num_block: int = 16,
                 shift_mode: str = DEFAULT_MODE):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(colors, num_feat, 1)
        self.body = nn.Sequential(*[ResidualBlockShift(num_feat, shift_mode) for _ in range(num_block)])
        self.ups = len(_up_factors(scale))
        for i, f in enumerate(_up_factors(scale)):
            setattr(self, f"upconv{i + 1}", UpShiftMLP(num_feat, f, shift_mode))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 1)
        self.conv_last = nn.Conv2d(num_feat, colors, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        for i in range(self.ups):
            out = F.leaky_relu(getattr(self, f"upconv{i + 1}")(out), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if ("conv_first.weight" in sd and "body.0.conv1.weight" in sd and "upconv1.up_layer.1.weight" in sd
            and "conv_hr.weight" in sd and sd["conv_first.weight"].shape[-1] == 1):
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    n_up = sum(f"upconv{i}.up_layer.1.weight" in sd for i in (1, 2, 3))
    if n_up == 1:
        if scale not in (2, 3):
            raise ScaleMismatch("SCNet x2 and x3 checkpoints have the same shapes: pass --scale 2 or --scale 3"
                                if scale is None else f"--scale {scale} does not match this SCNet (x2 or x3)")
        s = scale
    else:
        s = {2: 4, 3: 8}[n_up]
        if scale is not None and scale != s:
            raise ScaleMismatch(f"--scale {scale} does not match the checkpoint (SCNet x{s})")
    w = sd["conv_first.weight"]
    return dict(colors=w.shape[1], scale=s, num_feat=w.shape[0], num_block=count_indexed(sd, "body"))


def _build(hp: dict, form: str) -> nn.Module:
    return SCNet(**hp)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="scnet", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    [Variant(f"scnet-t-x{s}", dict(num_feat=64, num_block=16, scale=s, colors=3), "SCNet-T (official config)")
     for s in (4,)]
    + [Variant("scnet-f16b4-x4", dict(num_feat=16, num_block=4, scale=4, colors=3), "small, for tests")]
)

ARCH = Architecture(
    name="scnet",
    description="SCNet: fully 1x1 conv network, spatial context from a parameter-free Shift8",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="Aitical/SCNet (arXiv:2307.16140)",
)
