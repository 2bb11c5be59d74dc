"""All latency benchmarks in one command: CPU ONNX Runtime (fp32, INT8), PyTorch, GPU when present.

    python benchmarks/run_all.py --out benchmarks/results [--work ~/.cache/edgesr/bench] [--quick]

Writes into --out:
  machine.json          machine info, load averages before/after, measured roofs (GEMM fp32, int8, copy)
  models.json           every x4 checkpoint of ../shared: params, MACs/output pixel, Set5 Y-PSNR fp32/INT8,
                        ORT fp32 vs INT8 latency at 180x320 -> 720x1280 (interleaved), achieved GFLOP/s,
                        efficiency vs the measured roofs, which convs ORT runs as QLinearConv
  comparisons.json      (a) training form exported as-is vs deploy form (ORT), (b) PyTorch eager vs ORT fp32
                        vs ORT INT8, each in ONE interleaved run, as ratios with per-round spread
  ort_settings.json     (c) ORT session settings (threads 1/2, graph optimization basic/extended/all,
                        NCHWc layout transformer on/off, thread spinning) interleaved, with output checks
  resolution.json       latency vs resolution per backend + the standard workloads (x4 and x2, 720p/1080p)
  profiles.json         ORT per-operator profiles (so.enable_profiling) behind the targets
  reparam_gain.json     benchmarks/reparam_gain.py (ECBSR-M4C16 training -> deploy)
  gpu_run_all.json      GPU rows (torch-cuda, trt) or why they were not measured (the full GPU check is
                        benchmarks/gpu_check.py, which writes gpu.json + gpu.md)
  run_all.json          targets met/missed, phase durations, configuration
  README.md + *.png     summary, latency vs resolution, PSNR-vs-latency Pareto, roofline per model

ONNX exports and INT8 models are cached in --work (keyed by weights, config and code), so a second
run skips them. Every comparison's candidates run interleaved in one run (edgesr.bench); absolute
numbers depend on the machine's load, which is recorded before and after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr.bench import (  # noqa: E402
    SessionRunner,
    TimingPolicy,
    cuda_status,
    int8_available,
    int8_record,
    load_warning,
    machine_info,
    max_abs_diff,
    megapixels_per_second,
    open_model,
    optimized_ops,
    ort_session,
    profile_ort,
    ratio_summary,
    time_interleaved,
)
from edgesr.fsutil import atomic_write_json, atomic_write_text  # noqa: E402

SHARED = Path(os.environ.get("EDGESR_SHARED", ROOT.parent / "shared"))
CKPTS = SHARED / "checkpoints" / "etds-repo"
SET5 = SHARED / "testsets" / "Set5"

# Every x4 model of the ETDS repository's model zoo in ../shared (display name -> file).
X4_MODELS = {
    "ETDS-T": "ETDS/ETDS_M5C16_x4.pth", "ETDS-S": "ETDS/ETDS_M4C32_x4.pth", "ETDS-M": "ETDS/ETDS_M6C32_x4.pth",
    "ETDS-L": "ETDS/ETDS_M7C48_x4.pth",
    "ECBSR-M4C16": "ECBSR/ECBSR_M4C16_x4.pth", "ECBSR-M4C32": "ECBSR/ECBSR_M4C32_x4.pth",
    "ECBSR-M6C40": "ECBSR/ECBSR_M6C40_x4.pth",
    "ECBSR-ET-M4C16": "ECBSR/ECBSR_ET_M4C16_x4.pth", "ECBSR-ET-M4C32": "ECBSR/ECBSR_ET_M4C32_x4.pth",
    "ECBSR-ET-M6C40": "ECBSR/ECBSR_ET_M6C40_x4.pth",
    "ABPN-M4C28": "ABPN/ABPN_M4C28_x4.pth", "ABPN-M6C40": "ABPN/ABPN_M6C40_x4.pth",
    "ABPN-ET-M4C28": "ABPN/ABPN_ET_M4C28_x4.pth", "ABPN-ET-M6C40": "ABPN/ABPN_ET_M6C40_x4.pth",
    "ESPCN": "ESPCN/ESPCN_x4.pth", "FSRCNN": "FSRCNN/FSRCNN_x4.pth", "Plain-M6C32": "Plain/Plain_M6C32_x4.pth",
}
QUICK_MODELS = ("ETDS-M", "ETDS-L", "ECBSR-M4C16", "ESPCN")
ALL_INT8_MODELS = ("ETDS-M", "ETDS-L")  # also quantized with every layer int8 (no PSNR budget)
ETDS_M_X2 = "ETDS/ETDS_M6C32_x2.pth"
ETDS_TRAINING = "ETDS/ablations/ETDS_M6C32_x4_normal_loss.pth"

# Interleaved comparisons keep several ORT sessions alive in one process; each has its own
# intra-op pool, and an idle pool's spinning threads compete with the session being timed on a
# 2-core machine. So every interleaved ORT session runs with spinning off (the (c) table shows
# what spinning itself costs or gains).
SPIN = False
OUR_FILES = ("machine.json", "models.json", "comparisons.json", "ort_settings.json", "resolution.json",
             "profiles.json", "reparam_gain.json", "gpu_run_all.json", "run_all.json")

TARGETS = {
    "ort_vs_torch_etds_m": ("ORT fp32 deploy form vs PyTorch eager CPU, ETDS-M x4 at 720p", 2.0),
    "int8_vs_fp32_etds_m": ("ORT INT8 vs ORT fp32, ETDS-M x4 at 720p", 1.6),
    "int8_vs_fp32_etds_l": ("ORT INT8 vs ORT fp32, ETDS-L x4 at 720p", 1.6),
    "ecbsr_training_to_deploy": ("ECBSR-M4C16 x4 training form -> deploy form, ORT, 720p", 3.0),
}


class Run:
    def __init__(self, out: Path, work: Path, quick: bool, threads: int | None):
        self.out, self.work, self.quick, self.threads = out, work, quick, threads
        self.phases: list[dict] = []
        self.t0 = time.perf_counter()
        # Workloads: the x4 720p LR size, or a tiny stand-in in --quick mode (plumbing checks only).
        self.x4_720p = (24, 40) if quick else (180, 320)
        self.pol_pairs = _pol(quick, min_runs=5, min_seconds=0.5, warmup=0.0)
        self.pol_headline = _pol(quick, min_runs=12, min_seconds=2.0, warmup=1.0)
        self.pol_settings = _pol(quick, min_runs=5, min_seconds=0.5, warmup=0.0)
        self.pol_res = _pol(quick, min_runs=5, min_seconds=0.5, warmup=0.0)
        self.int8_ok, self.int8_note = int8_available()
        self.int8_config = self.int8_all_config = None
        if self.int8_ok:
            from edgesr.quant import QuantConfig

            # `edgesr convert --int8 --int8-profile cpu` defaults (PSNR budget 0.1 dB), no progress bars.
            self.int8_config = QuantConfig(profile="cpu", progress=False)
            self.int8_all_config = QuantConfig(profile="cpu", progress=False, psnr_budget=None)

    def phase(self, name: str):
        run = self

        class _P:
            def __enter__(self):
                self.t = time.perf_counter()
                self.load = _load()
                print(f"[{time.perf_counter() - run.t0:6.0f} s] {name} (load {self.load[0]:.1f}) ...", flush=True)
                return self

            def __exit__(self, et, ev, tb):
                d = {"phase": name, "seconds": round(time.perf_counter() - self.t, 1), "load_before": self.load,
                     "load_after": _load()}
                if et is not None:
                    d["error"] = f"{et.__name__}: {ev}"
                    traceback.print_exception(et, ev, tb)
                run.phases.append(d)
                return et is not None and not issubclass(et, KeyboardInterrupt)  # record and go on

        return _P()

    def write(self, name: str, obj) -> None:
        atomic_write_json(self.out / name, obj)


def _pol(quick: bool, min_runs: int, min_seconds: float, warmup: float) -> TimingPolicy:
    if quick:
        return TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=2, min_seconds=0.0, max_runs=2)
    return TimingPolicy(warmup_seconds=warmup, warmup_runs=1, min_runs=min_runs, min_seconds=min_seconds)


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def _rand(c: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, c, *hw), dtype=np.float32)


def _stats(st, samples: bool = True) -> dict:
    return st.to_dict(samples=samples)


# =========================================================================== phases

def prepare_models(run: Run, names) -> dict:
    """Export (cached), quantize (cached), count MACs, optimized-graph ops, Set5 PSNR."""
    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.costmodel import count_macs
    from edgesr.evaluate import evaluate

    models = {}
    for name in names:
        ck = CKPTS / X4_MODELS[name]
        t = time.perf_counter()
        src = open_model(ck, workdir=run.work)
        m = {"checkpoint": str(ck.relative_to(SHARED)), "arch": src.spec.arch, "variant": src.spec.variant,
             "scale": src.spec.scale, "src": src}
        cost = count_macs(src.module, (1, 3, *run.x4_720p))
        m["cost"] = cost.to_dict()
        m["_cost"] = cost
        m["fp32_onnx"] = src.fp32_onnx()
        m["ort_ops_fp32"] = optimized_ops(m["fp32_onnx"])
        if SET5.is_dir():
            m["psnr_set5_fp32"] = round(evaluate(OrtRunner(m["fp32_onnx"], threads=run.threads), SET5, 4).psnr_y, 3)
        if run.int8_ok:
            try:
                p, how = src.int8_onnx("cpu", run.int8_config)
                m["int8_onnx"] = p
                rec = int8_record(p)
                m["int8"] = {"how": how, "float_layers": rec.get("float_layers"),
                             "psnr_eval_fp32": rec.get("psnr_fp32"), "psnr_eval_int8": rec.get("psnr_int8"),
                             "eval_set": rec.get("eval_set"), "quantize_seconds": rec.get("seconds")}
                ops = optimized_ops(p)
                m["ort_ops_int8"] = ops
                n_conv = sum(v for k, v in m["ort_ops_fp32"].items() if k in ("Conv", "FusedConv"))
                m["int8"]["convs_as_qlinearconv"] = f"{ops.get('QLinearConv', 0)}/{n_conv}"
                if SET5.is_dir():
                    m["psnr_set5_int8"] = round(evaluate(OrtRunner(p, threads=run.threads), SET5, 4).psnr_y, 3)
                if name in ALL_INT8_MODELS:
                    # Every layer int8 (no PSNR budget): the speed INT8 can give, and what it costs.
                    pa, _ = src.int8_onnx("cpu", run.int8_all_config)
                    m["int8_all_onnx"] = pa
                    opsa = optimized_ops(pa)
                    m["int8_all"] = {"convs_as_qlinearconv": f"{opsa.get('QLinearConv', 0)}/{n_conv}",
                                     "psnr_eval_int8": int8_record(pa).get("psnr_int8")}
                    if SET5.is_dir():
                        m["psnr_set5_int8_all"] = round(evaluate(OrtRunner(pa, threads=run.threads), SET5,
                                                                 4).psnr_y, 3)
            except Exception as e:  # noqa: BLE001 - recorded per model
                m["int8_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        m["prepare_seconds"] = round(time.perf_counter() - t, 1)
        print(f"    {name}: {m['cost']['macs_per_output_pixel']:.0f} MACs/px, PSNR fp32 {m.get('psnr_set5_fp32')} "
              f"int8 {m.get('psnr_set5_int8')} ({m['prepare_seconds']} s)", flush=True)
        models[name] = m
    return models


def pareto_latency(run: Run, models: dict, roofs: dict | None) -> None:
    """ORT fp32 vs INT8 for each model at the x4 720p workload, interleaved per model."""
    from edgesr.costmodel import achieved

    x = _rand(3, run.x4_720p)
    for name, m in models.items():
        fns = {"ort-fp32": SessionRunner(ort_session(m["fp32_onnx"], threads=run.threads, spinning=SPIN), "fp32")}
        if m.get("int8_onnx"):
            fns["ort-int8"] = SessionRunner(ort_session(m["int8_onnx"], threads=run.threads, spinning=SPIN), "int8")
        stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in fns.items()}, run.pol_pairs)
        out_hw = (run.x4_720p[0] * 4, run.x4_720p[1] * 4)
        m["latency_720p"] = {}
        for k, st in stats.items():
            prec = "int8" if k == "ort-int8" else "fp32"
            m["latency_720p"][k] = _stats(st) | {"mpix_per_s": round(megapixels_per_second(out_hw, st.median_ms), 3)} \
                | {"achieved": achieved(m["_cost"], st.median_ms, roofs, prec)}
        if "ort-int8" in stats:
            m["int8_speedup_720p"] = ratio_summary(stats["ort-fp32"], stats["ort-int8"])
        print(f"    {name}: fp32 {stats['ort-fp32'].median_ms:.1f} ms"
              + (f", int8 {stats['ort-int8'].median_ms:.1f} ms" if "ort-int8" in stats else ""), flush=True)


class _TorchThreads:
    """A TorchRunner that sets torch's (process-global) thread count before each run, so
    candidates with different thread counts can be interleaved."""

    def __init__(self, runner, threads: int):
        self.runner, self.threads = runner, threads

    def run(self, x):
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.runner.run(x)


def headline(run: Run, models: dict) -> dict:
    """(b) PyTorch eager CPU vs ORT fp32 vs ORT INT8, one interleaved run per model."""
    import torch

    from edgesr.backends.torch_runner import TorchRunner

    out = {}
    x = _rand(3, run.x4_720p)
    for name in ("ETDS-M", "ETDS-L"):
        if name not in models:
            continue
        m = models[name]
        if run.threads:
            torch.set_num_threads(run.threads)
        # Library-default threads (the headline) and one thread each: on a shared, oversubscribed
        # machine one thread per library is the comparison least distorted by the other tenants.
        torch_default = run.threads or torch.get_num_threads()
        fns = {"torch-eager": _TorchThreads(TorchRunner(m["src"].module), torch_default),
               "ort-fp32": SessionRunner(ort_session(m["fp32_onnx"], threads=run.threads, spinning=SPIN), "fp32")}
        if m.get("int8_onnx"):
            fns["ort-int8"] = SessionRunner(ort_session(m["int8_onnx"], threads=run.threads, spinning=SPIN), "int8")
        if m.get("int8_all_onnx"):
            fns["ort-int8 all layers"] = SessionRunner(ort_session(m["int8_all_onnx"], threads=run.threads, spinning=SPIN), "i8a")
        if not run.threads:
            fns["torch-eager 1 thread"] = _TorchThreads(TorchRunner(m["src"].module), 1)
            fns["ort-fp32 1 thread"] = SessionRunner(ort_session(m["fp32_onnx"], threads=1, spinning=SPIN), "fp32-1")
            if m.get("int8_onnx"):
                fns["ort-int8 1 thread"] = SessionRunner(ort_session(m["int8_onnx"], threads=1, spinning=SPIN), "int8-1")
            if m.get("int8_all_onnx"):
                fns["ort-int8 all layers 1 thread"] = SessionRunner(ort_session(m["int8_all_onnx"], threads=1, spinning=SPIN),
                                                                    "i8a-1")
        ref = fns["torch-eager"].run(x)
        checks = {k: max_abs_diff(r.run(x), ref) for k, r in fns.items() if k != "torch-eager"}
        stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in fns.items()}, run.pol_headline)
        torch.set_num_threads(torch_default)
        res = {"workload": f"x4 {run.x4_720p[0]}x{run.x4_720p[1]} -> {run.x4_720p[0] * 4}x{run.x4_720p[1] * 4}",
               "threads": {"default": f"torch {torch_default}, ORT {run.threads or 'default'}"},
               "stats": {k: _stats(v) for k, v in stats.items()}, "max_abs_vs_torch": checks,
               "ort_vs_torch": ratio_summary(stats["torch-eager"], stats["ort-fp32"])}
        if "ort-int8" in stats:
            res["int8_vs_fp32"] = ratio_summary(stats["ort-fp32"], stats["ort-int8"])
            res["int8_vs_torch"] = ratio_summary(stats["torch-eager"], stats["ort-int8"])
        if "ort-int8 all layers" in stats:
            res["int8_all_vs_fp32"] = ratio_summary(stats["ort-fp32"], stats["ort-int8 all layers"])
        if "ort-fp32 1 thread" in stats:
            res["ort_vs_torch_1thread"] = ratio_summary(stats["torch-eager 1 thread"], stats["ort-fp32 1 thread"])
            if "ort-int8 1 thread" in stats:
                res["int8_vs_fp32_1thread"] = ratio_summary(stats["ort-fp32 1 thread"], stats["ort-int8 1 thread"])
            if "ort-int8 all layers 1 thread" in stats:
                res["int8_all_vs_fp32_1thread"] = ratio_summary(stats["ort-fp32 1 thread"],
                                                                stats["ort-int8 all layers 1 thread"])
        res["int8_models"] = {"budget 0.1 dB (product default)": {
            "convs_as_qlinearconv": (m.get("int8") or {}).get("convs_as_qlinearconv"),
            "float_layers": (m.get("int8") or {}).get("float_layers"), "psnr_set5": m.get("psnr_set5_int8")},
            "all layers int8": {"convs_as_qlinearconv": (m.get("int8_all") or {}).get("convs_as_qlinearconv"),
                                "psnr_set5": m.get("psnr_set5_int8_all")},
            "fp32": {"psnr_set5": m.get("psnr_set5_fp32")}}
        out[name] = res
        print(f"    {name}: " + ", ".join(f"{k} {v.median_ms:.1f} ms" for k, v in stats.items()), flush=True)
    return out


def training_vs_deploy(run: Run) -> dict:
    """(a) ETDS-M: the real training-form checkpoint exported as-is vs its edgesr deploy form."""
    ck = CKPTS / ETDS_TRAINING
    if not ck.is_file():
        return {"skipped": f"{ck} missing"}
    train = open_model(ck, workdir=run.work, form="training")
    deploy = open_model(ck, workdir=run.work)
    note = "dynamic N/H/W exports (edgesr defaults)"
    try:
        pt, pd = train.fp32_onnx(), deploy.fp32_onnx()
    except Exception as e:  # noqa: BLE001 - fall back to static graphs on both sides
        note = f"static 1x3xHxW exports on both sides: dynamic training-form export failed ({e})"
        pt, pd = train.fp32_onnx(static_hw=run.x4_720p), deploy.fp32_onnx(static_hw=run.x4_720p)
    x = _rand(3, run.x4_720p)
    fns = {"training (exported as-is)": SessionRunner(ort_session(pt, threads=run.threads, spinning=SPIN), "t"),
           "deploy (edgesr)": SessionRunner(ort_session(pd, threads=run.threads, spinning=SPIN), "d")}
    outs = {k: r.run(x) for k, r in fns.items()}
    stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in fns.items()}, run.pol_headline)
    from edgesr.costmodel import count_macs

    ct = count_macs(train.module, (1, 3, *run.x4_720p))
    cd = count_macs(deploy.module, (1, 3, *run.x4_720p))
    k_t, k_d = list(fns)
    return {"model": "ETDS-M x4 (ETDS_M6C32_x4_normal_loss.pth, the repository's training-form checkpoint)",
            "export": note, "stats": {k: _stats(v) for k, v in stats.items()},
            "speedup": ratio_summary(stats[k_t], stats[k_d]),
            "max_abs_training_vs_deploy_clamped": max_abs_diff(np.clip(outs[k_t], 0, 1), outs[k_d]),
            "onnx_ops": {k_t: optimized_ops(pt), k_d: optimized_ops(pd)},
            "macs_per_output_pixel": {k_t: round(ct.functional_macs / ct.output_pixels, 1),
                                      k_d: round(cd.macs_per_output_pixel, 1)},
            "params": {k_t: ct.params, k_d: cd.params}}


def ort_settings(run: Run, models: dict) -> dict:
    """(c) ORT session settings for ETDS-M (fp32, and INT8 when available), interleaved."""
    m = models.get("ETDS-M")
    if m is None:
        return {"skipped": "ETDS-M not benchmarked"}
    x = _rand(3, run.x4_720p)
    out = {}
    for prec, path in (("fp32", m["fp32_onnx"]), ("int8", m.get("int8_onnx"))):
        if path is None:
            continue
        configs = {}
        for th in (1, 2):
            for lvl in ("basic", "extended", "all"):
                configs[f"threads={th} {lvl}"] = dict(threads=th, graph_opt=lvl)
            configs[f"threads={th} all, NCHWc off"] = dict(threads=th, graph_opt="all",
                                                           disabled_optimizers=["NchwcTransformer"])
        configs["default threads, all"] = dict(threads=None, graph_opt="all")
        configs["ort defaults (edgesr OrtRunner), spinning on"] = dict(threads=None, graph_opt="all", spinning=True)
        configs["threads=2 all, spinning on"] = dict(threads=2, graph_opt="all", spinning=True)
        for c in configs.values():
            c.setdefault("spinning", SPIN)
        runners = {k: SessionRunner(ort_session(path, **cfg), k) for k, cfg in configs.items()}
        base = "ort defaults (edgesr OrtRunner), spinning on"
        # "Safe" = same output as the configuration the model was validated with (ORT defaults:
        # edgesr's parity checks and INT8 PSNR search use them). fp32: rounding-level differences;
        # int8: within one 8-bit output level (unfused QDQ at "basic" rounds differently).
        ref = runners[base].run(x)
        diffs = {k: max_abs_diff(r.run(x), ref) for k, r in runners.items()}
        stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()}, run.pol_settings)
        rows = {k: _stats(v) | {"config": {kk: vv for kk, vv in configs[k].items()},
                                "max_abs_vs_defaults": diffs[k],
                                "speedup_vs_defaults": ratio_summary(stats[base], v)} for k, v in stats.items()}
        tol = 1e-4 if prec == "fp32" else 1.0 / 255
        safe = {k: v for k, v in stats.items() if diffs[k] <= tol}
        fastest = min(safe, key=lambda k: safe[k].median_ms)
        rec, why = _recommend(rows, tol, base)
        out[prec] = {"rows": rows, "fastest_safe": fastest, "recommended": rec, "recommended_why": why,
                     "tolerance": tol,
                     "ops": {lvl: optimized_ops(path, graph_opt=lvl) for lvl in ("basic", "extended", "all")}
                     | {"all, NCHWc off": optimized_ops(path, graph_opt="all",
                                                        disabled_optimizers=["NchwcTransformer"])}}
        print(f"    {prec}: fastest safe = {fastest} ({safe[fastest].median_ms:.1f} ms; defaults "
              f"{stats[base].median_ms:.1f} ms)", flush=True)
    return out


def _recommend(rows: dict, tol: float, base: str) -> tuple[str, str]:
    """Keep the defaults unless a configuration with the same output (<= tol) beat them in at
    least 90 % of the interleaved rounds (per-round speedup p10 > 1)."""
    better = [k for k, r in rows.items() if k != base and r["max_abs_vs_defaults"] <= tol
              and r["speedup_vs_defaults"].get("paired_p10", 0) > 1.0]
    if better:
        rec = min(better, key=lambda k: rows[k]["median_ms"])
        return rec, f"faster than the defaults in >= 90 % of the rounds ({_ratio(rows[rec]['speedup_vs_defaults'])})"
    return base, "no configuration with the same output beat the defaults in >= 90 % of the interleaved rounds"


def resolution(run: Run, models: dict) -> dict:
    """Latency vs resolution (ETDS-M x4: ORT fp32, ORT INT8, PyTorch) and the x2 standard workloads."""
    from edgesr.backends.torch_runner import TorchRunner

    rows = []
    notes: dict = {}
    m = models.get("ETDS-M")
    if m is None:
        return {"skipped": "ETDS-M not benchmarked"}
    sizes4 = [(12, 20), (24, 40)] if run.quick else [(90, 160), (180, 320), (270, 480)]
    backends = {"torch-eager": TorchRunner(m["src"].module),
                "ort-fp32": SessionRunner(ort_session(m["fp32_onnx"], threads=run.threads, spinning=SPIN), "fp32")}
    if m.get("int8_onnx"):
        backends["ort-int8"] = SessionRunner(ort_session(m["int8_onnx"], threads=run.threads, spinning=SPIN), "int8")
    for hw in sizes4:
        rows += _res_rows(run, "ETDS-M", 4, hw, backends)
    # x2 standard workloads: ORT only (PyTorch eager at 540x960 alone takes several seconds a run).
    ck2 = CKPTS / ETDS_M_X2
    if ck2.is_file():
        src2 = open_model(ck2, workdir=run.work)
        b2 = {"ort-fp32": SessionRunner(ort_session(src2.fp32_onnx(), threads=run.threads, spinning=SPIN), "fp32")}
        if run.int8_ok:
            try:
                p, _ = src2.int8_onnx("cpu", run.int8_config)
                b2["ort-int8"] = SessionRunner(ort_session(p, threads=run.threads, spinning=SPIN), "int8")
                ops = optimized_ops(p)
                n_conv = sum(v for k, v in optimized_ops(src2.fp32_onnx()).items() if k in ("Conv", "FusedConv"))
                notes["ETDS-M x2 int8"] = {"float_layers": int8_record(p).get("float_layers"),
                                           "convs_as_qlinearconv": f"{ops.get('QLinearConv', 0)}/{n_conv}"}
            except Exception as e:  # noqa: BLE001
                rows.append({"model": "ETDS-M", "scale": 2, "error": f"int8: {e}"})
        for hw in ([(24, 40)] if run.quick else [(360, 640), (540, 960)]):
            rows += _res_rows(run, "ETDS-M", 2, hw, b2)
    if m.get("int8"):
        notes["ETDS-M x4 int8"] = {"float_layers": m["int8"].get("float_layers"),
                                   "convs_as_qlinearconv": m["int8"].get("convs_as_qlinearconv")}
    return {"rows": rows, "int8_models": notes}


def _res_rows(run: Run, model: str, scale: int, hw, backends) -> list[dict]:
    x = _rand(3, hw)
    stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in backends.items()}, run.pol_res)
    out_hw = (hw[0] * scale, hw[1] * scale)
    rows = []
    for k, st in stats.items():
        rows.append({"model": model, "scale": scale, "backend": k, "size": f"{hw[0]}x{hw[1]}",
                     "output": f"{out_hw[0]}x{out_hw[1]}", "output_mpix": round(out_hw[0] * out_hw[1] / 1e6, 3),
                     **_stats(st), "mpix_per_s": round(megapixels_per_second(out_hw, st.median_ms), 3),
                     "interleaved_with": [b for b in stats if b != k]})
    print(f"    x{scale} {hw[0]}x{hw[1]}: " + ", ".join(f"{k} {v.median_ms:.1f} ms" for k, v in stats.items()),
          flush=True)
    return rows


def profiles(run: Run, models: dict, comparisons: dict) -> dict:
    out = {}
    x = _rand(3, run.x4_720p)
    for name in ("ETDS-M", "ETDS-L"):
        m = models.get(name)
        if not m:
            continue
        for th in ([run.threads] if run.threads else [None, 1]):
            tag = f"{th} thread" if th else "default threads"
            out[f"{name} fp32, {tag}"] = profile_ort(m["fp32_onnx"], x, runs=2, threads=th)
            if m.get("int8_onnx"):
                out[f"{name} int8, {tag}"] = profile_ort(m["int8_onnx"], x, runs=2, threads=th)
            if m.get("int8_all_onnx"):
                out[f"{name} int8 all layers, {tag}"] = profile_ort(m["int8_all_onnx"], x, runs=2, threads=th)
    return out


def gpu_section(run: Run, models: dict) -> dict:
    ok, why = cuda_status()
    if not ok:
        return {"measured": False, "reason": why}
    from edgesr.bench import bench_prepared, prepare_backend
    from edgesr.errors import EdgesrError

    res = {"measured": True, "gpu": why, "rows": [], "skipped": []}
    m = models.get("ETDS-M")
    sizes = [run.x4_720p] if run.quick else [(180, 320), (270, 480)]
    for backend in ("torch-cuda", "trt", "trt-rtx"):
        for graph in (False, True):
            try:
                p = prepare_backend(m["src"], backend, cuda_graph=graph, engine_sizes=sizes)
            except EdgesrError as e:
                res["skipped"].append({"backend": backend, "cuda_graph": graph, "reason": str(e)})
                continue
            for r in bench_prepared([p], sizes, m["src"].spec, run.pol_res):
                res["rows"].append(r.to_dict() | {"cuda_graph": graph})
            if p.close:
                p.close()
    return res


# =========================================================================== targets, plots, summary

def targets(models: dict, comparisons: dict, reparam: dict | None, quick: bool = False) -> dict:
    got, also = {}, {}
    b = comparisons.get("b", {})
    if "ETDS-M" in b:
        got["ort_vs_torch_etds_m"] = b["ETDS-M"]["ort_vs_torch"]
        also["ort_vs_torch_etds_m"] = {"one thread each": b["ETDS-M"].get("ort_vs_torch_1thread")}
    for name, key in (("ETDS-M", "int8_vs_fp32_etds_m"), ("ETDS-L", "int8_vs_fp32_etds_l")):
        if name in b and "int8_vs_fp32" in b[name]:
            got[key] = b[name]["int8_vs_fp32"]
            also[key] = {"one thread each": b[name].get("int8_vs_fp32_1thread"),
                         "every layer int8": b[name].get("int8_all_vs_fp32"),
                         "every layer int8, one thread": b[name].get("int8_all_vs_fp32_1thread")}
    if reparam and "speedup_training_to_deploy" in reparam:
        got["ecbsr_training_to_deploy"] = reparam["speedup_training_to_deploy"]
    out = {}
    for key, (what, target) in TARGETS.items():
        if key not in got:
            out[key] = {"what": what, "target": target, "status": "not measured"}
            continue
        r = got[key]
        status = "met" if r["ratio"] >= target else "missed"
        if quick:
            status = f"quick mode, not meaningful ({status} at tiny sizes)"
        d = {"what": what, "target": target, "measured": r["ratio"], "status": status,
             "spread_p10_p90": [r.get("paired_p10"), r.get("paired_p90")], "rounds": r.get("rounds")}
        if status == "missed" and not quick:
            d["short_by"] = f"{(1 - r['ratio'] / target):.0%} ({r['ratio']:.2f}x of {target}x)"
        d["other_conditions"] = {k: v for k, v in also.get(key, {}).items() if v}
        out[key] = d
    return out


def plots(run: Run, models: dict, res: dict, roofs: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgesr.costmodel import plot_roofline

    made = []
    # latency vs resolution per backend
    rows = [r for r in res.get("rows", []) if "median_ms" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (scale, backend) in sorted({(r["scale"], r["backend"]) for r in rows}):
            rs = sorted((r for r in rows if r["scale"] == scale and r["backend"] == backend),
                        key=lambda r: r["output_mpix"])
            ax.errorbar([r["output_mpix"] for r in rs], [r["median_ms"] for r in rs],
                        yerr=[[r["median_ms"] - r["min_ms"] for r in rs], [r["p90_ms"] - r["median_ms"] for r in rs]],
                        marker="o" if scale == 4 else "s", capsize=3, label=f"ETDS-M x{scale} {backend}")
        ax.set_xlabel("output megapixels")
        ax.set_ylabel("latency, ms (median; bars: min..p90)")
        ax.set_title("ETDS-M latency vs resolution (CPU, interleaved per size)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run.out / "latency_vs_resolution.png", dpi=110)
        plt.close(fig)
        made.append("latency_vs_resolution.png")
    # PSNR vs latency Pareto
    pts = []
    for name, m in models.items():
        lat = m.get("latency_720p", {})
        if "ort-fp32" in lat and m.get("psnr_set5_fp32") is not None:
            pts.append((name, "fp32", lat["ort-fp32"]["median_ms"], m["psnr_set5_fp32"]))
        if "ort-int8" in lat and m.get("psnr_set5_int8") is not None:
            pts.append((name, "int8", lat["ort-int8"]["median_ms"], m["psnr_set5_int8"]))
    if pts:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for prec, mk, col in (("fp32", "o", "tab:blue"), ("int8", "^", "tab:orange")):
            ps = [p for p in pts if p[1] == prec]
            ax.scatter([p[2] for p in ps], [p[3] for p in ps], marker=mk, c=col, label=f"ORT {prec}", zorder=3)
        front = _pareto(pts)
        ax.plot([p[2] for p in front], [p[3] for p in front], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("latency at x4 720p output, ms (ORT CPU, median)")
        ax.set_ylabel("Set5 x4 Y-PSNR, dB")
        ax.set_title("Quality vs latency, every x4 model in ../shared (fp32 and INT8)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        from edgesr.plotting import place_labels, plain_log_ticks

        plain_log_ticks(ax, "x")
        place_labels(ax, [(p[2], p[3], p[0]) for p in pts])
        fig.savefig(run.out / "pareto_psnr_latency.png", dpi=110)
        plt.close(fig)
        made.append("pareto_psnr_latency.png")
    # roofline: one figure with every model, and one per model
    if roofs:
        allpts = []
        (run.out / "roofline").mkdir(exist_ok=True)
        for name, m in models.items():
            mpts = []
            for k, v in m.get("latency_720p", {}).items():
                a = v["achieved"]
                mpts.append({"label": f"{name} {k.split('-')[1]}", "ai": a["arithmetic_intensity"],
                             "gflops": a["gflops"], "group": k})
            if mpts:
                safe = name.replace("/", "_")
                plot_roofline(mpts, roofs, run.out / "roofline" / f"{safe}.png",
                              title=f"{name} x4 720p: {m['cost']['macs_per_output_pixel']:.0f} MACs/px, "
                                    f"{m['cost']['params']:,} params")
                made.append(f"roofline/{safe}.png")
                allpts += mpts
        plot_roofline(allpts, roofs, run.out / "roofline.png", title="Roofline, x4 models at 720p output, ORT CPU")
        made.append("roofline.png")
    return made


def _pareto(pts):
    """Points not dominated (lower latency and higher PSNR), sorted by latency."""
    front, best = [], -1e9
    for p in sorted(pts, key=lambda p: (p[2], -p[3])):
        if p[3] > best:
            front.append(p)
            best = p[3]
    return front


def _f(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def readme(run: Run, info: dict, roofs: dict | None, models: dict, comp: dict, settings: dict, res: dict,
           profs: dict, reparam: dict | None, gpu: dict, tg: dict, made: list[str], total_s: float,
           load_end: list[float]) -> str:
    L = ["# edgesr latency benchmarks", "",
         "Generated by `python benchmarks/run_all.py --out benchmarks/results` "
         f"({'QUICK MODE: plumbing check only, tiny sizes, numbers meaningless' if run.quick else 'full run'}); "
         f"took {total_s / 60:.1f} min. Method and analysis: [docs/benchmarks.md](../../docs/benchmarks.md).", ""]
    L += ["## Machine", "",
          f"- CPU: {info.get('cpu_model')} ({info.get('cpu_family_model')}), {info.get('usable_cpus')} usable / "
          f"{info.get('logical_cpus')} logical CPUs, caches {info.get('caches')}, "
          f"{'virtual machine' if info.get('hypervisor') else 'bare metal'}, {info.get('memory_gib')} GiB",
          f"- flags: {', '.join(info.get('cpu_flags', []))} (no AVX-512 / VNNI unless listed)",
          f"- libraries: onnxruntime {info.get('onnxruntime_version')}, torch {info.get('torch_version')}, "
          f"onnx {info.get('onnx_version')}, numpy {info.get('numpy_version')}, python {info.get('python')}",
          f"- threads: ORT {run.threads or 'default (one per physical core)'}, torch "
          f"{info.get('torch_threads')}",
          f"- INT8: {'edgesr.quant, profile cpu, `edgesr convert --int8` defaults' if run.int8_ok else run.int8_note}",
          f"- load average (1/5/15 min) at start {info.get('loadavg')}, at end {load_end}; per phase below"]
    lw = load_warning(info)
    if lw:
        L += ["", f"**Warning: {lw}.**"]
    if roofs:
        L += [f"- measured roofs (same process, {roofs['fp32']['threads']} threads): fp32 GEMM "
              f"{roofs['fp32']['peak_gflops']} GFLOP/s ({roofs['fp32']['peak_from']}), int8 GEMM "
              f"{roofs['int8']['peak_gops']} GOP/s (ORT MatMulInteger), copy bandwidth "
              f"{roofs['memory']['bandwidth_gbs']} GB/s ({roofs['memory']['from']}, read+write)"]
    L += ["", "## Targets", "", "| target | goal | measured (median ratio) | per-round p10-p90 | status |",
          "|---|---|---|---|---|"]
    for t in tg.values():
        sp = t.get("spread_p10_p90") or [None, None]
        st = t["status"] + (f", short by {t['short_by']}" if t.get("short_by") else "")
        L.append(f"| {t['what']} | >= {t['target']}x | {_f(t.get('measured'))}x | {_f(sp[0])} - {_f(sp[1])} | {st} |")
    L += ["", "Targets are judged on library-default threads and the product INT8 graph (0.1 dB budget). "
          "The same interleaved runs under other conditions:", ""]
    for t in tg.values():
        for cond, r in (t.get("other_conditions") or {}).items():
            L.append(f"- {t['what']}, {cond}: {_ratio(r)}")
    L += ["", "Why a target is missed, from the ORT profiles below: see docs/benchmarks.md.", ""]
    # comparisons
    L += ["## (b) PyTorch eager vs ORT fp32 vs ORT INT8 (one interleaved run per model)", "",
          "| model | backend | median ms | min | p90 | CV | runs |", "|---|---|---|---|---|---|---|"]
    for name, r in comp.get("b", {}).items():
        for k, s in r["stats"].items():
            L.append(f"| {name} | {k} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['p90_ms']:.1f} | "
                     f"{s['cv']:.0%} | {s['runs']} |")
    L.append("")
    for name, r in comp.get("b", {}).items():
        L.append(f"- {name}: ORT fp32 is {_ratio(r['ort_vs_torch'])} as fast as PyTorch eager"
                 + (f"; ORT INT8 is {_ratio(r['int8_vs_fp32'])} as fast as ORT fp32" if "int8_vs_fp32" in r else "")
                 + " (library-default threads)")
        if "ort_vs_torch_1thread" in r:
            L.append(f"- {name}, one thread each: ORT fp32 is {_ratio(r['ort_vs_torch_1thread'])} as fast as PyTorch "
                     "eager" + (f"; ORT INT8 is {_ratio(r['int8_vs_fp32_1thread'])} as fast as ORT fp32"
                                if "int8_vs_fp32_1thread" in r else ""))
        if "int8_all_vs_fp32" in r:
            L.append(f"- {name}, every layer int8 (no PSNR budget): {_ratio(r['int8_all_vs_fp32'])} as fast as ORT "
                     "fp32" + (f" ({_ratio(r['int8_all_vs_fp32_1thread'])} with one thread)"
                               if "int8_all_vs_fp32_1thread" in r else ""))
        im = r.get("int8_models", {})
        if im:
            b, al = im["budget 0.1 dB (product default)"], im["all layers int8"]
            L.append(f"- {name} INT8 graphs: product default {b['convs_as_qlinearconv']} convs as QLinearConv "
                     f"(Set5 {_f(b['psnr_set5'])} dB), all layers {al['convs_as_qlinearconv']} "
                     f"(Set5 {_f(al['psnr_set5'])} dB); fp32 {_f(im['fp32']['psnr_set5'])} dB")
    a = comp.get("a", {})
    L += ["", "## (a) Training form exported as-is vs deploy form (ORT, interleaved)", ""]
    if "stats" in a:
        L += [f"{a['model']}; {a['export']}.", "", "| form | median ms | p90 | CV | MACs/px | params | ORT ops |",
              "|---|---|---|---|---|---|---|"]
        for k, s in a["stats"].items():
            L.append(f"| {k} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['cv']:.0%} | "
                     f"{a['macs_per_output_pixel'][k]} | {a['params'][k]:,} | {a['onnx_ops'][k]} |")
        L += ["", f"Deploy form is {_ratio(a['speedup'])} as fast (outputs agree to "
                  f"{a['max_abs_training_vs_deploy_clamped']:.1e} after the deploy form's clamp)."]
    if reparam and "candidates" in reparam:
        L += ["", f"ECBSR-M4C16 x4 (benchmarks/reparam_gain.py, {reparam['workload']}):", "",
              "| candidate | median ms | p90 | CV | ORT ops (optimized) |", "|---|---|---|---|---|"]
        for k, s in reparam["candidates"].items():
            L.append(f"| {k} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['cv']:.0%} | {s['ort_optimized_ops']} |")
        L += ["", f"training -> deploy: {_ratio(reparam['speedup_training_to_deploy'])}; vs the same weights "
                  f"reparameterized: {_ratio(reparam['speedup_training_to_bundled_deploy'])}. {reparam['export']}."]
    # settings
    L += ["", "## (c) ONNX Runtime session settings, ETDS-M x4 720p (interleaved)", ""]
    for prec, s in settings.items():
        if not isinstance(s, dict) or "rows" not in s:
            continue
        base = next((k for k in s["rows"] if k.startswith("ort defaults")), s["fastest_safe"])
        rec, why = (s["recommended"], s["recommended_why"]) if "recommended" in s else \
            _recommend(s["rows"], s["tolerance"], base)
        L += [f"**{prec}** - fastest config whose output matches the defaults (<= {s['tolerance']:.1e}): "
              f"`{s['fastest_safe']}`; recommended: `{rec}` ({why})", "",
              "| config | median ms | p90 | CV | vs defaults (p10-p90) | max abs vs defaults |",
              "|---|---|---|---|---|---|"]
        for k, r in sorted(s["rows"].items(), key=lambda kv: kv[1]["median_ms"]):
            sp = r["speedup_vs_defaults"]
            L.append(f"| {k} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['cv']:.0%} | {_ratio(sp)} | "
                     f"{r['max_abs_vs_defaults']:.1e} |")
        L += ["", f"Optimized graphs: {json.dumps(s['ops'])}", ""]
    # resolution
    L += ["## Latency vs resolution and standard workloads", "", "![latency vs resolution](latency_vs_resolution.png)",
          "", "| model | backend | input | output | median ms | p90 | CV | Mpix/s |", "|---|---|---|---|---|---|---|---|"]
    for r in res.get("rows", []):
        if "median_ms" in r:
            L.append(f"| {r['model']} x{r['scale']} | {r['backend']} | {r['size']} | {r['output']} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['cv']:.0%} | {r['mpix_per_s']:.2f} |")
    for k, v in res.get("int8_models", {}).items():
        L.append(f"- {k}: {v['convs_as_qlinearconv']} convs run as QLinearConv; kept float by the 0.1 dB budget: "
                 f"{', '.join(v['float_layers'] or []) or 'none'}")
    # models
    L += ["", "## Every x4 model: cost, quality, latency (x4 720p, ORT fp32 vs INT8 interleaved per model)", "",
          "![Pareto](pareto_psnr_latency.png)", "",
          "| model | params | MACs/px | Set5 PSNR fp32 | INT8 | fp32 ms | INT8 ms | INT8 speedup (p10-p90) | "
          "convs run as QLinearConv | layers kept float (0.1 dB budget) | fp32 GFLOP/s | % of GEMM roof |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lat = m.get("latency_720p", {})
        f32, i8 = lat.get("ort-fp32", {}), lat.get("ort-int8", {})
        ach = f32.get("achieved", {})
        L.append(f"| {name} | {m['cost']['params']:,} | {m['cost']['macs_per_output_pixel']:.0f} | "
                 f"{_f(m.get('psnr_set5_fp32'))} | {_f(m.get('psnr_set5_int8'))} | {_f(f32.get('median_ms'), 1)} | "
                 f"{_f(i8.get('median_ms'), 1)} | {_ratio(m['int8_speedup_720p']) if 'int8_speedup_720p' in m else '-'}"
                 f" | {(m.get('int8') or {}).get('convs_as_qlinearconv', '-')} | "
                 f"{len((m.get('int8') or {}).get('float_layers') or []) if m.get('int8') else '-'} | "
                 f"{_f(ach.get('gflops'), 1)} | "
                 f"{_f(100 * ach['efficiency_vs_peak'], 0) if 'efficiency_vs_peak' in ach else '-'} |")
    errs = {n: m["int8_error"] for n, m in models.items() if m.get("int8_error")}
    if errs:
        L += ["", "INT8 failures: " + "; ".join(f"{k}: {v}" for k, v in errs.items())]
    if roofs:
        L += ["", "![roofline](roofline.png)", "", "Per model: " + ", ".join(
            f"[{p.split('/')[-1][:-4]}]({p})" for p in made if p.startswith("roofline/"))]
    # profiles
    if profs:
        L += ["", "## ORT per-operator profiles (x4 720p)", ""]
        for k, p in profs.items():
            ops = ", ".join(f"{o['op']} {o['ms_per_run']:.1f} ms ({o['share']:.0%})" for o in p["ops"][:6])
            L.append(f"- {k}: {p['node_ms_per_run']:.1f} ms of node time per run: {ops}")
    L += ["", "## GPU", ""]
    if gpu.get("measured"):
        L += ["| backend | CUDA graph | input | host median ms | GPU compute median ms | H2D ms | D2H ms |",
              "|---|---|---|---|---|---|---|"]
        for r in gpu["rows"]:
            g = r.get("gpu", {})
            L.append(f"| {r['backend']} | {r['cuda_graph']} | {r['size']} | {r['median_ms']:.3f} | "
                     f"{g.get('compute', {}).get('median_ms')} | {g.get('h2d', {}).get('median_ms')} | "
                     f"{g.get('d2h', {}).get('median_ms')} |")
        for s in gpu.get("skipped", []):
            L.append(f"- skipped {s['backend']} (CUDA graph {s['cuda_graph']}): {s['reason']}")
    else:
        L.append(f"Not measured: {gpu.get('reason')}. `edgesr bench MODEL -b torch-cuda -b trt` measures host "
                 "latency, GPU compute (CUDA events) and H2D/D2H separately on a GPU machine; "
                 "`benchmarks/gpu_check.py` is the whole GPU check (parity, latency, NTIRE protocol) in one "
                 "command, writing gpu.json and gpu.md.")
    L += ["", "## Phases", "", "| phase | seconds | load before (1/5/15 min) | load after |", "|---|---|---|---|"]
    for ph in run.phases:
        L.append(f"| {ph['phase']} | {ph['seconds']} | {ph['load_before']} | {ph['load_after']} |"
                 + (f" ERROR {ph['error']}" if ph.get("error") else ""))
    L += ["", "## Files", "", ", ".join(sorted(p.name for p in run.out.glob("*.json") if p.name in OUR_FILES))]
    return "\n".join(L) + "\n"


def _ratio(r: dict) -> str:
    if "paired_p10" in r:
        return f"{r['ratio']:.2f}x ({r['paired_p10']:.2f}-{r['paired_p90']:.2f})"
    return f"{r['ratio']:.2f}x"


def _public(models: dict) -> dict:
    out = {}
    for k, m in models.items():
        d = {kk: vv for kk, vv in m.items() if not kk.startswith("_") and kk != "src"}
        for kk in ("fp32_onnx", "int8_onnx"):
            if kk in d:
                d[kk] = Path(d[kk]).name
        out[k] = d
    return out


# =========================================================================== main

def render_only(out: Path, work: Path) -> int:
    """README.md + plots from the JSON files of an earlier run (no measurement)."""
    def load(name, default=None):
        p = out / name
        return json.loads(p.read_text()) if p.is_file() else default

    ra = load("run_all.json")
    if ra is None:
        print(f"run_all: {out / 'run_all.json'} missing: nothing to render", file=sys.stderr)
        return 2
    mach = load("machine.json", {})
    run = Run(out, work, ra.get("quick", False), ra.get("threads"))
    run.int8_ok, run.int8_note = ra["int8"]["available"], ra["int8"]["note"]
    run.phases = ra["phases"]
    models, comp, reparam = load("models.json", {}), load("comparisons.json", {}), load("reparam_gain.json")
    res, roofs = load("resolution.json", {}), mach.get("roofs")
    made = plots(run, models, res, roofs)
    tg = targets(models, comp, reparam, run.quick)
    atomic_write_text(out / "README.md", readme(run, mach.get("machine", {}), roofs, models, comp,
                                                load("ort_settings.json", {}), res, load("profiles.json", {}), reparam,
                                                load("gpu_run_all.json", {}), tg, made, ra["total_seconds"],
                                                ra.get("load_end")))
    print(f"rendered {out / 'README.md'} and {len(made)} plots from the JSON files of the run")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                          / "edgesr" / "bench"), help="cache for ONNX exports and INT8 models")
    ap.add_argument("--threads", type=int, default=None, help="ORT/torch threads (default: library defaults)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 4 models, 2 runs: checks the plumbing only")
    ap.add_argument("--models", help="comma-separated subset of model names")
    ap.add_argument("--render-only", action="store_true",
                    help="re-draw README.md and the plots from the JSON files in --out (measures nothing)")
    a = ap.parse_args(argv)
    out, work = Path(a.out), Path(a.work)
    if a.render_only:
        return render_only(out, work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not CKPTS.is_dir():
        print(f"run_all: no checkpoints at {CKPTS} (set EDGESR_SHARED)", file=sys.stderr)
        return 2
    run = Run(out, work, a.quick, a.threads)
    names = [n for n in (a.models.split(",") if a.models else (QUICK_MODELS if a.quick else X4_MODELS))]
    info = machine_info()
    print(f"edgesr run_all: {info['cpu_model']}, load {info.get('loadavg')}, int8: "
          f"{run.int8_note if not run.int8_ok else 'available'}", flush=True)
    roofs = models = None
    comp: dict = {}
    settings: dict = {}
    res: dict = {}
    profs: dict = {}
    reparam = None
    gpu: dict = {}
    with run.phase("roofs"):
        from edgesr.costmodel import measure_roofs

        roofs = measure_roofs(run.threads, seconds=0.1 if a.quick else 0.4)
    run.write("machine.json", {"machine": info, "roofs": roofs})
    models = {}
    with run.phase("prepare models (export, INT8, MACs, Set5)"):
        models = prepare_models(run, names)
    with run.phase("ORT fp32 vs INT8 per model (Pareto)"):
        pareto_latency(run, models, roofs)
    run.write("models.json", _public(models))
    with run.phase("(b) PyTorch vs ORT fp32 vs INT8"):
        comp["b"] = headline(run, models)
    with run.phase("(a) training vs deploy (ETDS-M)"):
        comp["a"] = training_vs_deploy(run)
    with run.phase("reparam_gain (ECBSR-M4C16)"):
        import importlib.util

        spec = importlib.util.spec_from_file_location("reparam_gain", ROOT / "benchmarks" / "reparam_gain.py")
        rg = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(rg)
        reparam = rg.measure(run.pol_headline, work, run.x4_720p, run.threads)
        run.write("reparam_gain.json", reparam)
    run.write("comparisons.json", comp)
    with run.phase("(c) ORT session settings"):
        settings = ort_settings(run, models)
    run.write("ort_settings.json", settings)
    with run.phase("latency vs resolution"):
        res = resolution(run, models)
    run.write("resolution.json", res)
    with run.phase("ORT profiles"):
        profs = profiles(run, models, comp)
    run.write("profiles.json", profs)
    with run.phase("GPU"):
        gpu = gpu_section(run, models)
    run.write("gpu_run_all.json", gpu)
    made = []
    with run.phase("plots"):
        made = plots(run, models, res, roofs)
    tg = targets(models, comp, reparam, a.quick)
    total = time.perf_counter() - run.t0
    run.write("run_all.json", {"targets": tg, "phases": run.phases, "total_seconds": round(total, 1),
                               "quick": a.quick, "threads": a.threads, "work": str(work), "models": names,
                               "int8": {"available": run.int8_ok, "note": run.int8_note,
                                        "config": run.int8_config.to_dict() if run.int8_config else None,
                                        "all_layers_config": (run.int8_all_config.to_dict()
                                                              if run.int8_all_config else None)},
                               "policies": {"pairs": run.pol_pairs.to_dict(), "headline": run.pol_headline.to_dict(),
                                            "settings": run.pol_settings.to_dict(),
                                            "resolution": run.pol_res.to_dict()},
                               "load_end": _load(), "plots": made})
    atomic_write_text(out / "README.md", readme(run, info, roofs, models, comp, settings, res, profs, reparam, gpu,
                                                tg, made, total, _load()))
    print(f"done in {total / 60:.1f} min; results in {out}")
    for _k, t in tg.items():
        print(f"  {t['what']}: {t['status']} ({_f(t.get('measured'))}x, target {t['target']}x)")
    failed = [p for p in run.phases if "error" in p]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
