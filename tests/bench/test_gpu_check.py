"""benchmarks/gpu_check.py: the CPU dry run of the GPU check (the command a lent GPU machine runs),
its time boxes, and the parsers it reads nvidia-smi and pytest with."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from edgesr.fsutil import sha256_file

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


gc = _module()


@pytest.fixture(scope="module")
def payload(shared_dir, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("gpu") / "payload"
    p = subprocess.run([sys.executable, str(SCRIPT), "--prepare", "--shared", str(shared_dir), "--payload", str(dst)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return dst


@pytest.fixture(scope="module")
def dry_run(payload, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--payload", str(payload), "--out", str(out)],
                       capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return json.loads((out / "gpu.json").read_text()), out, p.stdout


def test_prepare_copies_a_small_verified_payload(payload, shared_dir):
    m = json.loads((payload / "manifest.json").read_text())
    assert len(m["models"]) == len(list((shared_dir / "checkpoints" / "etds-repo").rglob("*.pth")))
    for f in m["files"]:
        p = payload / f["path"]
        assert p.is_file() and p.stat().st_size == f["bytes"]
        assert f["sha256"] == sha256_file(shared_dir / f["path"])  # byte for byte what ../shared holds
    assert m["total_bytes"] < 32 * 2**20  # travels with the working tree (64 MiB in all)
    loadable = {Path(n["path"]).name for n in m["ntire"]["loadable"]}
    assert {"team00_rlfn.pth", "team38_span_ch28_slim.pth"} <= loadable
    assert all(n["reasons"] for n in m["ntire"]["not_loadable"])
    assert m["ntire"]["challenge"]["2024"]["gpu"] == "NVIDIA GeForce RTX 3090"


def test_prepare_refuses_to_replace_a_folder_it_did_not_write(shared_dir, tmp_path):
    mine = tmp_path / "payload"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    p = subprocess.run([sys.executable, str(SCRIPT), "--prepare", "--shared", str(shared_dir), "--payload", str(mine)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "not a payload this script wrote" in p.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


def test_dry_run_completes_every_section(dry_run):
    rec, out, stdout = dry_run
    assert rec["status"] == "complete" and rec["dry_run"] is True
    for name in gc.SECTIONS:
        sec = rec["sections"][name]
        assert sec["status"] == "done", (name, sec.get("cut"), sec.get("errors"), sec.get("reason"))
        assert not sec["errors"], (name, sec["errors"])
        assert sorted(sec["done"]) == sorted(sec["planned"])
    assert "section    status" in stdout  # the closing table the device tool's output tail shows
    md = (out / "gpu.md").read_text()
    for heading in ("### Machine", "### Parity on the GPU", "### Latency", "### NTIRE ESR runtime protocol",
                    "### TensorRT", "### GPU-marked tests", "### torch.compile", "### Time boxes"):
        assert heading in md
    assert (out / "gpu_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_parity_covers_every_family_and_file(dry_run, payload):
    from edgesr.registry import architectures

    rec, _, _ = dry_run
    m = json.loads((payload / "manifest.json").read_text())
    rows = rec["sections"]["parity"]["rows"]
    assert {r["arch"] for r in rows} == {a.name for a in architectures()}
    files = {f["path"] for f in m["models"]} | {f["path"] for f in m["ntire"]["loadable"]}
    assert files <= {r["model"] for r in rows}
    for r in rows:
        assert set(r["precisions"]) == set(gc.PARITY_PRECISIONS)
        for label, v in r["precisions"].items():
            assert isinstance(v["max_abs"], float), (r["model"], label, v)
        # On the CPU the 'GPU' fp32 runner computes what the reference computes.
        assert r["precisions"]["fp32"]["ok"] and r["precisions"]["fp32"]["max_abs"] <= 1e-5
        assert r["activation_peak"]["module"]
        if r["source"] == "trained checkpoint":
            assert r["precisions"]["fp16"]["psnr_y_cpu"] is not None  # Set5 ground truth was used
    etds_l = next(r for r in rows if r["model"].endswith("ETDS_M7C48_x4.pth"))
    assert etds_l["precisions"]["fp16"]["max_abs"] < 0.05  # fp16 really ran in half precision, and sanely
    assert etds_l["precisions"]["fp16"]["max_abs"] > 0


def test_dry_run_latency_compile_ntire_trt_tests(dry_run):
    rec, _, _ = dry_run
    lat = rec["sections"]["latency"]["rows"]
    timed = [r for r in lat if r.get("kind") != "host"]
    assert not [r for r in lat if r.get("error")]
    models = {r["model"] for r in timed}
    assert len(models) == len(gc.DRY_LATENCY_MODELS)
    assert len(timed) == len(models) * len(gc.LATENCY_PRECISIONS) * len(gc.MODES)
    for r in timed:
        s = r["stats"]
        assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["runs"] >= 3 and r["mpix_per_s"] > 0
        assert r["max_abs_vs_fp32"] <= (1e-4 if r["precision"].startswith("fp32") else 5e-2), r
    host = [r for r in lat if r.get("kind") == "host"]
    assert len(host) == 2 * len(models)
    for r in host:
        assert {"compute", "h2d", "d2h"} <= set(r["bench"]["gpu"]) and r["bench"]["median_ms"] > 0

    comp = rec["sections"]["compile"]["rows"]
    assert len(comp) == 1 and comp[0]["compile_s"] > 0 and comp[0]["max_abs_vs_fp32"] <= 1e-4

    ntire = {Path(r["model"]).name: r for r in rec["sections"]["ntire"]["rows"]}
    assert {"team00_rlfn.pth", "team38_span_ch28_slim.pth"} <= set(ntire)
    rlfn = ntire["team00_rlfn.pth"]
    assert rlfn["images"] == gc.DRY_NTIRE_IMAGES and rlfn["first_ms"] > 0
    c = rlfn["challenge"]  # read from the challenge's results.json, not typed in
    assert c["results_key"] == "00_RLFN_baseline" and c["gpu"] == "NVIDIA GeForce RTX 3090"
    assert c["valid_ave_runtime_ms"] == pytest.approx(14.943, abs=1e-3)
    assert c["valid_div2k_median_ms"] == pytest.approx(11.441, abs=1e-3)

    trt = {r["backend"]: r for r in rec["sections"]["trt"]["rows"]}
    assert set(trt) == {"trt", "trt-rtx"}
    assert all(not r["runs_here"] and r["reason"] for r in trt.values())

    tests = rec["sections"]["tests"]["rows"][0]
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 1  # no GPU here: they skip


def test_time_box_cuts_the_remaining_items():
    emit = gc.Emitter(None)
    ran = []
    now = [0.0]

    def item(name, cost):
        def fn():
            ran.append(name)
            now[0] += cost
        return name, fn

    gc.run_items([item("a", 4.0), item("b", 1.0), item("c", 1.0)], deadline=6.0, emit=emit, clock=lambda: now[0])
    assert ran == ["a"]  # 2 s left after a, which took 4 s: b is not started
    cut = [e for e in emit.events if e["t"] == "cut"]
    assert cut and cut[0]["items"] == ["b", "c"] and "time box" in cut[0]["reason"]


def test_failing_item_is_recorded_and_the_next_runs():
    emit = gc.Emitter(None)

    def boom():
        raise RuntimeError("CUDA error: out of memory\nmore")

    gc.run_items([("x", boom), ("y", lambda: None)], deadline=float("inf"), emit=emit)
    errors = [e for e in emit.events if e["t"] == "error"]
    assert errors[0]["item"] == "x" and errors[0]["error"] == "RuntimeError: CUDA error: out of memory"
    assert [e["item"] for e in emit.events if e["t"] == "done"] == ["x", "y"]


def test_section_over_its_hard_limit_is_killed_and_recorded(payload, tmp_path):
    args = gc.build_parser().parse_args(["--dry-run", "--payload", str(payload), "--out", str(tmp_path),
                                         "--grace", "0"])
    run = gc.Run(args)
    try:
        status = run.run_section("latency", 0.2)  # the child cannot even import torch in 0.2 s
    finally:
        run.cleanup()
    assert status == "cut"
    rec = json.loads((tmp_path / "gpu.json").read_text())  # written even though the section died
    sec = rec["sections"]["latency"]
    assert "killed at the hard limit" in sec["killed"] and sec["cut"]
    assert "latency" in (tmp_path / "gpu.md").read_text()


def test_parse_nvidia_smi_csv():
    fields = ("name", "driver_version", "clocks.sm", "clocks.applications.graphics", "power.draw")
    text = "NVIDIA H200, 580.159.03, 1980 MHz, [N/A], 118.52 W\n"
    assert gc.parse_nvidia_smi_csv(text, fields) == [{
        "name": "NVIDIA H200", "driver_version": "580.159.03", "clocks.sm": "1980 MHz",
        "clocks.applications.graphics": None, "power.draw": "118.52 W"}]
    with pytest.raises(ValueError):
        gc.parse_nvidia_smi_csv("NVIDIA H200, 580\n", fields)


def test_parse_pytest_summary():
    text = "ss..F\nFAILED tests/x.py::t - boom\n1 failed, 3 passed, 2 skipped, 37 deselected, 1 warning in 4.2s\n"
    assert gc.parse_pytest_summary(text) == {"failed": 1, "passed": 3, "skipped": 2, "deselected": 37, "warning": 1}


def test_markdown_of_an_empty_record_says_what_did_not_run():
    md = gc.render_markdown({"status": "running", "budget_s": 360.0, "sections": {"env": {"status": "pending"}}})
    assert "Not measured" in md and "TensorRT-RTX engines run only on RTX GPUs" in md


def test_markdown_renders_the_gpu_only_rows():
    """Rows only a GPU run produces (device properties, nvidia-smi, an fp16 overflow, an engine that ran)."""
    tol = {"max_abs": 1e-5}
    ok = {"ok": True, "failures": [], "tolerance": tol, "max_abs": 1e-6, "psnr": 90.0, "psnr_y_cpu": 31.4,
          "psnr_y_gpu": 31.4}
    bad = dict(ok, ok=False, failures=["output contains NaN/Inf"], max_abs="nan", psnr="nan", psnr_y_gpu=None)
    rec = {
        "status": "complete", "budget_s": 360.0, "elapsed_s": 351.0, "dry_run": False,
        "machine": {"nvidia_smi_start": {"available": True, "at": "t", "gpus": [{
            "name": "NVIDIA H200", "driver_version": "580.159.03", "clocks.sm": "1980 MHz", "pstate": "P0"}]}},
        "sections": {
            "env": {"status": "done", "info": {"torch": {
                "gpu": "NVIDIA H200", "compute_capability": "9.0", "multiprocessors": 132, "gpu_memory_gib": 139.8,
                "torch": "2.11.0+cu130", "cuda_build": "13.0", "cudnn": 91300}}},
            "parity": {"status": "done", "rows": [{
                "model": "m.pth", "source": "trained checkpoint", "arch": "x", "inputs": ["butterfly"],
                "fp16_safe": True, "precisions": {"fp32": ok, "fp32-default": ok, "fp16": bad, "bf16": ok},
                "overflow": {"fp16": {"module": "body.3", "type": "Conv2d", "input": "butterfly"}},
                "activation_peak": {"module": "body.3", "max_abs": 7.1e4, "fp16_headroom": 0.92}}]},
            "trt": {"status": "done", "rows": [{"backend": "trt", "runs_here": True, "version": "10.13",
                                                "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}}]},
            "tests": {"status": "done", "rows": [{"command": "pytest -m gpu", "counts": {"failed": 1, "passed": 2},
                                                  "returncode": 1, "seconds": 9.0,
                                                  "failed": ["FAILED tests/bench/test_bench.py::t - boom"]}]}}}
    md = gc.render_markdown(rec)
    assert "NVIDIA H200, compute capability 9.0, 132 SMs" in md and "driver 580.159.03" in md
    assert "first in `body.3` (Conv2d) although its Spec says fp16_safe" in md
    assert "nan (nan) **FAIL**" in md and "fp16: 0/1 within tolerance" in md
    assert "trt 10.13: ran on NVIDIA H200" in md and "FAILED tests/bench/test_bench.py::t" in md
