"""A lightweight recurrent SR network: one residual conv block applied a fixed number of times.

In the spirit of DRRN (Tai et al., CVPR 2017) and DRCN: weights are shared across the unrolled
steps, so depth costs compute but no parameters. ``h_t = h_0 + B(h_{t-1})`` with
``B = conv3x3 -> ReLU -> conv3x3`` for ``steps`` iterations, then a 3x3 conv to
``colors * scale^2`` channels, PixelShuffle and a nearest-neighbour (channel-repeat) shortcut.
The edgesr variants stay under 75k parameters.

Keys (our own layout; there is no single official reference): ``head``, ``block.conv1``,
``block.conv2``, ``tail`` and ``steps`` (an int64 scalar: the unroll count, which no weight
shape reveals). One form: the ONNX exporter unrolls the loop (``steps`` copies of the
block, sharing the same initializers).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import KeyMismatch
from ..architecture import Architecture, Variant, scale_from_channels
from ..spec import Spec
from .common import repeat_shortcut


class RecurrentBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x))))


class RecurrentSR(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, channels: int = 48, steps: int = 6):
        super().__init__()
        self.colors, self.scale, self.n_steps = colors, scale, steps
        self.head = nn.Conv2d(colors, channels, 3, padding=1)
        self.block = RecurrentBlock(channels)
        self.tail = nn.Conv2d(channels, colors * scale * scale, 3, padding=1)
        self.upsampler = nn.PixelShuffle(scale)
        # The unroll count is not visible in any weight shape: kept in the state_dict.
        self.register_buffer("steps", torch.tensor(steps, dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.n_steps = int(self.steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.head(x)
        h = h0
        for _ in range(self.n_steps):
            h = h0 + self.block(h)
        return self.upsampler(self.tail(F.relu(h)) + repeat_shortcut(x, self.scale))


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if set(sd) == {"head.weight", "head.bias", "block.conv1.weight", "block.conv1.bias",
                   "block.conv2.weight", "block.conv2.bias", "tail.weight", "tail.bias", "steps"}:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    colors = sd["head.weight"].shape[1]
    s = scale_from_channels(sd["tail.weight"].shape[0], colors, scale, arch="recurrent")
    steps = int(sd["steps"])
    if not 1 <= steps <= 64:
        raise KeyMismatch(f"recurrent: steps = {steps} in the checkpoint is out of range 1..64")
    return dict(colors=colors, scale=s, channels=sd["head.weight"].shape[0], steps=steps)


def _build(hp: dict, form: str) -> nn.Module:
    return RecurrentSR(**hp)


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="recurrent", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=2 + 2 * hp["steps"], fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    [Variant(f"recurrent-c48t6-x{s}", dict(channels=48, steps=6, scale=s, colors=3), "< 75k params")
     for s in (2, 4)]
    + [Variant("recurrent-c32t4-x4", dict(channels=32, steps=4, scale=4, colors=3), "small, for tests")]
)

ARCH = Architecture(
    name="recurrent",
    description="Lightweight recurrent SR: one shared residual conv block unrolled a fixed number of steps",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="edgesr (after DRRN, Tai et al. CVPR 2017)",
)
