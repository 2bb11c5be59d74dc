"""ABPN (Du et al., Mobile AI 2021 winner): anchor-based plain net.

Training form ``ABPN`` (as trained): ``backbone`` = conv, ReLU, num_block x
Sequential(conv, ReLU), conv -> 3s^2, ReLU, conv 3s^2 -> 3s^2; output
PixelShuffle(backbone(x) + repeat_interleave(x, s*s)) -- the "anchor" residual.

Deploy form ``ABPN_ET``: the Equivalent Transformation of it (`edgesr.reparam.et`):
hidden widths +4 (x3 tail: +3), the residual carried in those channels, a 1x1 ReLU clip,
x3 drops one padding channel. Key layouts follow ECNUSR/ETDS (``ABPN`` / ``ABPN_ET``):
Sequential indices ``backbone.0``, ``backbone.{2..}.0``, ``backbone.{2+M}``,
``backbone.{4+M}`` (+ ``backbone.{6+M}`` clip in ET form).
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture import Architecture, Variant, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam.et import (ETLayout, carried_extra, equivalent_transform, original_width, padded_out,
                          register_et_layout, scale_from_et_channels)
from ..spec import Spec
from .common import conv3x3, repeat_shortcut


class ABPN(TrainingBlock, nn.Module):
    """Plain convs + ReLU with a repeat_interleave residual (output not clamped)."""

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 4, num_feat: int = 28):
        super().__init__()
        self.colors, self.scale = colors, scale
        out = colors * scale * scale
        self.backbone = nn.Sequential(
            conv3x3(colors, num_feat), nn.ReLU(),
            *[nn.Sequential(conv3x3(num_feat, num_feat), nn.ReLU()) for _ in range(num_block)],
            conv3x3(num_feat, out), nn.ReLU(),
            conv3x3(out, out),
        )
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.backbone(x) + repeat_shortcut(x, self.scale))

    def reparameterize(self) -> nn.Module:
        """ABPN -> ABPN_ET (exact for inputs in [0, 1]; the output is clamped to [0, 1])."""
        return equivalent_transform(self)


class ABPN_ET(nn.Module):  # noqa: N801 - the official class name
    """ET form: Conv + ReLU only, ReLU clip, PixelShuffle."""

    clamps_output = True  # ReLU + 1x1 clip tail: output is clamp(y, 0, 1)

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 4, num_feat: int = 28):
        super().__init__()
        self.scale = scale
        out = colors * scale * scale
        w = num_feat + carried_extra(num_feat, colors)
        tail = out + carried_extra(out, colors)
        out_p = padded_out(out)
        self.backbone = nn.Sequential(
            conv3x3(colors, w), nn.ReLU(),
            *[nn.Sequential(conv3x3(w, w), nn.ReLU()) for _ in range(num_block)],
            conv3x3(w, tail), nn.ReLU(),
            conv3x3(tail, out_p), nn.ReLU(),
            nn.Conv2d(out_p, out_p, 1), nn.ReLU(),
        )
        self.out_channels = out
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x)
        if y.shape[1] != self.out_channels:
            y = y[:, : self.out_channels]
        return self.upsampler(y)


# ---- registry entry ---------------------------------------------------------------------

def _indices(sd) -> tuple[list[int], list[int]]:
    """Indices K of flat ``backbone.K.{weight,bias}`` and nested ``backbone.K.0.{weight,bias}``
    entries (weight OR bias, so that one missing tensor is reported by the strict load
    instead of breaking detection)."""
    flat, nested = set(), set()
    for k in sd:
        parts = k.split(".")
        if parts[0] != "backbone" or len(parts) < 3 or not parts[1].isdigit():
            continue
        if len(parts) == 3 and parts[2] in ("weight", "bias"):
            flat.add(int(parts[1]))
        elif len(parts) == 4 and parts[2] == "0" and parts[3] in ("weight", "bias"):
            nested.add(int(parts[1]))
    return sorted(flat), sorted(nested)


def _detect(sd) -> str | None:
    flat, nested = _indices(sd)
    m = len(nested)
    if not flat or flat[0] != 0 or "backbone.0.weight" not in sd or nested != list(range(2, 2 + m)):
        return None
    last = sd.get(f"backbone.{flat[-1]}.weight")
    if last is None or last.dim() != 4:
        return None
    if flat == [0, 2 + m, 4 + m] and last.shape[-1] == 3:
        return "training"
    if flat == [0, 2 + m, 4 + m, 6 + m] and last.shape[-2:] == (1, 1):
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    flat, nested = _indices(sd)
    first = sd["backbone.0.weight"]
    colors, width = first.shape[1], first.shape[0]
    out = sd[f"backbone.{flat[-1]}.weight"].shape[0]
    if form == "training":
        s = scale_from_channels(out, colors, scale, arch="abpn")
        num_feat = width
    else:
        s = scale_from_et_channels(out, colors, scale, arch="abpn")
        num_feat = original_width(width, colors)
    return dict(colors=colors, scale=s, num_block=len(nested), num_feat=num_feat)


def _build(hp: dict, form: str) -> nn.Module:
    cls = ABPN if form == "training" else ABPN_ET
    return cls(**{k: hp[k] for k in ("colors", "scale", "num_block", "num_feat")})


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="abpn", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 3, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"abpn-m{m}c{c}-x{s}", dict(num_block=m, num_feat=c, scale=s, colors=3), f"ABPN_M{m}C{c}_x{s}")
    for m, c in ((4, 28), (6, 40)) for s in (2, 3, 4)
)

ARCH = Architecture(
    name="abpn",
    description="ABPN: plain convs + ReLU with a repeat_interleave anchor residual -> ABPN_ET (Conv+ReLU only)",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="NJU-Jet/SR_Mobile_Quantization (Mobile AI 2021); checkpoints and ET form from ECNUSR/ETDS",
    tags=("equivalent-transform",),
)

register_et_layout(ETLayout(
    source=ABPN, sources=(("abpn", "training"),), target=ARCH, target_form="deploy",
    hyperparams=lambda ch: dict(colors=ch.colors, scale=ch.scale, num_block=len(ch.steps) - 3,
                                num_feat=ch.steps[0].out_channels),
))
