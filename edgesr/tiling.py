"""Tiling: plan tiles, run a model tile by tile, and *measure* how exact that is.

Tiling rule (input = LR pixels; the same rule the bundle manifest states):

1. Split the image into cores of at most ``tile`` x ``tile`` pixels (balanced; core starts
   on the model's alignment grid).
2. Extend each core by ``overlap`` pixels on every side, clipped at the image border (the
   box is cut from the image, never padded inside it, so the model's own padding sees the
   true border exactly as in an untiled run).
3. Run the model on the box and keep only the core's region (x scale) of its output.

Whether that equals the untiled output is a property of the model, measured here
(:func:`measure_tiling`) rather than declared per family:

- the ONNX graph gives a sound receptive field R, the alignment grid, and the operators
  that make exact tiling impossible (:mod:`edgesr.locality`);
- a one-pixel perturbation of a natural image shows how far the model's output actually
  reacts (the probe radius, a lower bound that must not exceed R);
- tiled and untiled runs on a natural image are compared at several tile sizes.

``exact`` is claimed only when the graph proves locality with ``overlap >= R`` *and* the
comparisons agree to floating-point rounding (max abs <= ``EXACT_TOL`` x value range).
Otherwise the measured error (max abs, 8-bit levels, PSNR vs untiled) is reported at the
recommended tile, with the smallest measured tile whose PSNR vs untiled stays above
``ERROR_BOUND_PSNR``.

Memory: the model only ever sees one box; :func:`activation_bytes` estimates what one call
needs from the graph's own tensor sizes and liveness, and :func:`auto_tile` picks the
largest tile that fits a budget.

Over 500 lines on purpose: the tiling rule, the tiled run and the measurement of its exactness must
agree on one definition of a tile; they live together so they cannot drift apart.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ImageError, ScaleMismatch
from .spec import Spec

DEFAULT_TILE = 256
TILE_PER_OVERLAP = 8  # a tile core of >= 8 x overlap keeps recomputation below ~56% (13% at 256 / 8)
UNKNOWN_OVERLAP = 16  # when nothing is measured and the model declares no receptive field
EXACT_TOL = 1e-5  # max |tiled - untiled| (x value range) accepted as floating-point rounding
# Approximate tiling must keep PSNR(tiled vs untiled) >= 50 dB: an error 20 dB below a
# 30 dB SR model's own error changes its PSNR vs ground truth by < 0.05 dB.
ERROR_BOUND_PSNR = 50.0
MAX_APPROX_OVERLAP = DEFAULT_TILE // TILE_PER_OVERLAP  # overlap cap for models that never tile exactly
APPROX_ALIGNMENT = 16
LOCAL_MEMORY_FACTOR = 1.5  # runtime workspaces beyond the graph's live tensors (conv nets)
# attention / global graphs: ELAN's ORT peak measured ~3x its liveness estimate (4.9 GiB at 0.6 MP)
NONLOCAL_MEMORY_FACTOR = 3.0
MEASURE_MEMORY = 1 << 30  # activation budget of the tiling measurement's untiled reference run
MEASURE_TILES = (128, 256, 384)
RULE = ("split the input into cores of at most tile x tile pixels, core starts on multiples of alignment; "
        "extend each core by overlap pixels on every side, clipped at the image border (never pad inside the "
        "image); run the model; keep only the core's region (x scale) of the output. exact = tiled == untiled "
        "up to floating-point rounding (verified).")


# --------------------------------------------------------------------------- plan


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
    exact: bool  # one tile, or overlap >= a *measured* receptive field of a local model
    multiple: int = 1  # core starts and the overlap are multiples of this

    @property
    def max_box(self) -> tuple[int, int]:
        return (max(t.box[1] - t.box[0] for t in self.tiles), max(t.box[3] - t.box[2] for t in self.tiles))

    def rows(self) -> list[list[Tile]]:
        """Tiles grouped by core row (top to bottom), each row left to right."""
        out: dict[tuple[int, int], list[Tile]] = {}
        for t in self.tiles:
            out.setdefault((t.core[0], t.core[1]), []).append(t)
        return [out[k] for k in sorted(out)]


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


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def declared_tiling(spec: Spec) -> tuple[int, int]:
    """(tile, overlap) from what a spec declares, for when nothing was measured."""
    m = max(1, int(spec.size_multiple))
    overlap = spec.receptive_field if spec.receptive_field is not None else UNKNOWN_OVERLAP
    overlap = _round_up(max(0, int(overlap)), m)
    tile = _round_up(max(DEFAULT_TILE, TILE_PER_OVERLAP * overlap, spec.min_size), m)
    return tile, overlap


def plan_tiles(height: int, width: int, spec: Spec, tile: int | None = None, overlap: int | None = None, *,
               measured: "TilingMeasurement | None" = None, alignment: int = 1) -> TilePlan:
    """The tiles for an image: ``tile=None`` / ``overlap=None`` take the measured recommendation
    (or :func:`declared_tiling` without one); ``tile=0`` means one untiled pass. Both are rounded
    up to the alignment grid (``spec.size_multiple`` x the measured alignment). ``exact`` is
    True only for one tile or with a measurement proving ``overlap >= receptive field``."""
    if height < 1 or width < 1:
        raise ImageError(f"cannot tile an empty {height}x{width} image")
    rec_tile, rec_overlap = (measured.tile, measured.overlap) if measured else declared_tiling(spec)
    tile = rec_tile if tile is None else int(tile)
    overlap = rec_overlap if overlap is None else int(overlap)
    if tile < 0:
        raise ImageError(f"--tile must be >= 0 (0 = untiled), got {tile}")
    if overlap < 0:
        raise ImageError(f"--overlap must be >= 0, got {overlap}")
    m = math.lcm(max(1, int(spec.size_multiple)), measured.alignment if measured else 1, max(1, int(alignment)))
    tile, overlap = _round_up(tile, m), _round_up(overlap, m)
    ys, xs = _split(height, tile, m), _split(width, tile, m)
    tiles = tuple(Tile((y0, y1, x0, x1), (max(0, y0 - overlap), min(height, y1 + overlap),
                                          max(0, x0 - overlap), min(width, x1 + overlap)))
                  for y0, y1 in ys for x0, x1 in xs)
    single = len(tiles) == 1
    exact = single or bool(measured and measured.exact and measured.receptive_field is not None
                           and overlap >= measured.receptive_field)
    return TilePlan(height, width, 0 if single else tile, 0 if single else overlap, tiles, exact, m)


def fit_size(h: int, w: int, min_size: int = 1, multiple: int = 1) -> tuple[int, int]:
    """The smallest (H, W) >= (h, w) a model with these size rules accepts."""
    m = max(1, int(multiple))
    lo = _round_up(max(1, int(min_size)), m)
    return max(lo, _round_up(h, m)), max(lo, _round_up(w, m))


def pad_to_rules(rgb: np.ndarray, min_size: int = 1, multiple: int = 1) -> np.ndarray:
    """HxWxC padded at the bottom/right to the model's size rules: reflect (edge for 1-px
    images), the padding SR pipelines use; crop the output back to (h * s, w * s)."""
    h, w = rgb.shape[:2]
    ph, pw = fit_size(h, w, min_size, multiple)
    if (ph, pw) == (h, w):
        return rgb
    pad = ((0, ph - h), (0, pw - w)) + ((0, 0),) * (rgb.ndim - 2)
    return np.pad(rgb, pad, mode="reflect" if min(h, w) > 1 else "edge")


# --------------------------------------------------------------------------- run


def run_plan(runner, plan: TilePlan, scale: int, out_channels: int,
             get_box: Callable[[tuple[int, int, int, int]], np.ndarray],
             put_core: Callable[[Tile, np.ndarray], None],
             on_tile: Callable[[int, int], None] | None = None) -> None:
    """Run `runner` on every tile box of `plan` (``get_box(box) -> 1xCxhxw float32``) and hand
    the core's part of each output (C x core_h*s x core_w*s, a view) to ``put_core``."""
    s = scale
    n = len(plan.tiles)
    for i, t in enumerate(plan.tiles):
        by0, by1, bx0, bx1 = t.box
        y0, y1, x0, x1 = t.core
        x = get_box(t.box)
        y = runner.run(x)
        want = (1, out_channels, (by1 - by0) * s, (bx1 - bx0) * s)
        if tuple(y.shape) != want:
            raise ScaleMismatch(f"model output {tuple(y.shape)} for input {tuple(x.shape)} is not {want}: "
                                f"the model is not x{s} with {out_channels} channels (wrong --scale?)")
        put_core(t, y[0, :, (y0 - by0) * s:(y1 - by0) * s, (x0 - bx0) * s:(x1 - bx0) * s])
        del x, y
        if on_tile:
            on_tile(i + 1, n)


def upscale_array(runner, rgb: np.ndarray, spec: Spec, *, tile: int | None = None, overlap: int | None = None,
                  out: np.ndarray | None = None, plan: TilePlan | None = None,
                  measured: "TilingMeasurement | None" = None,
                  on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Super-resolve an HxWxC float image through any Runner, tile by tile (in memory).

    Returns (or fills `out` with) the float32 (H*s)x(W*s)xC output, unclipped. Files go through
    :mod:`edgesr.upscale`, which streams instead of holding the whole output.
    """
    a = np.asarray(rgb)
    if a.ndim != 3:
        raise ImageError(f"expected an HxWxC image, got shape {a.shape}")
    h, w, c = a.shape
    if c != spec.in_channels:
        raise ImageError(f"the model takes {spec.in_channels} channels, the image has {c}")
    s = spec.scale
    plan = plan or plan_tiles(h, w, spec, tile, overlap, measured=measured)
    if (plan.height, plan.width) != (h, w):
        raise ValueError(f"tile plan is for {plan.height}x{plan.width}, image is {h}x{w}")
    if out is None:
        out = np.empty((h * s, w * s, spec.out_channels), dtype=np.float32)
    elif out.shape != (h * s, w * s, spec.out_channels):
        raise ValueError(f"out has shape {out.shape}, expected {(h * s, w * s, spec.out_channels)}")

    def get_box(b):
        return np.ascontiguousarray(a[b[0]:b[1], b[2]:b[3]].transpose(2, 0, 1)[None], dtype=np.float32)

    def put_core(t: Tile, y: np.ndarray) -> None:
        y0, y1, x0, x1 = t.core
        out[y0 * s:y1 * s, x0 * s:x1 * s] = y.transpose(1, 2, 0)

    run_plan(runner, plan, s, spec.out_channels, get_box, put_core, on_tile)
    return out


# --------------------------------------------------------------------------- measurement


@dataclass
class TileCheck:
    """One tiled-vs-untiled comparison on a natural image."""

    tile: int
    overlap: int
    image: str  # "512x512 crop of astronaut.png"
    tiles: int
    max_abs: float  # in the model's value range
    max_levels: int  # max difference of the 8-bit outputs (clipped, rounded)
    psnr: float | str  # dB of tiled vs untiled ("inf" when identical)
    share_changed: float  # share of 8-bit output samples that differ

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TilingMeasurement:
    """What was measured about tiling this model (stored in the manifest's ``tiling``)."""

    exact: bool
    tile: int  # recommended core size (input pixels)
    overlap: int  # recommended overlap (input pixels per side)
    alignment: int  # core starts / overlap multiple (input pixels)
    locality: str  # "local" (graph-proven) | "nonlocal" | "unknown" (graph could not be analysed)
    receptive_field: int | None  # graph bound R when local
    probe_radius: int | None  # farthest output reaction to a one-pixel change (input pixels)
    reasons: list[str] = field(default_factory=list)  # why exact tiling is impossible / unproven
    min_size: int | None = None  # smallest H/W the graph accepts (None: not derivable)
    bound_psnr: float = ERROR_BOUND_PSNR
    error: TileCheck | None = None  # at the recommended tile / overlap (approximate models)
    min_tile_within_bound: int | None = None  # smallest measured tile with PSNR >= bound (approximate)
    checks: list[TileCheck] = field(default_factory=list)
    activation_bytes_per_pixel: float | None = None
    seconds: float = 0.0
    method: str = "graph + probe + tiled-vs-untiled"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["error"] = self.error.to_dict() if self.error else None
        d["checks"] = [c.to_dict() for c in self.checks]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TilingMeasurement":
        d = dict(d)
        d["error"] = TileCheck(**d["error"]) if d.get("error") else None
        d["checks"] = [TileCheck(**c) for c in d.get("checks") or []]
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self, tile: int | None = None, overlap: int | None = None) -> str:
        """One line saying what was verified (for ``edgesr upscale`` and ``info``)."""
        if self.exact and (overlap is None or (self.receptive_field is not None and overlap >= self.receptive_field)):
            return (f"exact (verified: overlap {overlap if overlap is not None else self.overlap} >= receptive "
                    f"field {self.receptive_field} measured on the graph; tiled == untiled on a natural image)")
        if self.exact:
            return (f"approximate: --overlap {overlap} is below the measured receptive field "
                    f"{self.receptive_field}; tiles may show seams (not measured at this overlap)")
        e = self.error
        why = self.reasons[0] if self.reasons else "not proven local"
        if e is None:
            return f"approximate ({why}); error not measured"
        same = [c for c in self.checks if tile is not None and (c.tile, c.overlap) == (tile, overlap)]
        e = same[0] if same else e  # a check made at exactly this run's tile and overlap
        psnr = e.psnr if isinstance(e.psnr, str) else f"{e.psnr:.1f}"
        bound = "within" if _psnr_value(e.psnr) >= self.bound_psnr else "NOT within"
        text = (f"approximate ({why}): max error {e.max_levels}/255, PSNR {psnr} dB vs untiled, {bound} the "
                f"{self.bound_psnr:g} dB bound (measured at tile {e.tile}, overlap {e.overlap}, on a {e.image})")
        if tile is not None and (tile < e.tile or (overlap is not None and overlap < e.overlap)):
            text += (f"; this run's tile {tile} / overlap {overlap if overlap is not None else e.overlap} is below "
                     "what was measured: its error was not measured and may be larger")
        return text


def sample_photo(height: int, width: int, index: int = 0) -> tuple[np.ndarray, str]:
    """A natural RGB image of at least `height` x `width` (center crop, mirrored if the
    photo is smaller) and its description."""
    from .imaging import read_image
    from .sample_images import sample_images

    path = sample_images()[index % len(sample_images())]
    rgb = read_image(path).rgb
    h, w = rgb.shape[:2]
    if h < height or w < width:
        rgb = np.pad(rgb, ((0, max(0, height - h)), (0, max(0, width - w)), (0, 0)), mode="symmetric")
        h, w = rgb.shape[:2]
    y0, x0 = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(rgb[y0:y0 + height, x0:x0 + width]), f"{width}x{height} crop of {path.name}"


def compare(tiled: np.ndarray, full: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """max abs, 8-bit level difference, PSNR (clipped to the value range) and share changed."""
    lo, hi = value_range
    d = np.abs(tiled.astype(np.float64) - full.astype(np.float64))
    a = np.clip((tiled.astype(np.float64) - lo) / (hi - lo), 0, 1)
    b = np.clip((full.astype(np.float64) - lo) / (hi - lo), 0, 1)
    qa, qb = np.floor(a * 255 + 0.5), np.floor(b * 255 + 0.5)
    mse = float(np.mean((a - b) ** 2))
    return {"max_abs": float(d.max()), "max_levels": int(np.abs(qa - qb).max()),
            "psnr": "inf" if mse == 0 else round(10 * math.log10(1.0 / mse), 2),
            "share_changed": round(float(np.mean(qa != qb)), 6)}


def _psnr_value(p: float | str) -> float:
    return math.inf if p == "inf" else float(p)


def probe_radius(runner, img: np.ndarray, spec: Spec) -> int:
    """Farthest output reaction (input pixels) to inverting the center pixel of `img`."""
    h, w, _ = img.shape
    cy, cx = h // 2, w // 2
    x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
    y0 = runner.run(x)
    lo, hi = spec.value_range
    x2 = x.copy()
    x2[0, :, cy, cx] = (lo + hi) - x2[0, :, cy, cx]  # invert: a large, in-range change
    if np.array_equal(x2, x):
        x2[0, :, cy, cx] = lo if float(x[0, 0, cy, cx]) > (lo + hi) / 2 else hi
    y1 = runner.run(x2)
    changed = (np.abs(y1 - y0) > EXACT_TOL * (hi - lo)).any(axis=(0, 1))
    if not changed.any():
        return 0
    s = max(1, spec.scale)
    ys, xs = np.nonzero(changed)
    return int(max(np.abs(ys // s - cy).max(), np.abs(xs // s - cx).max()))


def measure_tiling(runner, spec: Spec, onnx_model, *, image_size: int = 512, tiles: tuple[int, ...] = MEASURE_TILES,
                   threads: int | None = None, graph=None, memory_budget: int = MEASURE_MEMORY,
                   log: Callable[[str], None] | None = None) -> TilingMeasurement:
    """Measure tiling for the model behind `runner` (its ONNX graph: `onnx_model`).

    A model that does not tile exactly is measured on a natural image of about
    ``max(image_size, 2 x tile)`` per side (uneven: not a multiple of the tile): first at DEFAULT_TILE (or the largest of `tiles` below
    it), then smaller `tiles` while PSNR vs untiled stays >= ERROR_BOUND_PSNR, or larger ones
    until it does; the recommended tile is the first within the bound (else the largest
    measured). Images (and so tiles) are kept to what an untiled run fits in `memory_budget`
    by the graph's activation estimate; tiles below `tiles` are tried only when none fit.
    A local model is verified on a smaller crop at two tile sizes. Never raises for an unanalysable graph: the
    result then says ``locality: unknown`` and reports the measured error.
    """
    from .errors import EdgesrError
    from .locality import analyze_onnx

    t0 = time.perf_counter()
    log = log or (lambda m: None)
    if graph is None:
        try:
            graph = analyze_onnx(onnx_model, min_size=spec.min_size, size_multiple=spec.size_multiple,
                                 threads=threads or 1)
        except EdgesrError as e:
            graph = None
            unknown_reason = f"graph not analysed ({e})"
    lo, hi = spec.value_range
    min_size = max(spec.min_size, (graph.min_size or 1) if graph else 1)
    align = math.lcm(max(1, spec.size_multiple), graph.alignment if graph else 1)
    if graph is not None and graph.scale is not None and abs(graph.scale - spec.scale) > 1e-9:
        raise ScaleMismatch(f"the ONNX graph upscales x{graph.scale:g}, the model spec says x{spec.scale}")

    def fit(v: int) -> int:
        return _round_up(max(v, min_size), align)

    if graph is not None and graph.local:
        R = int(graph.receptive_field)
        overlap = _round_up(R, align)
        # probe: a crop wide enough that the reaction cannot reach its border
        side = fit(max(64, 2 * R + 33))
        img, desc = sample_photo(side, side)
        probe = probe_radius(runner, img, spec)
        # verify tiled == untiled at two small tile sizes (the overlap rule does not depend on the tile)
        t_small = fit(max(32, 2 * overlap))
        h, w = fit(max(160, 5 * t_small // 2)), fit(max(224, 7 * t_small // 2))
        img, desc = sample_photo(h, w, index=1)
        full = upscale_array(runner, img, spec, tile=0)
        checks: list[TileCheck] = []
        for t in (t_small, fit(2 * t_small)):
            plan = plan_tiles(h, w, spec, t, overlap, alignment=align)
            tiled = upscale_array(runner, img, spec, plan=plan)
            checks.append(TileCheck(tile=plan.tile, overlap=plan.overlap, image=desc, tiles=len(plan.tiles),
                                    **compare(tiled, full, spec.value_range)))
        worst = max(c.max_abs for c in checks)
        exact = worst <= EXACT_TOL * (hi - lo) and probe <= R
        reasons = [] if exact else (
            [f"probe radius {probe} exceeds the graph's receptive field {R}"] if probe > R else
            [f"tiled != untiled at overlap {overlap} (max abs {worst:.3g})"])
        tile = fit(max(DEFAULT_TILE, TILE_PER_OVERLAP * overlap))
        meas = TilingMeasurement(exact=exact, tile=tile, overlap=overlap, alignment=align, locality="local",
                                 receptive_field=R, probe_radius=probe, reasons=reasons, min_size=min_size,
                                 checks=checks, activation_bytes_per_pixel=graph.activation_bytes_per_pixel)
        if not exact:
            meas.error = max(checks, key=lambda c: c.max_abs)
        meas.seconds = round(time.perf_counter() - t0, 2)
        log(f"tiling: {meas.summary()}")
        return meas

    # Not proven local: measure the error of tiling on natural images. The overlap follows
    # the probe (how far a one-pixel change reaches), a power of two capped so that boxes of
    # the default tile recompute <= ~56%. Tiles are tried from DEFAULT_TILE: smaller ones
    # while the error stays within the bound (to find the smallest), else larger ones.
    reasons = list(graph.reasons) if graph else [unknown_reason]
    # Box origins on a 16-px grid keep window-partitioned models (windows of 4, 8 or 16 px)
    # aligned with the untiled run's windows; power-of-two overlaps keep them there.
    align = math.lcm(align, APPROX_ALIGNMENT)
    probe = probe_radius(runner, sample_photo(fit(128), fit(128))[0], spec)
    overlap = _round_up(min(MAX_APPROX_OVERLAP, 1 << max(3, probe - 1).bit_length()), align)
    checks = []
    images: dict[tuple[int, int], tuple[np.ndarray, str, np.ndarray]] = {}
    bpp = (graph.activation_bytes_per_pixel if graph else None) or 4 * (3 * 64 + spec.out_channels * spec.scale ** 2)
    max_pixels = memory_budget / (NONLOCAL_MEMORY_FACTOR * bpp)

    def dims(t: int) -> tuple[int, int] | None:
        # at least 2 x 2 tiles, and sides that are not multiples of the tile: cores and boxes of
        # uneven sizes, as real images give (box sizes matter to size-dependent layers; sizes
        # on a grid of 16 would align pooling windows by luck); as large as `image_size` asks
        # when the untiled reference run fits the measurement's memory budget
        for base in (max(image_size, 2 * t), 2 * t):
            h, w = fit_size(base - t // 4 + 3, base + t // 3 + 5, min_size, spec.size_multiple)
            if h * w <= max_pixels:
                return h, w
        return None

    def check(t: int) -> TileCheck:
        size = dims(t)
        if size is None:  # `order` below holds only tiles whose image fits the budget
            raise ValueError(f"tile {t}: no check image fits the memory budget")
        h, w = size
        if (h, w) not in images:
            img, desc = sample_photo(h, w)
            images.clear()  # one reference image in memory at a time
            images[(h, w)] = (img, desc, upscale_array(runner, img, spec, tile=0))
        img, desc, full = images[(h, w)]
        plan = plan_tiles(h, w, spec, fit(t), overlap, alignment=align)
        c = TileCheck(tile=plan.tile, overlap=plan.overlap, image=desc, tiles=len(plan.tiles),
                      **compare(upscale_array(runner, img, spec, plan=plan), full, spec.value_range))
        checks.append(c)
        return c

    def within(c: TileCheck) -> bool:
        return _psnr_value(c.psnr) >= ERROR_BOUND_PSNR

    order = [t for t in sorted({fit(t) for t in (*tiles, 64, 32)}) if dims(t) is not None]
    if not order:  # not even 2 x 2 tiles of 32 px fit the budget: say so instead of measuring
        meas = TilingMeasurement(exact=False, tile=fit(DEFAULT_TILE), overlap=overlap, alignment=align,
                                 locality="nonlocal" if graph else "unknown", receptive_field=None,
                                 probe_radius=probe, reasons=reasons + ["error not measured: the untiled "
                                                                         "reference run exceeds the measurement's "
                                                                         "memory budget"], min_size=min_size,
                                 activation_bytes_per_pixel=bpp)
        meas.seconds = round(time.perf_counter() - t0, 2)
        return meas
    order = [t for t in order if t >= min(fit(t) for t in tiles)] or order
    start = max([t for t in order if t <= DEFAULT_TILE] or order[:1])
    rec = check(start)
    if within(rec):
        for t in reversed([t for t in order if t < start]):
            if not within(check(t)):
                break
    else:
        for t in [t for t in order if t > start]:
            rec = check(t)
            if within(rec):
                break
    ok = sorted(c.tile for c in checks if within(c))
    meas = TilingMeasurement(exact=False, tile=rec.tile, overlap=overlap, alignment=align,
                             locality="nonlocal" if graph else "unknown", receptive_field=None,
                             probe_radius=probe, reasons=reasons, min_size=min_size, error=rec,
                             min_tile_within_bound=ok[0] if ok else None, checks=checks,
                             activation_bytes_per_pixel=graph.activation_bytes_per_pixel if graph else None)
    meas.seconds = round(time.perf_counter() - t0, 2)
    log(f"tiling: {meas.summary()}")
    return meas


# --------------------------------------------------------------------------- memory


def activation_bytes(box_h: int, box_w: int, bytes_per_pixel: float | None, spec: Spec,
                     factor: float = LOCAL_MEMORY_FACTOR) -> int:
    """Estimated peak bytes of one model call on a box (graph liveness x a safety factor for
    runtime workspaces; without a graph estimate: 64 float32 channels + the output)."""
    if bytes_per_pixel is None:
        bytes_per_pixel = 4 * (3 * 64 + spec.out_channels * spec.scale ** 2)
    return int(factor * bytes_per_pixel * box_h * box_w)


def iter_tiles_fitting(height: int, width: int, overlap: int, multiple: int, min_tile: int) -> Iterator[int]:
    """Candidate tile sizes from large (untiled) to small."""
    t = max(height, width)
    yield t
    t = _round_up(max(min_tile, 1), multiple)
    cands = sorted({_round_up(v, multiple) for v in (4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128,
                                                      96, 64, 48, 32, 24, 16)} | {t}, reverse=True)
    for c in cands:
        if t <= c < max(height, width):
            yield c
