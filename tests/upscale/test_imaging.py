"""edgesr.imaging: every source mode, 16-bit precision, guards, writing, tensors, folders."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from edgesr.errors import DatasetError, ImageError
from edgesr.imaging import (
    from_tensor,
    list_images,
    quantize,
    read_image,
    to_tensor,
    write_image,
)

RNG = np.random.default_rng(1234)


def _u8(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _filtered_rows(samples: np.ndarray) -> bytes:
    """16-bit scanlines cycling through all five PNG filter types (incl. Paeth)."""
    h = samples.shape[0]
    raw = samples.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp = (samples.shape[2] if samples.ndim == 3 else 1) * 2
    out = []
    for y in range(h):
        cur = raw[y]
        prev = raw[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        f = y % 5
        if f == 0:
            pred = 0
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        out.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def _png16_reference(samples: np.ndarray, color_type: int, interlace: bool = False) -> bytes:
    """Independent 16-bit PNG encoder (optionally Adam7-interlaced)."""
    h, w = samples.shape[:2]
    if interlace:
        passes = [samples[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7]
        body = b"".join(_filtered_rows(p) for p in passes if p.size)
    else:
        body = _filtered_rows(samples)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(body))
        + _chunk(b"IEND", b"")
    )


def _save(tmp_path: Path, name: str, img: PILImage.Image, **kw) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


# ------------------------------------------------------------------ modes


def test_rgb8_exact(tmp_path):
    a = _u8((13, 17, 3))
    im = read_image(_save(tmp_path, "a.png", PILImage.fromarray(a)))
    assert im.rgb.dtype == np.float32 and im.rgb.shape == (13, 17, 3)
    assert np.array_equal(quantize(im.rgb), a)
    assert (im.bit_depth, im.mode, im.alpha, im.is_gray, im.had_alpha) == (8, "RGB", None, False, False)
    assert (im.height, im.width) == (13, 17)


def test_gray_l_replicated_and_remembered(tmp_path):
    g = _u8((9, 11))
    im = read_image(_save(tmp_path, "g.png", PILImage.fromarray(g, mode="L")))
    assert im.mode == "L" and im.is_gray and im.output_mode == "L"
    for c in range(3):
        assert np.array_equal(quantize(im.rgb[..., c]), g)
    out = write_image(tmp_path / "g_out.png", im.rgb, mode=im.mode)
    with PILImage.open(out) as back:
        assert back.mode == "L"
        assert np.array_equal(np.asarray(back), g)


def test_one_bit(tmp_path):
    bits = RNG.integers(0, 2, (8, 12)).astype(bool)
    im = read_image(_save(tmp_path, "b.png", PILImage.fromarray(bits)))
    assert im.mode == "1" and im.is_gray
    assert set(np.unique(im.rgb)) <= {0.0, 1.0}
    assert np.array_equal(im.rgb[..., 0] == 1.0, bits)


def test_la_and_rgba(tmp_path):
    la = _u8((7, 5, 2))
    im = read_image(_save(tmp_path, "la.png", PILImage.fromarray(la, mode="LA")))
    assert im.mode == "LA" and im.is_gray and im.had_alpha
    assert np.array_equal(quantize(im.rgb[..., 1]), la[..., 0])
    assert np.array_equal(quantize(im.alpha), la[..., 1])

    rgba = _u8((6, 10, 4))
    im = read_image(_save(tmp_path, "rgba.png", PILImage.fromarray(rgba, mode="RGBA")))
    assert im.mode == "RGBA" and not im.is_gray
    assert np.array_equal(quantize(im.rgb), rgba[..., :3])
    assert np.array_equal(quantize(im.alpha), rgba[..., 3])


def test_palette_with_and_without_transparency(tmp_path):
    idx = RNG.integers(0, 4, (6, 8)).astype(np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12)
    p_img = PILImage.fromarray(idx, mode="P")
    p_img.putpalette(palette)
    im = read_image(_save(tmp_path, "p.png", p_img))
    lut = np.array(palette, dtype=np.uint8).reshape(256, 3)
    assert im.mode == "P" and im.alpha is None and not im.is_gray
    assert np.array_equal(quantize(im.rgb), lut[idx])

    im = read_image(_save(tmp_path, "pt.png", p_img, transparency=3))
    assert im.had_alpha
    assert np.array_equal(im.alpha == 0.0, idx == 3)
    assert np.array_equal(quantize(im.rgb)[idx != 3], lut[idx][idx != 3])


def test_rgb_with_trns_colour_key(tmp_path):
    a = _u8((5, 5, 3))
    a[2, 3] = (1, 2, 3)
    im = read_image(_save(tmp_path, "k.png", PILImage.fromarray(a), transparency=(1, 2, 3)))
    assert im.had_alpha and im.alpha[2, 3] == 0.0 and im.alpha.sum() == 24


def test_cmyk_known_colours(tmp_path):
    cmyk = np.array([[[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    im = read_image(_save(tmp_path, "c.tif", PILImage.fromarray(cmyk, mode="CMYK")))
    assert im.mode == "CMYK"
    expect = np.array([[[0, 255, 255], [255, 0, 255], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    assert np.array_equal(quantize(im.rgb), expect)


def test_gray16_png_full_precision(tmp_path):
    g = _u16((10, 14))
    im = read_image(_save(tmp_path, "g16.png", PILImage.fromarray(g)))
    assert im.bit_depth == 16 and im.is_gray
    assert np.array_equal(quantize(im.rgb[..., 0], 16), g)
    # round trip through our writer
    out = write_image(tmp_path / "g16_out.png", im.rgb, bit_depth=16, mode=im.mode)
    with PILImage.open(out) as back:
        assert back.mode.startswith("I")
        assert np.array_equal(np.asarray(back).astype(np.uint16), g)


def test_gray16_big_endian_tiff(tmp_path):
    g = _u16((6, 9))
    src = PILImage.fromarray(g.astype(">u2"))
    assert src.mode == "I;16B"
    im = read_image(_save(tmp_path, "g16b.tif", src))
    assert im.bit_depth == 16
    assert np.array_equal(quantize(im.rgb[..., 0], 16), g)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_color16_png_all_filters_full_precision(tmp_path, color_type, channels, interlace):
    s = _u16((11, 13, channels))
    s[0, 0] = 0x01FF  # low byte differs from high byte: truncation would show
    p = tmp_path / "c16.png"
    p.write_bytes(_png16_reference(s, color_type, interlace))
    im = read_image(p)
    assert im.bit_depth == 16
    if channels == 2:
        assert im.mode == "LA;16" and im.is_gray
        assert np.array_equal(quantize(im.rgb[..., 0], 16), s[..., 0])
        assert np.array_equal(quantize(im.alpha, 16), s[..., 1])
    else:
        assert np.array_equal(quantize(im.rgb, 16), s[..., :3])
        if channels == 4:
            assert np.array_equal(quantize(im.alpha, 16), s[..., 3])
        else:
            assert im.alpha is None


def test_color16_png_exif_orientation(tmp_path):
    s = _u16((5, 8, 3))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = _png16_reference(s, 2)
    iend = data.rindex(b"IDAT") - 4
    p = tmp_path / "o16.png"
    p.write_bytes(data[:iend] + _chunk(b"eXIf", exif.tobytes()[6:]) + data[iend:])
    assert np.array_equal(quantize(read_image(p).rgb, 16), np.rot90(s, -1))
    assert np.array_equal(quantize(read_image(p, exif_transpose=False).rgb, 16), s)


def test_write16_rgb_readable_by_pillow_and_exact(tmp_path):
    s = _u16((9, 7, 3))
    a = _u16((9, 7))
    f = s.astype(np.float64) / 65535
    out = write_image(tmp_path / "w16.png", f, alpha=a / 65535, bit_depth=16)
    with PILImage.open(out) as pil:  # Pillow keeps the high bytes
        assert pil.mode == "RGBA"
        assert np.array_equal(np.asarray(pil)[..., :3], (s >> 8).astype(np.uint8))
    im = read_image(out)
    assert im.mode == "RGBA;16"
    assert np.array_equal(quantize(im.rgb, 16), s)
    assert np.array_equal(quantize(im.alpha, 16), a)


def test_exif_orientation_matches_pillow(tmp_path):
    a = _u8((4, 6, 3))
    for orientation in range(1, 9):
        src = PILImage.fromarray(a)
        exif = src.getexif()
        exif[0x0112] = orientation
        p = _save(tmp_path, f"o{orientation}.png", src, exif=exif)
        with PILImage.open(p) as ref:
            expect = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
        assert np.array_equal(quantize(read_image(p).rgb), expect), orientation
        assert np.array_equal(quantize(read_image(p, exif_transpose=False).rgb), a)


# ------------------------------------------------------------------ guards


def _expect_error(path: Path, match: str, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may escape
        with pytest.raises(ImageError, match=match) as ei:
            read_image(path, **kw)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_truncated_png(tmp_path):
    good = _save(tmp_path, "good.png", PILImage.fromarray(_u8((64, 64, 3))))
    bad = tmp_path / "trunc.png"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _expect_error(bad, "truncated or corrupt")


def test_truncated_png16_rgb(tmp_path):
    data = _png16_reference(_u16((40, 40, 3)), 2)
    bad = tmp_path / "trunc16.png"
    bad.write_bytes(data[: len(data) // 2])
    _expect_error(bad, "truncated or corrupt")


def test_truncated_jpeg(tmp_path):
    good = _save(tmp_path, "good.jpg", PILImage.fromarray(_u8((64, 64, 3))))
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(good.read_bytes()[:300])
    _expect_error(bad, "truncated or corrupt")


def test_zero_byte_missing_directory_garbage(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _expect_error(empty, "empty")
    _expect_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "dir.png").mkdir()
    _expect_error(tmp_path / "dir.png", "not a regular file")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    _expect_error(junk, "not a recognised image format")


def test_corrupt_png_crc(tmp_path):
    good = _save(tmp_path, "good.png", PILImage.fromarray(_u8((16, 16, 3))))
    data = bytearray(good.read_bytes())
    data[-20] ^= 0xFF  # inside the IDAT payload (IEND is the last 12 bytes)
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(data))
    _expect_error(bad, "cannot decode")


def _header_only_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))


def test_decompression_bomb_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_header_only_png(100_000, 100_000))
    msg = _expect_error(bomb, "decompression bomb")
    assert "100000x100000" in msg


def test_pixel_limit_configurable(tmp_path):
    p = _save(tmp_path, "small.png", PILImage.fromarray(_u8((10, 10, 3))))
    _expect_error(p, "exceeds the limit of 99", max_pixels=99)
    assert read_image(p, max_pixels=100).rgb.shape == (10, 10, 3)
    # Above Pillow's own limit (~89M) but allowed by ours: Pillow's check must not fire;
    # the file is header-only so decoding fails cleanly instead.
    big = tmp_path / "big.png"
    big.write_bytes(_header_only_png(12_000, 12_000))
    _expect_error(big, "truncated or corrupt")
    assert PILImage.MAX_IMAGE_PIXELS is not None  # global restored


def test_zero_dimension_png(tmp_path):
    p = tmp_path / "zero.png"
    p.write_bytes(_header_only_png(0, 5))
    _expect_error(p, "zero size|not a recognised image format")


def test_float_tiff_rejected(tmp_path):
    p = _save(tmp_path, "f.tif", PILImage.fromarray(np.zeros((4, 4), np.float32), mode="F"))
    _expect_error(p, "32-bit float")


# ------------------------------------------------------------------ writing


def test_quantize_rounds_half_up_and_clips():
    ties = np.array([0.5, 2.5, 4.5, 126.5, 254.5]) / 255  # exact .5 after *255
    assert np.array_equal(quantize(ties), [1, 3, 5, 127, 255])
    assert np.array_equal(quantize(np.array([-0.2, 1.7, 0.49999 / 255])), [0, 255, 0])
    assert quantize(np.array([0.5]), 16)[0] == 32768
    with pytest.raises(ImageError, match="NaN"):
        quantize(np.array([np.nan]))


def test_write_png_exact_and_atomic(tmp_path):
    a = _u8((8, 9, 3))
    out = tmp_path / "sub" / "x.png"
    write_image(out, a / 255.0)
    assert np.array_equal(quantize(read_image(out).rgb), a)
    # a failed write leaves the previous file intact and no temp files behind
    with pytest.raises(ImageError, match="NaN"):
        write_image(out, np.full((8, 9, 3), np.nan))
    assert np.array_equal(quantize(read_image(out).rgb), a)
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]


def test_write_rgba8_and_gray_alpha(tmp_path):
    rgb = _u8((5, 6, 3)) / 255.0
    alpha = _u8((5, 6)) / 255.0
    im = read_image(write_image(tmp_path / "a.png", rgb, alpha))
    assert np.allclose(im.rgb, rgb, atol=1e-6) and np.allclose(im.alpha, alpha, atol=1e-6)
    g = np.repeat(_u8((5, 6, 1)) / 255.0, 3, axis=2)
    im = read_image(write_image(tmp_path / "la.png", g, alpha, mode="L"))
    assert im.mode == "LA" and np.allclose(im.rgb, g, atol=1e-6)


def test_write_jpeg_webp(tmp_path):
    smooth = np.clip(np.linspace(0, 1, 32)[None, :, None] * np.ones((24, 1, 3)), 0, 1)
    for name in ("a.jpg", "a.JPEG", "a.webp"):
        back = read_image(write_image(tmp_path / name, smooth, quality=95)).rgb
        assert np.abs(back - smooth).mean() < 0.02, name
    with PILImage.open(tmp_path / "a.jpg") as j:
        assert j.format == "JPEG"
    with pytest.raises(ImageError, match="16-bit output needs PNG"):
        write_image(tmp_path / "b.jpg", smooth, bit_depth=16)
    with pytest.raises(ImageError, match="JPEG cannot store transparency"):
        write_image(tmp_path / "c.jpg", smooth, np.ones(smooth.shape[:2]))
    with pytest.raises(ImageError, match="cannot write .gif"):
        write_image(tmp_path / "d.gif", smooth)
    with pytest.raises(ImageError, match="unknown output mode"):
        write_image(tmp_path / "e.png", smooth, mode="XYZ")
    with pytest.raises(ImageError, match="alpha is"):
        write_image(tmp_path / "f.png", smooth, np.ones((3, 3)))
    assert not (tmp_path / "b.jpg").exists() and not (tmp_path / "c.jpg").exists()


# ------------------------------------------------------------------ tensors, folders


def test_tensor_round_trip():
    a = RNG.random((5, 7, 3)).astype(np.float32)
    t = to_tensor(a)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.equal(t[0, 2], torch.from_numpy(a[..., 2]))
    back = from_tensor(t)
    assert back.shape == (5, 7, 3) and np.array_equal(back, a)
    assert to_tensor(a[..., 0]).shape == (1, 1, 5, 7)
    assert from_tensor(t[0] * 2, clamp=True).max() == 1.0
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(2, 3, 4, 4))


def test_list_images(tmp_path):
    for n in ["b.PNG", "a.jpg", "c.JpEg", "d.webp", "e.bmp", "f.tif", "g.TIFF", "notes.txt", ".hidden.png", "._a.png"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == [
        "a.jpg", "b.PNG", "c.JpEg", "d.webp", "e.bmp", "f.tif", "g.TIFF"
    ]
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_reads_real_set5(set5_dir):
    im = read_image(set5_dir / "HR" / "baby.png")
    assert im.rgb.shape == (512, 512, 3) and im.bit_depth == 8 and im.mode == "RGB"
    with PILImage.open(set5_dir / "HR" / "baby.png") as ref:
        assert np.array_equal(quantize(im.rgb), np.asarray(ref.convert("RGB")))
