"""ETDS (Chao et al., CVPR 2023): equivalent transformation + dual-stream network.

Training form: a backbone stream (num_feat - num_residual_feat channels) and a residual
stream (num_residual_feat channels, initialised to carry the input), joined by
``add_residual_convs`` (residual -> backbone) and, in one ablation,
``advanced_residual_convs`` (backbone -> residual). Both streams are 3x3 convs + ReLU,
so they stack into one plain conv per layer: the deploy form ``ETDSForInference``
(conv_first, backbone_convs, conv_last, conv_clip) whose 1x1 conv_clip with the
ReLUs clamps the output to [0, 1]. Key layouts follow ECNUSR/ETDS.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..spec import Spec
from .common import conv3x3, conv_from_kernel


class ETDSForInference(nn.Module):
    """Deploy form: plain 3x3 convs + ReLU, ReLU-clip, PixelShuffle."""

    clamps_output = True  # the ReLU + 1x1 conv_clip + ReLU tail is clamp(y, 0, 1)

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 5, num_feat: int = 16):
        super().__init__()
        self.scale = scale
        out = colors * scale * scale + (1 if scale == 3 else 0)  # x3: padded to a multiple of 4
        self.conv_first = conv3x3(colors, num_feat)
        self.backbone_convs = nn.ModuleList(conv3x3(num_feat, num_feat) for _ in range(num_block))
        self.conv_last = conv3x3(num_feat, out)
        self.conv_clip = nn.Conv2d(out, out, 1)
        self.upsampler = nn.PixelShuffle(scale)
        self.out_channels = colors * scale * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_first(x))
        for conv in self.backbone_convs:
            x = F.relu(conv(x))
        x = F.relu(self.conv_clip(F.relu(self.conv_last(x))))
        return self.upsampler(x[:, : self.out_channels])


class ETDS(TrainingBlock, nn.Module):
    """Dual-stream training form. forward returns the SR image only (the official code
    also returns the residual-stream image, used only by its training loss)."""

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 5, num_feat: int = 16,
                 num_residual_feat: int = 3, add_residual: bool = True, advanced_residual: bool = False):
        super().__init__()
        if not num_feat > num_residual_feat >= colors:
            raise ValueError("ETDS needs num_feat > num_residual_feat >= colors")
        self.colors, self.scale = colors, scale
        self.num_feat, self.num_residual_feat = num_feat, num_residual_feat
        fb, fr = num_feat - num_residual_feat, num_residual_feat
        self.conv_first = conv3x3(colors, fb)
        self.conv_residual_first = conv3x3(colors, fr)
        self.backbone_convs = nn.ModuleList(conv3x3(fb, fb) for _ in range(num_block))
        self.residual_convs = nn.ModuleList(conv3x3(fr, fr) for _ in range(num_block))
        self.add_residual_convs = (nn.ModuleList(conv3x3(fr, fb) for _ in range(num_block))
                                   if add_residual else None)
        self.advanced_residual_convs = (nn.ModuleList(conv3x3(fb, fr) for _ in range(num_block))
                                        if advanced_residual else None)
        out = colors * scale * scale
        self.conv_last = conv3x3(fb, out)
        self.conv_residual_last = conv3x3(fr, out)
        self.upsampler = nn.PixelShuffle(scale)
        self._init_residual_identity()

    @torch.no_grad()
    def _init_residual_identity(self) -> None:
        """As in the paper: the residual stream starts as the identity / nearest upsampling."""
        s2 = self.scale ** 2
        for conv in [self.conv_residual_first, *self.residual_convs, self.conv_residual_last]:
            conv.weight.zero_()
            conv.bias.zero_()
        for i in range(self.colors):
            self.conv_residual_first.weight[i, i, 1, 1] = 1
            for j in range(s2):
                self.conv_residual_last.weight[i * s2 + j, i, 1, 1] = 1
        for conv in self.residual_convs:
            for i in range(self.num_residual_feat):
                conv.weight[i, i, 1, 1] = 1
        for extra in (self.add_residual_convs, self.advanced_residual_convs):
            for conv in extra or ():
                conv.weight.zero_()
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = F.relu(self.conv_first(x))
        r = F.relu(self.conv_residual_first(x))
        for i, (bconv, rconv) in enumerate(zip(self.backbone_convs, self.residual_convs)):
            nb = bconv(b) + (self.add_residual_convs[i](r) if self.add_residual_convs is not None else 0)
            nr = rconv(r) + (self.advanced_residual_convs[i](b) if self.advanced_residual_convs is not None else 0)
            b, r = F.relu(nb), F.relu(nr)
        return self.upsampler(self.conv_last(b)) + self.upsampler(self.conv_residual_last(r))

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        """Stack both streams into one conv per layer; add the ReLU clip (exact on [0,1] outputs)."""
        fb, fr = self.num_feat - self.num_residual_feat, self.num_residual_feat
        deploy = ETDSForInference(self.colors, self.scale, len(self.backbone_convs), self.num_feat)
        _copy(deploy.conv_first, torch.cat([self.conv_first.weight, self.conv_residual_first.weight]),
              torch.cat([self.conv_first.bias, self.conv_residual_first.bias]))
        for i, (bconv, rconv) in enumerate(zip(self.backbone_convs, self.residual_convs)):
            w = torch.zeros(fb + fr, fb + fr, 3, 3, dtype=bconv.weight.dtype)
            w[:fb, :fb], w[fb:, fb:] = bconv.weight, rconv.weight
            bias = torch.cat([bconv.bias, rconv.bias])
            if self.add_residual_convs is not None:
                w[:fb, fb:] = self.add_residual_convs[i].weight
                bias[:fb] += self.add_residual_convs[i].bias
            if self.advanced_residual_convs is not None:
                w[fb:, :fb] = self.advanced_residual_convs[i].weight
                bias[fb:] += self.advanced_residual_convs[i].bias
            _copy(deploy.backbone_convs[i], w, bias)
        # Sum of the two output convs; then clamp(y, 0, 1) = relu(1 - relu(1 - y)):
        # conv_last computes 1 - y, conv_clip computes 1 - (.) with identity weights.
        w_last = torch.cat([self.conv_last.weight, self.conv_residual_last.weight], dim=1)
        b_last = self.conv_last.bias + self.conv_residual_last.bias
        out = deploy.conv_last.out_channels
        w = torch.zeros(out, fb + fr, 3, 3, dtype=w_last.dtype)
        b = torch.zeros(out, dtype=w_last.dtype)
        n = w_last.shape[0]
        w[:n], b[:n] = -w_last, 1.0 - b_last
        _copy(deploy.conv_last, w, b)
        eye = torch.eye(out, dtype=w.dtype).reshape(out, out, 1, 1)
        _copy(deploy.conv_clip, -eye, torch.ones(out, dtype=w.dtype))
        return deploy.eval()


def _copy(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "conv_residual_first.weight" in sd and "residual_convs.0.weight" in sd and "conv_residual_last.weight" in sd:
        return "training"
    if "conv_first.weight" in sd and "conv_clip.weight" in sd and "backbone_convs.0.weight" in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    colors = sd["conv_first.weight"].shape[1]
    num_block = count_indexed(sd, "backbone_convs")
    if form == "training":
        fr = sd["conv_residual_first.weight"].shape[0]
        s = scale_from_channels(sd["conv_last.weight"].shape[0], colors, scale, arch="etds")
        return dict(colors=colors, scale=s, num_block=num_block,
                    num_feat=sd["conv_first.weight"].shape[0] + fr, num_residual_feat=fr,
                    add_residual="add_residual_convs.0.weight" in sd,
                    advanced_residual="advanced_residual_convs.0.weight" in sd)
    out = sd["conv_last.weight"].shape[0]
    s = scale_from_channels(out, colors, scale, extra=out - colors * _square_floor(out // colors),
                            arch="etds")
    return dict(colors=colors, scale=s, num_block=num_block, num_feat=sd["conv_first.weight"].shape[0])


def _square_floor(n: int) -> int:
    s = int(n ** 0.5)
    return s * s


def _build(hp: dict, form: str) -> nn.Module:
    if form == "training":
        return ETDS(**hp)
    return ETDSForInference(**{k: hp[k] for k in ("colors", "scale", "num_block", "num_feat")})


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="etds", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


_SIZES = {"t": (5, 16), "s": (4, 32), "m": (6, 32), "l": (7, 48)}
VARIANTS = tuple(
    Variant(f"etds-{n}-x{s}", dict(num_block=m, num_feat=c, scale=s, colors=3), f"ETDS_M{m}C{c}_x{s}")
    for n, (m, c) in _SIZES.items() for s in (2, 3, 4)
)

ARCH = Architecture(
    name="etds",
    description="ETDS: dual-stream (backbone + residual) training form -> plain Conv+ReLU with ReLU clip",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="ECNUSR/ETDS (CVPR 2023)",
)
