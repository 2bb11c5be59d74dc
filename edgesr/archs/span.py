"""SPAN (Wan et al., NTIRE 2024 ESR winner): swift parameter-free attention network.

Key layout follows hongyuanyu/SPAN ``basicsr/archs/span_arch.py`` (same in
chaiNNer-org/spandrel ``spandrel/architectures/SPAN``): ``conv_1``, ``block_1..6``
(SPAB: ``c1_r``, ``c2_r``, ``c3_r``), ``conv_cat`` (1x1), ``conv_2``, ``upsampler.0``; every
Conv3XC holds ``sk`` (1x1 skip), ``conv.{0,1,2}`` (1x1 -> 3x3 valid -> 1x1, width x gain) and
``eval_conv`` (the fused 3x3 the official code refreshes from the branches). Spandrel adds an
optional ``no_norm`` buffer for models trained without mean subtraction.

Two checkpoint kinds exist: full training checkpoints (all of the above; form "training")
and "slim" ones holding only each Conv3XC's ``eval_conv`` (form "deploy", also what
`reparameterize` produces). The training form computes through the branches and ignores
the stored ``eval_conv`` copy (it can be stale); the deploy form runs ``eval_conv`` only.
The parameter-free attention ``(out3 + x) * (sigmoid(out3) - 0.5)`` is kept as is.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import KeyMismatch
from ..architecture import Architecture, Variant, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class Conv3XC(TrainingBlock, nn.Module):
    """1x1 skip + (1x1 -> 3x3 -> 1x1) on the zero-padded input; reparameterizes to one 3x3."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2, relu: bool = False):
        super().__init__()
        self.has_relu = relu
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * gain, 1),
            nn.Conv2d(c_in * gain, c_out * gain, 3),
            nn.Conv2d(c_out * gain, c_out, 1),
        )
        # Stored fused copy: official checkpoints carry it; never read by this form's forward.
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.eval_conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        return F.leaky_relu(out, 0.05) if self.has_relu else out

    def equivalent_kernel_bias(self) -> K.KB:
        c0, c1, c2 = self.conv
        k, b = K.merge_1x1_kxk_1x1(c0.weight, c0.bias, c1.weight, c1.bias, c2.weight, c2.bias)
        return K.add_branches((k, b), (self.sk.weight, self.sk.bias))

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        k, b = self.equivalent_kernel_bias()
        block = Conv3XCDeploy(k.shape[1], k.shape[0], self.has_relu).to(k)
        block.eval_conv.weight.copy_(k)
        block.eval_conv.bias.copy_(b)
        return block.eval()


class Conv3XCDeploy(nn.Module):
    """Deploy ("slim") Conv3XC: only ``eval_conv``."""

    def __init__(self, c_in: int, c_out: int, relu: bool = False):
        super().__init__()
        self.has_relu = relu
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.eval_conv(x)
        return F.leaky_relu(out, 0.05) if self.has_relu else out


def _conv3xc(c_in: int, c_out: int, gain: int, form: str) -> nn.Module:
    return Conv3XC(c_in, c_out, gain) if form == "training" else Conv3XCDeploy(c_in, c_out)


class SPAB(nn.Module):
    def __init__(self, channels: int, gain: int = 2, form: str = "training"):
        super().__init__()
        self.c1_r = _conv3xc(channels, channels, gain, form)
        self.c2_r = _conv3xc(channels, channels, gain, form)
        self.c3_r = _conv3xc(channels, channels, gain, form)
        self.act1 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The official SPAB applies SiLU(inplace=True) to out1, so the out1 it returns (which
        # feeds conv_cat) is the activated one.
        out1 = self.act1(self.c1_r(x))
        out3 = self.c3_r(self.act1(self.c2_r(out1)))
        sim_att = torch.sigmoid(out3) - 0.5
        return (out3 + x) * sim_att, out1


class SPAN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, feature_channels: int = 48, num_blocks: int = 6,
                 gain: int = 2, norm: bool = True, img_range: float = 255.0, form: str = "training"):
        super().__init__()
        if num_blocks < 1:
            raise ValueError("SPAN needs at least one block")
        self.num_blocks, self.img_range = num_blocks, img_range
        if norm:
            if colors != 3:
                raise ValueError("SPAN's mean normalisation is defined for RGB (3 channels) only")
            self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        else:
            self.register_buffer("no_norm", torch.zeros(1))  # spandrel's marker key
            self.mean = None
        self.conv_1 = _conv3xc(colors, feature_channels, gain, form)
        for i in range(1, num_blocks + 1):
            setattr(self, f"block_{i}", SPAB(feature_channels, gain, form))
        self.conv_cat = nn.Conv2d(feature_channels * 4, feature_channels, 1)
        self.conv_2 = _conv3xc(feature_channels, feature_channels, gain, form)
        self.upsampler = nn.Sequential(nn.Conv2d(feature_channels, colors * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) * self.img_range
        feat = self.conv_1(x)
        h, out_b1, last_out1 = feat, None, None
        for i in range(1, self.num_blocks + 1):
            h, last_out1 = getattr(self, f"block_{i}")(h)
            if i == 1:
                out_b1 = h
        out = self.conv_cat(torch.cat([feat, self.conv_2(h), out_b1, last_out1], 1))
        return self.upsampler(out)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if not ("conv_cat.weight" in sd and "upsampler.0.weight" in sd and "block_1.c1_r.eval_conv.weight" in sd
            and "conv_1.eval_conv.weight" in sd):
        return None
    if "conv_1.sk.weight" in sd and "conv_1.conv.0.weight" in sd:
        return "training"
    if "conv_1.sk.weight" not in sd and "block_1.c1_r.sk.weight" not in sd:
        return "deploy"  # slim checkpoint: eval_conv only
    return None


_BLOCK = re.compile(r"^block_(\d+)\.")


def _infer(sd, form: str, scale: int | None) -> dict:
    ids = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if ids != list(range(1, len(ids) + 1)):
        raise KeyMismatch(f"span: block numbering is not 1..N: {ids}")
    try:
        first = sd["conv_1.eval_conv.weight"]
        up = sd["upsampler.0.weight"]
        gain = sd["block_1.c1_r.conv.0.weight"].shape[0] // first.shape[0] if form == "training" else 2
    except KeyError as e:
        raise KeyMismatch(f"span: checkpoint lacks {e.args[0]!r}") from None
    colors, feats = first.shape[1], first.shape[0]
    s = scale_from_channels(up.shape[0], colors, scale, arch="span")
    norm = "no_norm" not in sd
    if norm and colors != 3:
        raise KeyMismatch(f"span: {colors}-channel checkpoint without a no_norm key; SPAN's mean "
                          "normalisation is defined for RGB only")
    return dict(colors=colors, scale=s, feature_channels=feats, num_blocks=len(ids), gain=gain, norm=norm)


def _build(hp: dict, form: str) -> nn.Module:
    return SPAN(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    # conv_1 + 3 Conv3XC per block + conv_2 + the upsampler's 3x3 (conv_cat is 1x1).
    rf = 3 * hp.get("num_blocks", 6) + 3
    return Spec(arch="span", scale=hp["scale"], in_channels=hp.get("colors", 3),
                out_channels=hp.get("colors", 3), form=form, receptive_field=rf, fp16_safe=True,
                hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"span-ch{c}-x{s}", dict(feature_channels=c, scale=s, num_blocks=6, colors=3),
            "hongyuanyu/SPAN release" if c == 48 else "")
    for c, scales in ((48, (2, 3, 4)), (52, (2, 4))) for s in scales
)

ARCH = Architecture(
    name="span",
    description="SPAN: Conv3XC (1x1 skip + 1x1->3x3->1x1) -> one 3x3; parameter-free attention kept",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="hongyuanyu/SPAN basicsr/archs/span_arch.py; chaiNNer-org/spandrel architectures/SPAN",
)
