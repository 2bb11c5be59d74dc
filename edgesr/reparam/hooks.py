"""The model author's own deploy hook (``switch_to_deploy``, ``reparameterize``, ``fuse``, ...), run and verified.

Research code often ships its reparameterization as a method. When a module has one, it is
the author's statement of the deploy form and may do more than collapse linear sub-graphs
(merge streams, drop training-only branches). It is run on a copy, one hook at a time, and
kept only when the model still computes the same function on the example and an odd,
non-square crop of it: a hook that changes the function (e.g. one meant for a checkpoint
saved *before* its conversion, applied to one saved after) or that fails (CUDA-only code)
is undone and reported, never silently kept.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from typing import Any

import torch
from torch import nn

from .copying import clone_module

HOOK_NAMES = ("switch_to_deploy", "reparameterize", "reparameterise", "reparameter", "reparam",
              "convert_to_deploy", "to_deploy", "fuse", "fuse_model", "update_params")


def run_deploy_hooks(module: nn.Module, example: torch.Tensor, *, tol: float = 1e-5) -> tuple[nn.Module, dict]:
    """Apply each deploy hook found in `module` (outermost first), keeping those that verify.

    Returns a new module (the caller's is untouched) and a JSON-safe report: one entry per
    hook with its module path, method name, status ("kept" / "no change" / "undone" / "failed") and the
    measured fp32 max abs difference or the reason. A module's own hook is called instead of
    those of its submodules (the author's top-level hook is expected to recurse).
    """
    work = clone_module(module).eval()
    hooks = _find_hooks(work)
    if not hooks:
        return work, {"found": 0, "kept": 0, "hooks": []}
    original = clone_module(module).eval()
    inputs, refs = [], []
    with torch.no_grad():
        for x in _inputs(example):
            try:
                refs.append(_flat(original(x)))
            except Exception:  # noqa: BLE001 - the model refuses this size (fixed-size parts): not a check
                continue
            inputs.append(x)
    if not inputs:
        return work, {"found": len(hooks), "kept": 0, "hooks": [
            {"module": p or "(root)", "hook": n, "status": "failed", "reason": "the model does not run on the example"}
            for p, n in hooks]}
    entries: list[dict] = []
    for path, name in hooks:
        entry: dict[str, Any] = {"module": path or "(root)", "hook": name}
        entries.append(entry)
        candidate = clone_module(work)
        target = candidate.get_submodule(path) if path else candidate
        out = io.StringIO()
        try:
            with torch.no_grad(), contextlib.redirect_stdout(out):
                returned = getattr(target, name)()
            if isinstance(returned, nn.Module) and returned is not target:
                candidate = _replace(candidate, path, returned)  # hooks that return the deploy module
            candidate.eval()
            with torch.no_grad():
                outs = [_flat(candidate(x)) for x in inputs]
        except Exception as e:  # noqa: BLE001 - user code: CUDA-only calls, missing attributes, ...
            entry.update(status="failed", reason=_one_line(e))
            continue
        worst, scale = _compare(outs, refs)
        entry.update(max_abs=worst, ref_max=scale)
        if worst == 0.0 and _same_state(candidate, work):
            entry["status"] = "no change"  # e.g. switch_to_deploy on a module already in deploy form
        elif worst <= tol * max(1.0, scale):
            entry["status"] = "kept"
            work = candidate
        else:
            entry.update(status="undone", reason=f"the hook changes the function: max abs {worst:.3g} "
                                                 f"(output max {scale:.3g})")
    kept = [e for e in entries if e["status"] == "kept"]
    return work, {"found": len(entries), "kept": len(kept), "hooks": entries}


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def _find_hooks(root: nn.Module) -> list[tuple[str, str]]:
    """(module path, method name) of the outermost modules defining a zero-argument hook."""
    found: list[tuple[str, str]] = []
    for path, m in root.named_modules():
        if any(path == p or path.startswith(p + ".") for p, _ in found if p) or (found and found[0][0] == ""):
            continue
        if type(m).__module__.startswith("torch."):
            continue
        for name in HOOK_NAMES:
            fn = getattr(type(m), name, None)
            if callable(fn) and _no_required_args(getattr(m, name)):
                found.append((path, name))
                break
    return found


def _no_required_args(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def _replace(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if not path:
        return new
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)
    return root


def _inputs(example: torch.Tensor) -> list[torch.Tensor]:
    _, _, h, w = example.shape
    oh, ow = (h if h % 2 else h - 1), (w if w % 2 else w - 1)
    if oh == ow and ow > 2:
        ow -= 2
    crops = [example]
    if oh >= 1 and ow >= 1 and (oh, ow) != (h, w):
        crops.append(example[:, :, :oh, :ow].contiguous())
    return crops


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def _compare(outs: list[list[torch.Tensor]], refs: list[list[torch.Tensor]]) -> tuple[float, float]:
    worst = scale = 0.0
    for o, r in zip(outs, refs):
        if len(o) != len(r):
            return float("inf"), scale
        for a, b in zip(o, r):
            if a.shape != b.shape:
                return float("inf"), scale
            worst = max(worst, float((a.double() - b.double()).abs().max()))
            scale = max(scale, float(b.abs().max()))
    return worst, scale


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
