"""What the mobile exports (LiteRT, ncnn, Core ML) share: the result record and its manifest
entry, exact rewrites that unblock converters, real-image check and calibration inputs.

Rewrites (each exact, proven in tests/export/test_mobile.py):

- ``repeat_interleave`` along channels (the "anchor" residual of ECBSR/ABPN/...) becomes a
  concatenation of channel slices while a converter traces the model
  (:func:`channel_repeat_as_concat`): pnnx has no ncnn layer for ``torch.repeat_interleave``
  and litert-torch lowers it to BROADCAST_TO; slices + concatenation are pure data movement
  that every runtime and delegate supports.
- ``F.adaptive_max_pool2d`` at a fixed input size becomes a plain max pool (windows of one size)
  or per-window slices + max (:func:`adaptive_pool_as_slices`, bit-identical: max is exact):
  litert-torch 0.10 has no lowering for ``aten.adaptive_max_pool2d`` and pnnx freezes its output
  size anyway. Used only by fixed-size conversions.
- PixelShuffle and PReLU for LiteRT are rewritten by litert-torch itself (PixelShuffle as
  rank-4 reshapes/transposes, PReLU as ``relu(x) - a * relu(-x)``, both GPU-delegate forms);
  edgesr checks the result statically (:func:`edgesr.export.litert.static_check`) and proves
  both exact on this converter version in the tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from ..spec import Spec

FP32_TOL = 1e-4  # max |mobile - torch| for fp32 artifacts (the acceptance bound)
INT8_MIN_PSNR = 30.0  # dB vs the fp32 model on photo crops; below this an INT8 export is refused
FP16_MIN_PSNR = 40.0  # dB vs fp32 for fp16 artifacts


@dataclass
class MobileExport:
    """One converted mobile artifact (some formats are two files: ncnn .param + .bin)."""

    files: list[Path]
    format: str  # "tflite" | "ncnn" | "mlpackage"
    precision: str  # "fp32" | "fp16" | "int8" | "int8-mixed" ...
    backend: str  # runtime that loads it: "litert", "ncnn", "coreml"
    input_hw: tuple[int, int] | None  # fixed LR input size, None: any size
    layout: str  # "NHWC" | "NCHW" | "CHW"
    io: dict[str, Any] = field(default_factory=dict)  # input/output names, dtypes, shapes, quantization
    status: str = "converted, checked on this CPU"
    checked_shapes: list[list[int]] = field(default_factory=list)
    max_abs_vs_torch: float | None = None
    psnr_vs_torch: float | None = None
    static_check: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # calibration, float layers, options
    versions: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def path(self) -> Path:
        return self.files[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [p.name for p in self.files]
        d["input_hw"] = list(self.input_hw) if self.input_hw else None
        return d

    def artifacts(self, role: str) -> list[dict[str, Any]]:
        """Manifest entries (bundle schema "artifact"): the main file, plus '<role>_weights'
        for a second file (ncnn .bin), linked by ``weights``."""
        from ..fsutil import sha256_file

        def entry(p: Path, r: str) -> dict[str, Any]:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
            return {"role": r, "file": p.name, "sha256": _sha256_tree(p) if p.is_dir() else sha256_file(p),
                    "bytes": size, "format": self.format, "precision": self.precision, "backend": self.backend}

        main = entry(self.files[0], role)
        h, w = self.input_hw or (None, None)
        main |= {"layout": self.layout, "io": self.io, "status": self.status,
                 "shape_range": {"batch": {"min": 1, "max": 1},
                                 "height": {"min": h or 1, "max": h}, "width": {"min": w or 1, "max": w}},
                 "max_abs_vs_torch": self.max_abs_vs_torch, "psnr_vs_torch": self.psnr_vs_torch,
                 "versions": self.versions}
        scheme = self.details.get("scheme")  # LiteRT: {"name": "a8w8" | "dynamic" | "a16w8", ...}; ncnn: a description
        if isinstance(scheme, dict):  # which scheme the file is (integer or not, ops float), not only its precision label
            main["quantization"] = {k: scheme[k] for k in ("name", "weights", "activations", "integer", "float_ops")
                                    if k in scheme}
        out = [main]
        if len(self.files) > 1:
            main["weights"] = self.files[1].name
            out.append(entry(self.files[1], f"{role}_weights") | {"format": f"{self.format}-weights"})
        return out


def _sha256_tree(folder: Path) -> str:
    """sha256 over a folder's files (relative path + content), for .mlpackage directories."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence a converter's native (C++/absl) logs and Python prints: file descriptors 1 and 2
    point to /dev/null inside the block. edgesr reports what matters itself."""
    import io
    import os
    import sys
    import warnings

    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no real descriptors (embedded interpreters): Python-level only
        pass
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


# --------------------------------------------------------------------------- rewrites


def repeat_channels_concat(x, repeats: int):
    """== torch.repeat_interleave(x, repeats, dim=1), as channel slices + one concatenation
    (pure data movement: bit-identical)."""
    import torch

    return torch.cat([x[:, c:c + 1] for c in range(x.shape[1]) for _ in range(repeats)], dim=1)


@contextlib.contextmanager
def channel_repeat_as_concat() -> Iterator[None]:
    """While active, ``torch.repeat_interleave(x, int, dim=1)`` (function or method) runs as
    :func:`repeat_channels_concat`, so a tracing converter records slices + concat. Any other
    use of repeat_interleave is left alone."""
    import torch

    orig_fn, orig_method = torch.repeat_interleave, torch.Tensor.repeat_interleave

    def swap(orig):
        def repeat_interleave(x, repeats=None, dim=None, **kw):
            if isinstance(repeats, int) and dim in (1, -3) and x.dim() == 4 and not kw:
                return repeat_channels_concat(x, repeats)
            return orig(x, repeats, dim, **kw) if dim is not None else orig(x, repeats, **kw)
        return repeat_interleave

    torch.repeat_interleave = swap(orig_fn)
    torch.Tensor.repeat_interleave = swap(orig_method)
    try:
        yield
    finally:
        torch.repeat_interleave = orig_fn
        torch.Tensor.repeat_interleave = orig_method


def _windows(n: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis: [floor(i*n/out), ceil((i+1)*n/out))."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def adaptive_max_pool_static(x, output_size):
    """== F.adaptive_max_pool2d(x, output_size) for the (static) size of `x`, from ops every
    converter lowers: one max_pool2d when the windows along both axes have one size, else the
    max over each window's slice (max pooling is separable: rows, then columns)."""
    import torch
    from torch.nn import functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)
    if h % oh == 0 and w % ow == 0:
        return F.max_pool2d(x, (h // oh, w // ow))
    if h % oh == 0:
        x = F.max_pool2d(x, (h // oh, 1))
    else:  # one pool per window (windows differ in length): slices + max_pool2d, which every converter lowers
        x = torch.cat([F.max_pool2d(x[:, :, a:b], (b - a, 1)) for a, b in _windows(h, oh)], dim=2)
    if w % ow == 0:
        return F.max_pool2d(x, (1, w // ow))
    return torch.cat([F.max_pool2d(x[:, :, :, a:b], (1, b - a)) for a, b in _windows(w, ow)], dim=3)


@contextlib.contextmanager
def adaptive_pool_as_slices() -> Iterator[None]:
    """While active, ``F.adaptive_max_pool2d`` (and nn.AdaptiveMaxPool2d, which calls it) runs as
    :func:`adaptive_max_pool_static`, so a fixed-size converter records plain pools / slices.
    Calls asking for indices are left alone."""
    from torch.nn import functional as F

    orig = F.adaptive_max_pool2d

    def adaptive_max_pool2d(x, output_size, return_indices=False):
        if return_indices:
            return orig(x, output_size, return_indices)
        return adaptive_max_pool_static(x, output_size)

    F.adaptive_max_pool2d = adaptive_max_pool2d
    try:
        yield
    finally:
        F.adaptive_max_pool2d = orig


@contextlib.contextmanager
def converter_rewrites(fixed_size: bool) -> Iterator[None]:
    """The exact rewrites a converter traces through: the channel repeat always, the adaptive
    pooling for fixed-size conversions."""
    with channel_repeat_as_concat():
        if fixed_size:
            with adaptive_pool_as_slices():
                yield
        else:
            yield


def fixed_shape_form(module):
    """A copy of `module` for converters that trace one fixed input size (LiteRT, Core ML).

    SAFMN's default pooling computes PyTorch's adaptive-max-pool windows from the dynamic input
    size with Range/Gather (needed for dynamic ONNX); at a fixed size the reference
    ``F.adaptive_max_pool2d`` computes the same values and, traced inside
    :func:`adaptive_pool_as_slices`, lowers to plain pools / slices. Other models come back as
    they are (a copy)."""
    import copy

    from ..archs.safmn import set_pool

    return set_pool(copy.deepcopy(module), "adaptive").eval()


# --------------------------------------------------------------------------- inputs


def photo_crops(spec: Spec, hw: Sequence[int], n: int = 2, offset: int = 0) -> list[np.ndarray]:
    """``n`` NCHW float32 inputs of size `hw`: centre crops of the bundled sample photos
    (mirrored to fill `hw` when a photo is smaller). Real pictures, because INT8 is calibrated on
    pictures and fp16/INT8 are judged on them."""
    from ..imaging import read_image
    from ..sample_images import sample_images

    h, w = int(hw[0]), int(hw[1])
    photos = sample_images()
    out = []
    for i in range(n):
        rgb = read_image(photos[(i + offset) % len(photos)]).rgb
        y0, x0 = max(0, (rgb.shape[0] - h) // 2), max(0, (rgb.shape[1] - w) // 2)
        crop = _fill(rgb[y0:y0 + h, x0:x0 + w], h, w)
        out.append(_to_input(crop, spec))
    return out


def calibration_inputs(spec: Spec, hw: Sequence[int] | None, calib: str | Path | None = None,
                       num: int = 32, patch: int = 64) -> list[np.ndarray]:
    """NCHW float32 calibration inputs from edgesr's calibration source
    (:class:`edgesr.quant.calibration.CalibrationSource`: bicubic-downscaled HR crops of the
    calibration photos, the held-out evaluation photos excluded). For a fixed-size model each
    ``patch`` x ``patch`` LR patch is mirrored to fill `hw` (the sample photos are too small for
    LR patches of a whole tile box at x4)."""
    from ..quant.calibration import CalibrationSource

    p = patch if hw is None else min(patch, int(hw[0]), int(hw[1]))
    p = max(p, spec.min_size)
    src = CalibrationSource(spec, calib, num_patches=num, patch_size=p, progress=False)
    out = []
    for x in src.patches:
        if hw is not None:
            x = _fill(x.transpose(1, 2, 0), int(hw[0]), int(hw[1])).transpose(2, 0, 1)
        out.append(np.ascontiguousarray(x[None], dtype=np.float32))
    return out


def deploy_size_crops(spec: Spec, hw: Sequence[int], calib: str | Path | None = None, num: int = 32,
                      seed: int = 0) -> list[np.ndarray]:
    """``num`` NCHW float32 calibration inputs of the deployment size `hw` itself: bicubic-downscaled
    HR crops of ``hw * scale`` from the calibration photos (the held-out evaluation photos excluded;
    photos visited round robin, positions drawn with `seed`), mirrored to fill `hw` only where a
    photo is smaller.

    Why not small patches mirrored to `hw` (:func:`calibration_inputs`): a model whose statistics
    depend on the picture's extent (SAFMN++ max-pools to 1/8 of its input) sees a repeated 64-px
    patch as one picture with 1/4 of a real frame's content; measured on the held-out photos at
    128x128 LR with ncnn INT8, every convolution INT8: 2.97 dB lost with mirrored patches, 0.54 with
    crops of the frame's size."""
    from ..errors import DatasetError, ImageError
    from ..quant.calibration import bicubic_downscale, read_rgb_u8, resolve_images, to_model_input

    s, h, w = spec.scale, int(hw[0]), int(hw[1])
    usable = []  # at most `num` files, decoded one at a time (memory: one photo, whatever the folder holds)
    for f in resolve_images(calib):
        try:
            img = read_rgb_u8(f)
        except ImageError:
            continue
        if img.shape[0] >= s * max(1, spec.min_size) and img.shape[1] >= s * max(1, spec.min_size):
            usable.append(f)
        if len(usable) >= num:
            break
    if not usable:
        raise DatasetError("no readable calibration image of at least the model's minimum size")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        img = read_rgb_u8(usable[i % len(usable)])
        ch, cw = min(img.shape[0], h * s) // s * s, min(img.shape[1], w * s) // s * s
        top = int(rng.integers(0, img.shape[0] - ch + 1))
        left = int(rng.integers(0, img.shape[1] - cw + 1))
        x = to_model_input(bicubic_downscale(img[top:top + ch, left:left + cw], s), spec)
        x = _fill(x.transpose(1, 2, 0), h, w).transpose(2, 0, 1)
        out.append(np.ascontiguousarray(x[None], dtype=np.float32))
    return out


def _fill(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """HxWxC -> hxwxC, mirroring (symmetric) when the image is smaller, cropping when larger."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    return img[:h, :w]


def _to_input(rgb: np.ndarray, spec: Spec) -> np.ndarray:
    x = np.asarray(rgb, dtype=np.float32)
    if spec.in_channels == 1:
        x = ((16.0 + x @ np.array([65.481, 128.553, 24.966], dtype=np.float32)) / 255.0)[..., None]
    lo, hi = spec.value_range
    if (lo, hi) != (0.0, 1.0):
        x = lo + (hi - lo) * x
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


# --------------------------------------------------------------------------- checks


def compare_with_torch(module, runner, inputs: Sequence[np.ndarray]) -> tuple[float, float, list[list[int]]]:
    """(max |runner - torch|, PSNR of runner vs torch in dB, shapes) over `inputs`."""
    import torch

    worst, se, n, shapes = 0.0, 0.0, 0, []
    for x in inputs:
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).float().numpy()
        y = runner.run(x)
        if y.shape != ref.shape:
            from ..errors import ExportError

            raise ExportError(f"{runner.name}: output shape {y.shape} != PyTorch {ref.shape} for input {x.shape}")
        d = y.astype(np.float64) - ref
        worst = max(worst, float(np.abs(d).max()))
        se += float((d ** 2).sum())
        n += d.size
        shapes.append(list(x.shape))
    mse = se / max(1, n)
    psnr = float("inf") if mse == 0 else round(float(10 * np.log10(1.0 / mse)), 3)
    return worst, psnr, shapes


class CheckedExport(Protocol):
    """What :func:`judge` reads of an export's record (MobileExport, executorch's PteExport)."""

    precision: str
    max_abs_vs_torch: float | None
    psnr_vs_torch: float | None
    checked_shapes: list[list[int]]


def judge(result: CheckedExport, what: str, fp32_tol: float = FP32_TOL) -> None:
    """Refuse an artifact whose numbers say it is wrong (fp32 beyond `fp32_tol`, fp16/INT8 below
    their PSNR floors, NaN/Inf)."""
    from ..errors import ParityError

    worst, psnr = result.max_abs_vs_torch, result.psnr_vs_torch
    if worst is None or psnr is None or not np.isfinite(worst):
        raise ParityError(f"{what} output contains NaN/Inf")
    if result.precision == "fp32" and worst > fp32_tol:
        raise ParityError(f"{what} fp32 output differs from PyTorch by {worst:.3g} (> {fp32_tol:g}) "
                          f"on shapes {result.checked_shapes}")
    floor = FP16_MIN_PSNR if result.precision == "fp16" else INT8_MIN_PSNR
    if result.precision != "fp32" and psnr < floor:
        raise ParityError(f"{what} {result.precision} output is {psnr:.1f} dB PSNR from PyTorch fp32 "
                          f"(< {floor} dB) on sample photos")
