"""What an architecture family is (`Architecture`, `Variant`, `LoadedModel`) and the shape helpers
family modules use to recognise their checkpoints.

Family modules (`edgesr.archs.<family>`) import this module and define one `Architecture` each;
`edgesr.archs` lists them and `edgesr.registry` looks them up. Nothing here imports a family or the
registry, so imports flow one way: registry -> archs -> architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .checkpoint import StateDict
from .errors import KeyMismatch, ScaleMismatch
from .spec import Spec

Hyper = dict[str, Any]
FORMS = ("training", "deploy")


@dataclass(frozen=True)
class Variant:
    """A named configuration such as ``ecbsr-m4c16-x4``."""

    name: str
    hyperparams: Hyper
    note: str = ""


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    # Returns the form ("training"/"deploy") a state_dict is in, or None if it is not this arch.
    detect: Callable[[StateDict], str | None]
    # Hyperparameters from tensor shapes; `scale` is the user's hint (None = infer).
    infer: Callable[[StateDict, str, int | None], Hyper]
    # Build an untrained module of the given form.
    build: Callable[[Hyper, str], nn.Module]
    describe: Callable[[Hyper, str], Spec]
    forms: tuple[str, ...] = FORMS
    variants: tuple[Variant, ...] = ()
    # Higher wins when several entries detect the same state_dict.
    priority: int = 0
    source: str = ""  # where the reference implementation / checkpoints come from
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reparameterizable(self) -> bool:
        return "training" in self.forms and "deploy" in self.forms


@dataclass
class LoadedModel:
    module: nn.Module
    spec: Spec
    arch: Architecture
    state_dict_keys: int = 0


def match_variant(a: Architecture, hp: Hyper) -> str | None:
    for v in a.variants:
        if all(hp.get(k) == val for k, val in v.hyperparams.items()):
            return v.name
    return None


def _clip_list(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def scale_from_channels(out_channels: int, colors: int, hint: int | None, extra: int = 0,
                        arch: str = "model") -> int:
    """Infer the pixel-shuffle scale from a last conv's output channel count."""
    n = out_channels - extra
    for s in (1, 2, 3, 4, 5, 6, 8):
        if colors * s * s == n:
            if hint is not None and hint != s:
                raise ScaleMismatch(f"--scale {hint} does not match the checkpoint: {arch} has "
                                    f"{out_channels} output channels before PixelShuffle, i.e. x{s}")
            return s
    raise KeyMismatch(f"{arch}: {out_channels} output channels before PixelShuffle fit no scale "
                      f"for {colors} colour channels")


def count_indexed(sd: StateDict, prefix: str) -> int:
    """Number of consecutive ``prefix.N.`` entries (ModuleList / Sequential length)."""
    idx = {int(k[len(prefix) + 1:].split(".")[0]) for k in sd
           if k.startswith(prefix + ".") and k[len(prefix) + 1:].split(".")[0].isdigit()}
    if not idx:
        return 0
    n = max(idx) + 1
    # Parameter-free layers (activations) leave gaps, at most about one per layer. A hostile
    # "prefix.99999999.weight" would otherwise make the family build 10^8 layers.
    if n > 2 * len(idx) + 2:
        raise KeyMismatch(f"{prefix}: layer indices {_clip_list([str(i) for i in sorted(idx)], 6)} leave too "
                          f"many gaps for a {n}-layer list (corrupt or hand-edited state_dict?)")
    return n


def has_all(sd: StateDict, *keys: str) -> bool:
    return all(k in sd for k in keys)


def count_3x3_convs(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
