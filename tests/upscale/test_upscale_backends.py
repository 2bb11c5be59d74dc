"""Every upscale backend through the same path: tiny images (1x1, 8x8, 15x15, 13x37) give the
model's output on the image padded to what that backend accepts (reflect, cropped back), never
a signal or an internal error; larger images say what was verified for the runtime at hand.

The bundled ECBSR x4 (a plain net; exact tiling) converted with every runtime this machine has
(OpenVINO, LiteRT and ncnn, each fp32 and INT8 without the precision search). A .tflite takes
one fixed size: smaller images are padded up to it, larger ones run in boxes of its size with the
overlap measured at convert time. An ESA model (RLFN, minimum 15 px, approximate tiling) goes
through OpenVINO from its checkpoint below; tests/upscale/test_upscale_sizes.py covers it with torch,
ONNX Runtime, .onnx and .ort files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.cli import main
from edgesr.imaging import read_image, write_image
from edgesr.tiling import pad_to_rules, sample_photo

pytest.importorskip("openvino", reason="needs pip install 'edgesr[openvino]'")
pytest.importorskip("ai_edge_litert", reason="needs pip install 'edgesr[tflite]'")
pytest.importorskip("ncnn", reason="needs pip install 'edgesr[ncnn]'")

SIZES = [(1, 1), (8, 8), (15, 15), (13, 37)]
BACKENDS = ["torch", "ort", "openvino", "ort-int8", "openvino-int8", "litert", "litert-int8", "ncnn", "ncnn-int8"]
MOBILE_SIZE = (40, 40)  # small boxes: cheap, and a 150x200 image needs many of them


@pytest.fixture(scope="module", params=["ecbsr-bundled-x4"])
def bundle(request, tmp_path_factory):
    from safetensors.torch import save_file

    from edgesr.pipeline import ConvertOptions, convert
    from edgesr.registry import build_variant

    folder = tmp_path_factory.mktemp(request.param)
    ckpt = None
    if request.param.startswith("rlfn"):
        torch.manual_seed(0)
        lm = build_variant(request.param, "deploy")
        ckpt = folder / "model.safetensors"
        save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(ckpt))
    out = folder / "bundle"
    res = convert(ConvertOptions(outdir=out, checkpoint=ckpt, int8=True, int8_search=False, psnr_budget=100.0,
                                 openvino=True, tflite=True, ncnn=True, mobile_size=MOBILE_SIZE, bench=False,
                                 ort_format=False, threads=1), log=lambda m: None)
    assert res.ok
    images = folder / "tiny"
    images.mkdir()
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        write_image(images / f"i{h}x{w}.png", rng.random((h, w, 3)))
    write_image(folder / "mid.png", sample_photo(150, 200, index=3)[0])
    return {"name": request.param, "out": out, "tiny": images, "mid": folder / "mid.png",
            "manifest": json.loads((out / "manifest.json").read_text())}


def _codes(y: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(y, 0, 1) * 255 + 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_images_every_backend(bundle, backend, tmp_path, capsys):
    from edgesr.resolve import resolve_model

    out = tmp_path / "out"
    rc = main(["upscale", str(bundle["out"]), str(bundle["tiny"]), str(out), "--backend", backend, "--json"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert "internal error" not in err and "Traceback" not in err
    results = {Path(r["input"]).name: r for r in json.loads(stdout)["images"]}
    resolved = resolve_model(bundle["out"], backend=backend)
    spec = resolved.spec
    box = getattr(resolved.runner, "input_hw", None) if getattr(resolved.runner, "tiles_itself", False) else None
    min_size = max(spec.min_size, bundle["manifest"]["io"]["min_size"], max(box) if box else 1)
    s = spec.scale
    for h, w in SIZES:
        name = f"i{h}x{w}.png"
        rgb = read_image(bundle["tiny"] / name).rgb
        got = read_image(out / name).rgb
        assert got.shape == (h * s, w * s, 3)
        padded = pad_to_rules(rgb, min_size, spec.size_multiple)
        if padded.shape[:2] != (h, w):
            assert results[name]["padded"] == list(padded.shape[:2]), (backend, name)
        # the runtime's own output on the padded image, cropped back: what upscale must have written
        y = resolved.runner.run(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32))
        want = _codes(y[0, :, : h * s, : w * s].transpose(1, 2, 0))
        assert float(np.abs(got * 255 - want).max()) <= 1.01, (backend, name)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ort", "openvino", "ort-int8", "litert", "ncnn"])
def test_tiled_runs_say_what_was_verified_for_the_runtime(bundle, backend, tmp_path, capsys):
    """A tiled upscale's 'exact' and its note come from a measurement: made at convert time for
    ONNX Runtime fp32, made now on the runner at hand for other runtimes, and for a fixed-size
    .tflite the convert-time measurement of the boxes it runs. Where it says exact, the output
    equals the untiled ONNX Runtime output to 8-bit rounding."""
    tiled = tmp_path / "tiled.png"
    args = ["upscale", str(bundle["out"]), str(bundle["mid"]), str(tiled), "--backend", backend, "--json"]
    rc = main(args + ["--tile", "64" if backend != "litert" else "32"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    r = json.loads(stdout)["images"][0]
    measured = bundle["manifest"]["tiling"]["measured"]
    if backend == "litert":  # 150x200 > the 40x40 file: its own boxes, overlap from the manifest,
        # inside tiles that hold at least one box whole (--tile 32 raised to twice the box)
        assert r["tiles"] > 1 and r["tile"] >= 80, r
        assert r["boxes"] == [*MOBILE_SIZE, bundle["manifest"]["tiling"]["overlap"]]
        assert "fixed-size file runs 40x40 boxes overlapping by" in r["tiling"], r
        assert f"overlapping by {bundle['manifest']['tiling']['overlap']} px" in r["tiling"]
        assert "bundle (measured at convert time)" in r["tiling"]
    else:
        assert r["tiles"] > 1
        assert r["tiling"] != "untiled (exact)"
    assert r["exact"] == measured["exact"], r
    if r["exact"]:
        assert r["tiling"].startswith("exact (verified") or "exact (verified" in r["tiling"]
        untiled = tmp_path / "untiled.png"
        assert main(["upscale", str(bundle["out"]), str(bundle["mid"]), str(untiled), "--backend", backend,
                     "--tile", "0"] if backend != "litert" else
                    ["upscale", str(bundle["out"]), str(bundle["mid"]), str(untiled), "--backend", "ort",
                     "--tile", "0"]) == 0
        capsys.readouterr()
        a, b = read_image(tiled).rgb, read_image(untiled).rgb
        assert float(np.abs(a - b).max()) * 255 <= 1.01
    else:
        assert "approximate" in r["tiling"] or "not verified" in r["tiling"], r


@pytest.mark.slow
def test_esa_model_through_openvino_from_its_checkpoint(tmp_path, capsys):
    """RLFN (random weights) via OpenVINO: tiny images padded to the graph's 15 px minimum; a
    tiled run is measured now on the OpenVINO runner and reported as approximate."""
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    lm = build_variant("rlfn-s-x2", "deploy")
    ckpt = tmp_path / "rlfn.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(ckpt))
    images = tmp_path / "tiny"
    images.mkdir()
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        write_image(images / f"i{h}x{w}.png", rng.random((h, w, 3)))
    rc = main(["upscale", str(ckpt), str(images), str(tmp_path / "out"), "--backend", "openvino", "--json"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    for r in json.loads(stdout)["images"]:
        h, w = r["input_size"]
        rgb = read_image(r["input"]).rgb
        padded = pad_to_rules(rgb, 15)
        assert r["padded"] == (list(padded.shape[:2]) if padded.shape[:2] != (h, w) else None)
        with torch.inference_mode():
            y = lm.module(torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None]))).numpy()
        want = _codes(y[0, :, : 2 * h, : 2 * w].transpose(1, 2, 0))
        assert float(np.abs(read_image(r["output"]).rgb * 255 - want).max()) <= 1.01, r["input"]
    write_image(tmp_path / "mid.png", sample_photo(150, 200, index=3)[0])
    rc = main(["upscale", str(ckpt), str(tmp_path / "mid.png"), str(tmp_path / "mid_x2.png"), "--backend", "openvino",
               "--tile", "64", "--json"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    r = json.loads(stdout)["images"][0]
    assert r["tiles"] > 1 and r["exact"] is False and r["tiling"].startswith("approximate (Resize"), r
    assert "measured at tile" in r["tiling"]
