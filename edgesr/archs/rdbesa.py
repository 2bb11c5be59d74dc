"""RDB + ESA + channel-attention hybrid: residual feature distillation blocks (RFDN, Liu et al.,
ECCVW 2020) whose output passes ESA spatial attention and an RCAN-style CALayer.

Each block distils 1x1 features at three stages (``c{1,2,3}_d``) while 3x3 shallow residual
convs (``c{1,2,3}_r``, computing ``conv(x) + x``) refine the rest; ``c4`` closes the chain; the
four distilled tensors are concatenated and fused by the 1x1 ``c5``; then ``esa`` (enhanced
spatial attention: strided conv, 7x7/3 max-pool, convs, bilinear upsampling back, sigmoid gate)
and ``cca`` (global average pool -> 1x1 -> ReLU -> 1x1 -> sigmoid). The network concatenates
every block's output, fuses with 1x1 ``c`` + LeakyReLU, adds the long skip through ``LR_conv`` and
upsamples with conv + PixelShuffle. Key layout follows RFDN (njulj/RFDN: ``fea_conv``,
``B{i}.{c1_d,c1_r,...,c5,esa.*}``, ``c.0``, ``LR_conv``, ``upsampler.0``) plus ``B{i}.cca.conv_du``
(RCAN's CALayer names).

Training form: the shallow residual ``conv(x) + x``. Deploy form: the identity folded into the
conv kernel (``c{k}_rf``), one conv fewer add per stage (exact).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec
from .common import conv_from_kernel


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding)


class ESA(nn.Module):
    def __init__(self, n_feats: int):
        super().__init__()
        f = n_feats // 4
        self.conv1 = _conv(n_feats, f, 1)
        self.conv_f = _conv(f, f, 1)
        self.conv_max = _conv(f, f, 3)
        self.conv2 = _conv(f, f, 3, stride=2, padding=0)
        self.conv3 = _conv(f, f, 3)
        self.conv3_ = _conv(f, f, 3)
        self.conv4 = _conv(f, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        v_range = F.relu(self.conv_max(v_max))
        c3 = self.conv3_(F.relu(self.conv3(v_range)))
        c3 = F.interpolate(c3, size=x.shape[2:], mode="bilinear", align_corners=False)
        m = torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))
        return x * m


class CALayer(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1),
                                     nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class RDB(nn.Module):
    """Residual distillation block; `form` picks ``conv(x) + x`` or the folded conv."""

    def __init__(self, channels: int, form: str = "training", reduction: int = 16):
        super().__init__()
        self.form = form
        dc = channels // 2
        self.c1_d, self.c2_d, self.c3_d = (_conv(channels, dc, 1) for _ in range(3))
        suffix = "_r" if form == "training" else "_rf"
        for i in (1, 2, 3):
            setattr(self, f"c{i}{suffix}", _conv(channels, channels, 3))
        self.c4 = _conv(channels, dc, 3)
        self.c5 = _conv(dc * 4, channels, 1)
        self.esa = ESA(channels)
        self.cca = CALayer(channels, reduction)

    def _r(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.form == "training":
            return getattr(self, f"c{i}_r")(x) + x
        return getattr(self, f"c{i}_rf")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.05)  # noqa: E731
        d1, r1 = act(self.c1_d(x)), act(self._r(1, x))
        d2, r2 = act(self.c2_d(r1)), act(self._r(2, r1))
        d3, r3 = act(self.c3_d(r2)), act(self._r(3, r2))
        r4 = act(self.c4(r3))
        out = self.c5(torch.cat([d1, d2, d3, r4], dim=1))
        return self.cca(self.esa(out))


class RDBESANet(nn.Module):
    """The network in either form (``form="deploy"``: the folded convs)."""

    def __init__(self, colors: int = 3, scale: int = 4, nf: int = 50, num_modules: int = 4, reduction: int = 16,
                 form: str = "training"):
        super().__init__()
        self.form = form
        self.hp = dict(colors=colors, scale=scale, nf=nf, num_modules=num_modules, reduction=reduction)
        self.fea_conv = _conv(colors, nf, 3)
        self.num_modules = num_modules
        for i in range(num_modules):
            setattr(self, f"B{i + 1}", RDB(nf, form, reduction))
        self.c = nn.Sequential(_conv(nf * num_modules, nf, 1), nn.LeakyReLU(0.05))
        self.LR_conv = _conv(nf, nf, 3)
        self.upsampler = nn.Sequential(_conv(nf, colors * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs, h = [], fea
        for i in range(self.num_modules):
            h = getattr(self, f"B{i + 1}")(h)
            outs.append(h)
        out_b = self.c(torch.cat(outs, dim=1))
        return self.upsampler(self.LR_conv(out_b) + fea)


class RDBESA(TrainingBlock, RDBESANet):
    """Training form (shallow residual convs)."""

    def __init__(self, **hp):
        super().__init__(**hp, form="training")

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        dep = RDBESANet(**self.hp, form="deploy")
        sd = {}
        for k, v in self.state_dict().items():
            parts = k.split(".")
            if len(parts) == 3 and parts[1] in ("c1_r", "c2_r", "c3_r"):
                parts[1] = parts[1] + "f"
                if parts[2] == "weight":
                    v = v + K.identity_kernel(v.shape[0], 3, dtype=v.dtype)
            sd[".".join(parts)] = v
        dep.load_state_dict(sd, strict=True)
        return dep.eval()


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "fea_conv.weight" in sd and "B1.esa.conv4.weight" in sd and "B1.cca.conv_du.0.weight" in sd:
        if "B1.c1_r.weight" in sd:
            return "training"
        if "B1.c1_rf.weight" in sd:
            return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["fea_conv.weight"]
    colors, nf = w.shape[1], w.shape[0]
    n = 0
    while f"B{n + 1}.c5.weight" in sd:
        n += 1
    s = scale_from_channels(sd["upsampler.0.weight"].shape[0], colors, scale, arch="rdbesa")
    red = nf // sd["B1.cca.conv_du.0.weight"].shape[0]
    return dict(colors=colors, scale=s, nf=nf, num_modules=n, reduction=red)


def _build(hp: dict, form: str) -> nn.Module:
    return RDBESA(**hp) if form == "training" else RDBESANet(**hp, form="deploy")


def _describe(hp: dict, form: str) -> Spec:
    # ESA's stride-2 conv + 7x7/3 max-pool need at least 15 LR pixels per side.
    return Spec(arch="rdbesa", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                min_size=15, receptive_field=None, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    [Variant(f"rdbesa-f50m4-x{s}", dict(nf=50, num_modules=4, reduction=16, scale=s, colors=3),
             "RFDN-size (nf 50, 4 blocks) + CALayer") for s in (4,)]
    + [Variant("rdbesa-f16m2-x4", dict(nf=16, num_modules=2, reduction=4, scale=4, colors=3), "small, for tests")]
)

ARCH = Architecture(
    name="rdbesa",
    description="Residual distillation blocks + ESA + CALayer, concat fusion, PixelShuffle; SRB identity folded",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="njulj/RFDN layout (ECCVW 2020) + RCAN CALayer (yulunzhang/RCAN)",
)
