"""ECBSR after the Equivalent Transformation (``ECBSRET`` in ECNUSR/ETDS): registry entry
``ecbsr-et``, deploy form only.

Layout: ``backbone.N.0`` 3x3 conv + ``backbone.N.1`` PReLU for the first conv and the
num_block body convs (width num_feat + 4: the residual is carried in 3 channels, one
zero channel keeps the width 4-aligned), then ``backbone.{M+1}.0`` 3x3 conv computing
1 - y (ReLU), ``backbone.{M+2}.0`` 1x1 clip conv (ReLU), PixelShuffle. x3 has 28
output channels and drops the last (padding) one. The ET of an ECBSR checkpoint
(training or deploy form) comes out as this module.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture import Architecture, Variant, count_indexed
from ..reparam.et import (ETLayout, carried_extra, original_width, padded_out, register_et_layout,
                          scale_from_et_channels)
from ..spec import Spec
from . import ecbsr
from .common import activation, conv3x3


class ECBSRET(nn.Module):
    """ECBSR after the ET (ETDS repo's ECBSRET layout): Conv + PReLU, ReLU clip, PixelShuffle."""

    clamps_output = True  # ReLU + 1x1 clip tail: output is clamp(y, 0, 1)

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 4, num_feat: int = 16,
                 act_type: str = "prelu"):
        super().__init__()
        self.scale = scale
        w = num_feat + carried_extra(num_feat, colors)
        out = colors * scale * scale
        out_p = padded_out(out)
        blocks = [nn.Sequential(conv3x3(colors, w), activation(act_type, w))]
        blocks += [nn.Sequential(conv3x3(w, w), activation(act_type, w)) for _ in range(num_block)]
        blocks += [nn.Sequential(conv3x3(w, out_p), nn.ReLU()),
                   nn.Sequential(nn.Conv2d(out_p, out_p, 1), nn.ReLU())]
        self.backbone = nn.Sequential(*blocks)
        self.out_channels = out
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x)
        if y.shape[1] != self.out_channels:
            y = y[:, : self.out_channels]
        return self.upsampler(y)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    n = count_indexed(sd, "backbone")
    if n < 3 or "backbone.0.0.weight" not in sd or "backbone.0.weight" in sd:
        return None
    clip, last = sd.get(f"backbone.{n - 1}.0.weight"), sd.get(f"backbone.{n - 2}.0.weight")
    if clip is None or last is None or clip.dim() != 4 or last.dim() != 4:
        return None
    if clip.shape[-2:] == (1, 1) and clip.shape[0] == clip.shape[1] == last.shape[0] and last.shape[-1] == 3:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    n = count_indexed(sd, "backbone")
    first = sd["backbone.0.0.weight"]
    colors = first.shape[1]
    s = scale_from_et_channels(sd[f"backbone.{n - 1}.0.weight"].shape[0], colors, scale, arch="ecbsr-et")
    prelu = any(f"backbone.{i}.1.weight" in sd for i in range(n))
    return dict(colors=colors, scale=s, num_block=n - 3, num_feat=original_width(first.shape[0], colors),
                act_type="prelu" if prelu else "relu")


def _build(hp: dict, form: str) -> nn.Module:
    return ECBSRET(**hp)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="ecbsr-et", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"ecbsr-et-m{m}c{c}-x{s}", dict(num_block=m, num_feat=c, scale=s, colors=3, act_type="prelu"),
            f"ECBSR_ET_M{m}C{c}_x{s}")
    for m, c in ((4, 16), (4, 32), (6, 40)) for s in (2, 3, 4)
)

ARCH = Architecture(
    name="ecbsr-et",
    description="ECBSR after the Equivalent Transformation: Conv + PReLU, residual folded in, ReLU clip",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="ECNUSR/ETDS (ECBSRET)",
)

register_et_layout(ETLayout(
    source=ecbsr.ECBSR, sources=(("ecbsr", "training"), ("ecbsr", "deploy")),
    target=ARCH, target_form="deploy",
    hyperparams=lambda ch: dict(colors=ch.colors, scale=ch.scale, num_block=len(ch.steps) - 2,
                                num_feat=ch.steps[0].out_channels,
                                act_type=ch.steps[0].act if ch.steps[0].act != "linear" else "linear"),
))
