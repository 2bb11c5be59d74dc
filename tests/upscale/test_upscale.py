"""Seam-free tiled upscaling (edgesr.upscale) and `edgesr upscale`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.backends.torch_runner import TorchRunner
from edgesr.cli import main
from edgesr.errors import ImageError, OutputExists
from edgesr.imaging import read_image, write_image
from edgesr.registry import build_variant, load_model
from edgesr.resize import imresize
from edgesr.upscale import plan_tiles, upscale_array, upscale_file

TOL = 1e-5


def _random_deploy(name: str, seed: int = 0):
    torch.manual_seed(seed)
    lm = build_variant(name, "deploy")
    # Random biases around 0 leave ETDS's ReLU clip mostly at 0; shift so outputs vary.
    with torch.no_grad():
        for p in lm.module.parameters():
            p.mul_(1.5)
    return lm


def _real_or_random(ckpt_root: Path | None, rel: str, variant: str):
    if ckpt_root is not None and (ckpt_root / rel).is_file():
        return load_model(ckpt_root / rel)
    return _random_deploy(variant)


@pytest.fixture(scope="module")
def models(request):
    """Real ETDS-M x4 and ECBSR-M4C16 x4 checkpoints when ../shared exists, plus random-weight
    deploy forms of other scales (x2, x3) that need no data."""
    try:
        root = request.getfixturevalue("ckpt_dir")
    except pytest.skip.Exception:
        root = None
    return {
        "etds-m-x4": _real_or_random(root, "ETDS/ETDS_M6C32_x4.pth", "etds-m-x4"),
        "ecbsr-m4c16-x4": _real_or_random(root, "ECBSR/ECBSR_M4C16_x4.pth", "ecbsr-m4c16-x4"),
        "etds-t-x3": _random_deploy("etds-t-x3"),
        "ecbsr-m4c16-x2": _random_deploy("ecbsr-m4c16-x2"),
    }


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure + noise: exercises the nets the way photos do, not just noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(xx[..., None] / 7.0 + np.array([0, 1, 2])) * np.cos(yy[..., None] / 5.0)
    return np.clip(base + 0.15 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- tile plan


@pytest.mark.parametrize("h,w,tile,overlap,mult", [(97, 131, 16, 8, 1), (5, 300, 64, 3, 1), (1, 1, 8, 8, 1),
                                                   (100, 64, 7, 0, 1), (96, 80, 20, 5, 4), (64, 64, 64, 8, 1)])
def test_plan_covers_image_once_and_clips_at_borders(h, w, tile, overlap, mult):
    from edgesr.spec import Spec

    spec = Spec(arch="x", scale=2, size_multiple=mult, receptive_field=6)
    plan = plan_tiles(h, w, spec, tile, overlap)
    cover = np.zeros((h, w), dtype=np.int32)
    for t in plan.tiles:
        y0, y1, x0, x1 = t.core
        by0, by1, bx0, bx1 = t.box
        cover[y0:y1, x0:x1] += 1
        assert 0 <= by0 <= y0 < y1 <= by1 <= h and 0 <= bx0 <= x0 < x1 <= bx1 <= w
        ov = plan.overlap
        assert by0 == max(0, y0 - ov) and by1 == min(h, y1 + ov)
        assert bx0 == max(0, x0 - ov) and bx1 == min(w, x1 + ov)
        if plan.tile:
            assert y1 - y0 <= plan.tile and x1 - x0 <= plan.tile
        assert y0 % mult == 0 and x0 % mult == 0 and by0 % mult == 0 and bx0 % mult == 0
    assert (cover == 1).all()
    assert plan.tile % mult == 0 and plan.overlap % mult == 0


def test_plan_defaults_and_untiled(models, tmp_path):
    """Without a measurement nothing is called exact (except one untiled pass); with the
    measurement the measured overlap makes the plan exact, one pixel less does not."""
    from edgesr.export.onnx import export_onnx
    from edgesr.tiling import measure_tiling

    lm = models["etds-m-x4"]
    spec = lm.spec
    declared = plan_tiles(1500, 2000, spec)
    assert declared.overlap == spec.receptive_field == 8 and not declared.exact
    export_onnx(lm.module, spec, tmp_path / "m.onnx")
    measured = measure_tiling(TorchRunner(lm.module), spec, tmp_path / "m.onnx")
    assert measured.exact and measured.receptive_field == 8 and measured.locality == "local"
    plan = plan_tiles(1500, 2000, spec, measured=measured)
    assert plan.overlap == 8 and plan.exact
    assert len(plan.tiles) > 1 and plan.max_box[0] <= plan.tile + 2 * plan.overlap
    one = plan_tiles(1500, 2000, spec, tile=0)
    assert len(one.tiles) == 1 and one.tiles[0].box == (0, 1500, 0, 2000) and one.exact
    assert not plan_tiles(100, 100, spec, tile=16, overlap=7, measured=measured).exact
    with pytest.raises(ImageError):
        plan_tiles(10, 10, spec, tile=-1)


# --------------------------------------------------------------------------- tiled == untiled


@pytest.mark.parametrize("name", ["etds-m-x4", "ecbsr-m4c16-x4", "etds-t-x3", "ecbsr-m4c16-x2"])
@pytest.mark.parametrize("tile,size", [(None, (61, 83)), (16, (61, 83)), (9, (61, 83)), (1, (12, 13))])
def test_tiled_equals_untiled_small(models, name, tile, size):
    lm = models[name]
    runner = TorchRunner(lm.module)
    h, w = size
    img = _image(h, w, seed=1)
    full = upscale_array(runner, img, lm.spec, tile=0)
    assert full.shape == (h * lm.spec.scale, w * lm.spec.scale, 3)
    assert float(full.std()) > 0.01  # a degenerate (constant) output would make the comparison vacuous
    tiled = upscale_array(runner, img, lm.spec, tile=tile)
    assert float(np.abs(tiled - full).max()) < TOL


@pytest.mark.parametrize("name", ["ecbsr-m4c16-x4", "etds-t-x3"])
def test_overlap_below_receptive_field_shows_seams(models, name):
    """The receptive field is tight: one pixel less overlap changes the output, so the
    equality above is a real property of the overlap rule, not of the comparison."""
    lm = models[name]
    runner = TorchRunner(lm.module)
    img = _image(61, 83, seed=2)
    full = upscale_array(runner, img, lm.spec, tile=0)
    short = upscale_array(runner, img, lm.spec, tile=16, overlap=lm.spec.receptive_field - 1)
    assert float(np.abs(short - full).max()) > 10 * TOL


def test_out_array_is_filled_in_place(models):
    lm = models["ecbsr-m4c16-x2"]
    img = _image(20, 30)
    out = np.full((40, 60, 3), np.nan, dtype=np.float32)
    res = upscale_array(TorchRunner(lm.module), img, lm.spec, tile=8, out=out)
    assert res is out and np.isfinite(out).all()


@pytest.mark.slow
def test_tiled_equals_untiled_2000x1500_ort(models, tmp_path):
    """One big case (2000x1500 -> 8000x6000, ETDS-M x4), ONNX Runtime at 1 thread."""
    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.export.onnx import export_onnx

    lm = models["etds-m-x4"]
    export_onnx(lm.module, lm.spec, tmp_path / "m.onnx")
    runner = OrtRunner(tmp_path / "m.onnx", threads=1)
    img = _image(1500, 2000, seed=3)
    full = upscale_array(runner, img, lm.spec, tile=0)
    tiled = upscale_array(runner, img, lm.spec)  # recommended tile (256 + 8 overlap): 48 tiles
    assert len(plan_tiles(1500, 2000, lm.spec).tiles) > 20
    assert float(full.std()) > 0.01
    assert float(np.abs(tiled - full).max()) < TOL


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, models):
    """A deploy-form ECBSR x2 checkpoint file (random weights) for the file/CLI tests."""
    from safetensors.torch import save_file

    p = tmp_path_factory.mktemp("ckpt") / "ecbsr_x2.safetensors"
    save_file({k: v.contiguous() for k, v in models["ecbsr-m4c16-x2"].module.state_dict().items()}, str(p))
    return p


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgesr: error:") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_file_tiled_equals_untiled_and_matches_direct_run(models, tmp_path):
    lm = models["ecbsr-m4c16-x2"]
    runner = TorchRunner(lm.module)
    src = tmp_path / "in.png"
    write_image(src, _image(37, 45))
    a = upscale_file(runner, lm.spec, src, tmp_path / "tiled.png", tile=10)
    upscale_file(runner, lm.spec, src, tmp_path / "untiled.png", tile=0)
    assert a.tiles == 20 and a.exact and a.output_size == [74, 90]
    ta, tb = read_image(tmp_path / "tiled.png").rgb, read_image(tmp_path / "untiled.png").rgb
    # Floats agree to ~1e-7 (tested above); after 8-bit rounding a value sitting exactly on a
    # rounding boundary may land one code apart, in rare samples only.
    codes = np.abs(ta - tb) * 255
    assert codes.max() <= 1 + 1e-3 and (codes > 0.5).mean() < 1e-3
    direct = runner.run(read_image(src).rgb.transpose(2, 0, 1)[None].copy())[0].transpose(1, 2, 0)
    assert float(np.abs(np.clip(direct, 0, 1) - tb).max()) <= 0.5 / 255 + 1e-6


def test_16bit_png_stays_16bit(models, tmp_path):
    lm = models["ecbsr-m4c16-x2"]
    src = tmp_path / "deep.png"
    rgb = _image(20, 24)
    write_image(src, rgb, bit_depth=16)
    r = upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "out.png", tile=8)
    out = read_image(tmp_path / "out.png")
    assert r.bit_depth == 16 and out.bit_depth == 16 and out.rgb.shape == (40, 48, 3)
    # 16-bit keeps precision 8-bit would lose
    ref = upscale_array(TorchRunner(lm.module), read_image(src).rgb, lm.spec, tile=0)
    assert float(np.abs(np.clip(ref, 0, 1) - out.rgb).max()) <= 0.5 / 65535 + 1e-6
    # JPEG output of a 16-bit input is 8-bit
    r8 = upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "out.jpg")
    assert r8.bit_depth == 8


def test_gray_in_gray_out(models, tmp_path):
    lm = models["ecbsr-m4c16-x2"]
    src = tmp_path / "g.png"
    write_image(src, _image(16, 20)[..., 0], mode="L")
    upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "g2.png", tile=8)
    out = read_image(tmp_path / "g2.png")
    assert out.is_gray and out.rgb.shape == (32, 40, 3)
    from PIL import Image

    with Image.open(tmp_path / "g2.png") as im:
        assert im.mode == "L"


def test_alpha_is_bicubic_upscaled(models, tmp_path):
    lm = models["ecbsr-m4c16-x2"]
    rng = np.random.default_rng(5)
    alpha = rng.random((18, 22)).astype(np.float32)
    src = tmp_path / "a.png"
    write_image(src, _image(18, 22), alpha)
    r = upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "a2.png", tile=8)
    out = read_image(tmp_path / "a2.png")
    assert r.alpha and out.alpha is not None and out.alpha.shape == (36, 44)
    expect = np.clip(imresize(read_image(src).alpha, output_shape=(36, 44)), 0, 1)
    assert float(np.abs(out.alpha - expect).max()) <= 0.5 / 255 + 1e-6
    # WebP keeps alpha too; JPEG refuses it with a clear error
    assert read_image(upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "a2.webp").output).alpha is not None
    with pytest.raises(ImageError, match="transparency"):
        upscale_file(TorchRunner(lm.module), lm.spec, src, tmp_path / "a2.jpg")


def test_never_overwrites_without_force(models, tmp_path):
    lm = models["ecbsr-m4c16-x2"]
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    write_image(src, _image(8, 8))
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputExists):
        upscale_file(TorchRunner(lm.module), lm.spec, src, dst)
    assert dst.read_bytes() == b"keep me"
    upscale_file(TorchRunner(lm.module), lm.spec, src, dst, force=True)
    assert read_image(dst).rgb.shape == (16, 16, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


# --------------------------------------------------------------------------- CLI


def test_cli_folder(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", _image(12, 14))
    write_image(src / "b.jpg", _image(10, 9))
    write_image(src / "c.png", _image(9, 11)[..., 0], bit_depth=16, mode="L")
    rc, out, err = _cli(["upscale", ckpt, src, tmp_path / "out", "--tile", "7", "--json"], capsys)
    assert rc == 0, err
    import json

    res = json.loads(out)
    assert res["ok"] and [Path(i["output"]).name for i in res["images"]] == ["a.png", "b.jpg", "c.png"]
    assert all(i["exact"] and i["tiles"] > 1 for i in res["images"])
    c = read_image(tmp_path / "out" / "c.png")
    assert c.bit_depth == 16 and c.is_gray and c.rgb.shape == (18, 22, 3)
    # existing outputs are refused before any work, and --force replaces them
    rc, out, err = _cli(["upscale", ckpt, src, tmp_path / "out"], capsys)
    _one_line_error(rc, err, "exists", "--force")
    rc, out, err = _cli(["upscale", ckpt, src, tmp_path / "out", "--force"], capsys)
    assert rc == 0, err


def test_cli_folder_with_corrupt_image_reports_it(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "good.png", _image(8, 8))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc, out, err = _cli(["upscale", ckpt, src, tmp_path / "out"], capsys)
    assert rc != 0 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("edgesr: error: 1 of 2 images failed")
    assert "bad.png" in err
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()


@pytest.mark.parametrize("case", ["corrupt", "truncated", "unsupported_in", "unsupported_out", "missing",
                                  "alpha_to_jpeg", "bad_tile", "wrong_scale", "not_a_model"])
def test_cli_errors_are_one_line(ckpt, tmp_path, capsys, case):
    good = tmp_path / "good.png"
    write_image(good, _image(8, 8), np.ones((8, 8)) * 0.5)
    model, src, dst, extra = ckpt, good, tmp_path / "o.png", []
    needle = []
    if case == "corrupt":
        src = tmp_path / "c.png"
        src.write_bytes(b"this is not an image")
        needle = ["c.png"]
    elif case == "truncated":
        src = tmp_path / "t.png"
        src.write_bytes(good.read_bytes()[:60])
        needle = ["t.png"]
    elif case == "unsupported_in":
        src = tmp_path / "x.gif"
        src.write_bytes(b"GIF89a")
        needle = ["unsupported input format", ".gif"]
    elif case == "unsupported_out":
        dst = tmp_path / "o.bmp"
        needle = ["cannot write .bmp"]
    elif case == "missing":
        src = tmp_path / "nope.png"
        needle = ["nope.png"]
    elif case == "alpha_to_jpeg":
        dst = tmp_path / "o.jpg"
        needle = ["transparency"]
    elif case == "bad_tile":
        extra = ["--tile", "-3"]
        needle = ["--tile"]
    elif case == "wrong_scale":
        extra = ["--scale", "4"]
        needle = ["scale"]
    elif case == "not_a_model":
        model = tmp_path / "m.pth"
        model.write_bytes(b"junk")
    rc, out, err = _cli(["upscale", model, src, dst, *extra], capsys)
    _one_line_error(rc, err, *needle)
    assert not dst.exists()
