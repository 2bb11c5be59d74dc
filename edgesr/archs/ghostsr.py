"""GhostSR-style ghost features (Nie et al., 2021, "GhostSR: Learning Ghost Features for
Efficient Image Super-Resolution", arXiv:2101.08525).

A ghost convolution computes only the *intrinsic* half of its output channels with a real
convolution; the other half are *ghost* features: the intrinsic features shifted by one pixel
in a learned direction. During training the direction is a softmax over the k x k neighbourhood
(``shift_logits``, Gumbel-softmax noise added in train mode, as GhostSR does); at eval time it is
the one-hot argmax, so the deploy form replaces it by a fixed, parameter-free shift
(`edgesr.shift.ChannelShift`) whose offset is kept in the state_dict as ``shift_offset``.

Network layout: EDSR-baseline (sanghyun-son/EDSR-PyTorch keys ``head.0``, ``body.N.body.{0,2}``,
``body.{n}``, ``tail.0.{0,2}`` upsampler convs, ``tail.1``), with every residual-block conv a
ghost convolution (``body.N.body.{0,2}.primary_conv`` + ``shift_logits``). GhostSR's released
models are EDSR/RCAN/CARN/IMDN variants of this; exact key names of their code are not
reproduced (no public checkpoints are loaded here).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed
from ..errors import ScaleMismatch
from ..reparam import TrainingBlock
from ..shift import DEFAULT_MODE, ChannelShift
from ..spec import Spec


def _split(out_ch: int) -> tuple[int, int]:
    intrinsic = math.ceil(out_ch / 2)
    return intrinsic, out_ch - intrinsic


class GhostConv(TrainingBlock, nn.Module):
    """Training form: intrinsic conv + learned-direction shift of its output."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, shift_size: int = 3, tau: float = 1.0):
        super().__init__()
        self.intrinsic, self.ghost = _split(cout)
        self.primary_conv = nn.Conv2d(cin, self.intrinsic, kernel_size, padding=kernel_size // 2)
        self.shift_logits = nn.Parameter(torch.randn(1, 1, shift_size, shift_size) * 0.5)
        self.tau = tau

    def shift_kernel(self) -> torch.Tensor:
        k = self.shift_logits.shape[-1]
        flat = self.shift_logits.reshape(1, -1)
        if self.training:
            w = F.gumbel_softmax(flat, tau=self.tau, hard=False, dim=-1)
        else:  # deterministic collapse: the argmax direction
            w = F.one_hot(flat.argmax(dim=-1), flat.shape[-1]).to(flat.dtype)
        return w.reshape(1, 1, k, k)

    def offset(self) -> tuple[int, int]:
        k = self.shift_logits.shape[-1]
        i, j = divmod(int(self.shift_logits.reshape(-1).argmax()), k)
        return k // 2 - i, k // 2 - j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary_conv(x)
        src = y[:, : self.ghost]
        k = self.shift_kernel().expand(self.ghost, 1, -1, -1)
        ghost = F.conv2d(src, k, padding=k.shape[-1] // 2, groups=self.ghost)
        return torch.cat([y, ghost], dim=1)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        dep = GhostConvDeploy(self.primary_conv.in_channels, self.intrinsic + self.ghost,
                              self.primary_conv.kernel_size[0])
        dep.primary_conv.load_state_dict(self.primary_conv.state_dict())
        dep.set_offset(*self.offset())
        return dep


class GhostConvDeploy(nn.Module):
    """Deploy form: intrinsic conv + fixed shift (offset stored as a buffer)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, shift_mode: str = DEFAULT_MODE):
        super().__init__()
        self.intrinsic, self.ghost = _split(cout)
        self.primary_conv = nn.Conv2d(cin, self.intrinsic, kernel_size, padding=kernel_size // 2)
        self.register_buffer("shift_offset", torch.zeros(2, dtype=torch.int64))
        self.shift = ChannelShift([(0, self.ghost, 0, 0)], shift_mode)

    def set_offset(self, dy: int, dx: int) -> None:
        self.shift_offset.copy_(torch.tensor([dy, dx]))
        self.shift = ChannelShift([(0, self.ghost, int(dy), int(dx))], self.shift.mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        dy, dx = (int(v) for v in self.shift_offset)
        if max(abs(dy), abs(dx)) > 8:
            raise ValueError(f"{prefix}shift_offset {(dy, dx)} is not a small pixel shift")
        self.set_offset(dy, dx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary_conv(x)
        return torch.cat([y, self.shift(y[:, : self.ghost])], dim=1)


class GhostResBlock(nn.Module):
    def __init__(self, n_feats: int, form: str, res_scale: float = 1.0):
        super().__init__()
        conv = GhostConv if form == "training" else GhostConvDeploy
        self.body = nn.Sequential(conv(n_feats, n_feats), nn.ReLU(), conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """EDSR's conv + PixelShuffle stages (x2/x3: one stage, x4: two)."""

    def __init__(self, scale: int, n_feats: int):
        if scale in (2, 3):
            layers = [nn.Conv2d(n_feats, n_feats * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
        elif scale == 4:
            layers = []
            for _ in range(2):
                layers += [nn.Conv2d(n_feats, n_feats * 4, 3, padding=1), nn.PixelShuffle(2)]
        else:
            raise ScaleMismatch(f"GhostSR (EDSR layout) supports x2, x3, x4, not x{scale}")
        super().__init__(*layers)


class GhostSR(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, n_feats: int = 64, n_resblocks: int = 16,
                 res_scale: float = 1.0, form: str = "training"):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(colors, n_feats, 3, padding=1))
        self.body = nn.Sequential(*[GhostResBlock(n_feats, form, res_scale) for _ in range(n_resblocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), nn.Conv2d(n_feats, colors, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(self.body(x) + x)


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "head.0.weight" in sd and "body.0.body.0.primary_conv.weight" in sd:
        if "body.0.body.0.shift_logits" in sd:
            return "training"
        if "body.0.body.0.shift_offset" in sd:
            return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    head = sd["head.0.weight"]
    colors, n_feats = head.shape[1], head.shape[0]
    n = count_indexed(sd, "body") - 1
    if "tail.0.2.weight" in sd:
        s = 4
    else:
        r = sd["tail.0.0.weight"].shape[0] // n_feats
        s = {4: 2, 9: 3}.get(r, 0)
        if not s:
            raise ScaleMismatch(f"ghostsr: upsampler conv has {sd['tail.0.0.weight'].shape[0]} channels; fits no scale")
    if scale is not None and scale != s:
        raise ScaleMismatch(f"--scale {scale} does not match the checkpoint (ghostsr x{s})")
    return dict(colors=colors, scale=s, n_feats=n_feats, n_resblocks=n)


def _build(hp: dict, form: str) -> nn.Module:
    return GhostSR(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="ghostsr", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                receptive_field=2 * hp["n_resblocks"] * 2 + 4, fp16_safe=True, hyperparams=dict(hp))


# GhostSR's EDSR-baseline setting (64 feats, 16 blocks). Not a Variant: with random weights its
# outputs reach ~1e3, too large for the 1e-5 absolute export checks every variant goes through.
PAPER_CONFIG = dict(n_feats=64, n_resblocks=16, scale=4, colors=3)

VARIANTS = (
    Variant("ghostsr-f32b4-x4", dict(n_feats=32, n_resblocks=4, scale=4, colors=3), "light"),
    Variant("ghostsr-f16b2-x4", dict(n_feats=16, n_resblocks=2, scale=4, colors=3), "small, for tests"),
)

ARCH = Architecture(
    name="ghostsr",
    description="GhostSR-style ghost features: half the channels are learned-direction shifts -> fixed shift",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="GhostSR (arXiv:2101.08525), huawei-noah Efficient-Computing; EDSR-PyTorch layout",
)
