"""PyTorch module -> checked, simplified, dynamic-shape ONNX file.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)`` with
``dynamic_axes``). It exports dynamic batch/H/W correctly for these conv nets (checked on
odd, non-square sizes at every export) and needs nothing beyond torch + onnx; the dynamo
exporter (torch's default since 2.9) additionally requires ``onnxscript``, which edgesr
does not depend on. ``PixelShuffle`` becomes ``DepthToSpace`` in CRD mode; the mode is
checked on the graph and the output is compared numerically with PyTorch.

Every export is verified before it is written (atomically):
``onnx.checker.check_model(full_check=True)``, strict shape inference, ORT vs PyTorch on
the sample shape and on an odd non-square size, and - when simplifying with onnxslim - ORT
before vs after simplification (the unsimplified graph is kept, with a warning, if they
differ by more than ``SIMPLIFY_TOL``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import ExportError, one_line, quoted
from ..fsutil import atomic_path, sha256_file, text_name
from ..spec import Spec

DEFAULT_OPSET = 17
MIN_OPSET = 11  # DepthToSpace CRD mode needs opset >= 11
INPUT_NAME = "input"
OUTPUT_NAME = "output"
SIMPLIFY_TOL = 1e-6  # max |ORT(simplified) - ORT(original)| accepted
CHECK_TOL = 1e-4  # max |ORT - torch| (x output peak when > 1) accepted by export; parity tests use 1e-5
EXPORTER = "torch.onnx.export(dynamo=False)"
CHECK_SIZE = (17, 23)  # odd, non-square size every dynamic export is verified on


@dataclass
class ExportResult:
    path: Path
    opset: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    dynamic: bool = True
    simplified: bool = False
    simplify_note: str = ""  # why simplification was skipped / rejected ("" when applied)
    max_abs_vs_torch: float | None = None  # max over the checked shapes; None when check=False
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    exporter: str = EXPORTER
    metadata: dict[str, str] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["checked_shapes"] = [list(s) for s in self.checked_shapes]
        return d


def export_onnx(module, spec: Spec, path: str | Path, *, opset: int = DEFAULT_OPSET, dynamic: bool = True,
                simplify: bool = True, check: bool = True, metadata: dict[str, Any] | None = None,
                sample_shape: Sequence[int] = (1, 3, 32, 40), source_checkpoint: str | Path | None = None,
                check_tol: float = CHECK_TOL, trace_context=None) -> ExportResult:
    """Export `module` (normally the deploy form) to `path`; see the module docstring.

    ``metadata`` entries are added to ``metadata_props`` (values JSON-encoded unless str) and
    override the ones derived from `spec`. ``source_checkpoint`` (a path) is hashed into
    ``source_sha256``; a precomputed hash may also be passed as ``metadata["source_sha256"]``.
    ``trace_context`` (a factory of context managers, e.g. edgesr.export.rewrites' mode) is
    entered around the exporter's trace only: the checks compare with `module` as it is.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: PixelShuffle needs DepthToSpace CRD (opset >= {MIN_OPSET})")
    path = Path(path)
    sample_shape = _fit_shape(tuple(int(s) for s in sample_shape), spec)
    if sample_shape[1] != spec.in_channels:
        raise ExportError(f"sample_shape {sample_shape} has {sample_shape[1]} channels; "
                          f"the model takes {spec.in_channels}")
    module = module.eval().float().cpu()
    form = _form_of(module, spec)
    sample = _random_input(sample_shape, spec, seed=0)
    notes: list[str] = []

    if trace_context is None:
        model = _torch_export(module, sample, opset, dynamic)
    else:
        with trace_context():
            model = _torch_export(module, sample, opset, dynamic)
    _check_depth_to_space(model)
    _name_dims(model, spec, dynamic)
    _check(model, "exported")

    simplified = False
    simplify_note = "simplify=False"
    if simplify:
        model, simplified, simplify_note = _simplify(model, spec, sample_shape, dynamic)
        if simplify_note:
            notes.append(simplify_note)
            warnings.warn(f"edgesr export: {simplify_note}", stacklevel=2)

    meta = _metadata(spec, form, opset, dynamic, simplified, source_checkpoint, metadata)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name, model.producer_version = "edgesr", __version__
    _check(model, "final")

    max_abs = None
    checked: list[tuple[int, ...]] = []
    if check:
        shapes = [sample_shape]
        if dynamic:
            shapes.append(_fit_shape((2, sample_shape[1], *CHECK_SIZE), spec))
        data = model.SerializeToString()
        errs = []
        peak = 1.0
        for shp in shapes:
            x = _random_input(shp, spec, seed=1)
            try:
                with torch.inference_mode():
                    ref = module(torch.from_numpy(x)).numpy()
            except Exception as e:  # noqa: BLE001 - user code may refuse a shape (e.g. `assert b == 1`)
                raise ExportError(f"the PyTorch module itself fails on the check input {shp}, so the dynamic "
                                  f"graph cannot be verified there: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}") from None
            out = _ort_run(data, x)
            if out.shape != ref.shape:
                raise ExportError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for input {shp}")
            errs.append(float(np.max(np.abs(out.astype(np.float64) - ref))))
            peak = max(peak, float(np.max(np.abs(ref))) if ref.size else 0.0)
            checked.append(shp)
        max_abs = max(errs)
        # fp32 rounding grows with magnitude: the limit scales with the output's peak when > 1.
        # An ill-conditioned model (e.g. untrained weights) may exceed it through rounding alone;
        # it still passes when ORT is as close to a float64 PyTorch run as PyTorch fp32 is.
        if not np.isfinite(max_abs) or (max_abs > check_tol * peak
                                        and not _as_good_as_torch(module, model, checked, spec, check_tol * peak)):
            raise ExportError(f"ONNX Runtime output differs from PyTorch by {max_abs:.3g} "
                              f"(> {check_tol:g} x peak {peak:.3g}) on shapes {checked}")

    try:
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    return ExportResult(path=path, opset=opset, dynamic=dynamic, simplified=simplified,
                        simplify_note="" if simplified else simplify_note, max_abs_vs_torch=max_abs,
                        checked_shapes=checked, metadata=meta,
                        op_counts=dict(Counter(n.op_type for n in model.graph.node)),
                        sha256=sha256_file(path), warnings=notes)


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (graph not loaded into memory twice)."""
    import onnx

    try:
        m = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError / OSError / ...
        raise ExportError(f"cannot read ONNX file {quoted(path)}: {one_line(str(e).splitlines()[0][:200])}") from None
    return {p.key: p.value for p in m.metadata_props}


# ---- steps ---------------------------------------------------------------------------------

def _torch_export(module, sample: np.ndarray, opset: int, dynamic: bool):
    import onnx
    import torch

    buf = io.BytesIO()
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(module, (torch.from_numpy(sample),), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types here
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {_first_line(e)}") from None
    return onnx.load_model_from_string(buf.getvalue())


def _as_good_as_torch(module, model, shapes, spec: Spec, tol: float) -> bool:
    """ORT's error vs float64 PyTorch <= 2x PyTorch fp32's own error vs float64 (+ tol)."""
    import copy

    import torch

    data = model.SerializeToString()
    m64 = copy.deepcopy(module).double()
    for shp in shapes:
        x = _random_input(shp, spec, seed=1)
        with torch.inference_mode():
            r64 = m64(torch.from_numpy(x).double()).numpy()
            r32 = module(torch.from_numpy(x)).double().numpy()
        e_ort = float(np.max(np.abs(_ort_run(data, x).astype(np.float64) - r64)))
        e_torch = float(np.max(np.abs(r32 - r64)))
        if not e_ort <= 2 * e_torch + tol:
            return False
    return True


def _check_depth_to_space(model) -> None:
    for node in model.graph.node:
        if node.op_type == "DepthToSpace":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "DCR")
            if mode != "CRD":
                raise ExportError(f"DepthToSpace node {node.name!r} uses mode {mode}; PixelShuffle needs CRD")


def _name_dims(model, spec: Spec, dynamic: bool) -> None:
    """Readable symbolic dims; fixed channel counts on input and output."""
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"expected one graph input and one output, got {len(model.graph.input)} inputs "
                          f"and {len(model.graph.output)} outputs (does forward() use its input?)")
    inp = model.graph.input[0].type.tensor_type.shape.dim
    out = model.graph.output[0].type.tensor_type.shape.dim
    if len(inp) != 4 or len(out) != 4:
        raise ExportError(f"expected 4-D input and output, got {len(inp)}-D and {len(out)}-D")
    out[1].Clear()
    out[1].dim_value = spec.out_channels
    if dynamic:
        for d, name in zip((out[0], out[2], out[3]), ("batch", "out_height", "out_width")):
            d.Clear()
            d.dim_param = name


def _check(model, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - ValidationError / InferenceError
        raise ExportError(f"{what} ONNX model fails onnx.checker: {_first_line(e)}") from None


def _simplify(model, spec: Spec, sample_shape, dynamic: bool):
    """-> (model, simplified?, note). Keeps the original if onnxslim changes any output."""
    try:
        import onnxslim
    except ImportError:
        return model, False, "onnxslim not installed; exported graph left unsimplified (pip install onnxslim)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(_clone(model))
    except Exception as e:  # noqa: BLE001
        return model, False, f"onnxslim failed ({type(e).__name__}: {_first_line(e)}); kept the unsimplified graph"
    if slim is None:
        return model, False, "onnxslim returned nothing; kept the unsimplified graph"
    try:
        _check(slim, "simplified")
    except ExportError as e:
        return model, False, f"{e}; kept the unsimplified graph"
    shapes = [sample_shape]
    if dynamic:
        shapes.append(_fit_shape((1, sample_shape[1], *CHECK_SIZE), spec))
    a, b = model.SerializeToString(), slim.SerializeToString()
    for shp in shapes:
        x = _random_input(shp, spec, seed=2)
        try:
            ya, yb = _ort_run(a, x), _ort_run(b, x)
        except ExportError as e:
            return model, False, f"simplified graph does not run ({e}); kept the unsimplified graph"
        diff = float(np.max(np.abs(ya.astype(np.float64) - yb))) if ya.shape == yb.shape else float("inf")
        if not diff <= SIMPLIFY_TOL:
            return model, False, (f"onnxslim changed the output by {diff:.3g} (> {SIMPLIFY_TOL:g}) on {shp}; "
                                  "kept the unsimplified graph")
    return slim, True, ""


def _metadata(spec: Spec, form: str, opset: int, dynamic: bool, simplified: bool, source_checkpoint,
              extra: dict[str, Any] | None) -> dict[str, str]:
    import torch

    meta: dict[str, Any] = {
        "architecture": spec.arch,
        "variant": spec.variant or "",
        "scale": spec.scale,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "value_range": list(spec.value_range),
        "color_order": spec.color_order,
        "layout": spec.layout,
        "form": form,
        "receptive_field": spec.receptive_field,
        "size_multiple": spec.size_multiple,
        "min_size": spec.min_size,
        "fp16_safe": spec.fp16_safe,
        "precision": "fp32",
        "spec": replace(spec, form=form).to_dict(),
        "edgesr_version": __version__,
        "exporter": EXPORTER,
        "torch_version": torch.__version__.split("+")[0],
        "opset": opset,
        "dynamic_shapes": dynamic,
        "simplified": simplified,
    }
    if source_checkpoint is not None:
        p = Path(source_checkpoint)
        if not p.is_file():
            raise ExportError(f"source checkpoint {p} not found (needed for its sha256)")
        meta["source_checkpoint"] = text_name(p.name)
        meta["source_sha256"] = sha256_file(p)
    meta.update(extra or {})
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}


# ---- helpers -------------------------------------------------------------------------------

def _form_of(module, spec: Spec) -> str:
    """The form actually exported (a Spec built for the training form may describe a
    module that has since been reparameterized)."""
    from ..reparam import is_deploy_form

    if spec.form == "training" and is_deploy_form(module):
        return "deploy"
    return spec.form


def _fit_shape(shape: tuple[int, ...], spec: Spec) -> tuple[int, ...]:
    """Round H and W up to the model's size rules."""
    if len(shape) != 4:
        raise ExportError(f"sample_shape must be NCHW (4 numbers), got {shape}")
    m = max(1, spec.size_multiple)
    h, w = (max(spec.min_size, -(-d // m) * m) for d in shape[2:])
    return (shape[0], shape[1], h, w)


def _random_input(shape, spec: Spec, seed: int) -> np.ndarray:
    """Natural-image-like random input (see edgesr.probe_inputs.random_image): uniform noise would
    push unclamped models far outside their value range, where fp32 rounding dominates."""
    from ..probe_inputs import random_image

    return random_image(shape, seed, "smooth", spec.value_range)


def _ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    from ..backends.ort_session import ort_session

    try:
        sess = ort_session(model_bytes, threads=1)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot run the model: {_first_line(e)}") from None


def _clone(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
