"""Reading and writing images for SR models, and numpy <-> tensor conversion.

Reading (:func:`read_image`) always gives float32 RGB HxWx3 in [0, 1] plus an optional
float32 alpha plane, and remembers what the file was (bit depth, Pillow mode, grey or
colour) so the result can be written back in kind. Supported: 1-bit, L, LA, P/PA (with
or without transparency), RGB, RGBA, CMYK (Pillow's plain conversion, no ICC), YCbCr,
16-bit grey (I;16, I;16B, I;16L, and PNG's I), and 16-bit RGB / RGBA / grey+alpha PNG,
which Pillow itself truncates to 8 bit: those are decoded at full precision here by
running Pillow's own PNG decoder a second time for the low bytes (no extra dependency).

Every failure (missing, empty, truncated, corrupt, unknown format, too many pixels,
unsupported mode) raises :class:`edgesr.errors.ImageError` with one line naming the file;
Pillow's warnings are silenced and its exceptions never escape.

Writing (:func:`write_image`) picks PNG / JPEG / WebP from the extension, 8- or 16-bit
PNG, grey or RGB, with or without alpha, atomically (temp file + rename). Quantization is
``floor(clip(x, 0, 1) * (2**bits - 1) + 0.5)``: round half *up*, as MATLAB's
``uint8(x * 255)`` does for non-negative values (``np.round`` would round half to even).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgesr.errors import DatasetError, ImageError, one_line, quoted
from edgesr.fsutil import atomic_path

__all__ = [
    "Image",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "read_image",
    "write_image",
    "quantize",
    "to_tensor",
    "from_tensor",
    "list_images",
]

DEFAULT_MAX_PIXELS = 16384 * 16384
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

# Source modes whose content is grey (written back as grey with mode="L").
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
COLOR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 16-bit PNG colour types Pillow reduces to 8 bit -> rawmode giving the remaining bytes.
_PNG16_LOW_RAWMODE = {2: "RGB;16L", 6: "RGBA;16L", 4: "RGBA"}

# Pillow's own decompression-bomb limit is a module global; read_image applies its own
# (configurable) limit from the header instead, lifting Pillow's only while opening.
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Image:
    """A decoded image.

    rgb:       float32 HxWx3 in [0, 1] (grey sources are replicated to 3 channels)
    alpha:     float32 HxW in [0, 1], or None when the source had no transparency
    bit_depth: 8 or 16, the precision of the source samples (1-bit and palette count as 8)
    mode:      the source's Pillow mode ('L', 'RGB', 'P', 'I;16', 'CMYK', ...); for 16-bit
               colour PNGs, which Pillow has no mode for, 'RGB;16' / 'RGBA;16' / 'LA;16'
    path:      where it was read from
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: str
    path: Path | None = None

    @property
    def had_alpha(self) -> bool:
        return self.alpha is not None

    @property
    def is_gray(self) -> bool:
        """True when the source had no colour (write back with ``mode='L'``)."""
        return self.mode in GRAY_MODES or self.mode == "LA;16"

    @property
    def output_mode(self) -> str:
        """``'L'`` or ``'RGB'``: the ``mode`` to give :func:`write_image` to match the source."""
        return "L" if self.is_gray else "RGB"

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


# --------------------------------------------------------------------------- reading


def _pil():
    from PIL import Image as PILImage

    return PILImage


@contextlib.contextmanager
def _pillow_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _open_pil(path: Path, max_pixels: int | None):
    """Open (header only) with Pillow's bomb check lifted; apply ours instead. A PNG's text
    and ICC-profile chunks are skipped (see `_png_without_metadata`)."""
    PILImage = _pil()
    source = _png_without_metadata(path) or path
    with _PIL_LIMIT_LOCK:
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            img = PILImage.open(source)
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise ImageError(f"{path}: image has zero size ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise ImageError(
            f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(possible decompression bomb); raise max_pixels if the image is genuine"
        )
    return img


# Ancillary PNG chunks that carry no pixels: text (tEXt/zTXt/iTXt) and the ICC profile
# (iCCP; edgesr works in the stored RGB values and does not colour-manage). Pillow refuses
# a file whose compressed text or profile inflates past its safety limits (1 MiB a chunk,
# 64 MiB in all) as if it were corrupt, although viewers show it; skipping these chunks
# accepts such files and never inflates their payload.
_PNG_SKIPPED_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})


def _png_without_metadata(path: Path) -> io.BytesIO | None:
    """The PNG at `path` without its text / ICC chunks (in memory), or None when it is not a
    PNG or has none of them (then Pillow reads the file itself). Only chunk headers are
    parsed; a malformed chunk list is left for Pillow to report."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return None
            keep: list[tuple[int, int]] = []  # (offset, length) ranges of the file to keep
            start, pos = 0, 8
            skipped = False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                end = pos + 12 + length
                if kind in _PNG_SKIPPED_CHUNKS:
                    keep.append((start, pos - start))
                    start, skipped = end, True
                pos = end
                if kind == b"IEND":
                    break
                f.seek(pos)
            if not skipped:
                return None
            size = os.fstat(f.fileno()).st_size
            keep.append((start, max(0, min(pos, size) - start)))
            out = io.BytesIO()
            for off, n in keep:
                f.seek(off)
                out.write(f.read(n))
    except OSError:
        return None
    out.seek(0)
    return out


def _png_ihdr(path: Path) -> tuple[int, int, int] | None:
    """(bit_depth, colour_type, interlace) from a PNG header, or None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    bit_depth, color_type, _comp, _filt, interlace = struct.unpack(">BBBBB", head[24:29])
    return bit_depth, color_type, interlace


def _decode_png16_color(path: Path, color_type: int, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    """(uint16 HxWxC samples, info dict, EXIF orientation) of a 16-bit RGB / RGBA /
    grey+alpha PNG at full precision.

    Pillow decodes these to 8 bit, keeping the high byte of each big-endian sample. Its
    PNG decoder (de-filtering, Adam7 interlacing) is reused for the low bytes by asking it
    to unpack the same stream with a rawmode of the same pixel size that keeps the other
    byte: 'RGB;16L' / 'RGBA;16L' take byte 1 of each pair; for grey+alpha (4 bytes a
    pixel) 'RGBA' returns all four bytes at once.
    """
    with _open_pil(path, max_pixels) as img:
        tile = img.tile
        if len(tile) != 1 or tile[0].codec_name != "zip":
            raise ImageError(f"{quoted(path)}: unexpected 16-bit PNG layout; re-save it with a standard encoder")
        if color_type == 4:
            img.tile = [tile[0]._replace(args="RGBA")]
            b = np.asarray(img).astype(np.uint16)
            # getexif() may load the image, so it comes only after decoding
            orientation, info = _exif_orientation(img), dict(img.info)
            return np.stack([b[..., 0] * 256 + b[..., 1], b[..., 2] * 256 + b[..., 3]], axis=-1), info, orientation
        high = np.asarray(img).astype(np.uint16)
        orientation, info = _exif_orientation(img), dict(img.info)
    with _open_pil(path, max_pixels) as img:
        img.tile = [img.tile[0]._replace(args=_PNG16_LOW_RAWMODE[color_type])]
        low = np.asarray(img).astype(np.uint16)
    if high.shape != low.shape:
        raise ImageError(f"{quoted(path)}: inconsistent 16-bit PNG decode; re-save the file")
    return high * 256 + low, info, orientation


def _exif_orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (as Pillow's ImageOps.exif_transpose) to HxW[xC]."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _from_pil(img, path: Path) -> tuple[np.ndarray, np.ndarray | None, int, str]:
    """(rgb float32 HxWx3, alpha or None, bit_depth, source mode) from a Pillow image."""
    mode = img.mode
    info = img.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I":
            # PNG 16-bit grey (older Pillow) or 32-bit integer TIFF
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageError(f"{quoted(path)}: 32-bit integer images are not supported; convert to 16-bit PNG")
        g = a.astype(np.float32) / np.float32(65535.0)
        alpha = None
        t = info.get("transparency")
        if isinstance(t, int):
            alpha = (a != t).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=2), alpha, 16, mode
    if mode == "F":
        raise ImageError(f"{quoted(path)}: 32-bit float images are not supported; convert to 8- or 16-bit PNG")

    has_transparency = "transparency" in info
    if mode in ("1", "L"):
        if has_transparency:
            la = np.asarray(img.convert("LA"), dtype=np.float32) / 255.0
            g, alpha = la[..., 0], la[..., 1]
        else:
            g, alpha = np.asarray(img.convert("L"), dtype=np.float32) / 255.0, None
        return np.repeat(g[..., None], 3, axis=2), alpha, 8, mode
    if mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"), dtype=np.float32) / 255.0
        return np.repeat(la[..., :1], 3, axis=2), np.ascontiguousarray(la[..., 1]), 8, mode
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and has_transparency):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), 8, mode
    if mode in COLOR_MODES:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        return rgb, None, 8, mode
    raise ImageError(f"{quoted(path)}: unsupported image mode {mode!r}; convert it to RGB or grey PNG")


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Image:
    """Decode an image file to float32 RGB in [0, 1] (see :class:`Image`).

    max_pixels: refuse images whose header declares more pixels than this, before
        decoding (None disables the check; Pillow's global limit is not used).
    exif_transpose: apply the EXIF orientation tag, as photo viewers do.
    Raises ImageError with a one-line message naming the file on any failure.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{quoted(p)}: no such file")
    if not p.is_file():
        raise ImageError(f"{quoted(p)}: not a regular file")
    if p.stat().st_size == 0:
        raise ImageError(f"{quoted(p)}: file is empty (0 bytes)")
    PILImage = _pil()
    try:
        with _pillow_quiet():
            ihdr = _png_ihdr(p)
            if ihdr is not None and ihdr[0] == 16 and ihdr[1] in _PNG16_LOW_RAWMODE:
                u16, info, orientation = _decode_png16_color(p, ihdr[1], max_pixels)
                orientation = orientation if exif_transpose else 1
                trns = info.get("transparency")
                f = u16.astype(np.float32) / np.float32(65535.0)
                if ihdr[1] == 4:  # grey + alpha
                    rgb, alpha, mode = np.repeat(f[..., :1], 3, axis=2), f[..., 1], "LA;16"
                elif ihdr[1] == 6:
                    rgb, alpha, mode = f[..., :3], f[..., 3], "RGBA;16"
                else:
                    rgb, mode = f, "RGB;16"
                    alpha = None
                    if isinstance(trns, tuple) and len(trns) == 3:
                        alpha = np.any(u16 != np.array(trns, dtype=np.uint16), axis=-1).astype(np.float32)
                bit_depth = 16
            else:
                with _open_pil(p, max_pixels) as img:
                    if _is_16bit_color_tiff(img):
                        raise ImageError(
                            f"{quoted(p)}: 16-bit colour TIFF is not supported (Pillow reads it as 8 bit); "
                            "convert it to 16-bit PNG"
                        )
                    img.load()
                    orientation = _exif_orientation(img) if exif_transpose else 1
                    rgb, alpha, bit_depth, mode = _from_pil(img, p)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{quoted(p)}: permission denied") from None
    except PILImage.UnidentifiedImageError:
        raise ImageError(f"{quoted(p)}: not a recognised image format (or the file is corrupt)") from None
    except MemoryError:
        raise ImageError(f"{quoted(p)}: out of memory while decoding; the image is too large") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        reason = one_line(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise ImageError(f"{quoted(p)}: cannot decode ({reason}); the file is truncated or corrupt") from None

    if orientation != 1:
        rgb = _orient(rgb, orientation)
        if alpha is not None:
            alpha = _orient(alpha, orientation)
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    return Image(rgb=rgb, alpha=alpha, bit_depth=bit_depth, mode=mode, path=p)


def _is_16bit_color_tiff(img) -> bool:
    if img.format != "TIFF" or img.mode not in ("RGB", "RGBA"):
        return False
    bps = img.tag_v2.get(258)  # BitsPerSample
    if isinstance(bps, int):
        bps = (bps,)
    return bool(bps) and max(bps) > 8


# --------------------------------------------------------------------------- writing


def quantize(x: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Floats in [0, 1] -> uint8 / uint16 codes: clip, scale, round half up.

    ``floor(v + 0.5)`` computed exactly (no ``v + 0.5`` rounding error): the MATLAB
    ``uint8(x * 255)`` convention. NaN raises ImageError.
    """
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ImageError("image contains NaN or Inf values; cannot quantize")
    peak = 255.0 if bit_depth == 8 else 65535.0
    v = np.clip(a, 0.0, 1.0) * peak
    r = np.floor(v)
    r += (v - r) >= 0.5
    return r.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _gray_from(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return rgb
    if rgb.shape[2] == 1:
        return rgb[..., 0]
    # ITU-R BT.601 luma (Pillow's RGB -> L weights); exact for replicated grey.
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _encode_png16(samples: np.ndarray, level: int = 6) -> bytes:
    """16-bit PNG (grey / grey+alpha / RGB / RGBA) from uint16 HxW or HxWxC; 'Up' filter."""
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w, c = samples.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps mod 256, as PNG requires
    raw = np.empty((h, w * c * 2 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[:, 1:] = up
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


def write_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    bit_depth: int = 8,
    mode: str = "RGB",
    quality: int = 95,
) -> Path:
    """Write floats in [0, 1] as PNG / JPEG / WebP (chosen by extension), atomically.

    rgb:   HxWx3 (or HxW / HxWx1 for grey); values are clipped to [0, 1] and quantized
           with :func:`quantize` (round half up).
    alpha: optional HxW in [0, 1] (PNG and WebP only).
    bit_depth: 8, or 16 for PNG.
    mode:  'RGB' or 'L' (grey; RGB input is reduced with BT.601 luma weights). A source
           mode such as ``Image.mode`` ('P', 'I;16', 'LA', ...) is accepted and mapped
           to grey or RGB.
    quality: JPEG / WebP quality.
    """
    p = Path(path)
    fmt = _WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(f"{p}: cannot write {p.suffix or 'extensionless'} files; use .png, .jpg or .webp")
    if mode in GRAY_MODES or mode == "LA;16":
        gray = True
    elif mode in COLOR_MODES or mode in ("RGB;16", "RGBA;16"):
        gray = False
    else:
        raise ImageError(f"{p}: unknown output mode {mode!r}; use 'RGB' or 'L'")
    if bit_depth not in (8, 16):
        raise ImageError(f"{p}: bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt != "PNG":
        raise ImageError(f"{p}: 16-bit output needs PNG, not {fmt}")

    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[2] in (1, 3):
        pass
    elif a.ndim == 2:
        a = a[..., None]
    else:
        raise ImageError(f"{p}: expected HxWx3 or HxW image data, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{p}: cannot write an empty {a.shape[0]}x{a.shape[1]} image")
    if gray:
        color = _gray_from(a.astype(np.float64))
    else:
        color = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    try:
        codes = quantize(color, bit_depth)
        acodes = None
        if alpha is not None:
            if fmt == "JPEG":
                raise ImageError(f"{p}: JPEG cannot store transparency; write .png or .webp")
            al = np.asarray(alpha)
            if al.ndim == 3 and al.shape[2] == 1:
                al = al[..., 0]
            if al.shape != a.shape[:2]:
                raise ImageError(f"{p}: alpha is {al.shape}, image is {a.shape[:2]}")
            acodes = quantize(al, bit_depth)
    except ImageError as e:
        msg = str(e)
        raise ImageError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None

    if acodes is not None:
        samples = np.concatenate([codes if codes.ndim == 3 else codes[..., None], acodes[..., None]], axis=2)
    else:
        samples = codes

    if bit_depth == 16:
        data = _encode_png16(samples)
    else:
        PILImage = _pil()
        pil_mode = {(True, False): "L", (True, True): "LA", (False, False): "RGB", (False, True): "RGBA"}[
            (gray, acodes is not None)
        ]
        if samples.ndim == 3 and samples.shape[2] == 1:
            samples = samples[..., 0]
        buf = io.BytesIO()
        kwargs = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {"compress_level": 6}
        try:
            with _pillow_quiet():
                PILImage.fromarray(np.ascontiguousarray(samples), mode=pil_mode).save(buf, format=fmt, **kwargs)
        except Exception as e:  # e.g. a Pillow built without WebP
            raise ImageError(f"{p}: {fmt} encoder failed ({e})") from None
        data = buf.getvalue()
    try:
        with atomic_path(p) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise ImageError(f"{p}: cannot write ({e.strerror or e})") from None
    return p


# --------------------------------------------------------------------------- tensors, folders


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWxC (or HxW) numpy -> contiguous float32 tensor 1xCxHxW (values unchanged)."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"to_tensor expects HxW or HxWxC, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
    return t.unsqueeze(0)


def from_tensor(t: torch.Tensor, *, clamp: bool = False) -> np.ndarray:
    """1xCxHxW or CxHxW tensor -> float32 numpy HxWxC (optionally clamped to [0, 1])."""
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"from_tensor expects a batch of one, got shape {tuple(t.shape)}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"from_tensor expects CxHxW or 1xCxHxW, got shape {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float32)
    if clamp:
        t = t.clamp(0.0, 1.0)
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy())


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (png/jpg/jpeg/webp/bmp/tif/tiff, any case), sorted
    by name. Hidden files (``.*``, e.g. macOS ``._x.png``) and sub-folders are skipped."""
    d = Path(folder)
    if not d.is_dir():
        raise DatasetError(f"{d}: image folder does not exist" if not d.exists() else f"{d}: not a folder")
    return sorted(
        (f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()),
        key=lambda f: f.name,
    )
