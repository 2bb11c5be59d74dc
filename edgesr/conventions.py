"""Conventions found by behaviour: what a model expects is measured, not assumed.

* Geometry (:func:`measure_geometry`): scale, the H/W multiple the model needs and its
  smallest input, from the output shapes of a few forward passes on natural-looking inputs.
* Input convention (:func:`infer_convention`): input range (1 or 255), mean shift (DIV2K
  RGB mean subtracted before / added after) and colour order (RGB/BGR). Each candidate runs
  the model, through a :class:`ConventionAdapter`, on natural LR images (Set5 LR from
  ``../shared`` when present, else the package sample photos, LR made with MATLAB bicubic);
  its output is scored against the HR image and against a bicubic upscale of the same LR
  input. The candidate whose output gains the most over bicubic wins (the simpler one when
  two are within ``PREFER_MARGIN_DB``); when no candidate beats bicubic the model is refused
  (:class:`ImplausibleOutput`) naming what was tried. A trained SR model beats bicubic on
  natural images by decibels; a wrong range or an untrained model falls far below it.

Every module edgesr then handles takes NCHW RGB in [0, 1] (docs/DEVELOPING.md): the adapter
converts to the model's own convention inside the graph, so the ONNX file, INT8 and parity
all see edgesr's convention, and the manifest records what was found.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ImplausibleOutput, ScaleMismatch, UserCodeError

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
# Set to 1 to let convert/eval go on with implausible (e.g. untrained) models, as the command-line
# flags --allow-implausible / --allow-below-bicubic do; the test suite sets it for the tests that
# convert untrained variants to exercise other machinery.
ENV_ALLOW = "EDGESR_ALLOW_IMPLAUSIBLE"


def checks_enabled() -> bool:
    """False when $EDGESR_ALLOW_IMPLAUSIBLE is set to 1/true/yes."""
    return os.environ.get(ENV_ALLOW, "").strip().lower() not in ("1", "true", "yes")

RANGES = (1.0, 255.0)
# A trained SR model beats bicubic on natural images; the winner must gain more than this (dB, Y).
MIN_GAIN_DB = 0.0
# Simpler conventions (no mean shift, RGB) win unless another is better by more than this.
PREFER_MARGIN_DB = 0.05
# Colour order barely changes a natural image's PSNR (SR networks are close to colour-symmetric;
# a weakly trained one can even score BGR 0.2 dB higher than the RGB it was trained on): BGR wins
# only by a clear margin.
BGR_MARGIN_DB = 0.5
# Two conventions whose outputs differ less than this (max abs, [0, 1] units) are equivalent
# for this model (e.g. a bias-free, positively homogeneous network does not care about range).
EQUIVALENT_MAX_ABS = 2e-3
CROP = 48  # LR crop side for the convention trials (keeps slow models fast)
PROBE_HW = (37, 45)  # odd, non-square probe size for geometry
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
MIN_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@dataclass(frozen=True)
class Convention:
    input_range: float = 1.0
    mean_shift: bool = False
    color_order: str = "RGB"

    @property
    def label(self) -> str:
        parts = [f"range {self.input_range:g}"]
        if self.mean_shift:
            parts.append("mean-shifted")
        parts.append(self.color_order)
        return ", ".join(parts)

    @property
    def identity(self) -> bool:
        return self.input_range == 1.0 and not self.mean_shift and self.color_order == "RGB"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_adapter(module, conv: Convention, native_range: float = 1.0):
    """`module` seen through edgesr's convention ([0, 1] RGB in and out)."""
    import torch
    from torch import nn

    class ConventionAdapter(nn.Module):
        """x in [0, 1] RGB -> the model's convention -> model -> back to [0, 1] RGB."""

        def __init__(self, model: nn.Module, factor: float, mean: tuple | None, bgr: bool):
            super().__init__()
            self.model, self.factor, self.bgr = model, float(factor), bool(bgr)
            self.register_buffer("mean", torch.tensor(mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1), persistent=False)
            self.shift = mean is not None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous()  # the layout authors feed (a channels-last input breaks some .view() calls)
            if self.bgr:
                x = torch.cat([x[:, 2:3], x[:, 1:2], x[:, 0:1]], dim=1)
            if self.shift:
                x = x - self.mean.to(x.dtype)
            if self.factor != 1.0:
                x = x * self.factor
            y = self.model(x)
            if self.factor != 1.0:
                y = y / self.factor
            if self.shift:
                y = y + self.mean.to(y.dtype)
            if self.bgr:
                y = torch.cat([y[:, 2:3], y[:, 1:2], y[:, 0:1]], dim=1)
            return y

    return ConventionAdapter(module, conv.input_range / native_range, DIV2K_MEAN if conv.mean_shift else None,
                             conv.color_order == "BGR").eval()


# ---- geometry ------------------------------------------------------------------------------------

@dataclass
class Geometry:
    scale: int
    size_multiple: int = 1
    min_size: int = 1
    in_channels: int = 3
    out_channels: int = 3
    tried: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _forward(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        y = module(torch.from_numpy(x))
    if isinstance(y, (tuple, list)):  # some models return (sr, aux)
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise UserCodeError(f"forward() returned a {type(y).__name__}, not a tensor")
    return y.float().cpu().numpy()


def _try_shape(module, h: int, w: int, channels: int = 3, seed: int = 5) -> tuple[int | None, int, str]:
    """(scale or None, out channels, note) of one forward pass at h x w."""
    from .probe_inputs import random_image

    x = random_image((1, channels, h, w), seed=seed)
    try:
        y = _forward(module, x)
    except UserCodeError:
        raise
    except Exception as e:  # noqa: BLE001 - user code may fail on a size it cannot take
        return None, 0, f"{h}x{w}: {type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    if y.ndim != 4 or y.shape[0] != 1:
        return None, 0, f"{h}x{w}: output shape {tuple(y.shape)} is not 1xCxHxW"
    oh, ow = y.shape[2], y.shape[3]
    if oh % h or ow % w or oh // h != ow // w or oh // h < 1:
        return None, int(y.shape[1]), f"{h}x{w}: output {oh}x{ow} is not an integer upscale"
    if not np.isfinite(y).all():
        return None, int(y.shape[1]), f"{h}x{w}: output has NaN/Inf"
    return oh // h, int(y.shape[1]), f"{h}x{w}: x{oh // h}"


def measure_geometry(module, expected_scale: int | None = None, error_roots: Sequence = ()) -> Geometry:
    """Scale, H/W multiple and minimum size from forward passes (see the module docstring)."""
    tried: list[str] = []
    found = None
    for m in MULTIPLES:
        h, w = (-(-d // m) * m for d in PROBE_HW)
        s, oc, note = _try_shape(module, h, w)
        tried.append(note)
        if s is not None:
            found = (m, s, oc)
            break
    if found is None:
        raise UserCodeError("the model fails on every input size tried: " + "; ".join(tried[:3])
                            + _forward_location(module, error_roots))
    m, s, oc = found
    if expected_scale is not None and s != expected_scale:
        raise ScaleMismatch(f"the model upscales x{s}, not x{expected_scale} as given")
    min_size = -(-PROBE_HW[0] // m) * m
    for k in MIN_SIZES:
        side = -(-k // m) * m
        if side >= min_size:
            break
        ss, _, note = _try_shape(module, side, side)
        if ss == s:
            min_size = side
            break
        tried.append(note)
    return Geometry(scale=s, size_multiple=m, min_size=min_size, out_channels=oc, tried=tried)


def _forward_location(module, roots: Sequence) -> str:
    """' (at file.py:LINE in func)' of the user's code where a plain forward pass fails."""
    from .probe_inputs import random_image
    from .user_frames import user_frame

    if not roots:
        return ""
    try:
        _forward(module, random_image((1, 3, 48, 48), seed=5))
    except Exception as e:  # noqa: BLE001
        w = user_frame(e, list(roots))
        return f" (at {w})" if w else ""
    return ""


# ---- input convention ----------------------------------------------------------------------------

@dataclass
class TrialSample:
    name: str
    lr: np.ndarray  # 1x3xHxW [0, 1]
    hr: np.ndarray  # HxWx3 [0, 1]
    bicubic: np.ndarray  # HxWx3 MATLAB-bicubic upscale of lr


@dataclass
class Trial:
    convention: Convention
    psnr_y: float  # mean over samples, vs HR
    gain_db: float  # psnr_y minus bicubic's psnr_y
    psnr_vs_bicubic: float  # mean Y-PSNR between the output and the bicubic upscale
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"convention": self.convention.to_dict(), "label": self.convention.label,
                "psnr_y": _r(self.psnr_y), "gain_db": _r(self.gain_db),
                "psnr_vs_bicubic": _r(self.psnr_vs_bicubic), "error": self.error}


@dataclass
class ConventionReport:
    chosen: Convention | None
    trials: list[Trial]
    bicubic_psnr_y: float
    samples: list[str]
    source: str  # "Set5 LR" | "package sample photos"
    given: bool = False  # the convention was given (--input-range), not searched
    equivalent: list[str] = field(default_factory=list)  # conventions with the same output

    @property
    def best(self) -> Trial | None:
        return next((t for t in self.trials if t.convention == self.chosen), None)

    @property
    def plausible(self) -> bool:
        b = self.best
        return b is not None and b.error is None and b.gain_db > MIN_GAIN_DB

    def describe_trials(self) -> str:
        return "; ".join(f"{t.convention.label}: " + (t.error or f"{t.psnr_y:.2f} dB ({t.gain_db:+.2f} vs bicubic)")
                         for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.to_dict() if self.chosen else None,
                "label": self.chosen.label if self.chosen else None, "plausible": self.plausible,
                "given": self.given, "bicubic_psnr_y": _r(self.bicubic_psnr_y), "samples": self.samples,
                "source": self.source, "equivalent": self.equivalent, "min_gain_db": MIN_GAIN_DB,
                "trials": [t.to_dict() for t in self.trials]}


def _r(v: float) -> float:
    return round(float(v), 4) if np.isfinite(v) else float(v)


def trial_samples(scale: int, multiple: int = 1, min_size: int = 1, crop: int = CROP,
                  limit: int = 3) -> tuple[list[TrialSample], str]:
    """Natural LR/HR pairs: Set5 LR (../shared) when present, else the package sample photos."""
    from .parity import package_samples, shared_dir, testset_samples
    from .resize import imresize

    root = shared_dir()
    set5 = root / "testsets" / "Set5" if root else None
    if set5 is not None and (set5 / "LR_bicubic" / f"X{scale}").is_dir():
        base, source = testset_samples(set5, scale, limit), "Set5 LR"
    else:
        base, source = package_samples(scale, limit=min(limit, 3), hr_size=crop), "package sample photos"
    out = []
    for s in base:
        _, _, h, w = s.lr.shape
        ch = max(min_size, (min(h, crop) // multiple) * multiple)
        cw = max(min_size, (min(w, crop) // multiple) * multiple)
        if ch > h or cw > w or s.hr is None:  # (both sources carry HR)
            continue
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        lr = np.ascontiguousarray(s.lr[:, :, y0:y0 + ch, x0:x0 + cw])
        hr = np.ascontiguousarray(s.hr[y0 * scale:(y0 + ch) * scale, x0 * scale:(x0 + cw) * scale])
        bic = imresize(lr[0].transpose(1, 2, 0).astype(np.float64), scale)
        out.append(TrialSample(s.name, lr, hr, np.clip(bic, 0.0, 1.0)))
    if not out:
        raise UserCodeError(f"no natural images to measure the model's conventions on (min size {min_size})")
    return out, source


def _score(module, conv: Convention, samples: list[TrialSample], scale: int, native_range: float,
           outputs: dict) -> Trial:
    from .metrics import psnr_y

    adapter = make_adapter(module, conv, native_range)
    ps, pb = [], []
    outs = []
    try:
        for s in samples:
            y = _forward(adapter, s.lr)[0].transpose(1, 2, 0)
            if y.shape != s.hr.shape:
                return Trial(conv, float("nan"), float("-inf"), float("nan"),
                             f"output {y.shape[:2]} != HR {s.hr.shape[:2]}")
            if not np.isfinite(y).all():
                return Trial(conv, float("nan"), float("-inf"), float("nan"), "output has NaN/Inf")
            yc = np.clip(y, 0.0, 1.0)
            outs.append(yc)
            ps.append(psnr_y(yc, s.hr, scale))
            pb.append(psnr_y(yc, s.bicubic, scale))
    except Exception as e:  # noqa: BLE001 - user code
        return Trial(conv, float("nan"), float("-inf"), float("nan"),
                     f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}")
    outputs[conv] = outs
    bic = float(np.mean([psnr_y(s.bicubic, s.hr, scale) for s in samples]))
    return Trial(conv, float(np.mean(ps)), float(np.mean(ps)) - bic, float(np.mean(pb)))


def infer_convention(module, scale: int, *, multiple: int = 1, min_size: int = 1, given: Convention | None = None,
                     native_range: float = 1.0, ranges: Sequence[float] = RANGES, quick: bool = False) -> ConventionReport:
    """Try the candidate conventions (or only `given`) and pick the plausible winner. quick: two
    32x32 crops, and mean shift / BGR only when no range alone is plausible (tests' budget)."""
    from .metrics import psnr_y

    samples, source = trial_samples(scale, multiple, min_size, **({"crop": 32, "limit": 2} if quick else {}))
    bic = float(np.mean([psnr_y(s.bicubic, s.hr, scale) for s in samples]))
    outputs: dict = {}
    if given is not None:
        t = _score(module, given, samples, scale, native_range, outputs)
        return ConventionReport(given, [t], bic, [s.name for s in samples], source, given=True)
    # Range first, then a mean shift, then the colour order: each stage keeps the simpler choice
    # unless the other gains more than PREFER_MARGIN_DB. When nothing is plausible yet, the
    # remaining combinations are tried too before giving up.
    trials = [_score(module, Convention(r), samples, scale, native_range, outputs) for r in ranges]
    best = _pick(trials)
    if quick and best.gain_db > MIN_GAIN_DB:
        equivalent = [t.convention.label for t in trials if t is not best and _same(outputs, t.convention,
                                                                                      best.convention)]
        return ConventionReport(best.convention, trials, bic, [s.name for s in samples], source, equivalent=equivalent)
    shifted = _score(module, Convention(best.convention.input_range, True), samples, scale, native_range, outputs)
    trials.append(shifted)
    if shifted.error is None and shifted.gain_db > best.gain_db + PREFER_MARGIN_DB:
        best = shifted
    if best.gain_db <= MIN_GAIN_DB:
        for r in ranges:
            if r != best.convention.input_range:
                t = _score(module, Convention(r, True), samples, scale, native_range, outputs)
                trials.append(t)
                if t.error is None and t.gain_db > best.gain_db + PREFER_MARGIN_DB:
                    best = t
    bgr = _score(module, Convention(best.convention.input_range, best.convention.mean_shift, "BGR"), samples,
                 scale, native_range, outputs)
    trials.append(bgr)
    if bgr.error is None and bgr.gain_db > best.gain_db + BGR_MARGIN_DB:
        best = bgr
    equivalent = [t.convention.label for t in trials if t is not best and _same(outputs, t.convention,
                                                                                  best.convention)]
    return ConventionReport(best.convention, trials, bic, [s.name for s in samples], source,
                            equivalent=equivalent)


def _pick(trials: list[Trial]) -> Trial:
    """Best gain; a mean-shifted winner gives way to an unshifted one within PREFER_MARGIN_DB."""
    ok = [t for t in trials if t.error is None]
    if not ok:
        return trials[0]
    top = max(ok, key=lambda t: t.gain_db)
    if top.convention.mean_shift:
        plain = [t for t in ok if not t.convention.mean_shift and t.gain_db >= top.gain_db - PREFER_MARGIN_DB]
        if plain:
            return max(plain, key=lambda t: t.gain_db)
    return top


def _same(outputs: dict, a: Convention, b: Convention) -> bool:
    if a not in outputs or b not in outputs:
        return False
    return all(float(np.max(np.abs(x - y))) < EQUIVALENT_MAX_ABS for x, y in zip(outputs[a], outputs[b]))


def require_plausible(report: ConventionReport, what: str, hint: str = "") -> None:
    """Refuse (ImplausibleOutput) when the chosen convention does not beat bicubic."""
    if report.plausible:
        return
    tried = report.describe_trials()
    raise ImplausibleOutput(
        f"{what}: no input convention gives a plausible super-resolution on {report.source} "
        f"(bicubic {report.bicubic_psnr_y:.2f} dB; tried {tried}); the weights do not fit this code or "
        f"convention, or are untrained{hint}")


def native_range_of(module) -> float:
    """The input range a registry module scales to internally (``img_range``), else 1."""
    v = getattr(module, "img_range", 1.0)
    return float(v) if isinstance(v, (int, float)) and v > 0 else 1.0


def parse_input_range(text: str | float | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise UserCodeError(f"--input-range must be a positive number such as 1 or 255, got {text!r}")
    return v


def bicubic_psnr_y(testset, scale: int) -> float:
    """Mean Y-PSNR of a MATLAB-bicubic upscale of the test set's LR images (the floor any SR
    model must beat), with the same protocol as edgesr.evaluate."""
    from .datasets import crop_hr_to_lr, load_testset
    from .imaging import read_image
    from .metrics import psnr_y
    from .resize import imresize

    vals = []
    for pair in load_testset(testset, scale):
        lr = read_image(pair.lr_path).rgb
        hr = crop_hr_to_lr(read_image(pair.hr_path).rgb, lr, scale)
        sr = np.clip(imresize(lr.astype(np.float64), scale), 0.0, 1.0)
        vals.append(psnr_y(sr[:hr.shape[0], :hr.shape[1]], hr, scale))
    return float(np.mean(vals))


def require_beats_bicubic(psnr: float, testset, scale: int, what: str) -> float:
    """Refuse an evaluation whose mean PSNR-Y is below bicubic's on the same test set."""
    bic = bicubic_psnr_y(testset, scale)
    if not psnr > bic:
        raise ImplausibleOutput(
            f"{what}: mean PSNR-Y {psnr:.2f} dB is below bicubic's {bic:.2f} dB on this test set: the model's "
            f"input convention does not match its weights (for your own code pass --model FILE.py:NAME; "
            f"--input-range to force a range) or the weights are untrained")
    return bic
