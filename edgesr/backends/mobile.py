"""Open a mobile artifact (LiteRT .tflite, ncnn .param, Core ML package) as a Runner, where a
runtime exists on this machine; Core ML has none off Apple platforms: one clear line instead.

A .tflite is converted for one fixed input size. :class:`FixedBoxRunner` runs such a file on
any image at least that large, the way an app does: boxes of exactly the file's size, each
overlapping its neighbours by the model's receptive field, the last box of a row / column
shifted inwards so it ends at the image border (never shrunk, never padded). The core each box
is responsible for keeps at least `overlap` pixels of true image context on every side that is
not the image border, so the tiled output equals an untiled run up to float reassociation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, ImageError
from .base import BaseRunner, TensorMeta

MOBILE_SUFFIXES = (".tflite", ".param", ".mlpackage")
# bench / upscale backend name -> (manifest role of the artifact in a convert OUTDIR)
MOBILE_BACKENDS = {"litert": "tflite_fp32", "litert-int8": "tflite_int8", "ncnn": "ncnn_fp32",
                   "ncnn-int8": "ncnn_int8", "coreml": "coreml_fp16"}
# the quantized LiteRT file of a bundle is tflite_int8, or tflite_int8-dynamic / tflite_int16x8 where
# convert's verdict fell back to run-time activation quantization or int16 activations
# (edgesr.export.litert.SCHEMES): litert-int8 runs whichever it wrote
OTHER_ROLES = {"tflite_int8": ("tflite_int8-dynamic", "tflite_int16x8")}


def bundle_artifact(manifest, backend: str):
    """The manifest artifact `backend` runs (see OTHER_ROLES); BundleError naming the first role when none is listed."""
    role = MOBILE_BACKENDS[backend]
    for other in OTHER_ROLES.get(role, ()):
        if any(a.role == other for a in manifest.artifacts):
            return manifest.artifact(other)
    return manifest.artifact(role)


def litert_precision(runner) -> str:
    """fp32, int8, int16x8 (int8 weights, int16 activations) or int8-dynamic (float input, int8
    weights: activations quantized at run time), read from a LiteRT file's tensors."""
    dtype = runner.io()["input"]["dtype"]
    precision = {"int8": "int8", "uint8": "int8", "int16": "int16x8"}.get(dtype, "fp32")
    it = getattr(runner, "it", None)
    if precision == "fp32" and it is not None and any(t["dtype"] == np.int8 for t in it.get_tensor_details()):
        return "int8-dynamic"
    return precision


def is_mobile_artifact(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in MOBILE_SUFFIXES or name.endswith(".mlpackage.zip")


def coreml_unavailable(path: Path) -> BackendUnavailable:
    return BackendUnavailable(f"{path.name}: no Core ML runtime on this machine (Core ML runs on Apple platforms "
                              "only); the package was converted and checked statically, see the bundle's report.md")


def open_mobile_runner(path: Path, threads: int | None = None, name: str | None = None):
    """A Runner for `path`; BackendUnavailable for Core ML (no runtime here) or a missing extra."""
    name = name or str(path)
    lower = path.name.lower()
    if lower.endswith(".tflite"):
        from .litert_runner import LiteRtRunner

        return LiteRtRunner(path, name=name, threads=threads)
    if lower.endswith(".param"):
        from .ncnn_runner import NcnnRunner

        return NcnnRunner(path, name=name, threads=threads)
    raise coreml_unavailable(path)


def open_bundle_mobile_runner(manifest, art, threads: int | None = None, name: str | None = None):
    """A Runner over a bundle's mobile artifact built from the bytes whose size and sha256 were
    checked against the manifest, read through one open file each (never the file re-opened by
    path: a file swapped after the check, or a symlink leading out of the bundle, is refused):
    the .tflite bytes, or the .param text and the bytes of the .bin the manifest links to it."""
    from ..errors import BundleError, quoted

    name = name or f"{art.role}:{art.file}"
    lower = art.file.lower()
    if lower.endswith(".tflite"):
        from .litert_runner import LiteRtRunner

        return LiteRtRunner(manifest.verified_bytes(art), name=name, threads=threads)
    if lower.endswith(".param"):
        from pathlib import PurePosixPath

        from .ncnn_runner import NcnnRunner, param_text

        rel = art.extra.get("weights")
        weights = None
        if isinstance(rel, str):
            rel = (PurePosixPath(art.file).parent / rel).as_posix()
            weights = next((b for b in manifest.artifacts if b.file == rel and b.role != art.role), None)
        if weights is None:
            raise BundleError(f"{quoted(manifest.path)}: ncnn artifact {quoted(art.role)} lists no weights file "
                              "(.bin) among the artifacts; re-run `edgesr convert`")
        return NcnnRunner(param_text(manifest.verified_bytes(art), art.file), manifest.verified_bytes(weights),
                          name=name, threads=threads)
    raise coreml_unavailable(Path(art.file))


def open_mobile_file(path: Path, threads: int | None = None, name: str | None = None):
    """A Runner for a mobile file named by path: when it lies in a bundle (manifest.json beside
    it) that lists it, from the verified bytes, as :func:`open_bundle_mobile_runner`; otherwise
    the file itself (a file of the user's, no integrity claim to keep)."""
    if (path.parent / "manifest.json").is_file():
        from ..bundle import read_manifest

        manifest = read_manifest(path.parent)
        art = listed_artifact(manifest, path)
        if art is not None:
            return open_bundle_mobile_runner(manifest, art, threads, name)
    return open_mobile_runner(path, threads, name)


def listed_artifact(manifest, path: Path):
    """The manifest's artifact that `path` (a file in the bundle's folder) is, or None."""
    import os

    want = os.path.normpath(path)
    for a in manifest.artifacts:
        if os.path.normpath(manifest.folder / a.file) == want:
            return a
    return None


def tile_starts(n: int, box: int, overlap: int) -> list[tuple[int, int, int]]:
    """(box start, core start, core end) along one axis of length n >= box: boxes of exactly
    `box`, stepping by ``box - 2 * overlap``, the last one shifted to end at n. Every core
    boundary lies at least `overlap` inside both boxes that meet there."""
    if n < box:
        raise ValueError(f"axis {n} < box {box}")
    step = box - 2 * overlap
    if n == box or step <= 0:
        if n != box:
            raise ValueError(f"box {box} leaves no core with overlap {overlap}")
        return [(0, 0, n)]
    starts = list(range(0, n - box, step)) + [n - box]
    out: list[tuple[int, int, int]] = []
    for i, s in enumerate(starts):
        core0 = 0 if i == 0 else out[-1][2]
        core1 = n if i == len(starts) - 1 else s + box - overlap
        out.append((s, core0, core1))
    return out


class FixedBoxRunner(BaseRunner):
    """Runs a fixed-size runner (``input_hw``) on any NCHW input at least that large; see the
    module docstring. ``tiles_itself`` tells `edgesr upscale` not to cut boxes of its own."""

    tiles_itself = True

    def __init__(self, inner, scale: int, overlap: int):
        self.inner, self.scale, self.overlap = inner, int(scale), int(overlap)
        self.box = (int(inner.input_hw[0]), int(inner.input_hw[1]))
        self.name = getattr(inner, "name", "fixed-box")
        if min(self.box) - 2 * self.overlap <= 0:
            raise ImageError(f"{self.name}: its fixed {self.box[0]}x{self.box[1]} input is too small to tile with "
                             f"an overlap of {self.overlap} pixels (the receptive field, or edgesr's default when the "
                             "model declares none); convert with a larger --mobile-size")

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.box

    def io(self):
        return self.inner.io()

    def _detect_precision(self) -> str:
        return str(getattr(self.inner, "precision", None) or super()._detect_precision())

    def input_metadata(self) -> tuple[TensorMeta, ...]:
        return self.inner.input_metadata()

    def output_metadata(self) -> tuple[TensorMeta, ...]:
        return self.inner.output_metadata()

    def close(self) -> None:
        self.inner.close()

    def whole_image_bytes_per_pixel(self, in_channels: int = 3, out_channels: int = 3) -> float:
        """Bytes per LR pixel that :meth:`run` holds for a whole image, for `edgesr upscale`'s
        memory plan: the float32 input and output. The boxes' activations do not grow with the
        image (the interpreter allocated them for its one size when it was opened)."""
        return 4.0 * (in_channels + out_channels * self.scale ** 2)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        n, c, h, w = x.shape
        bh, bw = self.box
        if (h, w) == (bh, bw):
            return self.inner.run(x)
        if h < bh or w < bw:
            raise ImageError(f"{self.name} takes one fixed input size, {bh}x{bw} LR pixels, and tiles larger "
                             f"inputs with it; this input is {h}x{w}. Convert with --mobile-size for a size "
                             f"no larger than the image")
        s = self.scale
        out = None
        for by, cy0, cy1 in tile_starts(h, bh, self.overlap):
            for bx, cx0, cx1 in tile_starts(w, bw, self.overlap):
                y = self.inner.run(np.ascontiguousarray(x[:, :, by:by + bh, bx:bx + bw]))
                if out is None:
                    out = np.empty((n, y.shape[1], h * s, w * s), dtype=np.float32)
                out[:, :, cy0 * s:cy1 * s, cx0 * s:cx1 * s] = y[:, :, (cy0 - by) * s:(cy1 - by) * s,
                                                                (cx0 - bx) * s:(cx1 - bx) * s]
        assert out is not None  # h >= bh and w >= bw: at least one box ran
        return out


def box_overlap(spec, manifest=None) -> int:
    """Overlap of a fixed-size file's boxes: the overlap measured at convert time (the bundle's
    ``tiling``, for which the file's size was chosen), else what `spec` declares."""
    tiling = getattr(manifest, "data", {}).get("tiling") if manifest is not None else None
    if isinstance(tiling, dict) and tiling.get("measured") and isinstance(tiling.get("overlap"), int):
        return int(tiling["overlap"])
    from ..bundle import recommended_tiling

    return recommended_tiling(spec)[1]


def mobile_runner_for(path: Path, spec, threads: int | None = None, name: str | None = None, manifest=None):
    """A Runner for `path` that takes any input size the model allows: a fixed-size .tflite is
    wrapped in :class:`FixedBoxRunner` (overlap: :func:`box_overlap`). With the `manifest` of the
    bundle `path` lies in, a file the manifest lists is loaded from its verified bytes."""
    art = listed_artifact(manifest, path) if manifest is not None else None
    runner = (open_bundle_mobile_runner(manifest, art, threads, name) if art is not None
              else open_mobile_runner(path, threads, name))
    if getattr(runner, "input_hw", None) is not None:
        runner = FixedBoxRunner(runner, spec.scale, box_overlap(spec, manifest))
    return runner


def spec_beside(path: Path, scale: int | None):
    """(Spec, manifest or None) for a mobile file: the manifest.json in its folder (a convert
    OUTDIR), else a bare spec from `scale` (ScaleMismatch when neither says the scale)."""
    from ..bundle import read_manifest
    from ..errors import ScaleMismatch
    from ..spec import Spec

    manifest = read_manifest(path.parent) if (path.parent / "manifest.json").is_file() else None
    if manifest is not None:
        if scale is not None and manifest.spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path.parent} (x{manifest.spec.scale})")
        return manifest.spec, manifest
    if scale is None:
        raise ScaleMismatch(f"{path.name} carries no edgesr metadata (no manifest.json beside it): pass --scale")
    return Spec(arch="unknown", scale=scale), None


def file_backend(path: Path) -> str | None:
    """The bench/upscale backend that runs a mobile file (None: not one)."""
    lower = path.name.lower()
    if lower.endswith(".tflite"):
        from .litert_runner import LiteRtRunner

        return "litert" if litert_precision(LiteRtRunner(path)) == "fp32" else "litert-int8"
    if lower.endswith(".param"):
        from .ncnn_runner import read_param

        return "ncnn-int8" if "8=2" in read_param(path) else "ncnn"
    if lower.endswith((".mlpackage", ".mlpackage.zip")):
        return "coreml"
    return None


def prepare_mobile(src, backend: str, threads: int | None, sizes) -> tuple[object, str, str, list[str]]:
    """(runner, artifact, precision, notes) for a mobile bench backend from a ModelSource
    (edgesr.bench): the file itself, the OUTDIR's artifact, or a conversion of the checkpoint's
    deploy module made here (LiteRT at the first size; INT8 without the held-out verdict, for
    timing). Fixed-size files run larger sizes tiled with boxes of their size; smaller sizes are
    refused (BackendUnavailable)."""
    fmt = backend.split("-")[0]
    precision = "int8" if backend.endswith("-int8") else "fp32"
    notes: list[str] = []
    if backend == "coreml":
        raise coreml_unavailable(Path(src.ref))
    if src.kind == "mobile":
        own = file_backend(src.ref)
        if own != backend:
            raise BackendUnavailable(f"{src.ref.name} runs on --backend {own}, not {backend}")
        path, runner = src.ref, open_mobile_file(src.ref, threads, backend)
    elif src.kind == "bundle":
        role = MOBILE_BACKENDS[backend]
        try:
            art = bundle_artifact(src.manifest, backend)
        except Exception:  # noqa: BLE001 - BundleError: role absent
            flag = {"litert": "--tflite", "ncnn": "--ncnn"}[fmt]
            raise BackendUnavailable(f"{src.ref} lists no {role} artifact (convert with {flag}"
                                     f"{' --int8' if precision == 'int8' else ''})") from None
        path, runner = art.path, open_bundle_mobile_runner(src.manifest, art, threads, backend)
    else:
        if src.module is None:
            raise BackendUnavailable(f"{backend}: no PyTorch module to convert (pass a .tflite/.param or an OUTDIR)")
        path, runner = _convert_for_bench(src, fmt, precision, threads, sizes)
        what = "INT8 without the held-out verdict, for timing" if precision == "int8" else "fp32"
        notes.append(f"converted here ({what})")
    if fmt == "litert" and precision == "int8":
        precision = litert_precision(runner)  # an int16x8 file is not labelled int8
    hw = getattr(runner, "input_hw", None)
    if hw is not None:
        small = [f"{h}x{w}" for h, w in sizes if h < hw[0] or w < hw[1]]
        if small:
            raise BackendUnavailable(f"{path.name} is fixed-size ({hw[0]}x{hw[1]}); it cannot run {', '.join(small)}")
        if any(tuple(s) != tuple(hw) for s in sizes):
            notes.append(f"fixed-size file: larger inputs run tiled with {hw[0]}x{hw[1]} boxes")
        overlap = box_overlap(src.spec, getattr(src, "manifest", None))
        runner = FixedBoxRunner(runner, src.spec.scale, overlap)
    return runner, str(path), precision, notes


def _convert_for_bench(src, fmt: str, precision: str, threads, sizes):
    """Convert the source's module for timing; the files live in the bench workdir."""
    spec, module, work = src.spec, src.module, Path(src.workdir)
    if fmt == "litert":
        from ..export.litert import convert_fp32_bytes, int8_tflite_bytes
        from .litert_runner import LiteRtRunner

        hw = tuple(sizes[0])
        data = (int8_tflite_bytes(module, spec, hw, psnr_budget=None)[0] if precision == "int8"
                else convert_fp32_bytes(module, spec, hw))
        path = work / f"bench_{precision}_{hw[0]}x{hw[1]}.tflite"
        path.write_bytes(data)
        return path, LiteRtRunner(path, name=f"litert:{precision}", threads=threads)
    from ..export.ncnn import convert_bytes, shape_mode
    from .ncnn_runner import NcnnRunner

    # fixed-size (None: dynamic) where pnnx cannot keep shapes dynamic
    fixed_hw, _ = shape_mode(module, spec, tuple(sizes[0]))
    if precision == "int8":
        from ..export.ncnn_int8 import int8_ncnn

        param, weights, _ = int8_ncnn(module, spec, psnr_budget=None, hw=fixed_hw)
    else:
        param, weights = convert_bytes(module, spec, hw=fixed_hw)
    path = work / f"bench_{precision}.param"
    path.write_text(param)
    path.with_suffix(".bin").write_bytes(weights)
    return path, NcnnRunner(path, name=f"ncnn:{precision}", threads=threads)
