"""edgesr.metrics: known answers, agreement with scikit-image, protocol details."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from edgesr.datasets import crop_hr_to_lr, load_testset
from edgesr.imaging import quantize, read_image
from edgesr.metrics import gaussian_window, psnr, psnr_y, rgb_to_y, ssim, ssim_y
from edgesr.resize import imresize

RNG = np.random.default_rng(7)


def _noisy_pair(shape, sigma=0.05):
    base = RNG.random(shape)
    return base, np.clip(base + RNG.normal(0, sigma, shape), 0, 1)


def test_rgb_to_y_known_colours():
    px = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=np.float64)
    assert np.allclose(rgb_to_y(px)[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-12)
    u8 = (px * 255).astype(np.uint8)
    assert np.allclose(rgb_to_y(u8), rgb_to_y(px))
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4)))


def test_psnr_known_answers():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a * 255, a * 255 + 25.5, data_range=255) == pytest.approx(20.0)
    x, y = _noisy_pair((20, 30, 3))
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-10)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((8, 8)))


def test_gaussian_window_matches_opencv_definition():
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0)
    assert g[5] / g[4] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_ssim_identical_is_one_and_matches_skimage():
    x, y = _noisy_pair((40, 37, 3))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    # skimage averages its map over the same 'valid' region (it crops the padded border)
    ref = structural_similarity(x, y, channel_axis=2, **kw)
    assert ssim(x, y) == pytest.approx(ref, abs=1e-9)
    ref_gray = structural_similarity(x[..., 0], y[..., 0], **kw)
    assert ssim(x[..., 0], y[..., 0]) == pytest.approx(ref_gray, abs=1e-9)
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)
    assert ssim(x, y) < 1.0
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))


def test_psnr_y_known_answer_constant_offset():
    hr = np.full((20, 20, 3), 0.4)
    d = 0.02
    # every channel +d -> Y moves by (65.481 + 128.553 + 24.966) * d = 219 d
    expect = 20 * math.log10(255 / (219 * d))
    assert psnr_y(hr + d, hr, crop_border=0, quantize=False) == pytest.approx(expect, abs=1e-9)


def test_quantize_and_border_crop():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (24, 24, 3)) / 255.0
    sr = hr + 0.3 / 255  # rounds back to hr
    assert psnr_y(sr, hr, crop_border=0) == math.inf
    assert psnr_y(sr, hr, crop_border=0, quantize=False) < math.inf
    assert ssim_y(sr, hr, crop_border=0) == pytest.approx(1.0, abs=1e-12)
    bad_border = hr.copy()
    bad_border[:2] = 1 - bad_border[:2]
    bad_border[:, -2:] = 0
    assert psnr_y(bad_border, hr, crop_border=2) == math.inf
    assert psnr_y(bad_border, hr, crop_border=1) < 20
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(hr, hr, crop_border=12)
    with pytest.raises(ValueError, match="shape"):
        ssim_y(hr, hr[:-1], crop_border=0)


def test_single_channel_used_as_is():
    hr = RNG.random((16, 16, 1))
    sr = np.clip(hr + 0.01, 0, 1)
    assert psnr_y(sr, hr, 0, quantize=False) == pytest.approx(psnr(sr, hr), abs=1e-9)
    assert psnr_y(sr[..., 0], hr[..., 0], 0, quantize=False) == pytest.approx(psnr(sr, hr), abs=1e-9)


def test_ssim_y_matches_skimage_on_real_pair(set5_dir):
    pair = load_testset(set5_dir, 4)[2]
    lr = read_image(pair.lr_path).rgb
    hr = crop_hr_to_lr(read_image(pair.hr_path).rgb, lr, 4)
    sr = imresize(lr, 4)
    # the protocol: SR rounded to 8 bit, 4-pixel border dropped, Y in [0, 255]
    ysr = rgb_to_y(quantize(sr).astype(np.float64) / 255)[4:-4, 4:-4]
    yhr = rgb_to_y(quantize(hr).astype(np.float64) / 255)[4:-4, 4:-4]
    ref = structural_similarity(
        ysr, yhr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_y(sr, hr, crop_border=4) == pytest.approx(ref, abs=1e-9)
    assert psnr_y(sr, hr, crop_border=4) == pytest.approx(
        peak_signal_noise_ratio(yhr, ysr, data_range=255), abs=1e-9
    )
