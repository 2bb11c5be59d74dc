"""Calibration and evaluation data for INT8 post-training quantization.

Calibration patches are made the way the model sees real inputs: an HR crop of a photo
is downscaled by the model's scale with MATLAB-compatible bicubic (``edgesr.resize.imresize``,
antialiased, computed on the 8-bit image and rounded back to 8 bit as MATLAB does for
uint8 - the way DIV2K/Set5 ``LR_bicubic`` files were made), then mapped to the model's
value range and colour order (:class:`edgesr.spec.Spec`). Pillow's bicubic is used only if
``edgesr.resize`` is unavailable (:data:`RESAMPLER` says which one is in use).

The default images are the package sample photographs
(:func:`edgesr.sample_images.sample_images`), never a benchmark test set. They are split
in two disjoint groups: :data:`HELD_OUT_NAMES` form the evaluation set that the mixed
precision search tunes on (:func:`held_out_eval_set`, 192-px tiles of four photos, one of them
from matplotlib's sample data), the others feed calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import DatasetError, ImageError
from ..spec import Spec

# Sample images kept out of calibration and used as the mixed-precision evaluation set, cut into
# HELD_OUT_TILE-px HR tiles. Chosen by benchmarks/int8_heldout.py (docs/int8.md): three photos at one
# 512-px crop each passed graphs that lose 0.16-0.21 dB on Set5 (SPAN, RLFN) within a 0.10 dB budget;
# 192-px tiles of four photos weigh smooth and detailed regions alike, as Set5's small images do.
HELD_OUT_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "grace_hopper.jpg")
HELD_OUT_TILE = 192

_imresize: Callable[[np.ndarray, float], np.ndarray] | None
try:  # MATLAB-compatible bicubic (preferred)
    from ..resize import imresize as _imresize

    RESAMPLER = "edgesr.resize.imresize (MATLAB bicubic, antialiased, uint8 in/out)"
except ImportError:  # pragma: no cover - only without edgesr.resize
    _imresize = None
    RESAMPLER = "PIL.Image.resize(BICUBIC) (edgesr.resize unavailable)"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------- images

def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` (sorted); DatasetError if missing or empty."""
    d = Path(folder)
    if not d.exists():
        raise DatasetError(f"calibration folder {d} does not exist")
    if not d.is_dir():
        raise DatasetError(f"calibration folder {d} is not a folder")
    files = sorted((f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
                    and f.suffix.lower() in IMAGE_EXTENSIONS), key=lambda f: f.name)
    if not files:
        raise DatasetError(f"calibration folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files



class PatchSizeError(DatasetError):
    """The patch size does not fit the model's size rules, or no calibration image is large enough
    for it: a smaller patch may still work (the quantizer's 96 -> 48 px fallback)."""

def read_rgb_u8(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB (ImageError on unreadable files)."""
    try:
        from ..imaging import quantize, read_image
    except ImportError:  # pragma: no cover - only without edgesr.imaging
        return _read_rgb_u8_pil(path)
    return quantize(read_image(path).rgb, 8)


def _read_rgb_u8_pil(path: Path) -> np.ndarray:  # pragma: no cover - fallback
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types
        raise ImageError(f"{path}: cannot decode ({e})") from None


def bicubic_downscale(hr_u8: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HR (H, W multiples of `scale`) -> uint8 LR, bicubic 1/scale."""
    h, w = hr_u8.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {scale}")
    if _imresize is not None:
        return _imresize(hr_u8, 1.0 / scale)
    from PIL import Image  # pragma: no cover - fallback

    return np.asarray(Image.fromarray(hr_u8).resize((w // scale, h // scale), Image.BICUBIC))


def to_model_input(lr_u8: np.ndarray, spec: Spec) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 CxHxW in the model's value range and colour order."""
    x = lr_u8.astype(np.float32) / np.float32(255.0)
    if spec.in_channels == 1:  # Y of YCbCr (BT.601, MATLAB rgb2ycbcr) in [0, 1]
        x = ((16.0 + x @ np.array([65.481, 128.553, 24.966], dtype=np.float32)) / 255.0)[..., None]
    elif spec.in_channels != 3:
        raise DatasetError(f"cannot make {spec.in_channels}-channel inputs from RGB images")
    elif spec.color_order.upper() == "BGR":
        x = x[..., ::-1]
    elif spec.color_order.upper() != "RGB":
        raise DatasetError(f"unsupported colour order {spec.color_order!r} (RGB or BGR)")
    lo, hi = spec.value_range
    if (lo, hi) != (0.0, 1.0):
        x = lo + (hi - lo) * x
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class InputLevels:
    """The values an 8-bit picture takes at the model's input: ``lo + k * step``, k = 0..255.

    ``zero_code`` is the k of 0.0 (what zero padding means): an integer, or the grid is not used."""

    lo: float
    step: float
    zero_code: int


def input_levels(spec: Spec) -> InputLevels | None:
    """The 256-level grid of the model input made from an 8-bit RGB picture (:func:`to_model_input`),
    or None where the input is not such a grid (one Y channel: BT.601 Y of 8-bit RGB takes other values)
    or where 0 - the conv's zero padding - is not one of its levels (a range like [-1, 1])."""
    if spec.in_channels != 3:
        return None
    lo, hi = (float(v) for v in spec.value_range)
    step = (hi - lo) / 255.0
    if not step > 0:
        return None
    k0 = -lo / step
    if abs(k0 - round(k0)) > 1e-6 or not 0 <= round(k0) <= 255:
        return None
    return InputLevels(lo, step, int(round(k0)))


def from_model_output(y: np.ndarray, spec: Spec) -> np.ndarray:
    """CxHxW model output -> float HxWxC RGB (or HxWx1) in [0, 1]."""
    lo, hi = spec.value_range
    y = np.asarray(y, dtype=np.float32).transpose(1, 2, 0)
    if (lo, hi) != (0.0, 1.0):
        y = (y - lo) / (hi - lo)
    if y.shape[2] == 3 and spec.color_order.upper() == "BGR":
        y = y[..., ::-1]
    return y


# --------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class PatchInfo:
    image: str
    top: int
    left: int


class CalibrationSource:
    """ONNX Runtime ``CalibrationDataReader`` of LR patches (``get_next`` -> {input: NCHW}).

    images: image files or one folder (None: the package sample images minus the held-out
    evaluation images). ``num_patches`` LR patches of ``patch_size`` x ``patch_size`` pixels,
    taken from HR crops of ``patch_size * scale`` at positions drawn with ``seed`` (images
    visited round robin so each contributes), fed ``batch_size`` at a time.

    Raises DatasetError for an empty folder, no readable image, or no image at least
    ``patch_size * scale`` pixels on each side (smaller images are skipped and listed in
    ``skipped`` when others are big enough).
    """

    def __init__(self, spec: Spec, images: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
                 num_patches: int = 64, patch_size: int = 48, seed: int = 0, batch_size: int = 8,
                 input_name: str = "input", progress: bool = True):
        if num_patches < 1:
            raise DatasetError(f"num_patches must be >= 1, got {num_patches}")
        if patch_size < max(1, spec.min_size) or patch_size % max(1, spec.size_multiple):
            raise PatchSizeError(f"patch_size {patch_size} does not fit the model (min {spec.min_size}, "
                               f"multiple of {spec.size_multiple})")
        self.spec = spec
        self.num_patches = int(num_patches)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.input_name = input_name
        self.resampler = RESAMPLER
        self.files = resolve_images(images)
        self.skipped: list[str] = []
        self.unreadable: list[str] = []
        self.patches_info: list[PatchInfo] = []
        self._data = self._make(progress)
        self._pos = 0

    # -- ORT CalibrationDataReader protocol --------------------------------------------
    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._data):
            return None
        batch = self._data[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._pos = 0

    def __iter__(self):
        self.rewind()
        return iter(lambda: self.get_next(), None)

    def __len__(self) -> int:
        return -(-len(self._data) // self.batch_size)

    @property
    def patches(self) -> np.ndarray:
        """All LR patches, float32 N x C x P x P (model input convention)."""
        return self._data

    def describe(self) -> dict:
        return {"images": [f.name for f in self.files], "num_patches": len(self._data),
                "patch_size": self.patch_size, "seed": self.seed, "resampler": self.resampler,
                "skipped_small": self.skipped, "unreadable": self.unreadable}

    # -- construction -------------------------------------------------------------------
    def _make(self, progress: bool) -> np.ndarray:
        from ..progress import track

        s, p = self.spec.scale, self.patch_size
        hp = p * s
        photos: list[tuple[str, np.ndarray]] = []
        for f in self.files:
            try:
                img = read_rgb_u8(f)
            except ImageError as e:
                self.unreadable.append(f"{f.name}: {e}")
                continue
            if img.shape[0] < hp or img.shape[1] < hp:
                self.skipped.append(f"{f.name} ({img.shape[1]}x{img.shape[0]})")
                continue
            photos.append((f.name, img))
        if not photos:
            where = _where(self.files)
            if self.unreadable and not self.skipped:
                raise DatasetError(f"no readable calibration image in {where}: " + "; ".join(self.unreadable[:3]))
            raise PatchSizeError(
                f"no calibration image in {where} is at least {hp}x{hp} pixels (patch {p} x scale {s}); "
                f"too small: {', '.join(self.skipped[:5])}. Use a smaller patch size or larger images")
        rng = np.random.default_rng(self.seed)
        out: np.ndarray = np.empty((self.num_patches, self.spec.in_channels, p, p), dtype=np.float32)
        for i in track(range(self.num_patches), "INT8 calibration patches", unit="patches", show=progress):
            name, img = photos[i % len(photos)]
            top = int(rng.integers(0, img.shape[0] - hp + 1))
            left = int(rng.integers(0, img.shape[1] - hp + 1))
            lr = bicubic_downscale(img[top:top + hp, left:left + hp], s)
            out[i] = to_model_input(lr, self.spec)
            self.patches_info.append(PatchInfo(name, top, left))
        return out


def resolve_images(images) -> list[Path]:
    if images is None:
        from ..sample_images import sample_images

        files = [f for f in sample_images() if f.name not in HELD_OUT_NAMES]
        if not files:
            raise DatasetError("no sample images left for calibration; pass --calib DIR")
        return files
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        return list_image_files(p) if p.is_dir() or not p.exists() else [p]
    files = [Path(f) for f in images]
    if not files:
        raise DatasetError("no calibration images given")
    return files


def _where(files: Iterable[Path]) -> str:
    parents = sorted({str(f.parent) for f in files})
    return parents[0] if len(parents) == 1 else f"{len(parents)} folders"


# --------------------------------------------------------------------------- evaluation sets

@dataclass
class EvalPair:
    name: str
    lr: np.ndarray  # uint8 HxWx3 RGB
    hr: np.ndarray  # uint8 (h*scale)x(w*scale)x3 RGB


@dataclass
class EvalSet:
    name: str
    scale: int
    pairs: list[EvalPair]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def images(self) -> list[str]:
        """The photographs the pairs come from, in order (a tiled set names each photo once)."""
        return list(dict.fromkeys(p.name.split("@")[0] for p in self.pairs))


def held_out_eval_set(scale: int, names: Sequence[str] = HELD_OUT_NAMES, max_side: int = 512,
                      tile: int | None = HELD_OUT_TILE) -> EvalSet:
    """The sample images kept out of calibration, as (bicubic LR, HR) pairs.

    HR is centre-cropped to at most `max_side` and to a multiple of `scale`; LR is its
    bicubic 1/scale downscale (8-bit, as benchmark LR files are). With `tile`, each such
    crop is cut into a grid of non-overlapping `tile` x `tile` HR tiles (rounded down to a
    multiple of `scale`, centred), each its own pair: smooth and detailed regions then weigh
    alike in the mean drop, as Set5's small images do.
    """
    from ..sample_images import find_sample_image

    pairs = []
    for n in names:
        f = find_sample_image(n)
        if f is None:
            continue
        img = read_rgb_u8(f)
        for name, hr in _tiles(n, _centre_crop(img, max_side, scale), tile, scale):
            pairs.append(EvalPair(name, bicubic_downscale(hr, scale), hr))
    if not pairs:
        raise DatasetError(f"none of the held-out sample images ({', '.join(names)}) is available")
    return EvalSet("sample-held-out" + (f" ({tile}-px tiles)" if tile else ""), scale, pairs)


def _centre_crop(img: np.ndarray, side: int, scale: int) -> np.ndarray:
    h = min(img.shape[0], side) // scale * scale
    w = min(img.shape[1], side) // scale * scale
    t, l = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[t:t + h, l:l + w])


def _tiles(name: str, hr: np.ndarray, tile: int | None, scale: int) -> list[tuple[str, np.ndarray]]:
    if not tile:
        return [(name, hr)]
    t = max(scale, tile // scale * scale)
    rows, cols = hr.shape[0] // t, hr.shape[1] // t
    if rows == 0 or cols == 0:
        return [(name, hr)]
    top, left = (hr.shape[0] - rows * t) // 2, (hr.shape[1] - cols * t) // 2
    return [(f"{name}@{top + i * t},{left + j * t}", np.ascontiguousarray(hr[top + i * t:top + (i + 1) * t,
                                                                            left + j * t:left + (j + 1) * t]))
            for i in range(rows) for j in range(cols)]


def testset_eval_set(folder: str | os.PathLike, scale: int) -> EvalSet:
    """A benchmark test set laid out as HR/ + LR_bicubic/X{s}/ (e.g. Set5), via
    :func:`edgesr.datasets.load_testset`; HR cropped (top-left) to LR * scale."""
    from ..datasets import crop_hr_to_lr, load_testset

    root = Path(folder)
    pairs = []
    for p in load_testset(root, scale):
        lr, hr = read_rgb_u8(p.lr_path), read_rgb_u8(p.hr_path)
        try:
            hr = crop_hr_to_lr(hr, lr, scale)
        except DatasetError as e:
            raise DatasetError(f"{p.name}: {e}") from None
        pairs.append(EvalPair(p.name, lr, np.ascontiguousarray(hr)))
    return EvalSet(root.name, scale, pairs)
