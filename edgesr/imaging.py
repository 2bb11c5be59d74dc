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

Over 500 lines on purpose: every image mode, bit depth and the streaming PNG writer must round-trip
through one representation (codes + mode); reading and writing are kept together for that.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch

from edgesr.errors import DatasetError, ImageError, one_line, quoted

__all__ = [
    "Image",
    "ImageCodes",
    "PngWriter",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_codes",
    "image_size",
    "write_image",
    "streaming_output",
    "clean_stale_temps",
    "temp_prefix",
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


class _SourcePixels:
    """What a decoded image in any form knows about its source: colour or grey, and its size
    (shared by :class:`Image` and :class:`ImageCodes`, which differ in how pixels are held)."""

    mode: str

    @property
    def _pixels(self) -> np.ndarray:
        """The HxWxC pixel array."""
        raise NotImplementedError

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
        return int(self._pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self._pixels.shape[1])


@dataclass(frozen=True)
class Image(_SourcePixels):
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
    def _pixels(self) -> np.ndarray:
        return self.rgb

    @property
    def had_alpha(self) -> bool:
        return self.alpha is not None


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
    """(samples HxWx1 (grey) or HxWx3 as uint8/uint16 codes, alpha codes HxW or None,
    bit_depth, source mode) from a Pillow image."""
    mode = img.mode
    info = img.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I":
            # PNG 16-bit grey (older Pillow) or 32-bit integer TIFF
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageError(f"{quoted(path)}: 32-bit integer images are not supported; convert to 16-bit PNG")
        g = a.astype(np.uint16)
        alpha = None
        t = info.get("transparency")
        if isinstance(t, int):
            alpha = np.where(a != t, np.uint16(65535), np.uint16(0))
        return g[..., None], alpha, 16, mode
    if mode == "F":
        raise ImageError(f"{quoted(path)}: 32-bit float images are not supported; convert to 8- or 16-bit PNG")

    has_transparency = "transparency" in info
    if mode in ("1", "L"):
        if has_transparency:
            la = np.asarray(img.convert("LA"))
            return np.ascontiguousarray(la[..., :1]), np.ascontiguousarray(la[..., 1]), 8, mode
        return np.asarray(img.convert("L"))[..., None], None, 8, mode
    if mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"))
        return np.ascontiguousarray(la[..., :1]), np.ascontiguousarray(la[..., 1]), 8, mode
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and has_transparency):
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), 8, mode
    if mode in COLOR_MODES:
        return np.asarray(img.convert("RGB")), None, 8, mode
    raise ImageError(f"{quoted(path)}: unsupported image mode {mode!r}; convert it to RGB or grey PNG")


@dataclass(frozen=True)
class ImageCodes(_SourcePixels):
    """A decoded image as stored: integer codes, no float copy (what ``edgesr upscale`` streams from).

    samples: uint8 / uint16 HxWx1 (grey sources) or HxWx3
    alpha:   uint8 / uint16 HxW, or None
    """

    samples: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: str
    path: Path | None = None

    @property
    def _pixels(self) -> np.ndarray:
        return self.samples

    @property
    def peak(self) -> float:
        return 255.0 if self.bit_depth == 8 else 65535.0

    def rgb_float(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """float32 RGB in [0, 1] of a region (grey replicated to 3 channels)."""
        a = self.samples[y0:y1, x0:x1]
        f = a.astype(np.float32) / (np.float32(65535.0) if self.bit_depth == 16 else 255.0)
        return np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f

    def alpha_float(self) -> np.ndarray | None:
        if self.alpha is None:
            return None
        return self.alpha.astype(np.float32) / (np.float32(65535.0) if self.bit_depth == 16 else 255.0)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the file header, without decoding (after EXIF rotation)."""
    p = Path(path)
    try:
        with _pillow_quiet(), _open_pil(p, None) as img:
            w, h = img.size
            if _exif_orientation(img) in (5, 6, 7, 8):
                w, h = h, w
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - decoding reports the precise problem later
        return (0, 0)
    return h, w


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
    c = read_codes(path, max_pixels=max_pixels, exif_transpose=exif_transpose)
    rgb = np.ascontiguousarray(c.rgb_float(), dtype=np.float32)
    alpha = c.alpha_float()
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    return Image(rgb=rgb, alpha=alpha, bit_depth=c.bit_depth, mode=c.mode, path=c.path)


def read_codes(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> ImageCodes:
    """Decode an image file to its integer codes (see :class:`ImageCodes`); same checks
    and errors as :func:`read_image`, without any float copy of the image."""
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
                if ihdr[1] == 4:  # grey + alpha
                    samples, alpha, mode = u16[..., :1], u16[..., 1], "LA;16"
                elif ihdr[1] == 6:
                    samples, alpha, mode = u16[..., :3], u16[..., 3], "RGBA;16"
                else:
                    samples, mode = u16, "RGB;16"
                    alpha = None
                    if isinstance(trns, tuple) and len(trns) == 3:
                        alpha = np.where(np.any(u16 != np.array(trns, dtype=np.uint16), axis=-1),
                                         np.uint16(65535), np.uint16(0))
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
                    samples, alpha, bit_depth, mode = _from_pil(img, p)
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
        samples = _orient(samples, orientation)
        if alpha is not None:
            alpha = _orient(alpha, orientation)
    samples = np.ascontiguousarray(samples)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha)
    return ImageCodes(samples=samples, alpha=alpha, bit_depth=bit_depth, mode=mode, path=p)


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


_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
_IDAT_BYTES = 1 << 20  # compressed bytes per IDAT chunk
_FILTER_BLOCK_BYTES = 8 << 20  # raw bytes filtered at once (bounds the filter's temporaries)


class PngWriter:
    """Streaming PNG encoder: rows in, IDAT chunks out, memory bounded by a block of rows.

    ``write_rows`` takes uint8 (bit_depth 8) or uint16 (16) arrays of shape rows x width x
    channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), top to bottom; ``close`` checks that
    exactly ``height`` rows came and writes the end of the stream. Every row uses the Paeth
    filter (computed from the raw samples, so blocks are independent of each other).
    """

    def __init__(self, f, width: int, height: int, channels: int, bit_depth: int = 8, level: int = 6):
        if channels not in _PNG_COLOR_TYPE or bit_depth not in (8, 16) or width < 1 or height < 1:
            raise ImageError(f"cannot write a {width}x{height} PNG with {channels} channels at {bit_depth} bits")
        if width >= 2 ** 31 or height >= 2 ** 31:
            raise ImageError(f"a PNG cannot be {width}x{height} pixels (limit 2^31 - 1 per side)")
        self.f, self.width, self.height, self.channels, self.bit_depth = f, width, height, channels, bit_depth
        self.bpp = channels * bit_depth // 8
        self.rows = 0
        self._prev: np.ndarray = np.zeros(width * self.bpp, dtype=np.uint8)  # the row above (raw bytes)
        self._z = zlib.compressobj(level)
        self._pending = bytearray()
        ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, _PNG_COLOR_TYPE[channels], 0, 0, 0)
        f.write(_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr))

    def write_rows(self, samples: np.ndarray) -> None:
        a = np.asarray(samples)
        if a.ndim == 2:
            a = a[..., None]
        want = np.uint8 if self.bit_depth == 8 else np.uint16
        if a.dtype != want or a.shape[1:] != (self.width, self.channels):
            raise ImageError(f"PNG rows must be {want.__name__} ?x{self.width}x{self.channels}, "
                             f"got {a.dtype} {a.shape}")
        if self.rows + a.shape[0] > self.height:
            raise ImageError(f"more than {self.height} PNG rows written")
        row_bytes = self.width * self.bpp
        step = max(1, _FILTER_BLOCK_BYTES // row_bytes)
        for i in range(0, a.shape[0], step):
            block = a[i:i + step]
            if self.bit_depth == 16:
                block = block.astype(">u2")
            raw = np.ascontiguousarray(block).view(np.uint8).reshape(block.shape[0], row_bytes)
            self._compress(self._paeth(raw))
            self._prev = raw[-1].copy()
            self.rows += raw.shape[0]

    def _paeth(self, raw: np.ndarray) -> bytes:
        """Filter type 4 (Paeth) for every row of `raw`; returns the filtered scanlines."""
        n, width = raw.shape
        up = np.empty_like(raw)
        up[0] = self._prev
        up[1:] = raw[:-1]
        left = np.zeros_like(raw)
        left[:, self.bpp:] = raw[:, :-self.bpp]
        upleft = np.zeros_like(raw)
        upleft[:, self.bpp:] = up[:, :-self.bpp]
        a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        out = np.empty((n, width + 1), dtype=np.uint8)
        out[:, 0] = 4
        out[:, 1:] = (raw.astype(np.int16) - pred).astype(np.uint8)  # wraps mod 256, as PNG requires
        return out.tobytes()

    def _compress(self, data: bytes) -> None:
        self._pending += self._z.compress(data)
        while len(self._pending) >= _IDAT_BYTES:
            self.f.write(_png_chunk(b"IDAT", bytes(self._pending[:_IDAT_BYTES])))
            del self._pending[:_IDAT_BYTES]

    def close(self) -> None:
        if self.rows != self.height:
            raise ImageError(f"PNG stream ended after {self.rows} of {self.height} rows")
        self._pending += self._z.flush()
        if self._pending:
            self.f.write(_png_chunk(b"IDAT", bytes(self._pending)))
        self._pending = bytearray()
        self.f.write(_png_chunk(b"IEND", b""))


def _encode_png16(samples: np.ndarray, level: int = 6) -> bytes:
    """16-bit PNG (grey / grey+alpha / RGB / RGBA) from uint16 HxW or HxWxC."""
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w, c = samples.shape
    buf = io.BytesIO()
    png = PngWriter(buf, w, h, c, 16, level)
    png.write_rows(np.ascontiguousarray(samples, dtype=np.uint16))
    png.close()
    return buf.getvalue()


# Temp files of streamed outputs: ".<name>.edgesr-XXXXXXXX.tmp" beside the output, held under an
# exclusive flock while written, so a later run can tell a dead run's leftover from a live one.
TEMP_MARK = ".edgesr-"
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # fsutil.atomic_path's mkstemp names


# "." + stem + TEMP_MARK + 8 random characters + ".tmp": 21 bytes on top of the stem
_STREAM_STEM_MAX = 255 - 1 - len(TEMP_MARK) - 8 - 4


def temp_prefix(final_name: str) -> str:
    """The temp name's prefix for `final_name`: a name near the 255-byte limit is shortened
    (keeping a hash, edgesr.fsutil.temp_stem) so any legal output name can be written."""
    from .fsutil import temp_stem

    return f".{temp_stem(final_name, _STREAM_STEM_MAX)}{TEMP_MARK}"


def _temp_re(final_name: str) -> "re.Pattern[str]":
    return re.compile("^" + re.escape(temp_prefix(final_name)) + r"[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def streaming_output(final: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `final` through: a locked temp file in the same folder, fsynced
    and renamed onto `final` when the block succeeds, removed when it fails. A SIGKILL leaves
    the temp file; :func:`clean_stale_temps` recognises and removes it on the next run."""
    import tempfile

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=final.parent)
    tmp_path = Path(tmp)
    try:
        _lock(fd)
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp creates 0600; outputs follow the umask
        with os.fdopen(os.dup(fd), "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        os.close(fd)


def _lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; leftovers are then only removed with --force
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def clean_stale_temps(final: str | os.PathLike, *, legacy: bool = False) -> list[Path]:
    """Remove temp files a killed edgesr run left beside `final` (never anything else).

    Only names edgesr itself creates for `final` are considered: ``.<name>.edgesr-XXXXXXXX.tmp``
    whose lock no live process holds, and with ``legacy=True`` (``--force``) also the
    ``.<name>.XXXXXXXX.tmp`` names of earlier versions. Returns what was removed.
    """
    from .fsutil import temp_stem

    final = Path(final)
    pat = _temp_re(final.name)
    removed: list[Path] = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _LEGACY_TEMP.match(p.name)
        ours = bool(pat.match(p.name))
        old = legacy and m is not None and m.group("name") in (final.name, temp_stem(final.name))
        if not (ours or old) or p.is_symlink() or not p.is_file():
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _lock(fd) and ours:
                continue  # a live run is writing it
            p.unlink()
            removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


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
           with :func:`quantize` (round half up), a block of rows at a time.
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
    gray = _is_gray_mode(p, mode)
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
    al = None
    if alpha is not None:
        if fmt == "JPEG":
            raise ImageError(f"{p}: JPEG cannot store transparency; write .png or .webp")
        al = np.asarray(alpha)
        if al.ndim == 3 and al.shape[2] == 1:
            al = al[..., 0]
        if al.shape != a.shape[:2]:
            raise ImageError(f"{p}: alpha is {al.shape}, image is {a.shape[:2]}")
    h, w = a.shape[:2]
    channels = (1 if gray else 3) + (al is not None)
    block = max(1, (16 << 20) // max(1, w * channels * 8))

    def codes(y0: int, y1: int) -> np.ndarray:
        return encode_rows(a[y0:y1], None if al is None else al[y0:y1], bit_depth=bit_depth, gray=gray, path=p)

    try:
        with streaming_output(p) as f:
            if fmt == "PNG":
                png = PngWriter(f, w, h, channels, bit_depth)
                for y0 in range(0, h, block):
                    png.write_rows(codes(y0, min(h, y0 + block)))
                png.close()
            else:
                samples = np.concatenate([codes(y0, min(h, y0 + block)) for y0 in range(0, h, block)])
                save_pillow(f, samples, fmt, quality, p)
    except OSError as e:
        raise ImageError(f"{p}: cannot write ({e.strerror or e})") from None
    return p


def _is_gray_mode(p: Path, mode: str) -> bool:
    if mode in GRAY_MODES or mode == "LA;16":
        return True
    if mode in COLOR_MODES or mode in ("RGB;16", "RGBA;16"):
        return False
    raise ImageError(f"{p}: unknown output mode {mode!r}; use 'RGB' or 'L'")


def encode_rows(rgb: np.ndarray, alpha: np.ndarray | None, *, bit_depth: int, gray: bool,
                path: Path | None = None) -> np.ndarray:
    """Float rows (HxWx1 / HxWx3, alpha HxW) -> integer samples HxWxC for the encoder:
    grey by BT.601 luma when `gray`, then :func:`quantize` (round half up)."""
    a = rgb if rgb.ndim == 3 else rgb[..., None]
    try:
        if gray:
            color = quantize(_gray_from(a.astype(np.float64)), bit_depth)[..., None]
        else:
            color = quantize(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a, bit_depth)
        if alpha is None:
            return color
        return np.concatenate([color, quantize(alpha, bit_depth)[..., None]], axis=2)
    except ImageError as e:
        msg = str(e)
        raise ImageError(msg if path is None or msg.startswith(str(path)) else f"{path}: {msg}") from None


def save_pillow(f, samples: np.ndarray, fmt: str, quality: int, p: Path) -> None:
    """JPEG / WebP of uint8 HxWxC samples (1-4 channels) with Pillow, into the open file `f`."""
    PILImage = _pil()
    c = samples.shape[2]
    pil_mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    if fmt == "JPEG" and max(samples.shape[:2]) > 65535:
        raise ImageError(f"{p}: JPEG cannot be {samples.shape[1]}x{samples.shape[0]} (65535 px per side); "
                         "write .png")
    if fmt == "WEBP" and max(samples.shape[:2]) > 16383:
        raise ImageError(f"{p}: WebP cannot be {samples.shape[1]}x{samples.shape[0]} (16383 px per side); "
                         "write .png")
    arr = samples[..., 0] if c == 1 else samples
    try:
        with _pillow_quiet():
            PILImage.fromarray(np.ascontiguousarray(arr), mode=pil_mode).save(f, format=fmt, quality=int(quality))
    except Exception as e:  # e.g. a Pillow built without WebP
        raise ImageError(f"{p}: {fmt} encoder failed ({e})") from None


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
