"""The bundled training-form ECBSR x4: real multi-branch blocks, exact reparameterization,
better than bicubic on Set5, and the default `convert` job works end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesr.evaluate import evaluate
from edgesr.imaging import read_image
from edgesr.pipeline import BUNDLED_CHECKPOINT, ConvertOptions, convert
from edgesr.registry import load_model
from edgesr.reparam import reparameterize, training_blocks
from edgesr.resolve import resolve_model

BICUBIC_SET5_X4 = 28.60  # ../shared/README.md (PyTorch bicubic; MATLAB bicubic scores 28.43)


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED_CHECKPOINT)


def test_bundled_is_training_form_with_branches(bundled):
    assert bundled.spec.form == "training"
    assert bundled.spec.arch == "ecbsr" and bundled.spec.scale == 4
    assert len(training_blocks(bundled.module)) >= 6  # every ECB is multi-branch
    record = json.loads(BUNDLED_CHECKPOINT.with_suffix(".json").read_text())
    assert record["config"]["steps"] > 0 and "seed" in record["config"]


def _max_abs(a, b, x):
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return float((a(t) - b(t)).abs().max())


@pytest.mark.parametrize("shape", [(1, 3, 17, 23), (1, 3, 1, 1), (2, 3, 31, 8), (1, 3, 64, 64)])
def test_reparameterization_exact_random(bundled, shape):
    deploy = reparameterize(bundled.module)
    assert not training_blocks(deploy)
    assert training_blocks(bundled.module), "caller's model must stay in training form"
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    assert _max_abs(bundled.module, deploy, x) < 1e-5


@pytest.mark.shared
def test_reparameterization_exact_on_set5(bundled, set5_dir):
    deploy = reparameterize(bundled.module)
    for p in sorted((set5_dir / "LR_bicubic" / "X4").glob("*.png")):
        x = read_image(p).rgb.transpose(2, 0, 1)[None]
        assert _max_abs(bundled.module, deploy, x) < 1e-5, p.name


@pytest.mark.shared
def test_bundled_beats_bicubic(set5_dir):
    res = evaluate(resolve_model(BUNDLED_CHECKPOINT, "torch").runner, set5_dir, 4)
    assert res.psnr_y > BICUBIC_SET5_X4 + 0.5, res.psnr_y


def test_default_convert_job(tmp_path):
    """The README's main job: the bundled model with --int8."""
    out = tmp_path / "bundle"
    result = convert(ConvertOptions(outdir=out, bench=True, int8=True), log=lambda m: None)
    assert result.ok
    for name in ("manifest.json", "report.json", "report.md", "model.onnx", "model.ort", "model_int8.onnx",
                 "model_int8.ort", "deploy.safetensors"):
        assert (out / name).is_file(), name
    q = json.loads((out / "report.json").read_text())["int8"]["cpu"]  # --int8 alone: the ORT CPU graph
    assert q["within_budget"] and q["drop"] <= 0.1
    assert "## INT8" in (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["bundled"] and manifest["spec"]["form"] == "deploy"
    report = json.loads((out / "report.json").read_text())
    assert report["reparameterization"]["applied"] and report["reparameterization"]["max_abs"] < 1e-5
    assert report["latency"]["results"] and report["parity"]["ok"]
    assert not list(tmp_path.glob(".edgesr-partial-*"))


def test_training_form_exports_with_dynamic_shapes(bundled, tmp_path):
    """The training form itself exports (to measure what reparameterization buys)."""
    import onnxruntime as ort

    from edgesr.export.onnx import export_onnx

    path = tmp_path / "training.onnx"
    export_onnx(bundled.module, bundled.spec, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 17, 23), (2, 3, 40, 31), (1, 3, 64, 64)]:
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        with torch.inference_mode():
            ref = bundled.module(torch.from_numpy(x)).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert float(np.abs(out - ref).max()) < 1e-5
