"""RepSR-style VGG network (Wang et al., ACM MM 2022) built from RepVGG blocks.

The official RepSR repository (TencentARC/RepSR) holds only a README, no code or key
layout, so this family uses the RepVGG block layout of DingXiaoH/RepVGG (repvgg.py):
training form ``body.N.{rbr_dense.{conv,bn}, rbr_1x1.{conv,bn}, rbr_identity, nonlinearity}``
(``rbr_identity`` is a BatchNorm present when in == out), deploy form
``body.N.{rbr_reparam, nonlinearity}``. Network: a plain stack like ECBSR's
(first block colors -> C, ``num_block`` C -> C blocks, a linear last block
C -> colors*s*s), output PixelShuffle(body(x) + nearest(x)).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import KeyMismatch
from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec
from .common import activation, repeat_shortcut


class ConvBN(nn.Sequential):
    """conv (no bias) -> BatchNorm, with RepVGG's ``conv`` / ``bn`` child names."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False),
            bn=nn.BatchNorm2d(cout),
        ))

    def equivalent_kernel_bias(self) -> K.KB:
        bn = self.bn
        return K.fuse_conv_bn(self.conv.weight, None, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


class RepVGGBlock(TrainingBlock, nn.Module):
    """3x3 conv+BN + 1x1 conv+BN (+ BN identity when in == out), then the activation."""

    def __init__(self, cin: int, cout: int, act_type: str = "relu"):
        super().__init__()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout else None
        self.rbr_dense = ConvBN(cin, cout, 3)
        self.rbr_1x1 = ConvBN(cin, cout, 1)
        self.act_type = act_type
        self.nonlinearity = activation(act_type, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.nonlinearity(y)

    def equivalent_kernel_bias(self) -> K.KB:
        branches = [self.rbr_dense.equivalent_kernel_bias(), self.rbr_1x1.equivalent_kernel_bias()]
        if self.rbr_identity is not None:
            bn = self.rbr_identity
            branches.append(K.bn_as_conv(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, size=3))
        return K.add_branches(*branches)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        k, b = self.equivalent_kernel_bias()
        block = RepVGGDeployBlock(k.shape[1], k.shape[0], self.act_type).to(k)
        block.rbr_reparam.weight.copy_(k)
        block.rbr_reparam.bias.copy_(b)
        block.nonlinearity.load_state_dict(self.nonlinearity.state_dict())
        return block.eval()


class RepVGGDeployBlock(nn.Module):
    """Deploy form: ``rbr_reparam`` 3x3 conv + activation."""

    def __init__(self, cin: int, cout: int, act_type: str = "relu"):
        super().__init__()
        self.rbr_reparam = nn.Conv2d(cin, cout, 3, padding=1)
        self.nonlinearity = activation(act_type, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(self.rbr_reparam(x))


class RepSRNet(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 4, num_feat: int = 16,
                 act_type: str = "relu", form: str = "training"):
        super().__init__()
        self.colors, self.scale = colors, scale
        widths = [(colors, num_feat, act_type)] + [(num_feat, num_feat, act_type)] * num_block
        widths.append((num_feat, colors * scale * scale, "linear"))
        block = RepVGGBlock if form == "training" else RepVGGDeployBlock
        self.body = nn.Sequential(*(block(i, o, a) for i, o, a in widths))
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.body(x) + repeat_shortcut(x, self.scale))


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "body.0.rbr_dense.conv.weight" in sd and "body.0.rbr_1x1.conv.weight" in sd:
        return "training"
    if "body.0.rbr_reparam.weight" in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    n = count_indexed(sd, "body")
    leaf = "rbr_dense.conv.weight" if form == "training" else "rbr_reparam.weight"
    try:
        first, last = sd[f"body.0.{leaf}"], sd[f"body.{n - 1}.{leaf}"]
    except KeyError as e:
        raise KeyMismatch(f"repsr: checkpoint lacks {e.args[0]!r}") from None
    if n < 2:
        raise KeyMismatch(f"repsr: expected at least 2 body blocks, found {n}")
    colors = first.shape[1]
    s = scale_from_channels(last.shape[0], colors, scale, arch="repsr")
    # PReLU slopes in any hidden block (so a single missing slope is reported, not misread)
    act = "prelu" if any(f"body.{i}.nonlinearity.weight" in sd for i in range(n - 1)) else "relu"
    return dict(colors=colors, scale=s, num_block=n - 2, num_feat=first.shape[0], act_type=act)


def _build(hp: dict, form: str) -> nn.Module:
    return RepSRNet(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="repsr", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"repsr-m{m}c{c}-x{s}", dict(num_block=m, num_feat=c, scale=s, colors=3, act_type="relu"))
    for m, c in ((4, 16), (4, 32), (6, 40)) for s in (2, 3, 4)
)

ARCH = Architecture(
    name="repsr",
    description="RepSR/RepVGG blocks (3x3+BN, 1x1+BN, BN identity) -> plain 3x3 + activation",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="RepVGG block key layout (DingXiaoH/RepVGG repvgg.py); TencentARC/RepSR released no code",
)
