"""ECBSR (Zhang et al., ACM MM 2021): edge-oriented convolution blocks.

Key layout follows the official code (xindongzhang/ECBSR and ECNUSR/ETDS):
training form ``backbone.N.{conv3x3, conv1x1_3x3.{k0,b0,k1,b1},
conv1x1_{sbx,sby,lpl}.{k0,b0,scale,bias,mask}, act}``; deploy form (ECBSRT)
``backbone.N.0`` conv + ``backbone.N.1`` PReLU. Output:
PixelShuffle(body(x) + repeat_interleave(x, s*s)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec
from .common import activation, conv_from_kernel, pad_with_bias, repeat_shortcut


class SeqConv3x3(nn.Module):
    """1x1 conv followed by a 3x3 conv (learned) or a scaled fixed edge mask (depthwise)."""

    def __init__(self, kind: str, cin: int, cout: int, depth_multiplier: float = 2.0):
        super().__init__()
        self.kind = kind
        if kind == "conv1x1-conv3x3":
            mid = int(cout * depth_multiplier)
            self.k0 = nn.Parameter(torch.empty(mid, cin, 1, 1))
            self.b0 = nn.Parameter(torch.empty(mid))
            self.k1 = nn.Parameter(torch.empty(cout, mid, 3, 3))
            self.b1 = nn.Parameter(torch.empty(cout))
            for w, b, fan_in in ((self.k0, self.b0, cin), (self.k1, self.b1, mid * 9)):
                nn.init.kaiming_uniform_(w, a=5 ** 0.5)
                nn.init.uniform_(b, -fan_in ** -0.5, fan_in ** -0.5)
        else:
            edge = kind.split("-")[1]
            self.k0 = nn.Parameter(torch.empty(cout, cin, 1, 1))
            self.b0 = nn.Parameter(torch.empty(cout))
            nn.init.kaiming_uniform_(self.k0, a=5 ** 0.5)
            nn.init.uniform_(self.b0, -cin ** -0.5, cin ** -0.5)
            self.scale = nn.Parameter(torch.randn(cout, 1, 1, 1) * 1e-3)
            self.bias = nn.Parameter(torch.randn(cout) * 1e-3)
            self.register_buffer("mask", K.edge_mask(edge, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = pad_with_bias(F.conv2d(x, self.k0, self.b0), self.b0)
        if self.kind == "conv1x1-conv3x3":
            return F.conv2d(y0, self.k1, self.b1)
        return F.conv2d(y0, self.scale * self.mask, self.bias, groups=self.mask.shape[0])

    def equivalent_kernel_bias(self) -> K.KB:
        if self.kind == "conv1x1-conv3x3":
            return K.merge_1x1_kxk(self.k0, self.b0, self.k1, self.b1)
        return K.merge_1x1_depthwise(self.k0, self.b0, self.scale * self.mask, self.bias)


class ECB(TrainingBlock, nn.Module):
    """Edge-oriented convolution block (training form)."""

    def __init__(self, cin: int, cout: int, act_type: str = "prelu", depth_multiplier: float = 2.0,
                 with_idt: bool = False):
        super().__init__()
        self.conv3x3 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv1x1_3x3 = SeqConv3x3("conv1x1-conv3x3", cin, cout, depth_multiplier)
        self.conv1x1_sbx = SeqConv3x3("conv1x1-sobelx", cin, cout)
        self.conv1x1_sby = SeqConv3x3("conv1x1-sobely", cin, cout)
        self.conv1x1_lpl = SeqConv3x3("conv1x1-laplacian", cin, cout)
        self.with_idt = with_idt and cin == cout
        self.act_type = act_type
        self.act = activation(act_type, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.conv3x3(x) + self.conv1x1_3x3(x) + self.conv1x1_sbx(x)
             + self.conv1x1_sby(x) + self.conv1x1_lpl(x))
        if self.with_idt:
            y = y + x
        return self.act(y)

    def equivalent_kernel_bias(self) -> K.KB:
        branches = [(self.conv3x3.weight, self.conv3x3.bias)]
        branches += [m.equivalent_kernel_bias() for m in
                     (self.conv1x1_3x3, self.conv1x1_sbx, self.conv1x1_sby, self.conv1x1_lpl)]
        if self.with_idt:
            k = self.conv3x3.weight
            branches.append((K.identity_kernel(k.shape[0], 3, dtype=k.dtype), K.zero_bias(k)))
        return K.add_branches(*branches)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        conv = conv_from_kernel(*self.equivalent_kernel_bias())
        layers = [conv]
        if self.act_type != "linear":
            act = activation(self.act_type, conv.out_channels)
            act.load_state_dict(self.act.state_dict())
            layers.append(act)
        return nn.Sequential(*layers)


class ECBSR(nn.Module):
    """ECBSR in either form. Deploy form has the ECBSRT key layout of the ETDS repo."""

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 4, num_feat: int = 16,
                 act_type: str = "prelu", with_idt: bool = False, form: str = "training"):
        super().__init__()
        self.colors, self.scale = colors, scale
        out = colors * scale * scale
        widths = [(colors, num_feat, act_type)] + [(num_feat, num_feat, act_type)] * num_block
        widths.append((num_feat, out, "linear"))
        if form == "training":
            blocks = [ECB(i, o, a, with_idt=with_idt) for i, o, a in widths]
        else:
            blocks = [nn.Sequential(nn.Conv2d(i, o, 3, padding=1), *([activation(a, o)] if a != "linear" else []))
                      for i, o, a in widths]
        self.backbone = nn.Sequential(*blocks)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = repeat_shortcut(x, self.scale) if self.colors > 1 else x
        return self.upsampler(self.backbone(x) + shortcut)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "backbone.0.conv3x3.weight" in sd and "backbone.0.conv1x1_3x3.k0" in sd:
        return "training"
    n = count_indexed(sd, "backbone")
    if n >= 2 and "backbone.0.0.weight" in sd and f"backbone.{n - 1}.0.weight" in sd:
        last = sd[f"backbone.{n - 1}.0.weight"]
        # ECBSR_ET ends in a 1x1 "clip" conv; ABPN has no nested ".0."; ECBSR ends in a 3x3.
        if last.shape[-1] == 3 and f"backbone.{n - 1}.1.weight" not in sd:
            return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    n = count_indexed(sd, "backbone")
    if form == "training":
        first, last = sd["backbone.0.conv3x3.weight"], sd[f"backbone.{n - 1}.conv3x3.weight"]
        act = "prelu" if "backbone.0.act.weight" in sd else "relu"
    else:
        first, last = sd["backbone.0.0.weight"], sd[f"backbone.{n - 1}.0.weight"]
        act = "prelu" if "backbone.0.1.weight" in sd else "relu"
    colors = first.shape[1]
    s = scale_from_channels(last.shape[0], colors, scale, arch="ecbsr")
    return dict(colors=colors, scale=s, num_block=n - 2, num_feat=first.shape[0], act_type=act)


def _build(hp: dict, form: str) -> nn.Module:
    return ECBSR(**{k: v for k, v in hp.items()}, form=form)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="ecbsr", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True,
                hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"ecbsr-m{m}c{c}-x{s}", dict(num_block=m, num_feat=c, scale=s, colors=3, act_type="prelu"))
    for m, c in ((4, 16), (4, 32), (6, 40)) for s in (2, 3, 4)
)

ARCH = Architecture(
    name="ecbsr",
    description="ECBSR: edge-oriented conv blocks (3x3 + 1x1->3x3 + Sobel/Laplacian) -> plain 3x3 + PReLU",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="xindongzhang/ECBSR; RGB checkpoints from ECNUSR/ETDS",
)
