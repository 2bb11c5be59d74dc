"""Explicit registry of super-resolution architectures.

Each `Architecture` recognises its checkpoints from key names and tensor shapes,
infers hyperparameters from those shapes, and builds either form of the network:
``training`` (multi-branch, as the paper trains it) or ``deploy`` (plain, fast).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .architecture import (FORMS, Architecture, Hyper, LoadedModel, Variant, _clip_list,  # noqa: F401
                           count_3x3_convs, count_indexed, has_all, match_variant, scale_from_channels)
from .checkpoint import StateDict, load_state_dict
from .errors import EdgesrError, KeyMismatch, ScaleMismatch, UnknownArchitecture
from .spec import Spec

_ARCHITECTURES: list[Architecture] = []


def register(arch: Architecture) -> Architecture:
    """Add an architecture beside the families `edgesr.archs` lists (which come first)."""
    _ensure_loaded()
    return _add(arch)


def _add(arch: Architecture) -> Architecture:
    if any(a.name == arch.name for a in _ARCHITECTURES):
        raise ValueError(f"architecture {arch.name!r} registered twice")
    _ARCHITECTURES.append(arch)
    return arch


def architectures() -> list[Architecture]:
    _ensure_loaded()
    return list(_ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    _ensure_loaded()
    key = name.lower().replace("_", "-")
    for a in _ARCHITECTURES:
        if a.name == key:
            return a
    for a in _ARCHITECTURES:
        for v in a.variants:
            if v.name == key:
                return a
    known = ", ".join(a.name for a in _ARCHITECTURES)
    raise UnknownArchitecture(f"unknown architecture {name!r}; known: {known} (see `edgesr list`)")


def get_variant(name: str) -> tuple[Architecture, Variant]:
    _ensure_loaded()
    key = name.lower().replace("_", "-")
    for a in _ARCHITECTURES:
        for v in a.variants:
            if v.name == key:
                return a, v
    raise UnknownArchitecture(f"unknown variant {name!r} (see `edgesr list`)")


def build_variant(name: str, form: str = "training") -> LoadedModel:
    """Build a named variant with fresh (untrained) weights in either form."""
    arch, variant = get_variant(name)
    if form not in arch.forms:
        raise KeyMismatch(f"{arch.name} has no {form} form (forms: {', '.join(arch.forms)})")
    hp = dict(variant.hyperparams)
    module = arch.build(hp, form)
    spec = _with_variant(arch.describe(hp, form), variant.name)
    return LoadedModel(module.eval(), spec, arch)


def detect(sd: StateDict, arch: str | None = None) -> tuple[Architecture, str]:
    """Find the architecture and form of a state_dict."""
    _ensure_loaded()
    if arch is not None:
        a = get_architecture(arch)
        form = _detect_form(a, sd)
        if form is None:
            raise KeyMismatch(f"state_dict does not look like {a.name}: " + _describe_keys(sd))
        return a, form
    hits = [(a, f) for a in _ARCHITECTURES if (f := _detect_form(a, sd)) is not None]
    if not hits:
        raise UnknownArchitecture(
            "no registered architecture matches this state_dict; " + _describe_keys(sd)
            + ". Pass --arch NAME if it is a known family with renamed keys (see `edgesr list`).")
    hits.sort(key=lambda h: -h[0].priority)
    return hits[0]


def load_model(source: str | Path | StateDict, arch: str | None = None, scale: int | None = None,
               checkpoint_name: str | None = None) -> LoadedModel:
    """Checkpoint (path or state_dict) -> module with weights loaded strictly, in eval mode."""
    sd = load_state_dict(source) if isinstance(source, (str, Path)) else source
    a, form = detect(sd, arch)
    # Tensors come from untrusted files: a family's shape arithmetic failing on a hostile
    # state_dict (IndexError, ValueError, ...) is a KeyMismatch, not a crash.
    with _unfit(a, form):
        hp = a.infer(sd, form, scale)
    if scale is not None and hp.get("scale") != scale:
        raise ScaleMismatch(f"--scale {scale} does not match the checkpoint ({a.name}, x{hp.get('scale')})")
    with _unfit(a, form):
        module = _build_fitting(a, hp, form, sd)
    load_strict(module, sd, a.name)
    with _unfit(a, form):
        spec = a.describe(hp, form)
    variant = match_variant(a, hp)
    if variant:
        spec = _with_variant(spec, variant)
    return LoadedModel(module.eval(), spec, a, len(sd))


def _build_fitting(a: Architecture, hp: Hyper, form: str, sd: StateDict) -> nn.Module:
    """`a.build(hp, form)`, after checking on the meta device (no memory allocated) that the
    network has exactly the checkpoint's keys and shapes: hyperparameters inferred from a
    hostile checkpoint's shapes (a 100000-channel conv) are refused before they can exhaust
    memory, and the real module then holds no more than the checkpoint's own tensors."""
    try:
        with torch.device("meta"):
            shell = a.build(hp, form)
    except Exception:  # noqa: BLE001 - a family that cannot build on meta is built for real below
        shell = None
    if shell is not None:
        _check_fit(shell.state_dict(), sd, a.name)
    return a.build(hp, form)


def load_strict(module: nn.Module, sd: StateDict, arch_name: str = "model") -> None:
    """load_state_dict(strict=True) with an error that lists every offending key."""
    own = module.state_dict()
    _check_fit(own, sd, arch_name)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def _check_fit(own: StateDict, sd: StateDict, arch_name: str) -> None:
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append("missing keys: " + _clip_list(missing))
        if extra:
            parts.append("unexpected keys: " + _clip_list(extra))
        if shape:
            parts.append("shape mismatches: " + _clip_list(shape))
        raise KeyMismatch(f"checkpoint does not fit {arch_name}: " + "; ".join(parts))


def _detect_form(a: Architecture, sd: StateDict) -> str | None:
    """`a.detect(sd)`; a detector that trips over odd keys or shapes means "not this family"."""
    try:
        return a.detect(sd)
    except EdgesrError:
        raise
    except Exception:  # noqa: BLE001 - untrusted input; see load_model
        return None


@contextlib.contextmanager
def _unfit(a: Architecture, form: str) -> Iterator[None]:
    try:
        yield
    except EdgesrError:
        raise
    except Exception as e:  # noqa: BLE001 - untrusted input
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise KeyMismatch(f"checkpoint looks like {a.name} ({form} form) but its tensors do not fit it: "
                          f"{type(e).__name__}: {msg}") from None


def _with_variant(spec: Spec, variant: str) -> Spec:
    from dataclasses import replace

    return replace(spec, variant=variant)


def _describe_keys(sd: StateDict) -> str:
    tops = sorted({k.split(".")[0] for k in sd})
    return f"{len(sd)} keys, top-level names not recognised: {_clip_list(tops)}"


def et_target(arch: str, form: str) -> tuple[str, str] | None:
    """Registry (arch, form) an ET of a checkpoint of (arch, form) comes out as; None if
    that family cannot be ET-transformed (e.g. ESPCN's tanh, FSRCNN's transposed conv)."""
    from .reparam.et import layouts

    _ensure_loaded()  # every family has registered its layouts
    for lay in layouts():
        if (arch, form) in lay.sources:
            return lay.target_arch, lay.target_form
    return None


def can_equivalent_transform(arch: str, form: str) -> bool:
    return et_target(arch, form) is not None


_LOADED = False


def _ensure_loaded() -> None:
    """Register the families `edgesr.archs` lists, in its order (imported on first use: they
    pull in every family's torch modules)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from .archs import ARCHITECTURES

    for arch in ARCHITECTURES:
        _add(arch)
