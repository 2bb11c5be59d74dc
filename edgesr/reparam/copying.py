"""Copies of user modules that `copy.deepcopy` refuses.

Research code sometimes stores a tensor computed from parameters as a plain attribute
(``self.kernel = self.weight * mask`` in ``__init__``). Such a non-leaf tensor makes
``copy.deepcopy`` fail ("Only Tensors created explicitly by the user ... support the deepcopy
protocol"). The copy below detaches those attributes (they are constants at inference time),
so the caller's module can stay untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def clone_module(module: nn.Module) -> nn.Module:
    """`copy.deepcopy(module)`, detaching non-leaf tensors kept as plain attributes."""
    try:
        return copy.deepcopy(module)
    except RuntimeError as e:
        if "deepcopy" not in str(e):
            raise
    memo: dict[int, object] = {}
    for m in module.modules():
        for value in vars(m).values():
            for t in _tensors(value):
                if t.grad_fn is not None and id(t) not in memo:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(module, memo)


def _tensors(value: object, depth: int = 0):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)
