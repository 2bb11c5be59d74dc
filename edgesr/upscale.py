"""`edgesr upscale`: super-resolve images and folders in bounded memory, saying what was verified.

Each image is read as integer codes (no float copy), padded when smaller than the model
accepts, split into tiles by the rule in :mod:`edgesr.tiling`, and written as it is
computed: a row of tiles at a time is quantized to 8/16-bit and streamed into the PNG
encoder (JPEG/WebP, which Pillow encodes whole, are refused when their output does not fit
the budget). Peak memory is bounded by ``--max-memory`` (default: a quarter of RAM, at most
1.5 GiB, and at least 512 MiB above what the process already holds), not by the picture:
``--tile auto`` picks the largest tile whose estimated peak (process baseline + input codes +
one output strip + one model call, the latter from the graph's own activation sizes) fits,
untiled when the whole image does.

Tiling claims are measurements, never declarations: a bundle carries the measurement made
at convert time (``tiling.measured`` in its manifest); for a checkpoint or ONNX file the
ONNX graph is analysed and tiled-vs-untiled runs on a sample photo are made, only when the
image actually needs more than one tile. Each result says "exact" only when the graph
proves locality and the runs agree; otherwise the measured error vs untiled.

Image rules: PNG/JPEG/WebP/BMP/TIFF in (as :func:`edgesr.imaging.read_codes` reads them),
PNG/JPEG/WebP out (by extension). Grey images are replicated to RGB for the model and
written back as grey (BT.601 luma of the RGB result). PNG output keeps the input's bit
depth (8 or 16); JPEG/WebP are 8-bit. Alpha is not seen by the model: it is upscaled
separately with MATLAB-compatible bicubic (:mod:`edgesr.resize`, row block by row block,
bit-identical to resizing the whole plane) and clipped to [0, 1]. JPEG output of an image
with alpha is refused. Existing outputs are never replaced without ``force``; every file is
written through a locked temp file and renamed, and temp files a killed run left behind
for the same output name are removed on the next run.

Over 500 lines on purpose: memory planning, tile planning and the streaming writer of one upscale
share their state (budget, tile, rows in flight); the tiling rule itself is edgesr.tiling.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Protocol

import numpy as np

from .errors import DatasetError, EdgesrError, ImageError, OutputExists, RunStopped, ScaleMismatch
from .spec import Spec
from .tiling import (
    APPROX_ALIGNMENT,
    MAX_APPROX_OVERLAP,
    Tile,
    TilePlan,
    TilingMeasurement,
    activation_bytes,
    declared_tiling,
    fit_size,
    plan_tiles,
    run_plan,
    upscale_array,
)

__all__ = ["Tile", "TilePlan", "plan_tiles", "upscale_array", "upscale_file", "upscale", "plan_jobs",
           "ModelTiling", "default_max_memory", "parse_memory", "parse_tile", "UpscaleResult", "UpscaleFailure"]

WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIB = 1 << 20
GIB = 1 << 30
MEMORY_FRACTION = 0.25  # default --max-memory: this share of RAM ...
MEMORY_CAP = 3 * GIB // 2  # ... but at most 1.5 GiB ...
MEMORY_HEADROOM = GIB // 2  # ... and at least this much above what the process already holds
STRIP_BLOCK_BYTES = 8 * MIB  # float temporaries when quantizing a core, per block of rows
ENCODER_BYTES = 64 * MIB  # PNG filter + zlib temporaries (PngWriter filters 2 MiB blocks)
TILE_CANDIDATES = (4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 24, 16)


# --------------------------------------------------------------------------- options


def total_ram() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_max_memory() -> int:
    """A quarter of physical RAM, at most 1.5 GiB (1.5 GiB when RAM is unknown), and at least
    MEMORY_HEADROOM above what this process already holds: edgesr called inside a larger
    process (a notebook, a service, a test run with many libraries loaded) can start above
    1.5 GiB, and the budget bounds the work, not the host."""
    ram = total_ram()
    base = MEMORY_CAP if ram is None else max(256 * MIB, min(MEMORY_CAP, int(ram * MEMORY_FRACTION)))
    return max(base, current_rss() + MEMORY_HEADROOM)


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_memory(text: str | int) -> int:
    """Bytes from '1.5G', '800M', '2GiB', '512MB' or a plain number of bytes (binary units)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise EdgesrError(f"--max-memory {text!r} is not a size; use e.g. 1.5G, 800M or a number of bytes")
        value = float(m.group(1)) * 1024 ** "BKMGT".index(m.group(2).upper() or "B")
    if not math.isfinite(value) or value < 64 * MIB:
        raise EdgesrError(f"--max-memory {text!r} is too small; edgesr needs at least 64M")
    return int(value)


def parse_tile(text: str | int | None) -> int | str:
    """'auto' or a tile size >= 0 (0 = untiled)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return "auto"
    try:
        v = int(str(text).strip())
    except ValueError:
        raise ImageError(f"--tile must be 'auto' or a whole number of pixels (0 = untiled), got {text!r}") from None
    if v < 0:
        raise ImageError(f"--tile must be >= 0 (0 = untiled), got {v}")
    return v


def current_rss() -> int:
    """Resident memory of this process now (bytes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _mib(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / MIB:.0f} MiB"


# --------------------------------------------------------------------------- model tiling facts


class ModelTiling:
    """What is known about tiling one model: the graph analysis and the measurement, each
    made at most once (lazily) and only when an image needs them."""

    def __init__(self, runner, spec: Spec, onnx=None, manifest_tiling: dict | None = None,
                 threads: int | None = None, log: Callable[[str], None] | None = None):
        self.runner, self.spec, self.onnx, self.threads = runner, spec, onnx, threads
        self.log = log or (lambda m: None)
        self._graph = None
        self._graph_error: str | None = None
        self._measured: TilingMeasurement | None = None
        self._probed: dict[int, int] = {}  # image side -> smallest size that ran, from there up
        self.source = "none"
        if manifest_tiling and manifest_tiling.get("measured"):
            self._measured = TilingMeasurement.from_dict(manifest_tiling["measured"])
            self.source = "bundle (measured at convert time)"

    @property
    def graph(self):
        if self._graph is None and self._graph_error is None:
            from .locality import analyze_onnx

            try:
                self._graph = analyze_onnx(self._onnx_model(), min_size=self.spec.min_size,
                                           size_multiple=self.spec.size_multiple, threads=self.threads or 1)
            except RunStopped:
                raise
            except EdgesrError as e:
                self._graph_error = str(e)
        return self._graph

    def _onnx_model(self):
        if self.onnx is not None:
            if isinstance(self.onnx, (str, Path)) and Path(self.onnx).suffix.lower() == ".ort":
                raise EdgesrError("an .ort file holds no ONNX graph to analyse")
            return self.onnx
        module = getattr(self.runner, "module", None)
        if module is None:
            raise EdgesrError("no ONNX graph available for this model")
        from .export.onnx import export_onnx

        with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(module, self.spec, path)
            self.onnx = path.read_bytes()
        return self.onnx

    @property
    def measured(self) -> TilingMeasurement | None:
        """The measurement (bundle's, or made now on sample photos; None when impossible)."""
        if self._measured is None:
            from .tiling import measure_tiling

            if self.graph is None:
                return None
            t0 = time.perf_counter()
            self._measured = measure_tiling(self.runner, self.spec, self._onnx_model(), image_size=256, tiles=(128,),
                                            graph=self.graph, threads=self.threads)
            self.source = f"measured now ({time.perf_counter() - t0:.1f} s)"
        return self._measured

    def min_size(self, image_side: int | None = None) -> int:
        """The smallest H/W the model accepts: declared, read from the graph, or (for an
        opaque .ort file without metadata, and only for a small image) probed in a child
        process, where a model that dies on a too-small input cannot take edgesr with it."""
        m = self._measured.min_size if self._measured else (self.graph.min_size if self.graph else None)
        if m is None and self.spec.arch == "unknown" and image_side is not None and image_side < PROBE_BELOW:
            path = getattr(self.runner, "path", None)
            if path is not None:
                if image_side not in self._probed:  # "n works" says nothing about sizes below n
                    self._probed[image_side] = probe_min_size(Path(path), self.spec.in_channels, image_side)
                m = self._probed[image_side]
        return max(1, int(self.spec.min_size), int(m or 1), max(self.fixed_box() or (1,)))

    def fixed_box(self) -> tuple[int, int] | None:
        """(H, W) of a fixed-size file that tiles larger inputs with boxes of its own size
        (:class:`edgesr.backends.mobile.FixedBoxRunner`); smaller images are padded up to it."""
        if getattr(self.runner, "tiles_itself", False):
            h, w = (int(v) for v in self.runner.input_hw)
            return h, w
        return None

    def multiple(self) -> int:
        """Grid of core starts and overlaps (also the multiple the padded image must be)."""
        m = max(1, int(self.spec.size_multiple))
        if self._measured:
            return math.lcm(m, self._measured.alignment)
        g = self.graph
        if g is None:
            return m
        return math.lcm(m, g.alignment if g.local else APPROX_ALIGNMENT)

    def default_overlap(self) -> int:
        if self._measured:
            return self._measured.overlap
        g = self.graph
        if g is not None:
            return g.receptive_field if g.local else MAX_APPROX_OVERLAP
        return declared_tiling(self.spec)[1]

    def memory_factor(self) -> float:
        from .tiling import LOCAL_MEMORY_FACTOR, NONLOCAL_MEMORY_FACTOR

        if getattr(self.runner, "tiles_itself", False):  # boxes of its own fixed size: a local run
            return LOCAL_MEMORY_FACTOR
        local = self._measured.locality == "local" if self._measured else bool(self.graph and self.graph.local)
        return LOCAL_MEMORY_FACTOR if local else NONLOCAL_MEMORY_FACTOR

    def bytes_per_pixel(self) -> float | None:
        if getattr(self.runner, "tiles_itself", False):  # a fixed-size .tflite: its activations are a box's
            return self.runner.whole_image_bytes_per_pixel(self.spec.in_channels, self.spec.out_channels)
        if self._measured and self._measured.activation_bytes_per_pixel:
            return self._measured.activation_bytes_per_pixel
        g = self.graph
        return g.activation_bytes_per_pixel if g is not None else None

    def unverified_reason(self) -> str:
        return self._graph_error or "the model's graph could not be analysed"


PROBE_TIMEOUT = 120.0  # seconds one probe may run without --time-limit
PROBE_BELOW = 64  # images smaller than this meet a model of unknown minimum size in a child process first
_PROBE = r"""
import sys
import numpy as np
from edgesr.backends.ort_session import ort_session
import onnxruntime as ort
s = ort_session(sys.argv[1], threads=1)
n, c, limit = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ro = ort.RunOptions()
if limit > 0:  # the run itself (not this interpreter's start) is held to --time-limit
    import threading
    t = threading.Timer(limit, setattr, (ro, "terminate", True))
    t.daemon = True
    t.start()
try:
    s.run(None, {s.get_inputs()[0].name: np.zeros((1, c, n, n), dtype=np.float32)}, ro)
except Exception:
    sys.exit(3 if ro.terminate else 1)
"""
PROBE_TIMED_OUT = 3


def probe_min_size(path: Path, channels: int, start: int) -> int:
    """Smallest n in (start, 2 start, 4 start, ... PROBE_BELOW) at which ONNX Runtime runs
    `path` on an n x n input without failing or dying (SIGFPE in a pooling kernel, ...)."""
    import subprocess

    from .backends.ort_runner import current_time_limit
    from .errors import BackendRunError, RunStopped, quoted

    limit = current_time_limit()
    n = max(1, start)
    while n < PROBE_BELOW:
        try:
            r = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(n), str(channels), str(limit or 0)],
                               capture_output=True, timeout=PROBE_TIMEOUT + (limit or 0))
        except subprocess.TimeoutExpired:
            raise BackendRunError(f"{quoted(path)} ran longer than {PROBE_TIMEOUT:g} s on a {n}x{n} input (probing "
                                  "the smallest input it accepts); pass --time-limit S to stop sooner") from None
        if r.returncode == PROBE_TIMED_OUT:
            raise RunStopped(f"ONNX Runtime run of {quoted(path)} took longer than the time limit of {limit:g} s "
                                  f"(--time-limit) on a {n}x{n} input (probing the smallest input it accepts); stopped")
        if r.returncode == 0:
            return n
        n *= 2
    return PROBE_BELOW


# --------------------------------------------------------------------------- results


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
    tiling: str = ""  # what was verified, in words
    padded: list[int] | None = None  # [H, W] the image was padded to (model minimum / multiple)
    memory: dict = field(default_factory=dict)  # estimated peak and budget (bytes)
    boxes: list[int] | None = None  # [H, W, overlap] of the boxes a fixed-size file ran (it tiles itself)

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


# --------------------------------------------------------------------------- memory plan


@dataclass
class MemoryPlan:
    tile: int  # 0 = untiled
    estimate: dict  # parts of the estimated peak (bytes)
    budget: int

    @property
    def peak(self) -> int:
        return int(self.estimate["total"])


def _decode_bytes(h: int, w: int, channels: int, bit_depth: int) -> int:
    """Transient peak of decoding: Pillow's image (4 bytes/px, 8 for 16-bit) + our codes."""
    per = (4 + channels) * (2 if bit_depth == 16 else 1) + (4 if bit_depth == 16 else 0)
    return h * w * per


def plan_memory(h: int, w: int, spec: Spec, *, tile: int | str, overlap: int, multiple: int, min_tile: int,
                bytes_per_pixel: float | None, input_bytes: int, out_channels: int, itemsize: int,
                whole_output: bool, budget: int, baseline: int, factor: float = 1.5) -> MemoryPlan:
    """The tile to use (``tile='auto'``: the largest fitting `budget`) and its estimated peak."""
    s = spec.scale
    ow = w * s

    def estimate(t: int) -> dict:
        core = min(h, t) if t else h
        bh, bw = (h, w) if not t or t >= max(h, w) else (min(h, t + 2 * overlap), min(w, t + 2 * overlap))
        parts = {"baseline": baseline, "input": input_bytes,
                 "strip": core * s * ow * out_channels * itemsize + STRIP_BLOCK_BYTES * 3,
                 "model": activation_bytes(bh, bw, bytes_per_pixel, spec, factor),
                 "encoder": ENCODER_BYTES,
                 "whole_output": h * s * ow * out_channels * (itemsize + 4) if whole_output else 0}
        parts["total"] = sum(parts.values())
        return parts

    if tile != "auto":
        return MemoryPlan(int(tile), estimate(int(tile)), budget)
    cands = [0] + [t for t in TILE_CANDIDATES if t < max(h, w)]
    cands = [c for c in cands if c == 0 or c >= min_tile] or [0]
    for t in cands:
        t = -(-t // multiple) * multiple if t else 0
        e = estimate(t)
        if e["total"] <= budget:
            return MemoryPlan(t, e, budget)
    return MemoryPlan(cands[-1], estimate(cands[-1]), budget)


def _check_budget(mp: MemoryPlan, src: Path, what: str) -> None:
    if mp.peak <= mp.budget:
        return
    e = mp.estimate
    parts = ", ".join(f"{k} {_mib(v)}" for k, v in e.items() if k != "total" and v)
    raise ImageError(f"{src}: {what} needs about {_mib(mp.peak)} ({parts}), over --max-memory {_mib(mp.budget)}; "
                     "raise --max-memory" + (" or use --tile auto" if what.startswith("tile") or
                                              what.startswith("untiled") else ""))


# --------------------------------------------------------------------------- one file


def check_tile(tile: int | str, overlap: int, mt: ModelTiling, image_side: int | None = None) -> int:
    """The smallest useful tile for this model; raises for an explicit tile below it
    (a box would be mostly overlap: ``--tile 1`` would run one model call per pixel)."""
    min_tile = max(mt.min_size(), overlap + 1, mt.multiple())
    box = mt.fixed_box()
    if box is not None:  # every tile box must hold at least one of the file's own boxes
        return max(min_tile, 2 * max(box))
    if tile != "auto" and 0 < int(tile) < min_tile and (image_side is None or int(tile) < image_side):
        raise ImageError(f"--tile {tile} is below the useful minimum {min_tile} for this model (overlap {overlap}, "
                         f"minimum input {mt.min_size()}): boxes would be mostly overlap; use --tile {min_tile} or "
                         "more, --tile auto, or 0 (untiled)")
    return min_tile


def upscale_file(runner, spec: Spec, src: str | Path, dst: str | Path, *, tile: int | str | None = "auto",
                 overlap: int | None = None, force: bool = False, max_memory: int | None = None,
                 model_tiling: ModelTiling | None = None,
                 on_tile: Callable[[int, int], None] | None = None) -> UpscaleResult:
    """Read `src`, upscale it tile by tile, stream the result into `dst` (refusing to
    overwrite unless `force`). ``tile``: 'auto' (from `max_memory`), 0 (untiled) or a size."""
    from .imaging import _png_ihdr, clean_stale_temps, image_size, read_codes

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    if dst.exists() and not force:
        raise OutputExists(f"{dst} exists; pass --force to replace")
    suffix = dst.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"{dst}: cannot write {dst.suffix or 'extensionless'} files; use {', '.join(WRITE_SUFFIXES)}")
    if spec.in_channels != 3:
        raise ImageError(f"edgesr upscale needs an RGB model; this one takes {spec.in_channels} channels")
    tile = parse_tile(tile)
    if overlap is not None and int(overlap) < 0:
        raise ImageError(f"--overlap must be >= 0, got {overlap}")
    mt = model_tiling or ModelTiling(runner, spec)
    budget = int(max_memory or default_max_memory())
    clean_stale_temps(dst, legacy=force)

    # decoding must fit before anything is decoded (the decompression-bomb limit is the budget)
    h0, w0 = image_size(src)
    baseline = current_rss()
    if h0 and w0:
        ihdr = _png_ihdr(src) if src.is_file() else None
        decode = _decode_bytes(h0, w0, 3, 16 if ihdr and ihdr[0] == 16 else 8)
        if baseline + decode > budget:
            raise ImageError(f"{src}: decoding {w0}x{h0} needs about {_mib(decode)} beyond the "
                             f"{_mib(baseline)} edgesr uses, over --max-memory {_mib(budget)} (possible "
                             "decompression bomb); raise --max-memory if the image is genuine")
    img = read_codes(src)
    if img.alpha is not None and suffix in (".jpg", ".jpeg"):
        raise ImageError(f"{src} has transparency, which JPEG cannot store; write {dst.stem}.png or .webp")
    h, w = img.height, img.width
    s = spec.scale
    bit_depth = img.bit_depth if suffix == ".png" else 8
    gray = img.is_gray
    out_c = (1 if gray else 3) + (img.alpha is not None)

    # size rules: pad (reflect) up to the model's minimum and multiple, crop the output back
    multiple = mt.multiple()  # tile grid
    min_size = mt.min_size(image_side=min(h, w))
    ph, pw = fit_size(h, w, min_size, spec.size_multiple)  # what the model requires of H and W
    overlap_v = int(overlap) if overlap is not None else int(mt.default_overlap())
    min_tile = check_tile(tile, overlap_v, mt, image_side=max(ph, pw))
    box = mt.fixed_box()
    if box is not None and tile != "auto" and 0 < int(tile) < min_tile:
        tile = min_tile  # a fixed-size file's tiles hold its boxes (it cuts them itself)
    itemsize = 2 if bit_depth == 16 else 1
    input_bytes = img.samples.nbytes + (img.alpha.nbytes if img.alpha is not None else 0)
    if (ph, pw) != (h, w):
        input_bytes *= 2
    whole = suffix != ".png"
    mp = plan_memory(ph, pw, spec, tile=tile, overlap=overlap_v, multiple=multiple, min_tile=min_tile,
                     bytes_per_pixel=mt.bytes_per_pixel(), input_bytes=input_bytes, out_channels=out_c,
                     itemsize=itemsize, whole_output=whole, budget=budget, baseline=current_rss(),
                     factor=mt.memory_factor())
    what = ("untiled" if mp.tile == 0 or mp.tile >= max(ph, pw) else f"tile {mp.tile}") + (
        f" ({dst.suffix} is encoded whole: {w * s}x{h * s} in memory)" if whole else "")
    _check_budget(mp, src, what)

    # the plan; a tiled plan needs the measurement (its overlap and what it verified), after
    # which the plan is made again from what is resident then
    measured = None
    inner = box is not None and (ph, pw) != box  # the fixed-size file cuts boxes of its own
    if inner or 0 < mp.tile < max(ph, pw):
        measured = mt.measured
        if measured is not None and overlap is None:
            overlap_v = measured.overlap
        mp = plan_memory(ph, pw, spec, tile=tile, overlap=overlap_v, multiple=multiple, min_tile=min_tile,
                         bytes_per_pixel=mt.bytes_per_pixel(), input_bytes=input_bytes, out_channels=out_c,
                         itemsize=itemsize, whole_output=whole, budget=budget, baseline=current_rss(),
                     factor=mt.memory_factor())
        _check_budget(mp, src, what)
    plan = plan_tiles(ph, pw, spec, mp.tile, overlap_v, measured=measured)
    exact = plan.exact
    if len(plan.tiles) == 1 and not inner:
        tiling_note = "untiled (exact)"
    elif measured is not None:
        tiling_note = measured.summary(plan.tile, plan.overlap if len(plan.tiles) > 1 else overlap_v)
    else:
        tiling_note = f"not verified ({mt.unverified_reason()}); overlap {overlap_v} px"
    boxes: list[int] | None = None
    if box is not None and inner:  # what matters is the boxes the file runs (core = box - 2 x overlap)
        o = int(runner.overlap)
        boxes = [*box, o]
        exact = bool(measured and measured.exact and measured.receptive_field is not None
                      and min(o, overlap_v) >= measured.receptive_field)
        if measured is not None:
            tiling_note = measured.summary(min(box) - 2 * o, min(o, overlap_v))
        tiling_note = (f"the fixed-size file runs {box[0]}x{box[1]} boxes overlapping by {o} px"
                       f"{'' if len(plan.tiles) == 1 else f' inside tiles of {plan.tile}'}: {tiling_note}"
                       + (f"; {mt.source}, fp32 ONNX graph in ONNX Runtime" if measured is not None else ""))

    samples, alpha_codes, src_mode = img.samples, img.alpha, img.mode
    if (ph, pw) != (h, w):
        samples = np.pad(samples, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    divisor = np.float32(65535.0) if img.bit_depth == 16 else 255.0

    def get_box(b):
        f = samples[b[0]:b[1], b[2]:b[3]].astype(np.float32) / divisor
        if f.shape[2] == 1:
            f = np.repeat(f, 3, axis=2)
        return np.ascontiguousarray(f.transpose(2, 0, 1)[None])

    writer = _OutputWriter(dst, w * s, h * s, out_c, bit_depth, whole, alpha_codes, img.bit_depth, s)
    try:
        _stream(runner, plan, spec, get_box, writer, gray=gray, bit_depth=bit_depth, out_h=h * s, out_w=w * s,
                on_tile=on_tile)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return UpscaleResult(input=str(src), output=str(dst), input_size=[h, w], output_size=[h * s, w * s],
                         mode=src_mode, bit_depth=bit_depth, alpha=alpha_codes is not None,
                         tiles=len(plan.tiles), tile=plan.tile, overlap=plan.overlap, exact=exact,
                         seconds=round(time.perf_counter() - t0, 3), tiling=tiling_note,
                         padded=[ph, pw] if (ph, pw) != (h, w) else None,
                         memory={"estimated_peak": mp.peak, "budget": budget},
                         boxes=boxes)


class RowSink(Protocol):
    """Where :func:`_stream` puts each finished row of output codes (a file, or an array)."""

    def write(self, y0: int, color: np.ndarray) -> None: ...


def _stream(runner, plan: TilePlan, spec: Spec, get_box, writer: RowSink, *, gray: bool, bit_depth: int,
            out_h: int, out_w: int, on_tile=None) -> None:
    """Run the plan a row of tiles at a time; each finished row of output goes to `writer`."""
    from .imaging import encode_rows

    s = spec.scale
    color_c = 1 if gray else 3
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    done = [0]
    n = len(plan.tiles)
    for row in plan.rows():
        y0, y1 = row[0].core[0], row[0].core[1]
        rows = min(y1 * s, out_h) - y0 * s
        if rows <= 0:
            continue
        strip: np.ndarray = np.empty((rows, out_w, color_c), dtype=dtype)

        def put_core(t: Tile, y: np.ndarray, strip: np.ndarray = strip) -> None:
            x0, x1 = t.core[2] * s, min(t.core[3] * s, out_w)
            if x1 <= x0:
                return
            core = y[:, :rows, : x1 - x0]  # C x rows x cols (crop of a padded image's extra)
            step = max(1, STRIP_BLOCK_BYTES // max(1, core.shape[2] * 3 * 8))
            for r0 in range(0, rows, step):
                block = core[:, r0:r0 + step].transpose(1, 2, 0)
                strip[r0:r0 + step, x0:x1] = encode_rows(block, None, bit_depth=bit_depth, gray=gray)

        def counted(i, _n):
            done[0] += 1
            if on_tile:
                on_tile(done[0], n)

        sub = TilePlan(plan.height, plan.width, plan.tile, plan.overlap, tuple(row), plan.exact, plan.multiple)
        run_plan(runner, sub, s, spec.out_channels, get_box, put_core, counted)
        writer.write(y0 * s, strip)
        del strip, put_core  # free the strip before the next row's is allocated


class _OutputWriter:
    """Rows of colour codes in (top to bottom), alpha added, PNG streamed or JPEG/WebP whole."""

    def __init__(self, dst: Path, width: int, height: int, channels: int, bit_depth: int, whole: bool,
                 alpha_codes: np.ndarray | None, alpha_bits: int, scale: int):
        from .imaging import PngWriter, streaming_output

        self.dst, self.width, self.height, self.channels = dst, width, height, channels
        self.bit_depth, self.whole = bit_depth, whole
        self.alpha = _AlphaRows(alpha_codes, alpha_bits, height, width) if alpha_codes is not None else None
        ctx = streaming_output(dst)
        self._f = ctx.__enter__()
        self._ctx: ContextManager[BinaryIO] | None = ctx  # None once finished or aborted
        self._png = None if whole else PngWriter(self._f, width, height, channels, bit_depth)
        dtype = np.uint16 if bit_depth == 16 else np.uint8
        # the whole image (JPEG / WebP are encoded at the end); None for a PNG or once saved
        self._full: np.ndarray | None = np.empty((height, width, channels), dtype=dtype) if whole else None
        self.written = 0

    def write(self, y0: int, color: np.ndarray) -> None:
        from .imaging import quantize

        if y0 != self.written:
            raise RuntimeError(f"rows out of order: {y0} after {self.written}")
        rows = color
        if self.alpha is not None:
            a = self.alpha.rows(y0, y0 + color.shape[0])
            rows = np.concatenate([color, quantize(a, self.bit_depth)[..., None]], axis=2)
        if self._png is not None:
            self._png.write_rows(rows)
        elif self._full is not None:
            self._full[y0:y0 + rows.shape[0]] = rows
        else:
            raise RuntimeError("rows written after the image was saved")
        self.written += color.shape[0]

    def finish(self) -> None:
        from .imaging import save_pillow

        try:
            if self._png is not None:
                self._png.close()
            elif self._full is not None:
                fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[self.dst.suffix.lower()]
                save_pillow(self._f, self._full, fmt, 95, self.dst)
                self._full = None
        except BaseException:
            self.abort()
            raise
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            raise RuntimeError("the output was already finished or aborted")
        try:
            ctx.__exit__(None, None, None)
        except OSError as e:
            raise ImageError(f"{self.dst}: cannot write ({e.strerror or e})") from None

    def abort(self) -> None:
        ctx = getattr(self, "_ctx", None)  # (absent when __init__ failed before setting it)
        if ctx is not None:
            self._ctx = None
            try:
                ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass

    def __del__(self):  # pragma: no cover - safety net
        self.abort()


class _AlphaRows:
    """Rows of the MATLAB-bicubic upscaled alpha plane, computed on demand from the codes;
    bit-identical to ``imresize(alpha, output_shape=(H, W))`` clipped to [0, 1]."""

    def __init__(self, codes: np.ndarray, bits: int, out_h: int, out_w: int):
        from .resize import contributions

        self.codes, self.peak = codes, (np.float32(65535.0) if bits == 16 else 255.0)
        h, w = codes.shape
        self.wr, self.ir = contributions(h, out_h, out_h / h)
        self.wc, self.ic = contributions(w, out_w, out_w / w)
        # imresize resizes the axis with the smaller scale first, rows on a tie
        self.rows_first = out_h / h <= out_w / w
        self.out_w = out_w

    def _float(self, rows: np.ndarray) -> np.ndarray:
        return (self.codes[rows].astype(np.float32) / self.peak).astype(np.float64)

    def rows(self, a: int, b: int) -> np.ndarray:
        out: np.ndarray = np.empty((b - a, self.out_w), dtype=np.float32)
        res: np.ndarray
        step = max(1, (4 * MIB) // (self.out_w * 8))
        for r0 in range(a, b, step):
            r1 = min(b, r0 + step)
            if self.rows_first:
                tmp = np.zeros((r1 - r0, self.codes.shape[1]), dtype=np.float64)
                for p in range(self.wr.shape[1]):
                    tmp += self.wr[r0:r1, p][:, None] * self._float(self.ir[r0:r1, p])
                res = np.zeros((r1 - r0, self.out_w), dtype=np.float64)
                for p in range(self.wc.shape[1]):
                    res += self.wc[:, p][None, :] * tmp[:, self.ic[:, p]]
            else:
                need = np.unique(self.ir[r0:r1])
                src = self._float(need)  # rows needed, full width
                cols: np.ndarray = np.zeros((len(need), self.out_w), dtype=np.float64)
                for p in range(self.wc.shape[1]):
                    cols += self.wc[:, p][None, :] * src[:, self.ic[:, p]]
                pos = np.asarray(np.searchsorted(need, self.ir[r0:r1]))  # (stubs say: a scalar)
                res = np.zeros((r1 - r0, self.out_w), dtype=np.float64)
                for p in range(self.wr.shape[1]):
                    res += self.wr[r0:r1, p][:, None] * cols[pos[:, p]]
            out[r0 - a:r1 - a] = np.clip(res.astype(np.float32), 0.0, 1.0)
        return out


# --------------------------------------------------------------------------- many files


def upscale(model, input: str | Path, output: str | Path, *, tile: int | str | None = "auto",
            overlap: int | None = None, backend: str = "torch", scale: int | None = None, arch: str | None = None,
            threads: int | None = None, force: bool = False, max_memory: int | None = None,
            on_image: Callable[[UpscaleResult | UpscaleFailure], None] | None = None,
            on_tile: Callable[[int, int], None] | None = None) -> list[UpscaleResult | UpscaleFailure]:
    """Upscale an image or a folder of images with MODEL (checkpoint, .onnx/.ort, bundle folder,
    or an already resolved :class:`edgesr.resolve.ResolvedModel`).

    In folder mode a failing image does not stop the others: it is returned as an
    UpscaleFailure; in single-image mode errors are raised.
    """
    from .resolve import ResolvedModel, resolve_model

    tile = parse_tile(tile)
    jobs, folder = plan_jobs(input, output, force=force)
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(
        model, backend=backend, scale=scale, arch=arch, threads=threads)
    if scale is not None and resolved.spec.scale != scale:
        raise ScaleMismatch(f"--scale {scale} does not match the model (x{resolved.spec.scale})")
    if getattr(resolved.runner, "tiles_itself", False):  # a fixed-size file: boxes of exactly its size
        runner = resolved.runner
        if overlap is not None and overlap != runner.overlap:
            if min(runner.input_hw) - 2 * int(overlap) <= 0:
                raise ImageError(f"--overlap {overlap} leaves no core in the fixed {runner.input_hw[0]}x"
                                 f"{runner.input_hw[1]} boxes of {resolved.path.name}; use less than "
                                 f"{min(runner.input_hw) // 2}")
            runner.overlap = int(overlap)
        overlap = runner.overlap  # the tiles edgesr cuts overlap like the file's own boxes
    mt = ModelTiling(resolved.runner, resolved.spec, onnx=getattr(resolved, "onnx", None),
                     manifest_tiling=getattr(resolved, "tiling", None), threads=threads)
    if isinstance(tile, int) and tile > 0:  # an option error is one error, not one per image
        check_tile(tile, overlap if overlap is not None else mt.default_overlap(), mt)
    if folder:
        jobs[0].dst.parent.mkdir(parents=True, exist_ok=True)
    results: list[UpscaleResult | UpscaleFailure] = []
    for j in jobs:
        try:
            r: UpscaleResult | UpscaleFailure = upscale_file(
                resolved.runner, resolved.spec, j.src, j.dst, tile=tile, overlap=overlap, force=force,
                max_memory=max_memory, model_tiling=mt, on_tile=on_tile)
        except EdgesrError as e:
            if not folder:
                raise
            r = UpscaleFailure(str(j.src), str(j.dst), str(e))
        results.append(r)
        if on_image:
            on_image(r)
    return results


# --------------------------------------------------------------------------- pictures in memory (video frames)


@dataclass
class CodesPlan:
    """How every picture of one size is upscaled (made once for all frames of a video)."""

    plan: TilePlan
    padded: tuple[int, int]  # H, W the model sees (reflect-padded to its minimum / multiple)
    tiling: str  # what was verified, in words
    memory: dict


def plan_codes(mt: ModelTiling, spec: Spec, h: int, w: int, *, tile: int | str | None = "auto",
               overlap: int | None = None, max_memory: int | None = None) -> CodesPlan:
    """The tile plan :func:`upscale_file` would use for an 8-bit RGB H x W picture whose output is
    held in memory (a video frame), within `max_memory`."""
    tile = parse_tile(tile)
    budget = int(max_memory or default_max_memory())
    min_size = mt.min_size(image_side=min(h, w))
    ph, pw = fit_size(h, w, min_size, spec.size_multiple)
    overlap_v = int(overlap) if overlap is not None else int(mt.default_overlap())
    min_tile = check_tile(tile, overlap_v, mt, image_side=max(ph, pw))
    held = h * w * 3 * (2 if (ph, pw) != (h, w) else 1) + h * spec.scale * w * spec.scale * 3  # in + out frame

    def memory_plan(ov: int) -> MemoryPlan:
        return plan_memory(ph, pw, spec, tile=tile, overlap=ov, multiple=mt.multiple(), min_tile=min_tile,
                           bytes_per_pixel=mt.bytes_per_pixel(), input_bytes=held, out_channels=3, itemsize=1,
                           whole_output=False, budget=budget, baseline=current_rss(), factor=mt.memory_factor())

    mp = memory_plan(overlap_v)
    _check_budget(mp, Path(f"{w}x{h} frame"), "untiled" if mp.tile == 0 or mp.tile >= max(ph, pw)
                  else f"tile {mp.tile}")
    measured = None
    if 0 < mp.tile < max(ph, pw):
        measured = mt.measured
        if measured is not None and overlap is None:
            overlap_v = measured.overlap
        mp = memory_plan(overlap_v)
    plan = plan_tiles(ph, pw, spec, mp.tile, overlap_v, measured=measured)
    if len(plan.tiles) == 1:
        note = "untiled (exact)"
    elif measured is not None:
        note = measured.summary(plan.tile, plan.overlap)
    else:
        note = f"not verified ({mt.unverified_reason()}); overlap {plan.overlap} px"
    return CodesPlan(plan, (ph, pw), note, {"estimated_peak": mp.peak, "budget": budget})


def upscale_codes(runner, spec: Spec, codes: np.ndarray, cp: CodesPlan) -> np.ndarray:
    """An 8-bit RGB H x W x 3 picture -> the upscaled 8-bit codes: the same padding, tiles and
    quantization as :func:`upscale_file` writing a PNG of the same picture."""
    h, w = codes.shape[:2]
    ph, pw = cp.padded
    s = spec.scale
    samples = codes if (ph, pw) == (h, w) else np.pad(
        codes, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")

    def get_box(b):
        f = samples[b[0]:b[1], b[2]:b[3]].astype(np.float32) / 255.0
        return np.ascontiguousarray(f.transpose(2, 0, 1)[None])

    out = np.empty((h * s, w * s, 3), dtype=np.uint8)

    class _Rows:
        written = 0

        def write(self, y0: int, color: np.ndarray) -> None:
            out[y0:y0 + color.shape[0]] = color

    _stream(runner, cp.plan, spec, get_box, _Rows(), gray=False, bit_depth=8, out_h=h * s, out_w=w * s)
    return out
