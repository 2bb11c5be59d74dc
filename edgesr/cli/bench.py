"""edgesr bench: latency of one model on one or more backends, trtexec-style statistics."""

from __future__ import annotations

from ..errors import one_line
from . import args as argtypes


def add_parser(sub):
    p = sub.add_parser(
        "bench", help="latency of a model on ONNX Runtime / PyTorch / TensorRT (CPU and GPU)",
        description="Measure MODEL (checkpoint, .onnx/.ort, .tflite, ncnn .param, or a `convert` OUTDIR) on each --backend at each "
                    "input size: warm-up by time, then at least --min-runs runs and --min-seconds; reports "
                    "min/median/mean/p90/p95/p99/max, the coefficient of variation (warning when > 10%) and "
                    "output megapixels/s. CPU backends at one size are timed in ONE run with interleaved "
                    "repetitions (order rotated every round) and compared as ratios to the first backend. "
                    "GPU backends (torch-cuda, trt, trt-rtx) report host latency (copies included) and GPU "
                    "compute time from CUDA events separately from H2D/D2H copies; without CUDA they are "
                    "skipped with the reason. From an OUTDIR each backend uses its manifest artifact: "
                    "ort -> onnx_fp32, ort-int8 -> onnx_int8_cpu (the graph made for ONNX Runtime CPU), openvino -> "
                    "openvino_fp32 (or the fp32 ONNX), openvino-int8 -> openvino_int8, torch -> torch_deploy, "
                    "trt/trt-rtx -> engines, litert(-int8) -> tflite_fp32/int8, ncnn(-int8) -> ncnn_fp32/int8. "
                    "OpenVINO needs pip install 'edgesr[openvino]'. A fixed-size .tflite times larger inputs tiled "
                    "with boxes of its size.")
    p.add_argument("model", help="checkpoint, .onnx/.ort, .tflite or .param file, or convert OUTDIR")
    p.add_argument("--backend", "-b", action="extend", nargs="+",
                   choices=["ort", "ort-int8", "openvino", "openvino-int8", "torch", "torch-cuda", "trt", "trt-rtx",
                            "litert", "litert-int8", "ncnn", "ncnn-int8", "coreml"],
                   help="backend(s) to time (several values or repeated; default: the runtime MODEL's file type "
                        "implies - .onnx/.ort -> ort, .xml -> openvino, .tflite -> litert, .param -> ncnn - and ort "
                        "for a checkpoint or OUTDIR). The first is the ratio baseline. litert/ncnn(-int8) take the "
                        "OUTDIR's artifact or convert the checkpoint here; coreml has no runtime on this machine")
    p.add_argument("--size", action="extend", nargs="+", metavar="HxW",
                   help="LR input size(s), e.g. 180x320 (x4 -> 720x1280)")
    p.add_argument("--workload", action="extend", nargs="+", choices=["720p", "1080p"],
                   help="standard workload: LR size = output size / the model's scale (default 720p when no "
                        "--size is given)")
    p.add_argument("--threads", type=argtypes.threads,
                   help="ONNX Runtime intra-op threads and torch threads (default: each library's default)")
    p.add_argument("--batch", type=argtypes.int_range(1, 4096), default=1, help="batch size (default 1)")
    p.add_argument("--warmup", type=argtypes.seconds, default=0.5, metavar="S", help="warm-up seconds (default 0.5)")
    p.add_argument("--min-runs", type=argtypes.int_range(1, 1_000_000),
                   default=10, help="minimum timed runs (default 10)")
    p.add_argument("--min-seconds", type=argtypes.seconds, default=1.0, metavar="S",
                   help="minimum timed seconds per backend (default 1.0)")
    p.add_argument("--max-runs", type=argtypes.int_range(1, 10_000_000),
                   default=1000, help="maximum timed runs (default 1000)")
    p.add_argument("--no-interleave", action="store_true", help="time backends one after another")
    p.add_argument("--scale", type=argtypes.scale,
                   help="upscale factor (checked; needed for ONNX files without metadata)")
    p.add_argument("--arch", help="architecture name when detection from the checkpoint is not enough")
    p.add_argument("--form", choices=["deploy", "training"], default="deploy",
                   help="checkpoints: time the deploy form (default) or the training form as loaded")
    p.add_argument("--int8-profile", choices=["cpu", "trt"], default="cpu",
                   help="ort-int8 from a checkpoint/fp32 ONNX: QDQ profile to quantize with (default cpu; "
                        "openvino-int8 always uses the openvino profile)")
    p.add_argument("--graph-opt", choices=["basic", "extended", "all"],
                   help="ONNX Runtime graph optimization level (default: edgesr's OrtRunner default)")
    p.add_argument("--ort-spinning", choices=["auto", "on", "off"], default="auto",
                   help="ORT intra-op thread spinning: auto (default) = off when several ORT backends are "
                        "interleaved (an idle session's spinning threads would compete with the one being timed), "
                        "ORT's default (on) otherwise")
    p.add_argument("--cuda-graph", action="store_true", help="GPU backends: replay a captured CUDA graph")
    p.add_argument("--work", metavar="DIR",
                   help="folder caching ONNX exports / INT8 models / engines between runs (default: temporary)")
    p.add_argument("--cost", action="store_true",
                   help="add params, MACs/output pixel and achieved GFLOP/s (needs PyTorch weights)")
    p.add_argument("--ort-profile", action="store_true",
                   help="also profile ONNX Runtime backends (per-operator time share)")
    p.add_argument("--samples", action="store_true", help="include every timed sample in --json output")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from .model_args import add_model_args

    add_model_args(p)
    return p


def run(args) -> int:
    import sys

    from ..bench import (
        TimingPolicy,
        bench_prepared,
        load_warning,
        machine_info,
        open_model,
        prepare_backend,
        speedups,
        workload_lr_size,
    )
    from ..errors import BackendUnavailable, EdgesrError, ScaleMismatch
    from ..limits import check_inference_size
    from ..sizes import parse_hw
    from .output import emit_json, print_table

    if args.scale is not None and args.scale < 1:
        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    for name in ("threads", "batch", "min_runs", "max_runs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise EdgesrError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    try:
        policy = TimingPolicy(warmup_seconds=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds,
                              max_runs=max(args.max_runs, args.min_runs))
    except ValueError as e:
        raise EdgesrError(str(e)) from None
    from .model_args import user_options

    src = open_model(args.model, workdir=args.work, scale=args.scale, arch=args.arch, form=args.form,
                     user=user_options(args))
    backends = list(dict.fromkeys(args.backend or [src.default_backend]))
    try:
        spec = src.spec
        sizes: list[tuple[int, int]] = []
        for s in args.size or []:
            sizes.append(parse_hw(s, "--size"))
        for w in args.workload or ([] if sizes else ["720p"]):
            sizes.append(workload_lr_size(w, spec.scale, spec.size_multiple))
        sizes = list(dict.fromkeys(sizes))
        m = max(1, spec.size_multiple)
        for h, w in sizes:
            if h % m or w % m or min(h, w) < spec.min_size:
                raise EdgesrError(f"--size {h}x{w}: {spec.arch} needs H and W multiples of {m} and >= {spec.min_size}")
            check_inference_size(h, w, scale=spec.scale, channels=spec.in_channels, batch=args.batch, what="--size")

        # an idle ORT pool spinning while another ORT session or OpenVINO is timed competes for the cores
        n_cpu = sum(b.startswith(("ort", "openvino")) for b in backends)
        spinning = {"on": True, "off": False}.get(args.ort_spinning,
                                                  False if n_cpu > 1 and not args.no_interleave else None)
        prepared, skipped = [], []
        for b in backends:
            try:
                prepared.append(prepare_backend(src, b, threads=args.threads, int8_profile=args.int8_profile,
                                                graph_opt=args.graph_opt, cuda_graph=args.cuda_graph,
                                                engine_sizes=sizes, spinning=spinning))
            except BackendUnavailable as e:
                skipped.append({"backend": b, "reason": str(e)})
                print(one_line(f"edgesr: skipping {b}: {e}"), file=sys.stderr)
        if not prepared:
            raise BackendUnavailable("no requested backend can run here: "
                                     + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
        results = bench_prepared(prepared, sizes, spec, policy, batch=args.batch,
                                 interleave=not args.no_interleave)
        rows = [r.to_dict(samples=args.samples) for r in results]
        timed = _timed_artifacts(src, prepared)
        for r in rows:
            r["artifact"] = timed.get(r["backend"], r.get("artifact"))
        cost = None
        if args.cost:
            cost = _cost(src, sizes, results, args.threads)
        profiles = []
        if args.ort_profile:
            profiles = _profiles(prepared, sizes, spec, args.threads, args.batch)
        info = machine_info()
        warnings = [w for w in [load_warning(info)] if w] + [f"{r['backend']} {r['size']}: {r['warning']}"
                                                            for r in rows if r.get("warning")]
        out = {"model": str(args.model), "kind": src.kind, "arch": spec.arch, "variant": spec.variant,
               "scale": spec.scale, "form": src.form if src.kind == "checkpoint" else "deploy",
               "threads": args.threads, "ort_spinning": {None: "ORT default (on)", True: "on", False: "off"}[spinning],
               "policy": policy.to_dict(), "machine": info, "results": rows,
               "speedups": speedups(results), "skipped": skipped, "warnings": warnings}
        if cost is not None:
            out["cost"] = cost
        if profiles:
            out["ort_profiles"] = profiles
    finally:
        for p in locals().get("prepared", []):
            if p.close:
                p.close()
        src.close()

    if args.json:
        emit_json(out)
        return 0
    print(one_line(f"{args.model}  ({spec.arch} {spec.variant or ''} x{spec.scale}; {info['cpu_model']}, "
                   f"{info.get('usable_cpus', info['logical_cpus'])} CPUs, load {info.get('loadavg', ['?'])[0]})"))
    for backend, what in timed.items():
        print(one_line(f"timed {backend}: {what}"))
    table = []
    for r in rows:
        g = r.get("gpu", {})
        table.append([r["backend"], r["size"], r["output"], r["runs"], r["median_ms"], r["min_ms"], r["p90_ms"],
                      r["p99_ms"], f"{r['cv']:.1%}", r["mpix_per_s"],
                      g.get("compute", {}).get("median_ms") if g else None])
    print_table(["backend", "input", "output", "runs", "median ms", "min ms", "p90 ms", "p99 ms", "CV", "Mpix/s",
                 "GPU ms"], table)
    sp = out["speedups"]
    if sp:
        print()
        for s in sp:
            spread = (f" (per-round {s['paired_p10']:.2f}-{s['paired_p90']:.2f}, p10-p90, {s['rounds']} rounds)"
                      if "paired_p10" in s else "")
            print(one_line(f"{s['size']}: {s['backend']} is {s['ratio']:.2f}x as fast as {s['baseline']}{spread}"))
    if cost and "params" not in cost:
        print()
        print(one_line(f"cost: {cost.get('note')}"))
    elif cost:
        print()
        print(one_line(f"params {cost['params']:,}, {cost['macs_per_output_pixel']:.0f} MACs/output pixel"))
        for c in cost["achieved"]:
            print(one_line(f"  {c['backend']} {c['size']}: {c['gflops']} GFLOP/s"))
    for pr in profiles:
        print()
        print(one_line(f"ONNX Runtime profile, {pr['backend']} {pr['size']}:"))
        print_table(["op", "ms/run", "share"], [[o["op"], o["ms_per_run"], f"{o['share']:.1%}"] for o in pr["ops"][:8]])
    for w in warnings:
        print(one_line(f"warning: {w}"), file=sys.stderr)
    return 0


def _timed_artifacts(src, prepared) -> dict[str, str]:
    """backend -> the file it timed, named as the user knows it: a bundle's file and role
    (the runner reads a private verified copy in a temporary folder), else the path and how
    it was obtained."""
    from pathlib import Path

    out = {}
    for p in prepared:
        what = str(p.artifact)
        if src.kind == "bundle":
            for a in src.manifest.artifacts:
                if Path(what).as_posix().endswith("/" + a.file) or what == a.file:
                    what = f"{Path(src.ref) / a.file} (bundle artifact {a.role})"
                    break
            else:
                deploy = [a for a in src.manifest.artifacts if a.role == "torch_deploy"]
                if p.backend.startswith("torch") and deploy:
                    what = f"{Path(src.ref) / deploy[0].file} (bundle artifact torch_deploy)"
        notes = [n for n in p.notes if not n.startswith("bundle artifact")]
        if notes and not what.endswith(")"):
            what = f"{what} ({notes[0]})"
        out[p.backend] = what
    return out


def _cost(src, sizes, results, threads) -> dict | None:
    from ..costmodel import achieved, count_macs

    if src.module is None:
        return {"note": "no PyTorch weights (ONNX model): MACs not counted"}
    h, w = sizes[0]
    c = count_macs(src.module, (1, src.spec.in_channels, h, w))
    out = c.to_dict()
    out["achieved"] = []
    for r in results:
        cc = c.scaled_to(r.size, r.batch)
        out["achieved"].append({"backend": r.backend, "size": f"{r.size[0]}x{r.size[1]}",
                                **achieved(cc, r.stats.median_ms, None, r.precision)})
    return out


def _profiles(prepared, sizes, spec, threads, batch) -> list[dict]:
    import numpy as np

    from ..bench import profile_ort

    out = []
    h, w = sizes[0]
    x = np.random.default_rng(0).random((batch, spec.in_channels, h, w), dtype=np.float32)
    for p in prepared:
        if p.backend.startswith("ort") and getattr(p.runner, "path", None) is not None:
            out.append({"backend": p.backend, "size": f"{h}x{w}", **profile_ort(p.runner.path, x, threads=threads)})
    return out


__all__ = ["add_parser", "run"]
