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
