"""RepRFN (Deng et al., NTIRE 2023 ESR): reparameterized residual feature network.

Key layout follows laonafahaodange/RepRFN ``models/RepRFN.py`` (checkpoint
``model_zoo/reprfn_ntire_x4.pth`` is the deploy form, loaded with ``deploy=True``):
``fea_conv``, ``reprfb1..N`` (``repblock1..3``, ``conv3``, ``esa`` as in RLFN), ``lr_conv``,
``upsampler.conv``. A RepBlock (training) sums ``rbr_3x3_branch``, ``rbr_3x1_branch``,
``rbr_1x3_branch``, ``rbr_1x1_branch``, ``rbr_1x1_3x3_branch_1x1`` -> ``rbr_1x1_3x3_branch_3x3``
(both bias-free, zero padding), ECB-style ``rbr_conv1x1_{sbx,sby,lpl}_branch``
(``k0, b0, scale, bias, mask``; bias-padded) and the identity, then LeakyReLU(0.05);
deploy: ``rbr_reparam``. Input/output range [0, 1].
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
from .ecbsr import SeqConv3x3
from .rlfn import ESA, ESA_MIN_SIZE, ESA_RADIUS

SLOPE = 0.05


class RepBlock(TrainingBlock, nn.Module):
    """3x3 + 3x1 + 1x3 + 1x1 + (1x1 -> 3x3) + Sobel-x/y + Laplacian + identity, then LeakyReLU."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.rbr_3x3_branch = nn.Conv2d(c, c, (3, 3), padding=1)
        self.rbr_3x1_branch = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.rbr_1x3_branch = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.rbr_1x1_branch = nn.Conv2d(c, c, (1, 1))
        self.rbr_1x1_3x3_branch_1x1 = nn.Conv2d(c, 2 * c, (1, 1), bias=False)
        self.rbr_1x1_3x3_branch_3x3 = nn.Conv2d(2 * c, c, (3, 3), padding=1, bias=False)
        self.rbr_conv1x1_sbx_branch = SeqConv3x3("conv1x1-sobelx", c, c)
        self.rbr_conv1x1_sby_branch = SeqConv3x3("conv1x1-sobely", c, c)
        self.rbr_conv1x1_lpl_branch = SeqConv3x3("conv1x1-laplacian", c, c)
        self.activation = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.rbr_3x3_branch(x) + self.rbr_3x1_branch(x) + self.rbr_1x3_branch(x) + self.rbr_1x1_branch(x)
             + self.rbr_1x1_3x3_branch_3x3(self.rbr_1x1_3x3_branch_1x1(x)) + x
             + self.rbr_conv1x1_sbx_branch(x) + self.rbr_conv1x1_sby_branch(x) + self.rbr_conv1x1_lpl_branch(x))
        return self.activation(y)

    def equivalent_kernel_bias(self) -> K.KB:
        plain = [(m.weight, m.bias) for m in (self.rbr_3x3_branch, self.rbr_3x1_branch,
                                                self.rbr_1x3_branch, self.rbr_1x1_branch)]
        k0 = self.rbr_1x1_3x3_branch_1x1.weight
        k1 = self.rbr_1x1_3x3_branch_3x3.weight
        # Bias-free 1x1: zero padding of its output equals bias padding, so the merge is exact.
        seq = K.merge_1x1_kxk(k0, K.zero_bias(k0), k1, K.zero_bias(k1))
        edges = [m.equivalent_kernel_bias() for m in (self.rbr_conv1x1_sbx_branch, self.rbr_conv1x1_sby_branch,
                                                      self.rbr_conv1x1_lpl_branch)]
        return K.add_identity(*K.add_branches(*plain, seq, *edges))

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        k, b = self.equivalent_kernel_bias()
        block = RepBlockDeploy(k.shape[0]).to(k)
        block.rbr_reparam.weight.copy_(k)
        block.rbr_reparam.bias.copy_(b)
        return block.eval()


class RepBlockDeploy(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.rbr_reparam = nn.Conv2d(channels, channels, 3, padding=1)
        self.activation = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.rbr_reparam(x))


class RepRFB(nn.Module):
    def __init__(self, channels: int, esa_channels: int = 16, form: str = "training"):
        super().__init__()
        block = RepBlock if form == "training" else RepBlockDeploy
        self.repblock1 = block(channels)
        self.repblock2 = block(channels)
        self.repblock3 = block(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.esa = ESA(esa_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.repblock3(self.repblock2(self.repblock1(x)))
        out = F.leaky_relu(self.conv3(out), SLOPE)
        return self.esa(x + out)


class Upsample_Block(nn.Module):  # noqa: N801 - official name, kept for readability of the layout
    def __init__(self, cin: int, cout: int, scale: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * scale * scale, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.conv(x))


class RepRFN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, feature_nums: int = 48, num_blocks: int = 4,
                 esa_channels: int = 16, form: str = "training"):
        super().__init__()
        self.num_blocks = num_blocks
        self.fea_conv = nn.Conv2d(colors, feature_nums, 3, padding=1)
        for i in range(1, num_blocks + 1):
            setattr(self, f"reprfb{i}", RepRFB(feature_nums, esa_channels, form))
        self.lr_conv = nn.Conv2d(feature_nums, feature_nums, 3, padding=1)
        self.upsampler = Upsample_Block(feature_nums, colors, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.fea_conv(x)
        h = feat
        for i in range(1, self.num_blocks + 1):
            h = getattr(self, f"reprfb{i}")(h)
        return self.upsampler(self.lr_conv(h) + feat)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if not ("fea_conv.weight" in sd and "reprfb1.conv3.weight" in sd and "reprfb1.esa.conv1.weight" in sd
            and "upsampler.conv.weight" in sd):
        return None
    if "reprfb1.repblock1.rbr_3x3_branch.weight" in sd:
        return "training"
    if "reprfb1.repblock1.rbr_reparam.weight" in sd:
        return "deploy"
    return None


_BLOCK = re.compile(r"^reprfb(\d+)\.")


def _infer(sd, form: str, scale: int | None) -> dict:
    ids = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if ids != list(range(1, len(ids) + 1)):
        raise KeyMismatch(f"reprfn: block numbering is not 1..N: {ids}")
    try:
        first, up = sd["fea_conv.weight"], sd["upsampler.conv.weight"]
        esa = sd["reprfb1.esa.conv1.weight"].shape[0]
    except KeyError as e:
        raise KeyMismatch(f"reprfn: checkpoint lacks {e.args[0]!r}") from None
    colors = first.shape[1]
    s = scale_from_channels(up.shape[0], colors, scale, arch="reprfn")
    return dict(colors=colors, scale=s, feature_nums=first.shape[0], num_blocks=len(ids), esa_channels=esa)


def _build(hp: dict, form: str) -> nn.Module:
    return RepRFN(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    rf = 1 + hp.get("num_blocks", 4) * (4 + ESA_RADIUS) + 1 + 1
    return Spec(arch="reprfn", scale=hp["scale"], in_channels=hp.get("colors", 3), out_channels=hp.get("colors", 3),
                form=form, min_size=ESA_MIN_SIZE, receptive_field=rf, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"reprfn-x{s}", dict(feature_nums=48, num_blocks=4, scale=s),
            "laonafahaodange/RepRFN model_zoo/reprfn_ntire_x4.pth" if s == 4 else "")
    for s in (2, 3, 4)
)

ARCH = Architecture(
    name="reprfn",
    description="RepRFN: 3x3 + 3x1/1x3 + 1x1 + 1x1->3x3 + Sobel/Laplacian + identity -> plain 3x3; ESA kept",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="laonafahaodange/RepRFN models/RepRFN.py",
)
