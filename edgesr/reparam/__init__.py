"""`reparameterize(model)`: training form -> deploy form, on a copy.

Blocks that exist only for training subclass `TrainingBlock` and implement
`reparameterize() -> nn.Module` (their deploy-form replacement, built from the pure
functions in `kernels`). Whole networks whose deploy form has another layout (ETDS)
implement the same method at the top level.
"""

from __future__ import annotations

import copy

from torch import nn

from ..errors import EdgesrError


class TrainingBlock:
    """Mixin marking a module that must not survive reparameterization."""

    def reparameterize(self) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError


class ReparamError(EdgesrError):
    """A network whose training branches survive reparameterization (a bug in a family's deploy form)."""


def reparameterize(model: nn.Module) -> nn.Module:
    """Return the deploy form of `model`; the caller's model is left untouched."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, TrainingBlock):
        model = model.reparameterize()
    else:
        _swap_children(model)
    model.eval()
    remaining = training_blocks(model)
    if remaining:
        raise ReparamError(f"training branches remain after reparameterization: {', '.join(remaining[:5])}")
    return model


def training_blocks(model: nn.Module) -> list[str]:
    """Names of modules that are still in training form."""
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, TrainingBlock)]


def is_deploy_form(model: nn.Module) -> bool:
    return not training_blocks(model)


def _swap_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, TrainingBlock):
            setattr(module, name, child.reparameterize())
        else:
            _swap_children(child)
