"""Checkpoint files written from modules or state_dicts (safetensors, what users ship)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_weights(weights: nn.Module | dict[str, torch.Tensor], path: Path) -> Path:
    """Write a module's state_dict (or a state_dict) as safetensors; returns `path`."""
    from safetensors.torch import save_file

    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def save_variant(path: Path, variant: str, form: str = "deploy", seed: int = 0) -> Path:
    """A registry variant's freshly built weights (seeded) as a checkpoint file."""
    from edgesr.registry import build_variant

    torch.manual_seed(seed)
    return save_weights(build_variant(variant, form).module, path)
