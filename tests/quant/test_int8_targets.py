"""INT8 per target runtime, one verdict, and the OpenVINO backend (issue 21).

The bundled ECBSR x4 converted with --int8 --openvino: one INT8 graph per runtime, each
judged once (budget on ground truth, in its own runtime), every consumer running the graph
made for its runtime, OpenVINO IR artifacts verified; a missed budget makes convert exit 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino", reason="needs pip install 'edgesr[openvino]'")

from edgesr.cli import main  # noqa: E402
from edgesr.pipeline import ConvertOptions, convert  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    res = convert(ConvertOptions(outdir=out, int8=True, openvino=True, threads=1, ort_format=False),
                  log=lambda m: None)
    return out, res


def test_one_graph_per_runtime_and_one_verdict(bundle):
    out, res = bundle
    assert res.ok
    m = json.loads((out / "manifest.json").read_text())
    roles = {a["role"]: a for a in m["artifacts"]}
    assert {"onnx_fp32", "onnx_int8_cpu", "openvino_fp32", "openvino_fp32_weights", "openvino_int8",
            "openvino_int8_weights"} <= set(roles)
    assert roles["onnx_int8_cpu"]["backend"] == "onnxruntime" and roles["openvino_int8"]["backend"] == "openvino"
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    # how edgesr compiled the IRs for the verdict and times (static shapes: docs/int8.md, "OpenVINO findings")
    assert roles["openvino_int8"]["compile"].startswith("static-shape") and "compile" in roles["openvino_fp32"]
    assert not (out / "model_int8_openvino.onnx").exists()  # the IR is the artifact
    # the verdict: criterion, images, budget - in the manifest, per graph, in its runtime
    for profile, runtime in (("cpu", "onnxruntime"), ("openvino", "openvino")):
        v = m["int8"][profile]
        assert v["runtime"] == runtime and v["within_budget"] and v["drop_db"] <= v["budget_db"] == 0.1
        assert "ground-truth" in v["criterion"] and v["eval_images"] and v["calibration_images"]
        assert not set(v["eval_images"]) & set(v["calibration_images"])
        assert v["measured_on"]["u8s8_path"] and "vnni" in v["measured_on"]  # the CPU the claims hold for
        assert v["speedup"] > 0 and "fp32_ms" in v
        expected = v["artifact"] if v["default"] else {"onnxruntime": "onnx_fp32", "openvino": "openvino_fp32"}[runtime]
        assert m["default_artifacts"][runtime] == expected
    # parity: INT8 rows are information, fp32 OpenVINO is gated like any fp32 artifact
    comps = {c["candidate"]: c for c in m["parity"]["comparisons"]}
    assert comps["openvino:fp32"]["gate"] and comps["openvino:fp32"]["ok"] and comps["openvino:fp32"]["max_abs"] < 1e-5
    assert comps["ort:int8-cpu"]["gate"] is False and comps["openvino:int8-openvino"]["gate"] is False
    report = json.loads((out / "report.json").read_text())
    assert {r["backend"] for r in report["latency"]["results"]} >= {"ort:fp32", "ort:int8-cpu", "openvino:fp32",
                                                                   "openvino:int8-openvino"}
    assert "Verdict (the only one" in (out / "report.md").read_text()


def test_every_consumer_runs_the_graph_made_for_its_runtime(bundle, tmp_path):
    from edgesr.bench import open_model, prepare_backend
    from edgesr.resolve import resolve_model

    out, _ = bundle
    src = open_model(out)
    try:
        assert prepare_backend(src, "ort-int8").runner.path.name == "model_int8.onnx"
        assert prepare_backend(src, "openvino-int8").artifact.endswith("model_int8_openvino.xml")
        assert prepare_backend(src, "openvino").artifact.endswith("model.xml")
    finally:
        src.close()
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    ref = resolve_model(out, backend="ort").runner.run(x)
    for backend, tol in (("openvino", 1e-6), ("ort-int8", 0.02), ("openvino-int8", 0.02)):
        r = resolve_model(out, backend=backend)
        y = r.runner.run(x)
        assert y.shape == ref.shape and float(np.abs(y - ref).mean()) < tol, backend  # random input: mean error
    # upscale through OpenVINO INT8
    from PIL import Image

    Image.fromarray((np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["upscale", str(out), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--backend",
                 "openvino-int8"]) == 0
    assert Image.open(tmp_path / "b.png").size == (96, 80)


def test_int8_backend_refuses_a_graph_made_for_another_runtime(tmp_path, capsys):
    out = tmp_path / "trt_only"
    convert(ConvertOptions(outdir=out, int8=True, int8_profile="trt", bench=False, ort_format=False),
            log=lambda m: None)
    rc = main(["bench", str(out), "-b", "ort-int8", "--min-runs", "1", "--min-seconds", "0", "--warmup", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and "no INT8 graph made for ort-int8" in err and "onnx_int8_trt" in err


def test_missed_budget_exits_nonzero_and_says_so(tmp_path, capsys):
    out = tmp_path / "strict"
    rc = main(["convert", "-o", str(out), "--int8", "--psnr-budget", "0", "--no-bench", "--no-ort-format"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "edgesr: error: INT8 cpu: no INT8 graph met the 0.0 dB budget" in captured.err
    assert "--psnr-budget" in captured.err and "INT8 OVER BUDGET" in captured.out
    m = json.loads((out / "manifest.json").read_text())
    assert not m["int8"]["cpu"]["within_budget"] and m["default_artifacts"]["onnxruntime"] == "onnx_fp32"
