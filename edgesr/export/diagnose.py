"""ONNX export of user code, with errors that name what broke.

When the exporter or ONNX Runtime fails on a model edgesr did not write, a bare
"export failed" is useless: the error names the operator and the user's source line
(the innermost traceback frame in the user's files, or the module that owns the failing
ONNX node). When a dynamic-H/W export is impossible (the trace baked sizes in: Python
ints taken from tensor shapes, fixed-size reshapes of windows, ...), the model is exported
at one fixed LR size instead, to be run tile by tile, and the result says so and why
(the TracerWarning locations in the user's code).
"""

from __future__ import annotations

import inspect
import io
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ExportError
from ..spec import Spec

FIXED_HW = (64, 64)  # LR size of a fixed-shape export (parity crops Set5 LR to it)
_OP_RE = re.compile(r"(aten::[A-Za-z0-9_.]+|prim::[A-Za-z0-9_.]+|operator '?([A-Za-z0-9_:.]+)'?)")


def user_source_roots(module) -> list[Path]:
    """Folders of the source files defining the module's classes, outside torch and edgesr."""
    import torch

    skip = [Path(torch.__file__).parent.resolve(), Path(__file__).resolve().parents[1]]
    roots: list[Path] = []
    for m in module.modules():
        try:
            f = inspect.getsourcefile(type(m))
        except (TypeError, OSError):
            continue
        if not f:
            continue
        d = Path(f).resolve().parent
        if any(s == d or s in d.parents for s in skip) or d in roots:
            continue
        roots.append(d)
    return roots


def _where(e: BaseException, roots: list[Path]) -> str:
    from ..user_frames import user_frame

    w = user_frame(e, roots)
    return f" at {w}" if w else ""


def _operator(msg: str) -> str | None:
    m = _OP_RE.search(msg)
    if not m:
        return None
    return m.group(2) or m.group(1)


_IR_LOC = re.compile(r"#\s+(\S+\.py):(\d+):\d+\s*$")


def _ir_location(text: str, op: str | None, roots: list[Path]) -> str:
    """' at file.py:LINE' from the TorchScript IR the exporter prints with its error: the source
    comment of the failing operator's node (user files preferred)."""
    if not op:
        return ""
    for line in text.splitlines():
        if f"= {op}(" not in line:
            continue
        m = _IR_LOC.search(line)
        if m:
            f = Path(m.group(1))
            if not roots or any(r == f.parent or r in f.parents for r in roots):
                return f" at {f.name}:{m.group(2)}"
    return ""


_SRC_RE = re.compile(r"^(.+\.py)\((\d+)\): (\S+)")


def _traced_location(module, x, op: str | None) -> str:
    """' at file.py:LINE in func' of the first traced node of kind `op` (TorchScript keeps each
    node's Python source range), skipping torch's own frames."""
    import torch

    if not op:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(module, (x,), check_trace=False).inlined_graph
    except Exception:  # noqa: BLE001 - a model that cannot even be traced: no location
        return ""
    torch_dir = str(Path(torch.__file__).parent)
    for node in graph.nodes():
        if node.kind() != op:
            continue
        for line in node.sourceRange().splitlines():
            m = _SRC_RE.match(line.strip())
            if m and not m.group(1).startswith(torch_dir):
                return f" at {Path(m.group(1)).name}:{m.group(2)} in {m.group(3)}"
    return ""


def explain_export_failure(module, spec: Spec, sample_hw: tuple[int, int], opset: int = 17,
                           dynamic: bool = False, ctx=None) -> str:
    """Re-run the exporter to get the exception with its traceback: 'operator X at file:line: msg'."""
    import torch

    from .rewrites import maybe

    roots = user_source_roots(module)
    x = torch.from_numpy(_sample((1, spec.in_channels, *sample_hw)))
    axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    try:
        with warnings.catch_warnings(), maybe(ctx):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), io.BytesIO(), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"], dynamic_axes=axes)
    except Exception as e:  # noqa: BLE001
        msg = _first_line(e)
        op = _operator(str(e))
        where = _where(e, roots) or _ir_location(str(e), op, roots) or _traced_location(module, x, op)
        return f"{'operator ' + op if op else type(e).__name__}{where}: {msg[:200]}"
    return "the exporter succeeded when re-run (the failure is in checking the exported graph)"


def explain_ort_failure(module, message: str) -> str:
    """Name the module (and its class's source line) that owns the ONNX node ORT rejected."""
    m = re.search(r"node(?: name)?[:\s]+'?(/[^'\s]+)'?", message) or re.search(r"(/[A-Za-z0-9_./]+/[A-Za-z]+)", message)
    if not m:
        return message
    node = m.group(1)
    parts = [p for p in node.strip("/").split("/")[:-1] if p]
    mods = dict(module.named_modules())
    target = None
    for i in range(len(parts), 0, -1):
        cand = parts[i - 1]
        if cand in mods:
            target = cand
            break
        dotted = ".".join(p.split(".")[-1] if j else p for j, p in enumerate(parts[:i]))
        if dotted in mods:
            target = dotted
            break
    if target is None:
        return f"{message[:200]} (node {node})"
    cls = type(mods[target])
    try:
        file = Path(inspect.getsourcefile(cls) or "?").name
        line = inspect.getsourcelines(cls.forward)[1]
        loc = f"{file}:{line} ({cls.__name__}.forward)"
    except (TypeError, OSError):
        loc = cls.__name__
    return f"{message[:200]} (node {node}, module {target} = {loc})"


def trace_size_warnings(module, spec: Spec, sample_hw: tuple[int, int], limit: int = 3) -> list[str]:
    """'file.py:LINE: <TracerWarning>' for the places in user code where tracing fixed a size."""
    import torch

    roots = user_source_roots(module)
    x = torch.from_numpy(_sample((1, spec.in_channels, *sample_hw)))
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.jit.trace(module, (x,), check_trace=False)
        except Exception:  # noqa: BLE001 - only the warnings matter here
            pass
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        f = Path(w.filename).resolve()
        if roots and not any(r == f.parent or r in f.parents for r in roots):
            continue
        text = str(w.message).split(".")[0][:100]
        item = f"{f.name}:{w.lineno}: {text}"
        if item not in found:
            found.append(item)
    return found[:limit]


def export_user_model(module, spec: Spec, path: str | Path, *, source_checkpoint=None, opset: int = 17):
    """export_onnx with dynamic H/W; when that fails (the exporter refuses an operator under
    dynamic shapes, or the graph does not reproduce PyTorch / does not run at another size), a
    fixed-size export, stated in the metadata and the result with the reason (operator and the
    user's source line, TracerWarning locations); when that fails too, an ExportError naming them.
    Operations the exporter refuses but that have an exact exportable form (edgesr.export.rewrites:
    Tensor.unfold, FFTs, kernels computed in forward) are rewritten during the trace; which ones
    fired, and their eager check, are in the result's ``rewrites``."""
    from .onnx import export_onnx
    from .rewrites import plan_rewrites

    sample = (1, spec.in_channels, max(32, spec.min_size), max(40, spec.min_size))
    plan = plan_rewrites(module, [_sample((1, spec.in_channels, *_fit(sample[2:], spec))),
                                  _sample((1, spec.in_channels, *_fit((17, 23), spec)))])
    ctx = plan.context()
    try:
        res = export_onnx(module, spec, path, opset=opset, sample_shape=sample, source_checkpoint=source_checkpoint,
                          trace_context=ctx)
        return _UserExport(res, plan)
    except ExportError as e:
        dyn_error = _describe(module, spec, str(e), _fit(sample[2:], spec), opset, dynamic=True, ctx=ctx)
    hw = _fit(FIXED_HW, spec)
    where = trace_size_warnings(module, spec, hw)
    reason = (f"dynamic H/W export failed ({dyn_error[:300]})"
              + ("; the trace fixed sizes at " + "; ".join(where) if where else ""))
    try:
        res = export_onnx(module, spec, path, opset=opset, dynamic=False, sample_shape=(1, spec.in_channels, *hw),
                          source_checkpoint=source_checkpoint, trace_context=ctx,
                          metadata={"fixed_input_hw": list(hw), "fixed_reason": reason})
    except ExportError as e:
        fixed_error = _describe(module, spec, str(e), hw, opset, dynamic=False, ctx=ctx)
        note = f"; {'; '.join(plan.notes)}" if plan.notes else ""
        raise ExportError(f"ONNX export failed: {fixed_error} (also with dynamic H/W: {dyn_error[:200]}){note}") from None
    res.warnings.append(f"exported at a fixed {hw[0]}x{hw[1]} LR input (run larger images tile by tile): {reason}")
    return _UserExport(res, plan, list(hw), reason)


def _describe(module, spec: Spec, msg: str, hw, opset: int, dynamic: bool, ctx=None) -> str:
    """One line naming what broke: the operator and source line for exporter failures, the owning
    module for ONNX Runtime failures, the numbers otherwise."""
    if msg.startswith("torch.onnx.export failed"):
        return explain_export_failure(module, spec, hw, opset, dynamic=dynamic, ctx=ctx)
    if msg.startswith("ONNX Runtime cannot run"):
        return explain_ort_failure(module, msg)
    return msg


class _UserExport:
    """An ExportResult whose to_dict() also says which export rewrites were applied and, for a
    fixed-shape export, that (and why) the shape is fixed."""

    def __init__(self, res, plan, hw: list[int] | None = None, reason: str | None = None):
        self._res, self.rewrites, self.fixed_hw, self.fixed_reason = res, plan, hw, reason

    def __getattr__(self, name: str) -> Any:
        return getattr(self._res, name)

    def to_dict(self) -> dict[str, Any]:
        d = self._res.to_dict() | {"rewrites": self.rewrites.to_dict()}
        if self.fixed_hw is not None:
            d |= {"fixed_input_hw": self.fixed_hw, "fixed_reason": self.fixed_reason}
        return d


def fixed_size_samples(scale: int, hw: tuple[int, int]):
    """Set5 LR (or the package photos) cropped / reflect-padded to exactly `hw`, with HR to match."""
    from ..parity import Sample, default_samples

    out = []
    for s in default_samples(scale, sizes=()):
        _, _, h, w = s.lr.shape
        th, tw = hw
        ph, pw = max(0, th - h), max(0, tw - w)
        lr = s.lr
        if ph or pw:
            lr = np.pad(lr, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        y0, x0 = (lr.shape[2] - th) // 2, (lr.shape[3] - tw) // 2
        lr = np.ascontiguousarray(lr[:, :, y0:y0 + th, x0:x0 + tw])
        hr = None
        if s.hr is not None and not (ph or pw):
            hr = np.ascontiguousarray(s.hr[y0 * scale:(y0 + th) * scale, x0 * scale:(x0 + tw) * scale])
        out.append(Sample(s.name, lr, hr, s.kind))
    return out


def _fit(hw: Sequence[int], spec: Spec) -> tuple[int, int]:
    """(H, W) rounded up to the model's size multiple and raised to its minimum size."""
    m = max(1, spec.size_multiple)
    h, w = (max(spec.min_size, -(-int(d) // m) * m) for d in hw)
    return h, w


def _sample(shape) -> np.ndarray:
    from ..probe_inputs import random_image

    return random_image(shape, seed=1)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
