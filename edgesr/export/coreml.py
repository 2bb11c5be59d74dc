"""Deploy form -> Core ML ``.mlpackage`` (ML Program) via coremltools, zipped for the bundle.

Precisions: ``fp32`` (compute precision FLOAT32), ``fp16`` (FLOAT16, what the Neural Engine
runs) and ``int8w`` (fp16 compute with int8 weights, ``linear_quantize_weights``, per channel,
symmetric). The input is one fixed NCHW size (the tile box, like LiteRT): the Neural Engine
takes fixed (or enumerated) shapes only; flexible ``RangeDim`` inputs run on GPU/CPU.

**No Core ML runtime exists on Linux**: the packages are converted, not run here. Their status
says so, and the converted program is checked statically instead (:func:`static_check`): op
types against edgesr's list of ops the Neural Engine is known to take, tensor ranks and sizes
against its limits, fixed shapes, compute precision. That check is a heuristic, not a proof:
Core ML decides placement on the device.

The bundle holds ``<name>.mlpackage.zip`` (an .mlpackage is a folder); unzip it into the app
(Xcode compiles .mlpackage to .mlmodelc) or call ``MLModel.compileModel(at:)`` at run time.
"""

from __future__ import annotations

import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..errors import BackendUnavailable, ExportError
from ..fsutil import atomic_path
from ..spec import Spec
from .mobile import MobileExport, converter_rewrites, fixed_shape_form, package_version, quiet_native

EXTRA = "pip install 'edgesr[coreml]'"
PRECISIONS = ("fp32", "fp16", "int8w")
STATUS = "converted, not run here (no Core ML runtime on this machine)"

# MIL ops the Neural Engine runs (fp16) in edgesr's experience and Apple's guidance; others are
# listed as "may fall back to GPU/CPU".
ANE_OPS = frozenset({
    "const", "conv", "conv_transpose", "add", "sub", "mul", "real_div", "relu", "prelu", "leaky_relu", "clip",
    "sigmoid", "tanh", "gelu", "silu", "pixel_shuffle", "space_to_depth", "reshape", "transpose", "concat",
    "split", "slice_by_index", "slice_by_size", "tile", "upsample_nearest_neighbor", "upsample_bilinear",
    "max_pool", "avg_pool", "reduce_mean", "reduce_sum", "reduce_max", "layer_norm", "batch_norm",
    "instance_norm", "linear", "matmul", "softmax", "sqrt", "rsqrt", "square", "pow", "maximum", "minimum",
    "cast", "expand_dims", "squeeze", "pad", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"})
ANE_MAX_RANK = 5
ANE_MAX_DIM = 16384


def _require():
    try:
        with quiet_native():
            import coremltools as ct
    except ImportError as e:
        raise BackendUnavailable(f"Core ML export needs coremltools ({e.name or e}): {EXTRA}") from None
    return ct


def versions() -> dict[str, str | None]:
    return {"coremltools": package_version("coremltools")}


def export_coreml(module, spec: Spec, path: str | Path, *, precision: str = "fp16",
                  hw: Sequence[int] | None = None) -> MobileExport:
    """Write `path` (``<name>.mlpackage.zip``); see the module docstring."""
    import torch

    from .litert import default_hw

    ct = _require()
    if precision not in PRECISIONS:
        raise ExportError(f"Core ML precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if not path.name.endswith(".mlpackage.zip"):
        raise ExportError(f"{path.name}: a zipped Core ML package must end in .mlpackage.zip")
    t0 = time.perf_counter()
    h, w = (int(v) for v in (hw or default_hw(spec)))
    module = module.eval().float().cpu()
    sample = torch.rand(1, spec.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    target = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    errors, model, route = [], None, ""
    # TorchScript first: it maps PReLU and PixelShuffle to Core ML's own ops. torch.export (with
    # the fixed-shape form) second: it takes what tracing cannot (SAFMN's pooling).
    for route, make in (("TorchScript trace", lambda: torch.jit.trace(module, sample)),
                        ("torch.export", lambda: torch.export.export(fixed_shape_form(module), (sample,))
                         .run_decompositions({}))):
        try:
            with quiet_native(), converter_rewrites(fixed_size=True), torch.no_grad():
                model = ct.convert(make(), inputs=[ct.TensorType(name="input", shape=tuple(sample.shape))],
                                   outputs=[ct.TensorType(name="output")], convert_to="mlprogram",
                                   compute_precision=target, minimum_deployment_target=ct.target.iOS16)
            break
        except Exception as e:  # noqa: BLE001 - tracing / coremltools raise many types
            errors.append(f"{route}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    if model is None:
        raise ExportError(f"Core ML conversion failed ({'; '.join(errors)})")
    if precision == "int8w":
        try:
            with quiet_native():
                cfg = ct.optimize.coreml.OptimizationConfig(
                    global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
                model = ct.optimize.coreml.linear_quantize_weights(model, config=cfg)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"Core ML int8 weight quantization failed: {type(e).__name__}: {e}") from None
    check = static_check(model, precision)
    out_shape = [1, spec.out_channels, h * spec.scale, w * spec.scale]
    io = {"input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [1, spec.in_channels, h, w]},
          "output": {"name": "output", "dtype": "float32", "layout": "NCHW", "shape": out_shape}}
    with tempfile.TemporaryDirectory(prefix="edgesr-coreml-") as tmp:
        pkg = Path(tmp) / path.name[: -len(".zip")]
        with quiet_native():
            model.save(str(pkg))
        try:
            with atomic_path(path) as tmp_zip:
                _zip_folder(pkg, tmp_zip)
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e}") from None
    return MobileExport(files=[path], format="mlpackage-zip", precision=precision, backend="coreml",
                        input_hw=(h, w), layout="NCHW", io=io, status=STATUS, static_check=check,
                        details={"converter": f"coremltools ({route})", "minimum_deployment_target": "iOS16",
                                 "compute_precision": "FLOAT32" if precision == "fp32" else "FLOAT16",
                                 "weights": "int8 (linear symmetric, per channel)" if precision == "int8w"
                                 else precision},
                        versions=versions(), seconds=round(time.perf_counter() - t0, 2))


def _zip_folder(folder: Path, dest: Path) -> None:
    """Deterministic zip (sorted entries, fixed timestamps) of `folder` as its own top entry."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{f.relative_to(folder).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, f.read_bytes())


def static_check(model, precision: str) -> dict[str, Any]:
    """Op counts and Neural Engine concerns of a converted ML Program (no runtime needed)."""
    prog = model._mil_program  # noqa: SLF001 - coremltools keeps the converted MIL program here
    ops: Counter[str] = Counter()
    concerns: list[str] = []
    max_rank = 0
    for fn in prog.functions.values():
        for op in _walk(fn.operations):
            ops[op.op_type] += 1
            for v in op.outputs:
                shape = getattr(v, "shape", None) or ()
                if any(not isinstance(d, int) for d in shape):
                    concerns.append(f"{op.op_type} {op.name}: symbolic shape {shape}")
                    continue
                max_rank = max(max_rank, len(shape))
                if any(d > ANE_MAX_DIM for d in shape):
                    concerns.append(f"{op.op_type} {op.name}: dimension > {ANE_MAX_DIM} in {tuple(shape)}")
    off = sorted(k for k in ops if k not in ANE_OPS)
    if max_rank > ANE_MAX_RANK:
        concerns.append(f"tensor rank {max_rank} > {ANE_MAX_RANK}")
    if precision == "fp32":
        concerns.append("compute precision fp32: the Neural Engine runs fp16 only, so this package runs on GPU/CPU")
    return {"ops": dict(sorted(ops.items())), "max_tensor_rank": max_rank, "ops_outside_ane_list": off,
            "concerns": concerns[:20], "ane_likely": not off and not concerns,
            "note": "static check (no Core ML runtime here); placement is decided on the device"}


def _walk(ops):
    for op in ops:
        yield op
        for block in getattr(op, "blocks", ()):
            yield from _walk(block.operations)
