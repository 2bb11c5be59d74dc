"""FMEN (Du et al., NTIRE 2022 ESR): fast and memory-efficient network.

Key layouts follow NJU-Jet/FMEN: training form ``train_fmen.py`` (TRAIN_FMEN), deploy form
``test_fmen.py`` (TEST_FMEN), conversion ``reparameterize.py``:
``head``, ``warmup.{0 (3x3 conv), 1 (HFAB)}``, ``ERBs.i.conv{1,2}``, ``HFABs.i``,
``lr_conv``, ``tail.0``. An RRRB (training) is ``expand_conv`` (1x1, x ratio) ->
``fea_conv`` (3x3 on the expand output padded with the expand bias) + that output ->
``reduce_conv`` (1x1) + x; deploy: ``rep_conv`` (3x3). An HFAB (training) is
``bn1`` -> ``squeeze`` (3x3, input padded with the BN shift) -> LeakyReLU -> ``convs``
(ERBs, no activation between them) -> LeakyReLU -> ``bn2`` -> ``excitate`` -> ``bn3`` ->
sigmoid, times x; deploy: the same without BN. LeakyReLU slope 0.1.

The official models run on [0, 255] (EDSR framework, ``rgb_range = 255``); the module takes
[0, 1] and scales by ``img_range`` inside (no weights involved).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..errors import KeyMismatch
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec
from .common import pad_with_bias

SLOPE = 0.1


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE)


class RRRB(TrainingBlock, nn.Module):
    """Residual-in-residual reparameterizable block (training form)."""

    def __init__(self, n_feats: int, ratio: int = 2):
        super().__init__()
        self.expand_conv = nn.Conv2d(n_feats, ratio * n_feats, 1)
        self.fea_conv = nn.Conv2d(ratio * n_feats, ratio * n_feats, 3)
        self.reduce_conv = nn.Conv2d(ratio * n_feats, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_conv(x)
        out = self.fea_conv(pad_with_bias(out, self.expand_conv.bias)) + out
        return self.reduce_conv(out) + x

    def equivalent_kernel_bias(self) -> K.KB:
        k1, b1 = K.add_identity(self.fea_conv.weight, self.fea_conv.bias)  # fea_conv(y) + y
        k, b = K.merge_1x1_kxk_1x1(self.expand_conv.weight, self.expand_conv.bias, k1, b1,
                                   self.reduce_conv.weight, self.reduce_conv.bias)
        return K.add_identity(k, b)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        k, b = self.equivalent_kernel_bias()
        block = RepRRRB(k.shape[0]).to(k)
        _copy(block.rep_conv, k, b)
        return block.eval()


class RepRRRB(nn.Module):
    def __init__(self, n_feats: int):
        super().__init__()
        self.rep_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep_conv(x)


class ERB(nn.Module):
    """RRRB -> LeakyReLU -> RRRB."""

    def __init__(self, n_feats: int, ratio: int = 2, form: str = "training"):
        super().__init__()
        block = (lambda: RRRB(n_feats, ratio)) if form == "training" else (lambda: RepRRRB(n_feats))
        self.conv1 = block()
        self.conv2 = block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(_act(self.conv1(x)))


def _copy(conv: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)


def _bn_params(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, float]:
    return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps


class HFAB(TrainingBlock, nn.Module):
    """High-frequency attention block with BatchNorm (training form)."""

    def __init__(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int = 2):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(n_feats)
        self.bn2 = nn.BatchNorm2d(mid_feats)
        self.bn3 = nn.BatchNorm2d(n_feats)
        self.squeeze = nn.Conv2d(n_feats, mid_feats, 3)
        self.convs = nn.Sequential(*(ERB(mid_feats, ratio) for _ in range(up_blocks)))
        self.excitate = nn.Conv2d(mid_feats, n_feats, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, shift1 = K.bn_scale_shift(*_bn_params(self.bn1))
        out = _act(self.squeeze(pad_with_bias(self.bn1(x), shift1)))
        out = _act(self.convs(out))
        _, shift2 = K.bn_scale_shift(*_bn_params(self.bn2))
        out = self.excitate(pad_with_bias(self.bn2(out), shift2))
        return torch.sigmoid(self.bn3(out)) * x

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        n_feats, mid = self.squeeze.in_channels, self.squeeze.out_channels
        block = RepHFAB(n_feats, len(self.convs), mid).to(self.squeeze.weight)
        _copy(block.squeeze, *K.fuse_bn_conv(*_bn_params(self.bn1), self.squeeze.weight, self.squeeze.bias))
        k, b = K.fuse_bn_conv(*_bn_params(self.bn2), self.excitate.weight, self.excitate.bias)
        _copy(block.excitate, *K.fuse_conv_bn(k, b, *_bn_params(self.bn3)))
        for src, dst in zip(self.convs, block.convs):
            dst.conv1 = src.conv1.reparameterize()
            dst.conv2 = src.conv2.reparameterize()
        return block.eval()


class RepHFAB(nn.Module):
    def __init__(self, n_feats: int, up_blocks: int, mid_feats: int):
        super().__init__()
        self.squeeze = nn.Conv2d(n_feats, mid_feats, 3, padding=1)
        self.convs = nn.Sequential(*(ERB(mid_feats, form="deploy") for _ in range(up_blocks)))
        self.excitate = nn.Conv2d(mid_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _act(self.convs(_act(self.squeeze(x))))
        return torch.sigmoid(self.excitate(out)) * x


class FMEN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, n_feats: int = 50, mid_feats: int = 16,
                 down_blocks: int = 4, up_blocks: tuple[int, ...] = (2, 1, 1, 1, 1),
                 backbone_expand_ratio: int = 2, attention_expand_ratio: int = 2,
                 img_range: float = 255.0, form: str = "training"):
        super().__init__()
        if len(up_blocks) != down_blocks + 1:
            raise ValueError("FMEN needs len(up_blocks) == down_blocks + 1")
        self.down_blocks, self.img_range = down_blocks, img_range

        def hfab(up: int, mid: int) -> nn.Module:
            if form == "training":
                return HFAB(n_feats, up, mid, attention_expand_ratio)
            return RepHFAB(n_feats, up, mid)

        self.head = nn.Conv2d(colors, n_feats, 3, padding=1)
        self.warmup = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), hfab(up_blocks[0], mid_feats - 4))
        self.ERBs = nn.ModuleList(ERB(n_feats, backbone_expand_ratio, form) for _ in range(down_blocks))
        self.HFABs = nn.ModuleList(hfab(up_blocks[i + 1], mid_feats) for i in range(down_blocks))
        self.lr_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(n_feats, colors * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x * self.img_range)
        h = self.warmup(x)
        for erb, hfab in zip(self.ERBs, self.HFABs):
            h = hfab(erb(h))
        return self.tail(self.lr_conv(h) + x) / self.img_range


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if not ("head.weight" in sd and "warmup.0.weight" in sd and "warmup.1.squeeze.weight" in sd
            and "lr_conv.weight" in sd and "tail.0.weight" in sd):
        return None
    if "warmup.1.bn1.running_mean" in sd:
        return "training"
    if "warmup.1.bn1.weight" not in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    down = count_indexed(sd, "ERBs")
    try:
        head, tail = sd["head.weight"], sd["tail.0.weight"]
        warm_mid = sd["warmup.1.squeeze.weight"].shape[0]
        mid = sd["HFABs.0.squeeze.weight"].shape[0] if down else warm_mid + 4
        hp = {}
        if form == "training":
            hp["backbone_expand_ratio"] = (sd["ERBs.0.conv1.expand_conv.weight"].shape[0] // head.shape[0]
                                           if down else 2)
            hp["attention_expand_ratio"] = (
                sd["warmup.1.convs.0.conv1.expand_conv.weight"].shape[0] // warm_mid
                if "warmup.1.convs.0.conv1.expand_conv.weight" in sd else 2)
    except KeyError as e:
        raise KeyMismatch(f"fmen: checkpoint lacks {e.args[0]!r}") from None
    colors = head.shape[1]
    s = scale_from_channels(tail.shape[0], colors, scale, arch="fmen")
    ups = (count_indexed(sd, "warmup.1.convs"),) + tuple(count_indexed(sd, f"HFABs.{i}.convs") for i in range(down))
    return dict(colors=colors, scale=s, n_feats=head.shape[0], mid_feats=mid, down_blocks=down,
                up_blocks=ups, **hp)


def _build(hp: dict, form: str) -> nn.Module:
    return FMEN(**hp, form=form)


def _hfab_radius(up: int) -> int:
    return 2 + 2 * up  # squeeze + 2 RRRBs per ERB + excitate


def _describe(hp: dict, form: str) -> Spec:
    ups = hp.get("up_blocks", (2, 1, 1, 1, 1))
    down = hp.get("down_blocks", len(ups) - 1)
    rf = 1 + 1 + _hfab_radius(ups[0]) + sum(2 + _hfab_radius(u) for u in ups[1:down + 1]) + 1 + 1
    return Spec(arch="fmen", scale=hp["scale"], in_channels=hp.get("colors", 3), out_channels=hp.get("colors", 3),
                form=form, receptive_field=rf, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"fmen-x{s}", dict(n_feats=50, mid_feats=16, down_blocks=4, up_blocks=(2, 1, 1, 1, 1), scale=s),
            "NJU-Jet/FMEN Args (NTIRE 2022 model at x4)")
    for s in (2, 3, 4)
)

ARCH = Architecture(
    name="fmen",
    description="FMEN: RRRB (1x1 -> bias-padded 3x3 -> 1x1, residuals) and BN in HFAB -> plain 3x3 convs",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="NJU-Jet/FMEN train_fmen.py (training), test_fmen.py + reparameterize.py (deploy)",
)
