"""Deploy form -> ExecuTorch program (.pte) with the XNNPACK delegate, fp32 or INT8.

Flow (ExecuTorch >= 1.0): ``torch.export.export`` with dynamic H and W (bounded: ExecuTorch
plans memory for the largest shape, so the bound is the largest tile box an app will feed,
``tile + 2 * overlap`` from :func:`edgesr.bundle.recommended_tiling` by default) ->
``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` -> ``to_executorch()``.
INT8 uses ExecuTorch's XNNPACK quantizer (symmetric, per-channel weights, static per-tensor
activations) through torchao's PT2E ``prepare_pt2e`` / ``convert_pt2e``, calibrated on real
images (the bundled sample photos by default).

Every export is checked before it is written (atomically): the program is loaded with the
ExecuTorch Python runtime and compared with PyTorch on the maximum shape and an odd,
non-square shape; fp32 must agree within ``FP32_TOL``; INT8 must stay above
:data:`edgesr.export.mobile.INT8_MIN_PSNR` against PyTorch fp32 (the judge the mobile exports use).

The optional dependency is imported inside the functions; without it they raise
BackendUnavailable (``pip install 'edgesr[executorch]'``). The executorch wheel ships no
torch requirement of its own; it was verified here with executorch 1.5.1 and torch 2.13.0.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends.base import BaseRunner
from ..errors import BackendUnavailable, ExportError
from ..fsutil import atomic_path, sha256_file
from ..spec import Spec

FP32_TOL = 1e-5
CHECK_ODD = (17, 23)


@dataclass
class PteExport:
    path: Path
    precision: str  # "fp32" | "int8"
    max_hw: tuple[int, int]
    min_hw: tuple[int, int]
    delegated_calls: int  # XNNPACK delegate calls in the program
    non_delegated_ops: dict[str, int] = field(default_factory=dict)  # ops left to the portable kernels
    checked_shapes: list[list[int]] = field(default_factory=list)
    max_abs_vs_torch: float | None = None
    psnr_vs_torch: float | None = None
    bytes: int = 0
    sha256: str = ""
    seconds: float = 0.0
    executorch_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["max_hw"], d["min_hw"] = list(self.max_hw), list(self.min_hw)
        return d

    def artifact(self, role: str | None = None) -> dict[str, Any]:
        """The manifest entry for this file (bundle schema "artifact")."""
        return {"role": role or f"pte_{self.precision}_xnnpack", "file": self.path.name, "sha256": self.sha256,
                "bytes": self.bytes, "format": "pte", "precision": self.precision, "backend": "executorch-xnnpack",
                "shape_range": {"batch": {"min": 1, "max": 1},
                                "height": {"min": self.min_hw[0], "max": self.max_hw[0]},
                                "width": {"min": self.min_hw[1], "max": self.max_hw[1]}},
                "max_abs_vs_torch": self.max_abs_vs_torch, "psnr_vs_torch": self.psnr_vs_torch,
                "executorch_version": self.executorch_version}


def executorch_version() -> str | None:
    try:
        from executorch.version import __version__

        return str(__version__)
    except ImportError:
        return None


def _require():
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"ExecuTorch is not installed ({e.name or e}): pip install 'edgesr[executorch]'") \
            from None


def export_executorch(module, spec: Spec, path: str | Path, *, precision: str = "fp32",
                      max_hw: Sequence[int] | None = None, min_hw: Sequence[int] | None = None,
                      calibration: Sequence[np.ndarray] | None = None, check: bool = True) -> PteExport:
    """Export `module` (the deploy form) to an ExecuTorch .pte at `path`; see the module docstring.

    max_hw: largest input (H, W) the program accepts (default: one recommended tile box).
    calibration: NCHW float32 arrays for INT8 (default: crops of the bundled sample photos).
    """
    import torch

    _require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..bundle import recommended_tiling

    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision must be fp32 or int8, got {precision!r}")
    if spec.size_multiple != 1:
        raise ExportError("ExecuTorch export supports models without a size multiple only")
    t0 = time.perf_counter()
    path = Path(path)
    if max_hw is None:
        tile, overlap = recommended_tiling(spec)
        max_hw = (tile + 2 * overlap, tile + 2 * overlap)
    lo = max(1, spec.min_size)
    min_box, max_box = _hw(min_hw or (lo, lo)), _hw(max_hw)
    if not (min_box[0] <= max_box[0] and min_box[1] <= max_box[1]):
        raise ExportError(f"min_hw {min_box} exceeds max_hw {max_box}")
    module = module.eval().float().cpu()
    sample = torch.rand(1, spec.in_channels, min(64, max_box[0]), min(64, max_box[1]), generator=torch.Generator().manual_seed(0))
    dims = {_input_name(module): {2: torch.export.Dim("h", min=min_box[0], max=max_box[0]),
                                  3: torch.export.Dim("w", min=min_box[1], max=max_box[1])}}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                ep = torch.export.export(module, (sample,), dynamic_shapes=dims)
                if precision == "int8":
                    ep = _quantize(ep, module, spec, sample, dims, calibration)
                edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
                program = edge.to_executorch()
        except Exception as e:  # noqa: BLE001 - torch.export / exir raise many types
            raise ExportError(f"ExecuTorch export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") \
                from None
    delegated, others = _op_summary(edge.exported_program().graph_module)
    result = PteExport(path=path, precision=precision, max_hw=max_box, min_hw=min_box, delegated_calls=delegated,
                       non_delegated_ops=others, executorch_version=executorch_version())
    data = program.buffer
    if check:
        _check(module, data, spec, result)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    result.bytes, result.sha256 = path.stat().st_size, sha256_file(path)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _input_name(module) -> str:
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[0].name if params else "x"


def _quantize(ep, module, spec: Spec, sample, dims, calibration):
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(ep.module(), quantizer)
    for x in (calibration if calibration is not None else calibration_inputs(spec)):
        prepared(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (sample,), dynamic_shapes=dims)


def calibration_inputs(spec: Spec, n: int = 8, size: int = 96) -> list[np.ndarray]:
    """Center crops of the bundled sample photos (NCHW float32 in [0, 1])."""
    from ..imaging import read_image
    from ..sample_images import sample_images

    out = []
    for p in sample_images()[:n]:
        rgb = read_image(p).rgb
        h, w = min(size, rgb.shape[0]), min(size, rgb.shape[1])
        y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        out.append(np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w].transpose(2, 0, 1)[None], dtype=np.float32))
    return out


def _hw(hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in hw)
    return h, w


def _op_summary(gm) -> tuple[int, dict[str, int]]:
    delegated, others = 0, dict[str, int]()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegated += 1
        elif name not in ("getitem", "alloc", "mul") and not name.startswith(("sym_", "executorch_prim")):
            others[name] = others.get(name, 0) + 1
    return delegated, others


def load_pte(data: bytes | str | Path):
    """The ``forward`` method of a .pte (bytes or path), via the ExecuTorch Python runtime."""
    _require()
    from executorch.runtime import Runtime

    rt = Runtime.get()
    program = rt.load_program(data if isinstance(data, bytes) else str(data))
    return program.load_method("forward")


class PteRunner(BaseRunner):
    """Runner (edgesr.backends protocol) over a .pte (a file, or its bytes before it is written)
    through the ExecuTorch Python runtime."""

    def __init__(self, path: str | Path | bytes, name: str | None = None):
        self.path = None if isinstance(path, bytes) else Path(path)
        self.name = name or f"executorch:{self.path.name if self.path else 'program'}"
        self.method = load_pte(path if isinstance(path, bytes) else Path(path))

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        out = self.method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return out[0].numpy().astype(np.float32, copy=False)


def _photo_crop(shape: Sequence[int], index: int) -> np.ndarray:
    """A crop of a bundled sample photo with the given NCHW shape (random values if none fits):
    INT8 is calibrated on photos, so it is checked on photos, not on noise."""
    from ..imaging import read_image
    from ..sample_images import sample_images

    _, c, h, w = shape
    photos = [p for p in sample_images()] if c == 3 else []
    for p in photos[index:] + photos[:index]:
        rgb = read_image(p).rgb
        if rgb.shape[0] >= h and rgb.shape[1] >= w:
            y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
            return np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w].transpose(2, 0, 1)[None], dtype=np.float32)
    return np.random.default_rng(index).random(tuple(shape), dtype=np.float32)


def _check(module, data: bytes, spec: Spec, result: PteExport) -> None:
    """The program in the ExecuTorch runtime vs PyTorch on the largest shape and an odd one,
    judged as the mobile exports are (fp32 within FP32_TOL, INT8 above its PSNR floor)."""
    from .mobile import compare_with_torch, judge

    shapes = [(1, spec.in_channels, *result.max_hw),
              (1, spec.in_channels, min(CHECK_ODD[0], result.max_hw[0]), min(CHECK_ODD[1], result.max_hw[1]))]
    inputs = [_photo_crop(shp, i) for i, shp in enumerate(shapes)]
    result.max_abs_vs_torch, result.psnr_vs_torch, result.checked_shapes = compare_with_torch(
        module, PteRunner(data, name="ExecuTorch"), inputs)
    judge(result, "ExecuTorch", fp32_tol=FP32_TOL)
