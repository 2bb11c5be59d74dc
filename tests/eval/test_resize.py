"""edgesr.resize: hand-derived MATLAB weights, border mirroring, sizes, and Set5 reproduction."""

from __future__ import annotations

import numpy as np
import pytest

from edgesr.datasets import crop_hr_to_lr, load_testset
from edgesr.imaging import quantize, read_image
from edgesr.metrics import psnr_y, ssim_y
from edgesr.resize import contributions, cubic, imresize

# Keys cubic (a = -0.5) at the offsets an x2 resize uses, worked out by hand.
K025, K075, K125, K175 = 0.8671875, 0.2265625, -0.0703125, -0.0234375


def test_cubic_known_values():
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.75])
    assert np.allclose(cubic(x), [1.0, K025, K075, 0.0, K125, K175, 0.0, 0.0, K075], atol=1e-15)


def test_upscale_x2_weights_by_hand():
    w, idx = contributions(in_length=10, out_length=20, scale=2.0)
    # output 6 (0-based 5): u = 6/2 + 0.25 = 3.25 (1-based) -> taps 2, 3, 4, 5 (1-based)
    row = dict(zip(idx[5].tolist(), w[5].tolist()))
    expect = {1: K125, 2: K025, 3: K075, 4: K175}  # 0-based input indices
    assert set(k for k, v in row.items() if v != 0) == set(expect)
    for k, v in expect.items():
        assert row[k] == pytest.approx(v, abs=1e-15)
    assert np.allclose(w.sum(axis=1), 1.0)


def test_downscale_half_antialiased_weights_by_hand():
    w, idx = contributions(in_length=16, out_length=8, scale=0.5)
    # output 4 (0-based 3): u = 4*2 - 0.5 = 7.5 (1-based), kernel 0.5*cubic(0.5*d), width 8
    half = [0.5 * K175, 0.5 * K125, 0.5 * K075, 0.5 * K025]
    expect = dict(zip(range(3, 11), half + half[::-1]))  # 1-based 4..11 -> 0-based 3..10
    row = {k: v for k, v in zip(idx[3].tolist(), w[3].tolist()) if v != 0}
    assert row.keys() == expect.keys()
    for k, v in expect.items():
        assert row[k] == pytest.approx(v, abs=1e-15)


def test_border_is_mirrored_like_matlab():
    v = np.array([3.0, 7.0, 1.0, 4.0, 9.0])
    out = imresize(v[:, None], output_shape=(10, 1))[:, 0]
    # first output: taps at 1-based -1, 0, 1, 2 -> mirrored to v[1], v[0], v[0], v[1]
    assert out[0] == pytest.approx(K175 * v[1] + K075 * v[0] + K025 * v[0] + K125 * v[1])
    # last output mirrors at the other end symmetrically
    assert out[-1] == pytest.approx(K175 * v[-2] + K075 * v[-1] + K025 * v[-1] + K125 * v[-2])


def test_constant_and_linear_are_preserved():
    c = np.full((17, 23, 3), 0.37)
    for s in (0.25, 1 / 3, 0.5, 0.7, 1.5, 2, 3, 4):
        assert np.allclose(imresize(c, s), 0.37, atol=1e-12), s
    # Keys' kernel reproduces linear functions; check away from the mirrored borders.
    ramp = np.tile(np.arange(40, dtype=np.float64)[:, None], (1, 3))
    for s in (0.5, 2.0, 3.0):
        out = imresize(ramp, s)[:, 0]
        u = np.arange(1, out.size + 1) / s + 0.5 * (1 - 1 / s) - 1  # 0-based sample position
        inner = (u > 6) & (u < 33)
        assert np.allclose(out[inner], u[inner], atol=1e-10), s


def test_output_size_rules():
    a = np.zeros((30, 45))
    assert imresize(a, 0.1).shape == (3, 5)  # ceil(0.1*30) with float error guarded
    assert imresize(a, 1 / 3).shape == (10, 15)
    assert imresize(a, 0.7).shape == (21, 32)  # ceil
    assert imresize(a, output_shape=(7, 90)).shape == (7, 90)
    assert imresize(np.zeros((2, 3)), 0.25).shape == (1, 1)  # kernel wider than image
    for bad in ({}, {"scale": 2, "output_shape": (1, 1)}, {"scale": 0}, {"scale": -1.0}, {"output_shape": (0, 3)}):
        with pytest.raises(ValueError):
            imresize(a, **bad)
    with pytest.raises(ValueError):
        imresize(np.zeros((2, 3, 4, 5)), 2)


def test_channels_independent_and_dtypes():
    rng = np.random.default_rng(0)
    img = rng.random((12, 9, 3))
    out = imresize(img, output_shape=(5, 20))
    for c in range(3):
        assert np.allclose(out[..., c], imresize(img[..., c], output_shape=(5, 20)), atol=1e-13)
    assert imresize(img.astype(np.float32), 2).dtype == np.float32
    u8 = (img * 255).astype(np.uint8)
    r = imresize(u8, 0.5)
    assert r.dtype == np.uint8
    assert imresize((img * 65535).astype(np.uint16), 2).dtype == np.uint16
    # saturation: a sharp edge overshoots in float but is clipped for uint8
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 4:] = 255
    assert imresize(edge.astype(np.float64), 2).max() > 255
    assert imresize(edge, 2).max() == 255


def test_integer_input_rounds_between_passes():
    # MATLAB rounds uint8 after each axis pass; float then one final rounding differs.
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    per_pass = imresize(u8, 0.5)
    rows = quantize(imresize(u8.astype(np.float64) / 255, output_shape=(20, 40)))
    assert np.array_equal(per_pass, imresize(rows, output_shape=(20, 20)))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_set5_lr_bicubic_exactly(set5_dir, scale):
    """MATLAB made Set5's LR_bicubic from uint8 HR; we must reproduce it pixel for pixel."""
    identical = total = 0
    max_diff = 0
    for pair in load_testset(set5_dir, scale):
        lr = quantize(read_image(pair.lr_path).rgb)
        hr = crop_hr_to_lr(quantize(read_image(pair.hr_path).rgb), lr, scale)
        ours = imresize(hr, 1 / scale)
        assert ours.shape == lr.shape and ours.dtype == np.uint8
        d = np.abs(ours.astype(int) - lr.astype(int))
        identical += int((d == 0).sum())
        total += d.size
        max_diff = max(max_diff, int(d.max()))
    # measured: 100% identical for x2, x3, x4
    assert identical == total, f"x{scale}: {identical / total:.5f} identical, max diff {max_diff}"


# MATLAB-bicubic Set5 Y-channel PSNR / SSIM as published in EDSR, RCAN, SwinIR, ... tables.
MATLAB_BICUBIC_SET5 = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
# The "Bicubic" row of ../shared/README.md (from the ETDS logs).
README_BICUBIC_SET5 = {2: 33.95, 3: 30.61, 4: 28.60}


def _set5_bicubic(set5_dir, scale, upsample):
    ps, ss = [], []
    for pair in load_testset(set5_dir, scale):
        lr = read_image(pair.lr_path).rgb
        hr = crop_hr_to_lr(read_image(pair.hr_path).rgb, lr, scale)
        sr = upsample(lr, scale)
        ps.append(psnr_y(sr, hr, crop_border=scale))
        ss.append(ssim_y(sr, hr, crop_border=scale))
    return float(np.mean(ps)), float(np.mean(ss))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_psnr_matches_published_matlab_bicubic(set5_dir, scale):
    psnr, ssim = _set5_bicubic(set5_dir, scale, lambda lr, s: imresize(lr, s))
    ref_psnr, ref_ssim = MATLAB_BICUBIC_SET5[scale]
    # measured: 33.678 / 30.404 / 28.431 dB, SSIM 0.9303 / 0.8689 / 0.8111
    assert abs(psnr - ref_psnr) < 0.02, (scale, psnr)
    assert abs(ssim - ref_ssim) < 0.001, (scale, ssim)
    # The README's "Bicubic" row is ~0.2-0.3 dB higher: it is not MATLAB bicubic (see below).
    assert README_BICUBIC_SET5[scale] - psnr > 0.15


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_readme_bicubic_row_is_pytorch_bicubic(set5_dir, scale):
    """The README's Bicubic numbers come from torch's bicubic (a = -0.75), not MATLAB's."""
    import torch
    import torch.nn.functional as F

    from edgesr.imaging import from_tensor, to_tensor

    def torch_bicubic(lr, s):
        with torch.no_grad():
            return from_tensor(F.interpolate(to_tensor(lr), scale_factor=s, mode="bicubic"), clamp=True)

    psnr, _ = _set5_bicubic(set5_dir, scale, torch_bicubic)
    # measured: 33.971 / 30.632 / 28.632 dB (README: HR mod-12 cropped, ours is not)
    assert abs(psnr - README_BICUBIC_SET5[scale]) < 0.05, (scale, psnr)
