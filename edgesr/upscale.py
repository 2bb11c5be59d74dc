"""Seam-free tiled upscaling of images and folders (`edgesr upscale`).

Tiling rule (input = LR pixels; the same rule the bundle manifest states):

1. Split the image into cores of at most ``tile`` x ``tile`` pixels (balanced: cores of one
   row/column differ by at most the size multiple).
2. Extend each core by ``overlap`` pixels on every side, *clipped at the image border*:
   the extended box is cut from the image itself, never padded inside the image, so at
   the image border the model's own zero padding sees the true border, exactly as in an
   untiled run.
3. Run the model on the box and keep only the core's region (x scale) of its output,
   written straight into a preallocated output array.

A conv net whose output pixel depends on inputs within radius R (``Spec.receptive_field``,
the number of stacked 3x3 convs for the plain nets here) sees, inside a box extended by
``overlap >= R``, exactly the values it sees in the full image for every core pixel: the
box edge's zero padding can only reach R pixels inwards. Tiled output then equals untiled
output up to floating-point reassociation (measured: max abs < 1e-6 in fp32, often 0). After
8-bit rounding, a value sitting on a rounding boundary can land one code apart in rare samples
(measured: 4 of 96,000). A smaller ``overlap`` is allowed but is reported as ``exact: false``.

Memory: the model only ever sees one box, so inference memory is bounded by the tile size
(about ``(tile + 2 * overlap)^2 * widest layer * 4 bytes`` per live activation), independent
of the image. The decoded input (float32, ``H*W*3*4`` bytes), the preallocated float32
output (``scale^2`` times that) and the encoder's temporary copies when the output file is
written do grow with the image; ``benchmarks/tiling.py`` measures the peak.

Image rules: PNG/JPEG/WebP/BMP/TIFF in (as :func:`edgesr.imaging.read_image` reads them),
PNG/JPEG/WebP out (by extension). Grey images are replicated to RGB for the model and
written back as grey (BT.601 luma of the RGB result, :func:`edgesr.imaging.write_image`).
PNG output keeps the input's bit depth (8 or 16); JPEG/WebP are 8-bit. Alpha is not seen
by the model: it is upscaled separately with MATLAB-compatible bicubic
(:func:`edgesr.resize.imresize`) and clipped to [0, 1]; colour is upscaled as stored (not
premultiplied). JPEG output of an image with alpha is refused. Existing outputs are never
replaced without ``force``; every file is written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle import recommended_tiling
from .errors import DatasetError, EdgesrError, ImageError, OutputExists, ScaleMismatch
from .spec import Spec

WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# --------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 (input pixels) this tile is responsible for
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of the region fed to the model (core + overlap, clipped)


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int  # 0 = untiled
    overlap: int
    tiles: tuple[Tile, ...]
    exact: bool  # overlap >= receptive field (or a single tile)

    @property
    def max_box(self) -> tuple[int, int]:
        return (max(t.box[1] - t.box[0] for t in self.tiles), max(t.box[3] - t.box[2] for t in self.tiles))


def _split(n: int, tile: int, multiple: int) -> list[tuple[int, int]]:
    """[0, n) into ceil(n / tile) near-equal parts whose starts are multiples of `multiple`."""
    if tile <= 0 or tile >= n:
        return [(0, n)]
    k = math.ceil(n / tile)
    units = math.ceil(n / multiple)
    k = min(k, units)
    base, rem = divmod(units, k)
    out, start = [], 0
    for i in range(k):
        end = min(n, start + (base + (1 if i < rem else 0)) * multiple)
        out.append((start, end))
        start = end
    return out


def plan_tiles(height: int, width: int, spec: Spec, tile: int | None = None,
               overlap: int | None = None) -> TilePlan:
    """The tiles for an image: ``tile=None`` / ``overlap=None`` take :func:`recommended_tiling`;
    ``tile=0`` means one untiled pass. Both are rounded up to the model's size multiple."""
    if height < 1 or width < 1:
        raise ImageError(f"cannot tile an empty {height}x{width} image")
    rec_tile, rec_overlap = recommended_tiling(spec)
    tile = rec_tile if tile is None else int(tile)
    overlap = rec_overlap if overlap is None else int(overlap)
    if tile < 0:
        raise ImageError(f"--tile must be >= 0 (0 = untiled), got {tile}")
    if overlap < 0:
        raise ImageError(f"--overlap must be >= 0, got {overlap}")
    m = max(1, int(spec.size_multiple))
    tile, overlap = -(-tile // m) * m, -(-overlap // m) * m
    ys, xs = _split(height, tile, m), _split(width, tile, m)
    tiles = tuple(Tile((y0, y1, x0, x1), (max(0, y0 - overlap), min(height, y1 + overlap),
                                          max(0, x0 - overlap), min(width, x1 + overlap)))
                  for y0, y1 in ys for x0, x1 in xs)
    single = len(tiles) == 1
    rf = spec.receptive_field
    exact = single or (rf is not None and overlap >= rf)
    return TilePlan(height, width, 0 if single else tile, 0 if single else overlap, tiles, exact)


def upscale_array(runner, rgb: np.ndarray, spec: Spec, *, tile: int | None = None, overlap: int | None = None,
                  out: np.ndarray | None = None, plan: TilePlan | None = None,
                  on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Super-resolve an HxWxC float image through any Runner, tile by tile.

    Returns (or fills `out` with) the float32 (H*s)x(W*s)xC output, unclipped. The model sees
    NCHW boxes cut from `rgb` (see the module docstring); `on_tile(i, n)` is called after each.
    """
    a = np.asarray(rgb)
    if a.ndim != 3:
        raise ImageError(f"expected an HxWxC image, got shape {a.shape}")
    h, w, c = a.shape
    if c != spec.in_channels:
        raise ImageError(f"the model takes {spec.in_channels} channels, the image has {c}")
    s = spec.scale
    plan = plan or plan_tiles(h, w, spec, tile, overlap)
    if (plan.height, plan.width) != (h, w):
        raise ValueError(f"tile plan is for {plan.height}x{plan.width}, image is {h}x{w}")
    if out is None:
        out = np.empty((h * s, w * s, spec.out_channels), dtype=np.float32)
    elif out.shape != (h * s, w * s, spec.out_channels):
        raise ValueError(f"out has shape {out.shape}, expected {(h * s, w * s, spec.out_channels)}")
    for i, t in enumerate(plan.tiles):
        by0, by1, bx0, bx1 = t.box
        y0, y1, x0, x1 = t.core
        x = np.ascontiguousarray(a[by0:by1, bx0:bx1].transpose(2, 0, 1)[None], dtype=np.float32)
        y = runner.run(x)
        want = (1, spec.out_channels, (by1 - by0) * s, (bx1 - bx0) * s)
        if tuple(y.shape) != want:
            raise ScaleMismatch(f"model output {tuple(y.shape)} for input {tuple(x.shape)} is not {want}: "
                                f"the model is not x{s} with {spec.out_channels} channels (wrong --scale?)")
        out[y0 * s:y1 * s, x0 * s:x1 * s] = y[0, :, (y0 - by0) * s:(y1 - by0) * s,
                                             (x0 - bx0) * s:(x1 - bx0) * s].transpose(1, 2, 0)
        del x, y
        if on_tile:
            on_tile(i + 1, len(plan.tiles))
    return out


# --------------------------------------------------------------------------- files


@dataclass
class Job:
    src: Path
    dst: Path


@dataclass
class UpscaleResult:
    input: str
    output: str
    input_size: list[int]  # [H, W]
    output_size: list[int]
    mode: str  # source Pillow mode
    bit_depth: int  # of the written file
    alpha: bool
    tiles: int
    tile: int
    overlap: int
    exact: bool
    seconds: float
    def to_dict(self) -> dict:
        return asdict(self) | {"ok": True}


@dataclass
class UpscaleFailure:
    input: str
    output: str
    error: str

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": False}


def output_suffix(src: Path) -> str:
    """Folder mode: keep PNG/JPEG/WebP, write everything else (BMP, TIFF) as PNG."""
    suf = src.suffix.lower()
    return suf if suf in WRITE_SUFFIXES else ".png"


def plan_jobs(input: str | Path, output: str | Path, *, force: bool = False) -> tuple[list[Job], bool]:
    """(jobs, folder_mode) for INPUT -> OUTPUT; checks formats and existing outputs up front.

    An image INPUT writes OUTPUT (or OUTPUT/<name> when OUTPUT is an existing folder); a
    folder INPUT writes OUTPUT/<stem><ext> for each image directly inside it.
    """
    from .imaging import IMAGE_EXTENSIONS, list_images

    src, dst = Path(input), Path(output)
    if not src.exists():
        raise ImageError(f"{src}: no such file or folder")
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise OutputExists(f"{dst} exists and is not a folder; a folder INPUT needs an output folder")
        if dst.exists() and dst.resolve() == src.resolve():
            raise OutputExists(f"{dst} is the input folder; choose another output folder")
        images = list_images(src)
        if not images:
            raise DatasetError(f"{src}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        jobs = [Job(p, dst / (p.stem + output_suffix(p))) for p in images]
        seen: dict[Path, Path] = {}
        for j in jobs:
            if j.dst in seen:
                raise DatasetError(f"{seen[j.dst].name} and {j.src.name} would both be written to {j.dst.name}; "
                                   "rename one of them")
            seen[j.dst] = j.src
        folder = True
    else:
        if src.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ImageError(f"{src}: unsupported input format {src.suffix or '(no extension)'}; "
                             f"use one of {', '.join(IMAGE_EXTENSIONS)}")
        if dst.is_dir():
            dst = dst / (src.stem + output_suffix(src))
        jobs = [Job(src, dst)]
        folder = False
    for j in jobs:
        if j.dst.suffix.lower() not in WRITE_SUFFIXES:
            raise ImageError(f"{j.dst}: cannot write {j.dst.suffix or 'extensionless'} files; "
                             f"use {', '.join(WRITE_SUFFIXES)}")
        if j.dst.exists():
            if j.dst.resolve() == j.src.resolve():
                raise OutputExists(f"{j.dst} is the input image; choose another output")
            if not force:
                n = sum(1 for k in jobs if k.dst.exists())
                extra = f" (and {n - 1} more)" if n > 1 else ""
                raise OutputExists(f"{j.dst} exists{extra}; pass --force to replace")
    return jobs, folder


def upscale_file(runner, spec: Spec, src: str | Path, dst: str | Path, *, tile: int | None = None,
                 overlap: int | None = None, force: bool = False,
                 on_tile: Callable[[int, int], None] | None = None) -> UpscaleResult:
    """Read `src`, upscale (tiled), write `dst` atomically (refusing to overwrite unless force)."""
    from .imaging import read_image, write_image

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    if dst.exists() and not force:
        raise OutputExists(f"{dst} exists; pass --force to replace")
    if dst.suffix.lower() not in WRITE_SUFFIXES:
        raise ImageError(f"{dst}: cannot write {dst.suffix or 'extensionless'} files; use {', '.join(WRITE_SUFFIXES)}")
    img = read_image(src)
    if img.alpha is not None and dst.suffix.lower() in (".jpg", ".jpeg"):
        raise ImageError(f"{src} has transparency, which JPEG cannot store; write {dst.stem}.png or .webp")
    if spec.in_channels != 3:
        raise ImageError(f"edgesr upscale needs an RGB model; this one takes {spec.in_channels} channels")
    plan = plan_tiles(img.height, img.width, spec, tile, overlap)
    out = upscale_array(runner, img.rgb, spec, plan=plan, on_tile=on_tile)
    alpha = _upscale_alpha(img.alpha, spec.scale) if img.alpha is not None else None
    alpha_present = alpha is not None
    bit_depth = img.bit_depth if dst.suffix.lower() == ".png" else 8
    in_size, mode = [img.height, img.width], img.mode
    write_image(dst, out, alpha, bit_depth=bit_depth, mode=img.output_mode)
    del img, out, alpha
    return UpscaleResult(input=str(src), output=str(dst), input_size=in_size,
                         output_size=[in_size[0] * spec.scale, in_size[1] * spec.scale], mode=mode,
                         bit_depth=bit_depth, alpha=alpha_present, tiles=len(plan.tiles), tile=plan.tile,
                         overlap=plan.overlap, exact=plan.exact, seconds=round(time.perf_counter() - t0, 3))


def upscale(model, input: str | Path, output: str | Path, *, tile: int | None = None, overlap: int | None = None,
            backend: str = "torch", scale: int | None = None, arch: str | None = None, threads: int | None = None,
            force: bool = False, on_image: Callable[[UpscaleResult | UpscaleFailure], None] | None = None
            ) -> list[UpscaleResult | UpscaleFailure]:
    """Upscale an image or a folder of images with MODEL (checkpoint, .onnx/.ort, bundle folder,
    or an already resolved :class:`edgesr.resolve.ResolvedModel`).

    In folder mode a failing image does not stop the others: it is returned as an
    UpscaleFailure; in single-image mode errors are raised.
    """
    from .resolve import ResolvedModel, resolve_model

    jobs, folder = plan_jobs(input, output, force=force)
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(
        model, backend=backend, scale=scale, arch=arch, threads=threads)
    if scale is not None and resolved.spec.scale != scale:
        raise ScaleMismatch(f"--scale {scale} does not match the model (x{resolved.spec.scale})")
    if getattr(resolved.runner, "tiles_itself", False):  # a fixed-size .tflite: boxes of exactly its size
        tile, overlap = 0, None
    if folder:
        jobs[0].dst.parent.mkdir(parents=True, exist_ok=True)
    results: list[UpscaleResult | UpscaleFailure] = []
    for j in jobs:
        try:
            r: UpscaleResult | UpscaleFailure = upscale_file(resolved.runner, resolved.spec, j.src, j.dst, tile=tile,
                                                             overlap=overlap, force=force)
        except EdgesrError as e:
            if not folder:
                raise
            r = UpscaleFailure(str(j.src), str(j.dst), str(e))
        results.append(r)
        if on_image:
            on_image(r)
    return results


def _upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    from .resize import imresize

    h, w = alpha.shape
    up = imresize(alpha.astype(np.float32), output_shape=(h * scale, w * scale))
    return np.clip(up, 0.0, 1.0).astype(np.float32, copy=False)
