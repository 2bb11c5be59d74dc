"""edgesr.datasets: layout discovery, error messages, HR crop, and the real Set5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from edgesr.datasets import Pair, crop_hr_to_lr, load_pair, load_testset
from edgesr.errors import DatasetError, ScaleMismatch


def _png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _make_set(root: Path, names=("b", "a", "c"), scale=2, hr=(10, 13)) -> Path:
    for n in names:
        _png(root / "HR" / f"{n}.png", *hr)
        _png(root / "LR_bicubic" / f"X{scale}" / f"{n}x{scale}.png", hr[0] // scale, hr[1] // scale)
    return root


def test_discovers_sorted_pairs(tmp_path):
    root = _make_set(tmp_path / "ds")
    pairs = load_testset(root, 2)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert pairs[0] == Pair("a", root / "LR_bicubic/X2/ax2.png", root / "HR/a.png")
    lr, hr = load_pair(pairs[0], 2)
    assert lr.shape == (5, 6, 3) and hr.shape == (10, 12, 3)


def test_lr_without_scale_suffix_and_extension_case(tmp_path):
    root = tmp_path / "ds"
    _png(root / "HR" / "img.png", 8, 8)
    _png(root / "LR_bicubic" / "X4" / "IMG.PNG", 2, 2)
    (pair,) = load_testset(root, 4)
    assert pair.lr_path.name == "IMG.PNG"


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="test set folder does not exist"):
        load_testset(tmp_path / "nope", 2)
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(DatasetError, match="no HR/ folder"):
        load_testset(root, 2)
    _make_set(root, scale=2)
    with pytest.raises(DatasetError, match=r"no LR_bicubic/X3/ folder for scale 3; found X2"):
        load_testset(root, 3)


def test_empty_hr(tmp_path):
    root = tmp_path / "ds"
    (root / "HR").mkdir(parents=True)
    (root / "HR" / "readme.txt").write_text("no images here")
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    with pytest.raises(DatasetError, match="HR: no images"):
        load_testset(root, 2)


def test_missing_lr_files_are_listed(tmp_path):
    root = _make_set(tmp_path / "ds", names=("a", "b", "c", "d"))
    (root / "LR_bicubic/X2/bx2.png").unlink()
    (root / "LR_bicubic/X2/dx2.png").unlink()
    with pytest.raises(DatasetError, match=r"no LR image for 2 of 4 HR images \(b.png, d.png\)") as ei:
        load_testset(root, 2)
    assert "\n" not in str(ei.value)


def test_bad_scale():
    for s in (0, -2, 2.0, True, "2"):
        with pytest.raises(ScaleMismatch):
            load_testset(".", s)


def test_crop_hr_to_lr():
    hr = np.arange(11 * 14).reshape(11, 14)
    out = crop_hr_to_lr(hr, np.zeros((3, 4)), 3)
    assert out.shape == (9, 12) and np.array_equal(out, hr[:9, :12])
    assert crop_hr_to_lr(hr, (5, 7), 2).shape == (10, 14)
    with pytest.raises(DatasetError, match="does not match"):
        crop_hr_to_lr(hr, (5, 7), 3)  # HR too small for LR*3
    with pytest.raises(DatasetError, match="wrong scale"):
        crop_hr_to_lr(hr, (2, 3), 3)  # HR much larger than LR*3


def test_real_set5(set5_dir):
    for s in (2, 3, 4):
        pairs = load_testset(set5_dir, s)
        assert [p.name for p in pairs] == ["baby", "bird", "butterfly", "head", "woman"]
        for p in pairs:
            assert p.lr_path.name == f"{p.name}x{s}.png"
    lr, hr = load_pair(load_testset(set5_dir, 3)[4], 3)  # woman: 344x228 HR
    assert lr.shape == (114, 76, 3) and hr.shape == (342, 228, 3)
