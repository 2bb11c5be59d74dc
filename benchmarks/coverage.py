"""Coverage of the efficient-SR literature: one generated table.

    python benchmarks/coverage.py [--families scnet,elan] [--sizes 180x320,270x480] [--seconds 1]
                                  [--threads 1] [--int8 auto|on|off] [--no-trt] [--readme README.md]

For each coverage family (one representative variant each, deploy form, seeded random weights):
parameters, MACs per output pixel (counted here: every conv2d / linear / matmul / bmm call
during a forward pass, via a TorchFunctionMode; shifts in their slice form, i.e. 0 MACs),
ONNX export status and operator list (edgesr.export.export_onnx: dynamic H/W, onnxslim,
ORT-vs-PyTorch check), INT8 QDQ ("trt" profile) through edgesr.quant when that package is
committed (else "pending"), TensorRT-RTX engine build (ahead-of-time, CPU-only machine: built,
not run) through edgesr.backends.trt, and ONNX Runtime CPU latency at the standard x4 LR
workloads. IGConv additionally compares per-scale ONNX files with one scale-input ONNX.

Writes benchmarks/results/coverage.json and coverage.md; `--readme PATH` also replaces the
text between ``<!-- coverage:start -->`` and ``<!-- coverage:end -->`` in PATH
(`write_readme_section`).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr import registry  # noqa: E402
from edgesr.bench import TimingPolicy, machine_info, time_callable  # noqa: E402
from edgesr.errors import EdgesrError  # noqa: E402
from edgesr.fsutil import atomic_write_text  # noqa: E402
from edgesr.reparam import reparameterize  # noqa: E402
from edgesr.sizes import parse_hw_list  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"

# family -> (variant timed and exported, where the design / key layout comes from)
FAMILIES = {
    "scnet": ("scnet-t-x4", "Aitical/SCNet"),
    "ghostsr": ("ghostsr-f32b4-x4", "GhostSR (huawei-noah); EDSR layout"),
    "recurrent": ("recurrent-c48t6-x4", "edgesr (DRRN-style)"),
    "igconv": ("igconv-f32b4-x4", "dslisleedh/IGConv"),
    "rdbesa": ("rdbesa-f50m4-x4", "njulj/RFDN + RCAN CALayer"),
    "elan": ("elan-light-x4", "xindongzhang/ELAN"),
    "shufflemixer": ("shufflemixer-x4", "sunny2109/ShuffleMixer"),
    "safmn": ("safmn-x4", "sunny2109/SAFMN"),
    "omnisr": ("omnisr-x4", "Francis0625/Omni-SR"),
    "swinir": ("swinir-light-x4", "JingyunLiang/SwinIR"),
}


# ---- counting ---------------------------------------------------------------------------------

class MacCounter(torch.overrides.TorchFunctionMode):
    """Multiply-accumulates of conv2d / linear / matmul / bmm calls (the mode is off inside
    the handler, so a call is counted once even when it dispatches to another)."""

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.by_op: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        n = 0
        if name == "conv2d":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            n = out.numel() * int(np.prod(w.shape[1:]))
        elif name == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            n = out.numel() * w.shape[-1]
        elif name in ("matmul", "__matmul__", "bmm", "baddbmm", "einsum"):
            if name == "einsum":
                n = 0  # not used by the coverage families
            else:
                a = args[0] if name != "baddbmm" else args[1]
                n = out.numel() * a.shape[-1]
        if n:
            self.macs += int(n)
            self.by_op[name] += int(n)
        return out


def macs_per_output_pixel(module, spec, hw=(180, 320)) -> tuple[float, dict]:
    from edgesr.shift import set_shift_mode

    m = set_shift_mode(copy.deepcopy(module).eval(), "slice")
    x = torch.rand(1, spec.in_channels, *hw)
    counter = MacCounter()
    with torch.inference_mode(), counter:
        y = m(x)
    px = y.shape[-1] * y.shape[-2]
    return counter.macs / px, {k: v / px for k, v in counter.by_op.items()}


# ---- steps ------------------------------------------------------------------------------------

def _quant_committed() -> bool:
    r = subprocess.run(["git", "ls-files", "--error-unmatch", "edgesr/quant/__init__.py"], cwd=ROOT,
                       capture_output=True)
    return r.returncode == 0


def _trt_committed() -> bool:
    r = subprocess.run(["git", "ls-files", "--error-unmatch", "edgesr/backends/trt.py"], cwd=ROOT,
                       capture_output=True)
    return r.returncode == 0


def _err(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:400] if s else ''}"


def int8_status(onnx_path: Path, spec, workdir: Path) -> dict:
    from edgesr.quant import QuantConfig, check_trt_qdq, held_out_eval_set, quantize_model

    t0 = time.perf_counter()
    out = workdir / (onnx_path.stem + "_int8.onnx")
    try:
        # random weights: the PSNR numbers mean nothing, so calibrate and score on small crops
        cfg = QuantConfig(profile="trt", num_patches=8, patch_size=32, psnr_budget=None)
        res = quantize_model(onnx_path, out, spec, config=cfg,
                             eval_set=held_out_eval_set(spec.scale, max_side=64 * spec.scale))
    except (EdgesrError, Exception) as e:  # noqa: BLE001 - recorded, not raised
        return {"status": "failed", "error": _err(e), "seconds": round(time.perf_counter() - t0, 1)}
    import onnx

    problems = check_trt_qdq(onnx.load(str(res.path)))
    return {"status": "ok" if not problems else "qdq-problems", "problems": problems[:5],
            "float_layers": len(res.float_layers), "qdq_ops": {k: v for k, v in res.op_counts.items()
                                                                if k in ("QuantizeLinear", "DequantizeLinear")},
            "seconds": round(time.perf_counter() - t0, 1), "path": res.path}


def trt_status(onnx_path: Path, spec, workdir: Path, max_hw=(270, 480)) -> dict:
    from edgesr.backends.trt import BuildOptions, ShapeProfile, build_engine

    t0 = time.perf_counter()
    try:
        prof = ShapeProfile(min_hw=(max(16, spec.min_size),) * 2, opt_hw=(180, 320), max_hw=max_hw,
                            size_multiple=spec.size_multiple)
        art = build_engine(onnx_path, workdir, flavour="rtx", profile=prof, options=BuildOptions(max_threads=1))
    except Exception as e:  # noqa: BLE001 - EngineBuildError / BackendUnavailable recorded
        return {"status": "failed", "error": _err(e), "seconds": round(time.perf_counter() - t0, 1)}
    return {"status": "built", "precision": art.precision, "flavour_version": art.flavour_version,
            "engine_mb": round(art.path.stat().st_size / 2 ** 20, 2), "seconds": round(time.perf_counter() - t0, 1)}


def ort_latency(onnx_path: Path, spec, sizes, threads: int, seconds: float) -> dict:
    from edgesr.backends.ort_runner import OrtRunner

    r = OrtRunner(onnx_path, threads=threads)
    out = {}
    for h, w in sizes:
        x = np.random.default_rng(0).random((1, spec.in_channels, h, w), dtype=np.float32)
        t0 = time.perf_counter()
        r.run(x)
        first = time.perf_counter() - t0
        pol = TimingPolicy(warmup_seconds=0.0, min_runs=3 if first < 2 else 2, min_seconds=seconds, max_runs=50)
        st = time_callable(lambda: r.run(x), pol)
        out[f"{h}x{w}"] = {"median_ms": round(st.median_ms, 1), "min_ms": round(st.min_ms, 1), "runs": st.runs,
                           "cv": round(st.cv, 3)}
    return out


def igconv_multiscale(workdir: Path, sizes, threads: int, seconds: float) -> dict:
    """Per-scale ONNX (instantiated IGConv) vs one ONNX with the scale as an input."""
    import onnx

    from edgesr.archs.igconv import export_multiscale_onnx
    from edgesr.backends.ort_session import ort_session
    from edgesr.export import export_onnx

    torch.manual_seed(0)
    lm = registry.build_variant("igconv-f32b4-x4", "training")
    model = lm.module.eval()
    ms_path = workdir / "igconv_scale_input.onnx"
    info = export_multiscale_onnx(model, ms_path)
    ms = ort_session(ms_path, threads=threads)
    res = {"scale_input": {"ops": info["op_counts"], "max_abs_vs_torch": info["max_abs_vs_torch"],
                           "bytes": ms_path.stat().st_size}, "per_scale": {}}
    res["scale_input"]["trt_rtx"] = _trt_scale_input(ms_path, workdir)
    h, w = sizes[0]
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    pol = TimingPolicy(warmup_seconds=0.0, min_runs=3, min_seconds=seconds, max_runs=50)
    for s in (2, 3, 4):
        dep = model.reparameterize(s)
        spec = registry.get_architecture("igconv").describe({**lm.spec.hyperparams, "scale": s}, "deploy")
        p = workdir / f"igconv_x{s}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = export_onnx(dep, spec, p)
        per = ort_session(p, threads=threads)
        a = per.run(None, {"input": x})[0]
        b = ms.run(None, {"input": x, "scale": np.array(s, dtype=np.int64)})[0]
        t_per = time_callable(lambda: per.run(None, {"input": x}), pol)
        t_ms = time_callable(lambda: ms.run(None, {"input": x, "scale": np.array(s, dtype=np.int64)}), pol)
        res["per_scale"][s] = {"ops": dict(Counter(n.op_type for n in onnx.load(str(p)).graph.node)),
                               "bytes": p.stat().st_size, "max_abs_per_scale_vs_scale_input": float(np.abs(a - b).max()),
                               f"ort_ms_{h}x{w}": round(t_per.median_ms, 1),
                               f"scale_input_ort_ms_{h}x{w}": round(t_ms.median_ms, 1),
                               "export_max_abs_vs_torch": r.max_abs_vs_torch}
    return res


def _trt_scale_input(path: Path, workdir: Path) -> dict:
    """edgesr's TensorRT-RTX builder on the two-input graph, then TensorRT-RTX's own ONNX parser."""
    out: dict = {}
    if not _trt_committed():
        return {"status": "pending"}
    try:
        from edgesr.backends.trt import ShapeProfile, build_engine

        build_engine(path, workdir, flavour="rtx", profile=ShapeProfile())
        out["edgesr_builder"] = "built"
    except Exception as e:  # noqa: BLE001
        out["edgesr_builder"] = _err(e)
    try:
        import tensorrt_rtx as trt

        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse(path.read_bytes())
        errs = [str(parser.get_error(i)).splitlines()[0][:300] for i in range(parser.num_errors)]
        out["rtx_parser"] = "parsed" if ok else "failed: " + " | ".join(errs[:3])
        if ok:
            cfg = builder.create_builder_config()
            prof = builder.create_optimization_profile()
            prof.set_shape("input", (1, 3, 16, 16), (1, 3, 180, 320), (1, 3, 270, 480))
            prof.set_shape_input("scale", [2], [4], [4]) if network.get_input(1).is_shape_tensor else None
            cfg.add_optimization_profile(prof)
            data = builder.build_serialized_network(network, cfg)
            out["rtx_build"] = "built" if data is not None else "build returned nothing (see TensorRT-RTX log)"
    except Exception as e:  # noqa: BLE001
        out["rtx_parser"] = out.get("rtx_parser") or _err(e)
        out["rtx_build"] = _err(e)
    return out


def one_family(family: str, workdir: Path, args) -> dict:
    variant, source = FAMILIES[family]
    row: dict = {"family": family, "variant": variant, "source": source}
    try:
        arch, var = registry.get_variant(variant)
    except EdgesrError as e:
        row["export"] = {"status": "not registered", "error": _err(e)}
        return row
    torch.manual_seed(0)
    form = "training" if "training" in arch.forms else "deploy"
    lm = registry.build_variant(variant, form)
    module = reparameterize(lm.module) if form == "training" else lm.module
    spec = arch.describe(dict(var.hyperparams), "deploy")
    row["forms"] = "+".join(arch.forms)
    row["params_deploy"] = sum(p.numel() for p in module.parameters())
    row["params_training"] = sum(p.numel() for p in lm.module.parameters())
    row["macs_per_out_px"], row["macs_by_op"] = macs_per_output_pixel(module, spec)
    path = workdir / f"{variant}.onnx"
    t0 = time.perf_counter()
    try:
        from edgesr.export import export_onnx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = export_onnx(module, spec, path)
        row["export"] = {"status": "ok", "ops": res.op_counts, "max_abs_vs_torch": res.max_abs_vs_torch,
                         "simplified": res.simplified, "note": res.simplify_note,
                         "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001
        row["export"] = {"status": "failed", "error": _err(e), "seconds": round(time.perf_counter() - t0, 1)}
        return row
    print(f"  {family}: exported in {row['export']['seconds']} s", flush=True)
    if args.int8 == "off" or (args.int8 == "auto" and not _quant_committed()):
        row["int8"] = {"status": "pending", "error": "edgesr.quant not committed yet" if args.int8 == "auto" else "off"}
    else:
        row["int8"] = int8_status(path, spec, workdir)
    print(f"  {family}: int8 {row['int8']['status']}", flush=True)
    if row["int8"].get("status") in ("ok", "qdq-problems") and not args.no_trt and _trt_committed():
        row["trt_rtx_int8"] = trt_status(Path(row["int8"]["path"]), spec, workdir)
        print(f"  {family}: trt-rtx int8 {row['trt_rtx_int8']['status']}", flush=True)
    if args.no_trt or not _trt_committed():
        row["trt_rtx"] = {"status": "pending" if not args.no_trt else "skipped"}
    else:
        row["trt_rtx"] = trt_status(path, spec, workdir)
    print(f"  {family}: trt-rtx {row['trt_rtx']['status']}", flush=True)
    row["ort_cpu"] = ort_latency(path, spec, args.sizes, args.threads, args.seconds)
    print(f"  {family}: ort {row['ort_cpu']}", flush=True)
    return row


# ---- output -----------------------------------------------------------------------------------

def _fmt_int(n) -> str:
    return f"{n / 1e3:.1f}K" if n < 1e6 else f"{n / 1e6:.2f}M"


def markdown(out: dict) -> str:
    m = out["machine"]
    sizes = out["sizes"]
    lines = [
        "### Coverage of efficient-SR families",
        "",
        f"Generated by `benchmarks/coverage.py` on {m.get('cpu_model')} ({out['threads']} ORT thread(s), "
        f"onnxruntime {m.get('onnxruntime_version')}, torch {m.get('torch_version')}). Deploy forms with seeded "
        "random weights; latency = median of short runs, x4, LR input size shown. MACs counted per output "
        "(HR) pixel from conv2d/linear/matmul calls. TensorRT-RTX engines are built ahead of time on a CPU-only "
        "machine (not run).",
        "",
        "| family | variant | forms | params | MACs/out px | ONNX export | ONNX ops | INT8 (QDQ trt) | TRT-RTX build (AOT) | "
        + " | ".join(f"ORT CPU {h}x{w}" for h, w in sizes) + " |",
        "|---|---|---|---:|---:|---|---|---|---|" + "---:|" * len(sizes),
    ]
    for r in out["rows"]:
        ex = r.get("export", {})
        ops = ", ".join(sorted(ex.get("ops", {}))) if ex.get("status") == "ok" else "-"
        exs = ex.get("status", "-") if ex.get("status") == "ok" else f"{ex.get('status')}: {ex.get('error', '')[:120]}"
        i8 = r.get("int8", {})
        i8s = i8.get("status", "-") + (f" ({i8.get('error', '')[:100]})" if i8.get("status") == "failed" else "")
        tr = r.get("trt_rtx", {})
        trs = "fp32 " + tr.get("status", "-") + (f" ({tr.get('error', '')[:100]})" if tr.get("status") == "failed" else "")
        t8 = r.get("trt_rtx_int8")
        if t8:
            trs += "; int8 " + t8["status"] + (f" ({t8.get('error', '')[:100]})" if t8["status"] == "failed" else "")
        lat = [f"{r['ort_cpu'][f'{h}x{w}']['median_ms']:.0f} ms" if f"{h}x{w}" in r.get("ort_cpu", {}) else "-"
               for h, w in sizes]
        params = _fmt_int(r["params_deploy"]) if "params_deploy" in r else "-"
        if r.get("params_training") and r["params_training"] != r.get("params_deploy"):
            params += f" (train {_fmt_int(r['params_training'])})"
        macs = f"{r['macs_per_out_px'] / 1e3:.1f}K" if "macs_per_out_px" in r else "-"
        lines.append(f"| {r['family']} | `{r['variant']}` | {r.get('forms', '-')} | {params} | {macs} | {exs} | "
                     f"{ops} | {i8s} | {trs} | " + " | ".join(lat) + " |")
    ig = out.get("igconv_multiscale")
    if ig:
        h, w = sizes[0]
        lines += ["", f"IGConv, one model for x2/x3/x4 (`igconv-f32b4`): per-scale ONNX vs one ONNX with a `scale` "
                  f"input (ORT CPU, {h}x{w} LR):", "",
                  "| scale | per-scale ms | scale-input ms | max abs diff | per-scale ops |", "|---|---:|---:|---:|---|"]
        for s, d in ig["per_scale"].items():
            lines.append(f"| x{s} | {d[f'ort_ms_{h}x{w}']} | {d[f'scale_input_ort_ms_{h}x{w}']} | "
                         f"{d['max_abs_per_scale_vs_scale_input']:.1e} | {', '.join(sorted(d['ops']))} |")
        lines += ["", "Scale-input graph ops: " + ", ".join(f"{k}x{v}" for k, v in sorted(ig["scale_input"]["ops"].items()))]
        if ig["scale_input"].get("trt_rtx"):
            lines += ["", "Scale-input graph on TensorRT-RTX: " + "; ".join(
                f"{k}: {v}" for k, v in ig["scale_input"]["trt_rtx"].items())]
    uns = out.get("unsupported", [])
    lines += ["", "Unsupported operators / failures found:", ""]
    lines += [f"- {u}" for u in uns] or ["- none"]
    lines.append("")
    return "\n".join(lines)


def write_readme_section(readme: str | Path, md: str) -> None:
    """Replace the text between the coverage markers in `readme` (markers must exist)."""
    p = Path(readme)
    text = p.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{p}: needs the markers {START} ... {END} (in that order)")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(p, f"{head}{START}\n{md.rstrip()}\n{END}{tail}")


def _unsupported(rows, extra) -> list[str]:
    out = list(extra)
    for r in rows:
        for key, label in (("export", "ONNX export"), ("int8", "INT8 QDQ"), ("trt_rtx", "TensorRT-RTX build"),
                           ("trt_rtx_int8", "TensorRT-RTX INT8 build")):
            d = r.get(key, {})
            if d.get("status") in ("failed", "qdq-problems"):
                out.append(f"{r['family']} ({label}): {d.get('error') or d.get('problems')}")
    return out


KNOWN_UNSUPPORTED = [
    "safmn (ONNX export): aten::adaptive_max_pool2d with an output size that follows the input size has no ONNX "
    "form; the reference pooling raises UnsupportedOperator(ExportError) - edgesr's default pool='exact' "
    "computes the same windows with Range/Gather/Max",
    "igconv (ONNX export, scale as an input): Conv with a computed weight shape is refused by the TorchScript "
    "exporter ('kernel of unknown shape') and DepthToSpace has a static blocksize -> im2col Conv + MatMul + "
    "Reshape/Transpose",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--sizes", default="180x320,270x480", help="LR H x W workloads (x4)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.0, help="min timed seconds per size")
    ap.add_argument("--int8", choices=("auto", "on", "off"), default="auto",
                    help="auto: only when edgesr/quant is committed")
    ap.add_argument("--no-trt", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--readme", type=Path, default=None, help="also update this file between the coverage markers")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of families not run now from an existing coverage.json in --out")
    args = ap.parse_args(argv)
    args.sizes = parse_hw_list(args.sizes, "--sizes")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-coverage-") as tmp:
        work = Path(tmp)
        for fam in args.families.split(","):
            print(f"[{fam}]", flush=True)
            t0 = time.perf_counter()
            try:
                rows.append(one_family(fam, work, args))
            except Exception as e:  # noqa: BLE001 - keep going; record
                traceback.print_exc()
                rows.append({"family": fam, "variant": FAMILIES[fam][0], "source": FAMILIES[fam][1],
                             "export": {"status": "failed", "error": _err(e)}})
            rows[-1]["total_seconds"] = round(time.perf_counter() - t0, 1)
        ig = None
        if "igconv" in args.families.split(","):
            try:
                ig = igconv_multiscale(work, args.sizes, args.threads, args.seconds)
            except Exception as e:  # noqa: BLE001
                ig = {"error": _err(e), "per_scale": {}, "scale_input": {"ops": {}}}
    if args.merge and (args.out / "coverage.json").is_file():
        old = json.loads((args.out / "coverage.json").read_text())
        done = {r["family"] for r in rows}
        keep = {r["family"]: r for r in old.get("rows", []) if r["family"] not in done}
        rows = [keep.get(f) or next(r for r in rows if r["family"] == f) for f in FAMILIES
                if f in keep or f in done]
        if ig is None:
            ig = old.get("igconv_multiscale")
    out = {"machine": machine_info(), "threads": args.threads, "sizes": [list(s) for s in args.sizes],
           "rows": rows, "igconv_multiscale": ig, "unsupported": _unsupported(rows, KNOWN_UNSUPPORTED)}
    md = markdown(out)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "coverage.json", json.dumps(out, indent=2, default=str) + "\n")
    atomic_write_text(args.out / "coverage.md", md)
    if args.readme:
        write_readme_section(args.readme, md)
    print(f"wrote {args.out / 'coverage.json'} and coverage.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
