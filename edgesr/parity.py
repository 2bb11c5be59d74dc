"""Backend-agnostic parity: run the same inputs through several runners and judge them
against the first (the reference).

* Inputs (:class:`Sample`): real images - Set5 LR/HR pairs from ``../shared`` when it
  exists (``$EDGESR_SHARED`` overrides), else crops of the package sample images
  (:mod:`edgesr.sample_images`) with MATLAB-bicubic LR versions - plus smooth random
  images at several sizes including odd, non-square ones. "Smooth" random images
  (bicubic-upsampled uniform noise plus a little Gaussian noise) look like natural images
  to the network; pure uniform noise (``random_kind="uniform"``) drives unclamped models
  far outside [0, 1] (outputs up to ~34 for a real ECBSR checkpoint), where two correct
  fp32 backends differ by up to ~6e-5 through summation order alone.
* Metrics per sample (:class:`SampleStats`): max / mean / p99 |difference|, PSNR and SSIM
  between the outputs, share of values whose 8-bit rendering differs, and, when the sample
  has ground truth, Y-channel PSNR/SSIM of both sides against it (BasicSR protocol,
  border = scale).
* Tolerances (:class:`Tolerance`) default by the test side's precision (``PRESETS``):
  fp32 max |diff| <= 1e-5; fp16 max |diff| <= 4e-3 (~8 fp16 steps at 1.0) and PSNR vs the
  reference >= 50 dB; bf16 (3 fewer mantissa bits than fp16: 8x the step, 18 dB) max |diff|
  <= 3.2e-2 and PSNR >= 32 dB; int8: at most 0.3 dB of Y-PSNR lost against
  ground truth (samples with ground truth only). For int8 the difference to the reference
  (max abs, PSNR vs fp32) is information, not a gate: INT8 is judged by the one criterion its
  quantizer uses (the drop against ground truth on natural images), see docs/int8.md.
* A failing comparison gets a heatmap (``heatmap_dir``) and, when both sides can be seen
  as ONNX graphs, the first diverging node (:func:`first_divergence`, a k-ary search over
  the test graph's topological order that exposes a few tensors per round).

The inputs live in `edgesr.parity_samples`, the graph search in `edgesr.divergence`, the heatmap
in `edgesr.heatmap`; this module compares and judges, and re-exports their names.

Over 500 lines on purpose: comparison and judging; inputs, graph divergence and heatmaps already
live in their own modules.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .divergence import Divergence, first_divergence, matched_tensors
from .errors import ParityError
from .heatmap import save_heatmap
from .parity_samples import (  # noqa: F401
    DEFAULT_SIZES,
    Sample,
    default_samples,
    folder_samples,
    package_samples,
    random_samples,
    shared_dir,
    testset_samples,
)
from .probe_inputs import random_image

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


# ---- tolerances ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """Limits a comparison must meet; None disables a check. Differences are in output units."""

    max_abs: float | None = None
    mean_abs: float | None = None
    p99_abs: float | None = None
    min_psnr: float | None = None  # dB between the two outputs (peak = data range)
    min_ssim: float | None = None
    max_diff8_share: float | None = None  # share of values whose 8-bit value differs
    max_gt_psnr_drop: float | None = None  # dB: reference's PSNR vs ground truth minus the test's

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerance":
        try:
            return PRESETS[precision]
        except KeyError:
            raise ParityError(f"no default tolerance for precision {precision!r}; "
                              f"known: {', '.join(PRESETS)}") from None

    def merged(self, **overrides: float | None) -> "Tolerance":
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


PRESETS: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-5),
    "fp16": Tolerance(max_abs=4e-3, min_psnr=50.0),
    "bf16": Tolerance(max_abs=3.2e-2, min_psnr=32.0),  # fp16's limits scaled by bf16's 8x coarser step
    "int8": Tolerance(max_gt_psnr_drop=0.3),
}
# Relative per-tensor error that counts as "diverged" when localising (see first_divergence).
DIVERGENCE_RTOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 0.1, "int8": 0.1}


# ---- inputs ----------------------------------------------------------------------------------


# ---- results ---------------------------------------------------------------------------------

@dataclass
class SampleStats:
    name: str
    input_shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    p99_abs: float
    psnr: float  # between the two outputs
    ssim: float | None  # None when the output is smaller than the 11x11 window
    diff8_share: float
    ref_psnr_gt: float | None = None
    test_psnr_gt: float | None = None
    ref_ssim_gt: float | None = None
    test_ssim_gt: float | None = None


@dataclass
class Comparison:
    reference: str
    test: str
    precision: str
    tolerance: Tolerance
    samples: list[SampleStats]
    failures: list[str] = field(default_factory=list)
    divergence: Divergence | None = None
    divergence_note: str = ""
    heatmap: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max(s.max_abs for s in self.samples)

    @property
    def mean_abs(self) -> float:
        return float(np.mean([s.mean_abs for s in self.samples]))

    @property
    def p99_abs(self) -> float:
        return max(s.p99_abs for s in self.samples)

    @property
    def psnr(self) -> float:
        return min(s.psnr for s in self.samples)

    @property
    def ssim(self) -> float | None:
        v = [s.ssim for s in self.samples if s.ssim is not None]
        return min(v) if v else None

    @property
    def diff8_share(self) -> float:
        return max(s.diff8_share for s in self.samples)

    def _gt(self, attr: str) -> float | None:
        v = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return float(np.mean(v)) if v else None

    @property
    def ref_psnr_gt(self) -> float | None:
        return self._gt("ref_psnr_gt")

    @property
    def test_psnr_gt(self) -> float | None:
        return self._gt("test_psnr_gt")

    @property
    def gt_psnr_drop(self) -> float | None:
        r, t = self.ref_psnr_gt, self.test_psnr_gt
        return None if r is None or t is None else r - t

    @property
    def worst_sample(self) -> str:
        return max(self.samples, key=lambda s: s.max_abs).name

    def summary(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "p99_abs": self.p99_abs, "psnr": self.psnr,
                "ssim": self.ssim, "diff8_share": self.diff8_share, "ref_psnr_gt": self.ref_psnr_gt,
                "test_psnr_gt": self.test_psnr_gt, "gt_psnr_drop": self.gt_psnr_drop,
                "worst_sample": self.worst_sample}

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "test": self.test, "precision": self.precision, "ok": self.ok,
                "failures": list(self.failures), "tolerance": self.tolerance.to_dict(), **self.summary(),
                "first_divergence": asdict(self.divergence) if self.divergence else None,
                "divergence_note": self.divergence_note, "heatmap": self.heatmap,
                "samples": [_stats_dict(s) for s in self.samples]}


@dataclass
class ParityReport:
    reference: str
    comparisons: list[Comparison]
    samples: list[str]
    scale: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reference": self.reference, "scale": self.scale, "samples": list(self.samples),
                "comparisons": [c.to_dict() for c in self.comparisons]}

    def to_markdown(self) -> str:
        lines = [f"## Parity vs `{self.reference}` ({'PASS' if self.ok else 'FAIL'})", "",
                 f"{len(self.samples)} inputs: {', '.join(self.samples)}", "",
                 "| test | precision | result | max abs | mean abs | p99 abs | PSNR (dB) | SSIM | 8-bit diff "
                 "| PSNR-Y ref/test vs GT | first divergence |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.comparisons:
            gt = (f"{c.ref_psnr_gt:.3f} / {c.test_psnr_gt:.3f}" if c.ref_psnr_gt is not None
                  and c.test_psnr_gt is not None else "-")
            div = f"`{c.divergence.node}` ({c.divergence.op_type})" if c.divergence else (c.divergence_note or "-")
            lines.append(f"| `{c.test}` | {c.precision} | {'ok' if c.ok else 'FAIL'} | {c.max_abs:.3g} | "
                         f"{c.mean_abs:.3g} | {c.p99_abs:.3g} | {_fmt_db(c.psnr)} | "
                         f"{'-' if c.ssim is None else f'{c.ssim:.6f}'} | {100 * c.diff8_share:.3f}% | {gt} | {div} |")
        for c in self.comparisons:
            if c.failures:
                lines += ["", f"**{c.test}** failed: " + "; ".join(c.failures)]
                if c.heatmap:
                    lines.append(f"![|difference| {c.test}]({c.heatmap})")
        return "\n".join(lines) + "\n"


def _fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.2f}"


def _stats_dict(s: SampleStats) -> dict[str, Any]:
    d = asdict(s)
    d["input_shape"] = list(s.input_shape)
    return d


# ---- comparison --------------------------------------------------------------------------------

def runner_precision(runner) -> str:
    """fp32 / fp16 / bf16 / int8 of a runner: its ``precision`` attribute, model metadata, graph or name."""
    p = getattr(runner, "precision", None)
    if p in PRECISIONS:
        return p
    meta = getattr(runner, "metadata", None)  # e.g. TensorRT engine sidecars
    if isinstance(meta, dict) and meta.get("precision") in PRECISIONS:
        return meta["precision"]
    path = getattr(runner, "path", None)
    if path is not None and Path(path).suffix.lower() == ".onnx":
        # the graph is authoritative: quantizers copy the fp32 model's metadata unchanged
        try:
            from .export.graph import load

            g = load(path).graph
            ops = {n.op_type for n in g.node}
            if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"}:
                return "int8"
            if any(i.data_type == 10 for i in g.initializer) or any(
                    i.type.tensor_type.elem_type == 10 for i in g.input):
                return "fp16"
            return "fp32"
        except Exception:  # noqa: BLE001 - fall through to the other hints
            pass
    sess = getattr(runner, "session", None)
    if sess is not None and hasattr(sess, "get_modelmeta"):
        m = sess.get_modelmeta().custom_metadata_map
        if m.get("precision") in PRECISIONS:
            return m["precision"]
    if sess is not None and "float16" in sess.get_inputs()[0].type:
        return "fp16"
    dtype = str(getattr(runner, "dtype", ""))
    if "bfloat16" in dtype:
        return "bf16"
    if "float16" in dtype:
        return "fp16"
    name = str(getattr(runner, "name", "")).lower()
    for p in ("int8", "fp16"):
        if p in name:
            return p
    return "fp32"


def sample_stats(name: str, shape, ref: np.ndarray, out: np.ndarray, hr: np.ndarray | None, scale: int,
                 data_range: float = 1.0, gt_cache: dict | None = None) -> SampleStats:
    """Metrics between one pair of outputs (NCHW, batch 1 or more: batch item 0 for SSIM/GT)."""
    from .metrics import psnr, psnr_y, ssim, ssim_y

    a: np.ndarray = ref.astype(np.float64)
    b: np.ndarray = out.astype(np.float64)
    d = np.abs(a - b)
    a0, b0 = a[0].transpose(1, 2, 0), b[0].transpose(1, 2, 0)
    s = ssim(a0, b0, data_range) if min(a0.shape[:2]) >= 11 else None
    lo = 0.0
    q = lambda v: np.floor(np.clip((v - lo) / data_range, 0, 1) * 255 + 0.5)  # noqa: E731
    st = SampleStats(name=name, input_shape=tuple(int(v) for v in shape), max_abs=float(d.max()),
                     mean_abs=float(d.mean()), p99_abs=float(np.percentile(d, 99)), psnr=float(psnr(a, b, data_range)),
                     ssim=None if s is None else float(s), diff8_share=float(np.mean(q(a) != q(b))))
    if hr is not None and hr.shape == a0.shape and min(hr.shape[:2]) > 2 * scale + 11:
        sr_a, sr_b = np.clip(a0, 0, 1), np.clip(b0, 0, 1)
        key = (name, "ref")
        if gt_cache is not None and key in gt_cache:
            st.ref_psnr_gt, st.ref_ssim_gt = gt_cache[key]
        else:
            st.ref_psnr_gt, st.ref_ssim_gt = float(psnr_y(sr_a, hr, scale)), float(ssim_y(sr_a, hr, scale))
            if gt_cache is not None:
                gt_cache[key] = (st.ref_psnr_gt, st.ref_ssim_gt)
        st.test_psnr_gt, st.test_ssim_gt = float(psnr_y(sr_b, hr, scale)), float(ssim_y(sr_b, hr, scale))
    return st


def judge(c: Comparison) -> list[str]:
    """Reasons a comparison fails its tolerance ([] when it passes)."""
    t, f = c.tolerance, []
    if not all(math.isfinite(s.max_abs) for s in c.samples):
        return ["output contains NaN/Inf"]
    if t.max_abs is not None and c.max_abs > t.max_abs:
        f.append(f"max abs {c.max_abs:.3g} > {t.max_abs:g} (worst: {c.worst_sample})")
    if t.mean_abs is not None and c.mean_abs > t.mean_abs:
        f.append(f"mean abs {c.mean_abs:.3g} > {t.mean_abs:g}")
    if t.p99_abs is not None and c.p99_abs > t.p99_abs:
        f.append(f"p99 abs {c.p99_abs:.3g} > {t.p99_abs:g}")
    if t.min_psnr is not None and c.psnr < t.min_psnr:
        worst = min(c.samples, key=lambda s: s.psnr).name
        f.append(f"PSNR vs reference {c.psnr:.2f} dB < {t.min_psnr:g} dB (worst: {worst})")
    if t.min_ssim is not None and c.ssim is not None and c.ssim < t.min_ssim:
        f.append(f"SSIM vs reference {c.ssim:.6f} < {t.min_ssim:g}")
    if t.max_diff8_share is not None and c.diff8_share > t.max_diff8_share:
        f.append(f"{100 * c.diff8_share:.3f}% of 8-bit values differ > {100 * t.max_diff8_share:g}%")
    drop = c.gt_psnr_drop
    if t.max_gt_psnr_drop is not None and drop is not None and drop > t.max_gt_psnr_drop:
        f.append(f"PSNR-Y vs ground truth drops {drop:.3f} dB > {t.max_gt_psnr_drop:g} dB")
    return f


def detect_scale(runner, channels: int = 3, size: int = 12) -> int:
    """Upscaling factor of `runner`, from one `size` x `size` input (use one the model accepts:
    :func:`size_rules`)."""
    x = random_image((1, channels, size, size), seed=99)
    y = _run(runner, x)
    if y.ndim != 4 or y.shape[2] % size or y.shape[2] // size != y.shape[3] // size:
        raise ParityError(f"{runner.name}: output shape {y.shape} for input {x.shape} is not an integer upscale")
    return y.shape[2] // size


def size_rules(runners: Sequence[Any]) -> tuple[int, int]:
    """(min_size, multiple) every runner accepts: from each runner's ``spec`` when it has one,
    else from its ONNX graph (edgesr.locality); (1, 1) when neither says."""
    min_size, multiple = 1, 1
    for r in runners:
        spec = getattr(r, "spec", None)
        if spec is not None:
            min_size, multiple = max(min_size, int(spec.min_size)), math.lcm(multiple, int(spec.size_multiple))
            continue
        path = getattr(r, "path", None)
        if path is not None and Path(path).suffix.lower() == ".onnx":
            from .errors import EdgesrError
            from .locality import analyze_onnx

            try:
                g = analyze_onnx(path)
            except EdgesrError:
                continue
            min_size = max(min_size, g.min_size or 1)
    return min_size, multiple


def fit_sizes(sizes: Sequence[tuple[int, int]], min_size: int, multiple: int) -> list[tuple[int, int]]:
    from .tiling import fit_size

    return [fit_size(h, w, min_size, multiple) for h, w in sizes]


def check_parity(runners: Sequence[Any], samples: Sequence[Sample] | None = None, *,
                 tolerances: Tolerance | Mapping[str, Tolerance] | None = None,
                 overrides: Mapping[str, float | None] | None = None, scale: int | None = None,
                 sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, heatmap_dir: str | Path | None = None,
                 localize: bool = True, data_range: float = 1.0, probe: int = 4) -> ParityReport:
    """Compare runners[1:] against runners[0] on `samples` (default: :func:`default_samples`).

    tolerances: one Tolerance for every test side, or {runner name: Tolerance}; sides not
    covered use ``PRESETS[runner_precision(runner)]``. overrides: Tolerance fields replaced
    in every test side's tolerance (e.g. ``{"max_abs": 1e-4}``).
    """
    from .progress import progress

    with progress("parity", None, "model runs") as bar:
        return _check_parity(runners, samples, tolerances=tolerances, overrides=overrides, scale=scale, sizes=sizes,
                             heatmap_dir=heatmap_dir, localize=localize, data_range=data_range, probe=probe, bar=bar)


def _check_parity(runners: Sequence[Any], samples: Sequence[Sample] | None, *, tolerances, overrides, scale, sizes,
                  heatmap_dir, localize: bool, data_range: float, probe: int, bar) -> ParityReport:
    if len(runners) < 2:
        raise ParityError("parity needs a reference and at least one runner to compare")
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ParityError(f"runner names must be distinct, got {names}")
    ref = runners[0]
    scale = scale or detect_scale(ref)
    if samples is None:
        samples = default_samples(scale, sizes)
    if not samples:
        raise ParityError("no inputs to compare on")
    comps: list[Comparison] = []
    gt_cache: dict = {}
    bar.set_total(len(samples) * len(runners))
    ref_out = {s.name: _run(ref, s.lr, bar) for s in samples}
    for r in runners[1:]:
        precision = runner_precision(r)
        if isinstance(tolerances, Tolerance):
            tol = tolerances
        elif tolerances is not None and r.name in tolerances:
            tol = tolerances[r.name]
        else:
            tol = Tolerance.for_precision(precision)
        tol = tol.merged(**(overrides or {}))
        stats, worst = [], None
        for s in samples:
            out = _run(r, s.lr, bar)
            if out.shape != ref_out[s.name].shape:
                raise ParityError(f"{r.name}: output shape {out.shape} != {ref.name} {ref_out[s.name].shape} "
                                  f"on {s.name}")
            st = sample_stats(s.name, s.lr.shape, ref_out[s.name], out, s.hr, scale, data_range, gt_cache)
            stats.append(st)
            if worst is None or not st.max_abs <= worst[0]:
                worst = (st.max_abs, s, out)
        if worst is None:  # unreachable: `samples` is not empty
            raise ParityError("no inputs to compare on")
        c = Comparison(ref.name, r.name, precision, tol, stats)
        c.failures = judge(c)
        if c.failures and heatmap_dir is not None:
            c.heatmap = str(save_heatmap(ref_out[worst[1].name], worst[2],
                                         Path(heatmap_dir) / f"{len(comps):02d}_{_slug(_base(r.name))}_vs_{_slug(_base(ref.name))}.png",
                                         title=f"{r.name} vs {ref.name} on {worst[1].name}"))
        if c.failures and localize:
            try:
                c.divergence = localize_divergence(ref, r, worst[1].lr, precision, probe=probe, sample=worst[1].name)
                if c.divergence is None:
                    c.divergence_note = ("no shared tensor diverges on the worst input when both graphs run "
                                         "unfused (ORT basic optimizations): the difference arises in the "
                                         "backend's fused kernels or beyond the shared graph")
            except ParityError as e:
                c.divergence_note = str(e)
        comps.append(c)
    return ParityReport(ref.name, comps, [s.name for s in samples], scale)


def _run(runner, x: np.ndarray, bar=None) -> np.ndarray:
    try:
        y = runner.run(x)
        if bar is not None:
            bar.update()
    except ParityError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend failure is reported by runner name
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ParityError(f"{runner.name} failed on input {tuple(x.shape)}: {msg}") from None
    return np.asarray(y, dtype=np.float32)


def _base(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:60] or "runner"


# ---- first divergence ----------------------------------------------------------------------------

def onnx_source(runner, tmp_dir: Path | None = None, scale: int | None = None):
    """The ONNX graph behind a runner: an .onnx path, or a fresh fp32 export of a torch module."""
    path = getattr(runner, "path", None)
    if path is not None and Path(path).suffix.lower() == ".onnx":
        return Path(path)
    module = getattr(runner, "module", None)
    if module is not None and tmp_dir is not None:
        from .export.onnx import export_onnx
        from .spec import Spec

        spec = getattr(runner, "spec", None)
        if spec is None:
            spec = Spec(arch="unknown", scale=scale or 1)
        out = Path(tmp_dir) / f"{_slug(runner.name)}.onnx"
        export_onnx(module, spec, out, check=False)
        return out
    if path is not None:
        raise ParityError(f"{runner.name}: cannot read intermediate tensors of {Path(path).name} "
                          "(only .onnx graphs and PyTorch modules can be localised)")
    raise ParityError(f"{runner.name}: no ONNX graph to localise the divergence in")


def localize_divergence(ref_runner, test_runner, x: np.ndarray, precision: str = "fp32", *, probe: int = 4,
                        sample: str = "") -> Divergence | None:
    with tempfile.TemporaryDirectory(prefix="edgesr-parity-") as tmp:
        scale = None
        if getattr(ref_runner, "path", None) is None or getattr(test_runner, "path", None) is None:
            scale = int(_run(ref_runner, x).shape[2] // x.shape[2])
        ref_src = onnx_source(ref_runner, Path(tmp), scale)
        test_src = onnx_source(test_runner, Path(tmp), scale)
        return first_divergence(ref_src, test_src, x, rtol=DIVERGENCE_RTOL.get(precision, 1e-4), probe=probe,
                                sample=sample)


# ---- heatmap -----------------------------------------------------------------------------------


__all__ = [
    "Tolerance", "PRESETS", "Sample", "SampleStats", "Comparison", "ParityReport", "Divergence",
    "check_parity", "default_samples", "random_samples", "random_image", "testset_samples", "folder_samples",
    "package_samples", "runner_precision", "first_divergence", "localize_divergence", "matched_tensors",
    "save_heatmap", "shared_dir", "judge", "sample_stats",
]
