"""`edgesr convert --trt-rtx`: engines in OUTDIR/engines/, sidecars, manifest entries, report
section, engine cache reuse across runs; `edgesr parity` on an engine without a GPU.

Builds real TensorRT-RTX engines (ahead of time, no GPU) from a small ESPCN x2 checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgesr.cli import main

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'edgesr[trt-rtx]')")

from edgesr.backends.trt import open_runner, read_sidecar  # noqa: E402
from edgesr.bundle import read_manifest  # noqa: E402
from edgesr.errors import BackendUnavailable, EngineBuildError  # noqa: E402
from edgesr.fsutil import sha256_file  # noqa: E402

NO_GPU = not torch.cuda.is_available()


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    m = build_variant("espcn-x2", "deploy").module
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "espcn_x2.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def converted(ckpt, tmp_path_factory):
    """Two conversions of the same checkpoint sharing one engine cache."""
    base = tmp_path_factory.mktemp("convert")
    cache = base / "cache"
    outs = []
    for name in ("out1", "out2"):
        rc = main(["convert", str(ckpt), "-o", str(base / name), "--scale", "2", "--trt-rtx", "--no-bench",
                   "--no-ort-format", "--trt-max", "256x320", "--trt-cache", str(cache)])
        assert rc == 0
        outs.append(base / name)
    return outs[0], outs[1], cache


def test_convert_writes_engine_sidecar_and_manifest(converted):
    out, _, cache = converted
    engine = out / "engines" / "model.trt-rtx.engine"
    side = read_sidecar(engine)
    assert engine.is_file() and side is not None
    assert side["engine"]["sha256"] == sha256_file(engine)
    assert side["precision"] == "fp32" and side["flavour"]["version"] == trt.__version__
    assert side["target"] == {"compute_capabilities": "default"}
    # Profile: min from the spec (16), opt = the latency workload LR size (720x1280 / 2), max from --trt-max.
    assert side["profile"]["input"] == "input"
    assert (side["profile"]["min"], side["profile"]["opt"], side["profile"]["max"]) == (
        [1, 3, 16, 16], [1, 3, 256, 320], [1, 3, 256, 320])
    assert [(t["name"], t["dtype"]) for t in side["io"]["inputs"]] == [("input", "float32")]
    assert [(t["name"], t["dtype"]) for t in side["io"]["outputs"]] == [("output", "float32")]
    # The same engine sits in the cache, under its key.
    cached = cache / side["cache_key"][:32] / engine.name
    assert sha256_file(cached) == sha256_file(engine)

    m = read_manifest(out)  # schema-validated, every hash re-checked
    a = m.artifact("engine_fp32_rtx")
    assert (a.file, a.format, a.precision, a.backend) == (
        "engines/model.trt-rtx.engine", "tensorrt-rtx-engine", "fp32", "tensorrt-rtx")
    assert a.extra["sidecar"] == "engines/model.trt-rtx.engine.json"
    assert a.extra["source"] == "model.onnx" and a.extra["cache_key"] == side["cache_key"]
    assert a.extra["shape_range"]["height"] == {"min": 16, "max": 256, "opt": 256}
    s = m.artifact("engine_fp32_rtx_sidecar")
    assert s.file == "engines/model.trt-rtx.engine.json" and s.sha256 == sha256_file(out / s.file)

    rep = json.loads((out / "report.json").read_text())["engines"]
    assert rep["flavours"] == ["rtx"] and rep["cache_dir"] == str(cache)
    (b,) = rep["builds"]
    assert b["role"] == "engine_fp32_rtx" and b["precision"] == "fp32" and b["source"] == "model.onnx"
    assert b["cache_hit"] is False and b["build_seconds"] > 0
    assert b["bytes"] == engine.stat().st_size
    if NO_GPU:
        assert rep["run"] == b["run"] == "not verified — no GPU"


def test_second_convert_is_a_cache_hit(converted):
    out1, out2, _ = converted
    e1, e2 = (o / "engines" / "model.trt-rtx.engine" for o in (out1, out2))
    rep = json.loads((out2 / "report.json").read_text())["engines"]
    (b,) = rep["builds"]
    assert b["cache_hit"] is True and b["build_seconds"] == 0
    # The very same engine and sidecar (built once, at the first conversion).
    assert sha256_file(e1) == sha256_file(e2)
    assert (e1.parent / (e1.name + ".json")).read_bytes() == (e2.parent / (e2.name + ".json")).read_bytes()
    assert b["built_at"] == read_sidecar(e1)["built_at"]
    assert read_manifest(out2).artifact("engine_fp32_rtx").sha256 == sha256_file(e1)


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU message")
def test_parity_on_engine_without_gpu_is_one_line(converted, capsys):
    out, _, _ = converted
    rc, _, err = run_cli(capsys, "parity", out / "model.onnx", out / "engines" / "model.trt-rtx.engine")
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("edgesr: error: cannot run model.trt-rtx.engine")
    assert "NVIDIA GPU" in err and "Traceback" not in err
    with pytest.raises(BackendUnavailable, match="engines run on an NVIDIA GPU only"):
        open_runner(out / "engines" / "model.trt-rtx.engine")


def test_open_runner_needs_the_sidecar(converted, tmp_path):
    out, _, _ = converted
    lone = tmp_path / "lone.engine"
    lone.write_bytes((out / "engines" / "model.trt-rtx.engine").read_bytes())
    with pytest.raises(EngineBuildError, match="no readable sidecar lone.engine.json"):
        open_runner(lone)
    with pytest.raises(EngineBuildError, match="engine not found"):
        open_runner(tmp_path / "missing.engine")


def test_bad_trt_options_fail_before_converting(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "convert", ckpt, "-o", out, "--trt-rtx", "--trt-cc", "9.0")
    assert rc == 2 and "cannot target compute capability '9.0'" in err and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "convert", ckpt, "-o", out, "--trt-rtx", "--trt-min", "16xq")
    assert rc == 2 and "--trt-min: '16xq' is not HxW" in err
    rc, _, err = run_cli(capsys, "convert", ckpt, "-o", out, "--trt-rtx", "--trt-opt-level", "9")
    assert rc == 2 and "--trt-opt-level must be 0..5" in err
    if NO_GPU:
        rc, _, err = run_cli(capsys, "convert", ckpt, "-o", out, "--trt")
        assert rc == 2 and ("no CUDA GPU" in err or "pip install 'edgesr[trt]'" in err)
    assert not out.exists()


class _SubstituteRunner:
    """Stands in for TensorRTRunner on a machine without a GPU: runs the engine's source ONNX
    with ONNX Runtime. Exercises only the pipeline plumbing (parity/latency merging,
    manifest), never TensorRT execution."""

    def __init__(self, engine_path: Path, name: str):
        from edgesr.backends.ort_runner import OrtRunner

        src = Path(engine_path).parent.parent / read_sidecar(engine_path)["onnx"]["path"].rsplit("/", 1)[-1]
        self._ort = OrtRunner(src, threads=1)
        self.name, self.precision, self.closed = name, "fp32", False

    def run(self, x):
        return self._ort.run(x)

    def time_gpu(self, x, *, warmup=10, iters=50):
        import time

        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            self._ort.run(x)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def close(self):
        self.closed = True


def test_engine_run_results_join_parity_and_latency(ckpt, tmp_path, monkeypatch):
    """With a (substitute) GPU present the engine joins report parity, latency and the manifest."""
    from edgesr.backends import trt_convert
    from edgesr.pipeline import ConvertOptions, convert

    opened = []

    def fake_open(path, name=None, **kw):
        opened.append(_SubstituteRunner(path, name))
        return opened[-1]

    monkeypatch.setattr(trt_convert, "gpu_info", lambda device=0: {"name": "substitute", "compute_capability": "8.6"})
    monkeypatch.setattr(trt_convert, "open_runner", fake_open)
    req = trt_convert.EngineRequest(flavours=("rtx",), max_hw=(96, 128), cache_dir=tmp_path / "cache")
    res = convert(ConvertOptions(outdir=tmp_path / "out", checkpoint=ckpt, scale=2, ort_format=False, bench=True,
                                 bench_output=(128, 192), engines=req), log=lambda m: None)
    eng = res.report["engines"]
    assert [r.name for r in opened] == ["trt-rtx:fp32"] and opened[0].closed
    assert eng["run"]["device"]["name"] == "substitute"
    # verification inputs below the profile's 16x16 minimum (1x1, 32x7) are left out, the rest compared
    assert [1, 3, 1, 1] in eng["run"]["skipped_inputs"] and eng["run"]["inputs"]
    comps = {c["test"]: c for c in res.report["parity"]["comparisons"]}
    assert comps["trt-rtx:fp32"]["ok"] and comps["trt-rtx:fp32"]["reference"] == "torch:deploy"
    assert eng["builds"][0]["run"]["parity_ok"] is True
    lat = {r["backend"]: r for r in res.report["latency"]["results"]}
    assert lat["trt-rtx:fp32 (GPU)"]["size"] == "64x96" and lat["trt-rtx:fp32 (GPU)"]["timer"] == "cuda-events"
    assert "trt-rtx:fp32" in {c["candidate"] for c in res.manifest["parity"]["comparisons"]}
    assert res.ok and read_manifest(tmp_path / "out").parity_ok
