"""Tiny images (1x1, 8x8, 15x15) through every way of running a model: a correct output or one
clear line, never a signal or an internal error. ESA models (RLFN: strided conv + 7x7/3
max-pool, minimum 15 px) and plain nets (ECBSR).

A correct output is the model's output on the image padded (reflect) to the model's minimum
size, cropped back: what the model's own pipeline would compute if it ran at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesr.cli import main
from edgesr.imaging import read_image, write_image
from edgesr.registry import build_variant
from edgesr.tiling import pad_to_rules

SIZES = [(1, 1), (8, 8), (15, 15)]


@pytest.fixture(scope="module", params=["rlfn-s-x2", "ecbsr-m4c16-x2"])
def model(request, tmp_path_factory):
    from safetensors.torch import save_file

    from edgesr.export.onnx import export_onnx
    from edgesr.export.ort_format import export_ort

    torch.manual_seed(0)
    lm = build_variant(request.param, "deploy")
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(ckpt))
    export_onnx(lm.module, lm.spec, folder / "model.onnx")
    ort = export_ort(folder / "model.onnx").path  # ORT format: no edgesr metadata, no graph to read
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        write_image(images / f"i{h}x{w}.png", rng.random((h, w, 3)))
    return {"name": request.param, "lm": lm, "ckpt": ckpt, "onnx": folder / "model.onnx", "ort": ort,
            "images": images}


def _expected(lm, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    x = pad_to_rules(rgb, lm.spec.min_size, lm.spec.size_multiple)
    with torch.inference_mode():
        y = lm.module(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))).numpy()
    y = y[0, :, : h * lm.spec.scale, : w * lm.spec.scale].transpose(1, 2, 0)
    return np.floor(np.clip(y, 0, 1) * 255 + 0.5) / 255


@pytest.mark.parametrize("how", ["checkpoint-torch", "checkpoint-ort", "onnx", "ort-format"])
def test_tiny_images_every_backend(model, how, tmp_path, capsys):
    ref = {"checkpoint-torch": (model["ckpt"], "torch"), "checkpoint-ort": (model["ckpt"], "ort"),
           "onnx": (model["onnx"], "ort"), "ort-format": (model["ort"], "ort")}[how]
    out = tmp_path / "out"
    args = ["upscale", str(ref[0]), str(model["images"]), str(out), "--backend", ref[1]]
    if how == "ort-format":
        args += ["--scale", str(model["lm"].spec.scale)]
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert "internal error" not in err and "Traceback" not in err
    s = model["lm"].spec.scale
    for h, w in SIZES:
        src = model["images"] / f"i{h}x{w}.png"
        got = read_image(out / src.name).rgb
        assert got.shape == (h * s, w * s, 3)
        want = _expected(model["lm"], read_image(src).rgb)
        assert float(np.abs(got - want).max()) <= 1.01 / 255, (how, h, w)
    if model["lm"].spec.min_size > 1:
        assert "padded (reflect)" in err


def test_tiny_image_through_a_bundle(tmp_path, capsys):
    """convert -> bundle -> upscale of 1x1 / 8x8 / 15x15 with both backends (plain net)."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    lm = build_variant("ecbsr-m4c16-x2", "deploy")
    ckpt = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(ckpt))
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "b"), "--no-bench"]) == 0
    capsys.readouterr()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for h, w in SIZES:
        write_image(images / f"i{h}x{w}.png", rng.random((h, w, 3)))
    for backend in ("torch", "ort"):
        rc = main(["upscale", str(tmp_path / "b"), str(images), str(tmp_path / backend), "--backend", backend])
        _, err = capsys.readouterr()
        assert rc == 0, err
        for h, w in SIZES:
            got = read_image(tmp_path / backend / f"i{h}x{w}.png").rgb
            want = _expected(lm, read_image(images / f"i{h}x{w}.png").rgb)
            assert float(np.abs(got - want).max()) <= 1.01 / 255


def test_library_pads_below_minimum_for_eval_and_parity():
    """evaluate.super_resolve pads like upscale; parity's sample sizes respect min_size."""
    from edgesr.backends.torch_runner import TorchRunner
    from edgesr.evaluate import super_resolve
    from edgesr.parity import fit_sizes

    torch.manual_seed(0)
    lm = build_variant("rlfn-s-x2", "deploy")
    rgb = np.random.default_rng(0).random((8, 9, 3), dtype=np.float32)
    y = super_resolve(TorchRunner(lm.module), rgb, lm.spec)
    assert y.shape == (16, 18, 3)
    assert float(np.abs(np.clip(y, 0, 1) - _expected(lm, rgb)).max()) <= 0.51 / 255
    assert fit_sizes([(12, 12), (17, 23), (1, 100)], 15, 1) == [(15, 15), (17, 23), (15, 100)]
    assert fit_sizes([(17, 23)], 1, 4) == [(20, 24)]


def test_parity_needs_no_scale_for_esa_models(model, capsys):
    """`edgesr parity CKPT ONNX` detects the scale and picks sample sizes the model accepts
    (RLFN needs 15 px; parity's own scale probe used to be 12x12)."""
    rc = main(["parity", str(model["ckpt"]), str(model["onnx"]), "--no-localize"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "internal error" not in err and f"(x{model['lm'].spec.scale})" in out


class _FixedTorch:
    """A PyTorch module behind a fixed input size, as a .tflite is (without needing LiteRT)."""

    def __init__(self, module, hw):
        self.module, self.input_hw, self.calls, self.name = module, hw, 0, "fixed-torch"

    def run(self, x):
        assert tuple(x.shape[2:]) == self.input_hw, x.shape
        self.calls += 1
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_fixed_size_file_pads_small_images_and_tiles_large_ones(tmp_path):
    """A fixed-size runner (FixedBoxRunner, as for a .tflite): an 8x8 image is padded up to the
    box; a 100x120 image runs in tiles of at least twice the box (an explicit --tile 10 is raised)
    with the overlap measured for the model, is exact like the measurement says, and the note
    names the boxes and where the measurement came from."""
    from edgesr.backends.mobile import FixedBoxRunner
    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.export.onnx import export_onnx
    from edgesr.tiling import measure_tiling
    from edgesr.upscale import ModelTiling, upscale_file

    torch.manual_seed(2)
    lm = build_variant("ecbsr-m4c16-x2", "deploy")
    export_onnx(lm.module, lm.spec, tmp_path / "m.onnx")
    m = measure_tiling(OrtRunner(tmp_path / "m.onnx", threads=1), lm.spec, tmp_path / "m.onnx")
    assert m.exact
    inner = _FixedTorch(lm.module, (24, 28))
    runner = FixedBoxRunner(inner, lm.spec.scale, m.overlap)
    mt = ModelTiling(runner, lm.spec, onnx=tmp_path / "m.onnx", manifest_tiling={"measured": m.to_dict()})
    rng = np.random.default_rng(0)
    write_image(tmp_path / "small.png", rng.random((8, 8, 3)))
    r = upscale_file(runner, lm.spec, tmp_path / "small.png", tmp_path / "small_x2.png", model_tiling=mt)
    assert r.padded == [28, 28] and r.exact and inner.calls >= 1  # 28 px: the largest side of the box
    got = read_image(tmp_path / "small_x2.png").rgb
    want = pad_to_rules(read_image(tmp_path / "small.png").rgb, 28)
    with torch.inference_mode():
        y = lm.module(torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1)[None]))).numpy()
    y = np.floor(np.clip(y[0, :, :16, :16].transpose(1, 2, 0), 0, 1) * 255 + 0.5) / 255
    assert float(np.abs(got - y).max()) <= 1.01 / 255
    big = sample_photo_rgb(100, 120)
    write_image(tmp_path / "big.png", big)
    r = upscale_file(runner, lm.spec, tmp_path / "big.png", tmp_path / "big_x2.png", tile=10, model_tiling=mt)
    assert r.tiles > 1 and r.tile >= 56 and r.exact, r
    assert f"fixed-size file runs 24x28 boxes overlapping by {m.overlap} px inside tiles of {r.tile}" in r.tiling
    assert "exact (verified" in r.tiling and "bundle (measured at convert time)" in r.tiling
    with torch.inference_mode():
        full = lm.module(torch.from_numpy(np.ascontiguousarray(read_image(tmp_path / "big.png").rgb
                                                               .transpose(2, 0, 1)[None]))).numpy()
    full = np.clip(full[0].transpose(1, 2, 0), 0, 1)
    assert float(np.abs(read_image(tmp_path / "big_x2.png").rgb - full).max()) <= 1.01 / 255


def sample_photo_rgb(h: int, w: int) -> np.ndarray:
    from edgesr.tiling import sample_photo

    return sample_photo(h, w, index=2)[0]
