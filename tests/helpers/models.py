"""Models for tests that need a network, not a trained one."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class TinySR(nn.Module):
    """3 convs + ReLU + PixelShuffle (DepthToSpace in ONNX): the shape of an efficient SR net."""

    def __init__(self, channels: int = 8, scale: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.up = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.tail(torch.relu(self.body(torch.relu(self.head(x))))))


@torch.no_grad()
def perturb_(module: nn.Module, std: float = 0.01) -> nn.Module:
    """Add N(0, std) noise to every parameter in place (zero / identity inits hide layout bugs)."""
    for p in module.parameters():
        p.add_(torch.randn_like(p) * std)
    return module


@torch.no_grad()
def random_deploy(variant: str, seed: int = 0) -> tuple[nn.Module, Any]:
    """A registry variant the way `edgesr convert` makes its deploy form: the training form when
    the family has one, weights perturbed (seeded), reparameterized. Returns (module, its spec)."""
    from edgesr.registry import build_variant, get_variant
    from edgesr.reparam import reparameterize

    torch.manual_seed(seed)
    arch, _ = get_variant(variant)
    lm = build_variant(variant, "training" if "training" in arch.forms else "deploy")
    perturb_(lm.module)
    return reparameterize(lm.module).eval(), lm.spec


def n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's range (at least 1)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out, ref = out.detach(), ref.detach()
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


class FixedSizeTorch:
    """A PyTorch module behind a fixed input size, as a .tflite is (without needing LiteRT):
    a runner (``run(x)``) that refuses any other size and counts its calls."""

    def __init__(self, module: nn.Module, hw: tuple[int, int], name: str = "fixed-torch") -> None:
        self.module, self.input_hw, self.calls, self.name = module, hw, 0, name

    def run(self, x: np.ndarray) -> np.ndarray:
        assert tuple(x.shape[2:]) == self.input_hw, x.shape
        self.calls += 1
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


class TinyAttention(nn.Module):
    """x4, attention-shaped (pooled context -> 1x1 conv -> GELU gate x features, as SAFMN's
    blocks): the picture (channels 0-2) shares every feature tensor with a channel of range
    +-40. One int8 scale per tensor then quantizes the picture in steps of ~0.3 (LiteRT a8w8
    loses >1 dB); int16 activations keep it (LiteRT a16w8). Weights set, not trained: the
    output is the nearest-neighbour x4 upscale, so the drop is the activations' alone."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 1)
        self.gate = nn.Conv2d(4, 4, 1)
        self.act = nn.GELU()
        self.up = nn.Conv2d(4, 48, 1, bias=False)
        self.shuffle = nn.PixelShuffle(4)
        with torch.no_grad():
            w = torch.zeros(4, 3, 1, 1)
            w[0, 0] = w[1, 1] = w[2, 2] = 1.0
            w[3, 0], w[3, 1] = 40.0, -40.0  # the wide channel
            self.feat.weight.copy_(w)
            self.feat.bias.zero_()
            self.gate.weight.zero_()
            self.gate.weight[:, 3] = 0.001
            self.gate.bias.fill_(1.0)  # gate ~ GELU(1) everywhere
            u = torch.zeros(48, 4, 1, 1)
            for c in range(3):
                u[c * 16:(c + 1) * 16, c] = 1.0 / float(nn.functional.gelu(torch.tensor(1.0)))
            self.up.weight.copy_(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feat(x)
        ctx = nn.functional.interpolate(nn.functional.max_pool2d(f, 4), size=f.shape[-2:], mode="bilinear",
                                        align_corners=False)
        return self.shuffle(self.up(f * self.act(self.gate(ctx))))


class PooledGate(nn.Module):
    """x4 with SAFMN's ``adaptive_max_pool2d(x, (h // 8, w // 8))`` context gate: pnnx converts it
    per size (one .param per LR size), and numbers the layers differently at sizes that are not
    multiples of 8 (more ops before the convolutions)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(8, 48, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        f = self.head(x)
        ctx = nn.functional.interpolate(nn.functional.adaptive_max_pool2d(f, (h // 8, w // 8)), size=(h, w),
                                        mode="bilinear")
        return self.shuffle(self.tail(torch.relu(self.mix(f * torch.sigmoid(ctx)))))
