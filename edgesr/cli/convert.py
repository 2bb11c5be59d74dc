"""edgesr convert: the main job, checkpoint -> verified deployable artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import args as argtypes


def add_parser(sub):
    p = sub.add_parser(
        "convert", help="checkpoint -> reparameterize -> ONNX -> (INT8) -> parity -> latency -> OUTDIR",
        description="Convert a checkpoint into deployable artifacts with proof that nothing broke: load "
                    "(architecture detected from the state_dict), reparameterize (verified exact), export "
                    "ONNX (dynamic N/H/W, simplified, metadata), optionally INT8 QDQ, ONNX Runtime Mobile "
                    ".ort files, parity checks, CPU latency; writes OUTDIR/manifest.json, the model files "
                    "and report.json + report.md. Without CKPT, converts the bundled training-form ECBSR x4. "
                    "CKPT may be a folder of checkpoints (batch mode): each is converted into OUTDIR/<name>/, "
                    "a bad file is reported (one line) and skipped, a summary table (or --json) follows, and "
                    "the exit status is non-zero if any failed.")
    p.add_argument("checkpoint", nargs="?",
                   help="checkpoint (.pth/.pt/.safetensors), or a folder of them; default: bundled model")
    p.add_argument("-o", "--outdir", required=True,
                   help="output folder (refused if it exists, unless --force); in batch mode the root that "
                        "receives one folder per checkpoint")
    p.add_argument("--arch", help="architecture name when detection is not enough (see `edgesr list`)")
    p.add_argument("--scale", type=argtypes.scale, help="expected upscaling factor (checked against the checkpoint)")
    p.add_argument("--int8", action="store_true",
                   help="also write INT8 graphs, one per runtime the bundle targets (model_int8.onnx = ONNX Runtime "
                        "CPU; with --openvino an OpenVINO INT8 IR; with --trt-rtx/--trt a TensorRT QDQ graph). Each "
                        "must keep the Y-PSNR drop vs fp32 on held-out photos within --psnr-budget, or the exit "
                        "status is 1")
    p.add_argument("--int8-profile", choices=["auto", "trt", "cpu", "openvino", "both"], default="auto",
                   help="auto (default): one graph per target runtime (see --int8); trt = symmetric int8, float "
                        "bias (TensorRT); cpu = fastest in ONNX Runtime on x86; openvino = scored in OpenVINO; "
                        "both = trt + cpu")
    p.add_argument("--calib", help="folder of images for INT8 calibration (default: bundled sample photos)")
    p.add_argument("--psnr-budget", type=argtypes.nonneg_finite, default=0.1,
                   help="max PSNR drop (dB) INT8 may cost; sensitive layers stay float until it holds")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 ONNX (refused if a tensor overflows)")
    p.add_argument("--testset", metavar="DIR",
                   help="benchmark folder (HR/ + LR_bicubic/X<s>/, e.g. Set5) to score fp32 and INT8 on in the "
                        "report; never used for calibration or the mixed-precision search")
    p.add_argument("--executorch", action="store_true",
                   help="also write ExecuTorch .pte files (XNNPACK; fp32, and int8 with --int8); needs "
                        "pip install 'edgesr[executorch]'")
    p.add_argument("--openvino", action="store_true",
                   help="also write OpenVINO IR (model.xml/.bin; with --int8 model_int8_openvino.xml/.bin), verified "
                        "and timed in OpenVINO; needs pip install 'edgesr[openvino]'")
    _add_mobile_args(p)
    p.add_argument("--no-ort-format", action="store_true", help="skip the .ort (ONNX Runtime Mobile) files")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--threads", type=argtypes.threads, help="ONNX Runtime threads for the latency measurement")
    p.add_argument("--force", action="store_true", help="replace OUTDIR if it exists")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (manifest + report) on stdout")
    p.add_argument("--allow-implausible", action="store_true",
                   help="convert even when no input convention makes the output beat bicubic (untrained or test "
                        "weights); default: refuse, naming what was tried")
    from .model_args import add_model_args

    add_model_args(p)
    _add_zoo_args(p)
    from .executor_args import add_executor_args

    add_executor_args(p, "each model of --zoo INDEX or of a folder CKPT is one task, its latency timed in the "
                         "node's bench slot")
    return p


def _add_mobile_args(p: argparse.ArgumentParser) -> None:
    """The mobile formats group: --tflite, --ncnn, --coreml and their --mobile-size."""
    m = p.add_argument_group("mobile formats (see docs/deploy.md)")
    m.add_argument("--tflite", action="store_true",
                   help="also write LiteRT .tflite files (NHWC, fixed input size; fp32, and with --int8 the fastest "
                        "quantized file within the budget: full-integer int8, else dynamic int8, else int16x8), "
                        "checked with the LiteRT interpreter; needs pip install 'edgesr[tflite]'")
    m.add_argument("--tflite-integer", action="store_true",
                   help="with --tflite --int8: only integer files (int8, else int16x8 activations), never the "
                        "dynamic-int8 file whose activations are float in the file (NPU/DSP delegates need integer)")
    m.add_argument("--ncnn", action="store_true",
                   help="also write ncnn .param/.bin (fp32, fp16 storage, and int8 with --int8), checked with the "
                        "ncnn runtime; needs pip install 'edgesr[ncnn]'")
    m.add_argument("--coreml", action="store_true",
                   help="also write Core ML packages (.mlpackage.zip: fp32, fp16, int8 weights); converted and "
                        "checked statically, not run (no Core ML runtime here); needs pip install 'edgesr[coreml]'")
    m.add_argument("--mobile-size", metavar="HxW",
                   help="fixed LR input size of the .tflite and Core ML files (default: one recommended tile, "
                        "tile + 2 x overlap)")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """The TensorRT engines group (--trt-rtx / --trt and the --trt-* options `_engine_request` reads)."""
    g = p.add_argument_group("TensorRT engines (see docs/tensorrt.md)")
    g.add_argument("--trt-rtx", action="store_true",
                   help="also build TensorRT-RTX engines for each ONNX written (fp32, --fp16, --int8 trt profile) "
                        "into OUTDIR/engines/ with sidecars; builds ahead of time without a GPU "
                        "(pip install 'edgesr[trt-rtx]')")
    g.add_argument("--trt", action="store_true",
                   help="also build TensorRT 10/11 engines (needs the target NVIDIA GPU here and "
                        "pip install 'edgesr[trt]')")
    g.add_argument("--trt-min", metavar="HxW", help="smallest LR input the engines accept (default 16x16 or the "
                                                    "model's minimum)")
    g.add_argument("--trt-opt", metavar="HxW", help="LR size the engines are tuned for (default: the latency "
                                                    "workload, 720p output / scale)")
    g.add_argument("--trt-max", metavar="HxW", help="largest LR input the engines accept (default 1088x1920)")
    g.add_argument("--trt-opt-level", type=int, metavar="N", help="builder optimization level 0..5 (default 3)")
    g.add_argument("--trt-cc", metavar="X.Y,...",
                   help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9,12.0 (default: its portable set, "
                        "Ampere and later)")
    g.add_argument("--trt-cache", metavar="DIR",
                   help="engine cache folder (default: $EDGESR_ENGINE_CACHE or the per-user cache, "
                        "e.g. ~/.cache/edgesr/engines)")


def _add_zoo_args(p: argparse.ArgumentParser) -> None:
    """The many-models group: --zoo INDEX and its --zoo-* options (`_run_zoo`)."""
    z = p.add_argument_group("many models at once")
    z.add_argument("--zoo", metavar="INDEX", help="TOML zoo index (code + weights per model, see "
                   "export/zoo/ntire-esr.toml): convert each into OUTDIR/<name>/ in its own process, continue past "
                   "failures, write OUTDIR/summary.{md,txt,json} and OUTDIR/results/<name>.json")
    z.add_argument("--zoo-only", metavar="NAME,...", help="convert only these index entries")
    z.add_argument("--zoo-timeout", type=argtypes.positive_seconds, default=1200, metavar="S",
                   help="seconds per model (default 1200)")
    z.add_argument("--zoo-jobs", type=argtypes.int_range(1, 64, "a number of jobs"), default=1, metavar="N",
                   help="models converted at once, each in its own process (default 1; their latency rows share the CPU)")


def run(args) -> int:
    import math
    import sys

    from ..errors import EdgesrError, ScaleMismatch, one_line, quoted
    from ..pipeline import ConvertOptions, convert
    from ..sizes import parse_hw
    from .output import emit_json, print_table

    if args.scale is not None and args.scale < 1:
        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    if args.zoo:
        return _run_zoo(args)
    from ..conventions import checks_enabled
    from .executor_args import on_ray
    from .model_args import registry_input_range, user_options

    user = user_options(args, registry_range_ok=True)
    if args.threads is not None and args.threads < 1:
        raise EdgesrError(f"--threads must be a positive integer, got {args.threads}")
    if not (args.psnr_budget >= 0 and math.isfinite(args.psnr_budget)):
        raise EdgesrError(f"--psnr-budget must be a finite number >= 0, got {args.psnr_budget}")
    if args.calib and not args.int8:
        print("edgesr: note: --calib has no effect without --int8", file=sys.stderr)
    if args.int8 and args.calib:
        _check_calib(Path(args.calib))  # fail before minutes of work, not after
    engines = _engine_request(args)
    if args.openvino or (args.int8 and args.int8_profile == "openvino"):
        from ..backends.openvino_runner import openvino_module

        openvino_module()  # missing extra: one line now, not after minutes of work
    opts = ConvertOptions(
        outdir=Path(args.outdir), checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        arch=args.arch, scale=args.scale, int8=args.int8, int8_profile=args.int8_profile,
        calib=Path(args.calib) if args.calib else None, psnr_budget=args.psnr_budget, fp16=args.fp16,
        ort_format=not args.no_ort_format, force=args.force, bench=not args.no_bench, threads=args.threads,
        engines=engines, testset=Path(args.testset) if args.testset else None, executorch=args.executorch,
        openvino=args.openvino,
        tflite=args.tflite, tflite_integer=args.tflite_integer, ncnn=args.ncnn, coreml=args.coreml,
        mobile_size=None if args.mobile_size is None else parse_hw(args.mobile_size, "--mobile-size"),
        check_conventions=not args.allow_implausible and checks_enabled(), input_range=registry_input_range(args))
    if user is not None:
        if opts.checkpoint is None or opts.checkpoint.is_dir():
            raise EdgesrError("--model needs the weights file as CKPT")
        opts = opts.with_user_model(user)
    if opts.checkpoint is not None and opts.checkpoint.is_dir():
        return _run_batch(args, opts)
    if on_ray(args):
        raise EdgesrError("--executor ray runs many models: give --zoo INDEX or a folder of checkpoints as CKPT")
    result = convert(opts, log=(lambda m: print(one_line(m), file=sys.stderr)))
    int8_problems = (result.report.get("int8_verdict") or {}).get("problems", [])
    if args.json:
        emit_json({"outdir": str(result.outdir), "ok": result.ok, "manifest": result.manifest,
                   "report": result.report})
    else:
        m = result.manifest
        status = "OK" if result.ok else ("INT8 OVER BUDGET" if int8_problems and result.report["parity"]["ok"]
                                         else "PARITY FAILED")
        print(f"\nwrote {quoted(result.outdir)} ({status})")
        print_table(["artifact", "format", "precision", "bytes"],
                    [[a["file"], a["format"], a["precision"], a["bytes"]] for a in m["artifacts"]])
        eng = result.report.get("engines")
        if eng:
            run = eng["run"] if isinstance(eng["run"], str) else f"verified on {eng['run']['device']['name']}"
            print(f"engines: {len(eng['builds'])} ({sum(b['cache_hit'] for b in eng['builds'])} from cache "
                  f"{eng['cache_dir']}); run: {run}")
        comps = result.report["parity"].get("comparisons", [])
        if comps:
            print()
            print_table(["reference", "candidate", "max abs", "PSNR (dB)", "ok"],
                        [[c.get("reference"), c.get("test"), c.get("max_abs"), c.get("psnr"),
                          "info" if c.get("gate") is False else "yes" if c.get("ok") else "NO"] for c in comps])
        verdict = result.report.get("int8_verdict")
        if verdict:
            print()
            print_table(["INT8 graph", "runtime", "drop dB", "budget dB", "eval set", "float layers", "x fp32",
                         "default"],
                        [[p, g["runtime"], g["drop_db"], g["budget_db"], g["eval_set"],
                          f"{g['float_layers']}/{g['layers']}", g.get("speedup", "-"), "yes" if g["default"] else "no"]
                         for p, g in verdict["graphs"].items()])
    for line in int8_problems:
        print(one_line(f"edgesr: error: INT8 {line}"), file=sys.stderr)
    return 0 if result.ok else 1


def _engine_request(args):
    """--trt-rtx/--trt and the --trt-* options as an EngineRequest (None without either), checked now."""
    import sys

    given = [f"--trt-{n.replace('_', '-')}" for n in ("min", "opt", "max", "opt_level", "cc", "cache")
             if getattr(args, f"trt_{n}") is not None]
    if not (args.trt_rtx or args.trt):
        if given:
            print(f"edgesr: note: {', '.join(given)} ha{'s' if len(given) == 1 else 've'} no effect without "
                  "--trt-rtx or --trt", file=sys.stderr)
        return None
    from ..backends.trt_convert import EngineRequest, check_request
    from ..sizes import parse_hw

    req = EngineRequest(
        flavours=tuple(f for f, on in (("rtx", args.trt_rtx), ("trt", args.trt)) if on),
        min_hw=parse_hw(args.trt_min, "--trt-min") if args.trt_min else None,
        opt_hw=parse_hw(args.trt_opt, "--trt-opt") if args.trt_opt else None,
        max_hw=parse_hw(args.trt_max, "--trt-max") if args.trt_max else None,
        optimization_level=args.trt_opt_level,
        compute_capabilities=tuple(c for c in args.trt_cc.split(",") if c.strip()) if args.trt_cc is not None
        else None,
        cache_dir=Path(args.trt_cache).expanduser() if args.trt_cache else None)
    check_request(req)  # missing package / GPU / unknown compute capability: fail before converting
    return req


def _check_calib(folder: Path) -> None:
    """--calib must be a folder holding at least one image file (decoding is the quantizer's job)."""
    from ..errors import DatasetError
    from ..imaging import IMAGE_EXTENSIONS, list_images

    if not folder.exists():
        raise DatasetError(f"calibration folder {folder} does not exist")
    if not list_images(folder):
        raise DatasetError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")


def _run_batch(args, opts) -> int:
    """`edgesr convert DIR -o OUTROOT`: one line per checkpoint on stderr, a table (or JSON) on stdout."""
    import sys

    from ..batch import exit_code
    from ..errors import quoted
    from .args import print_error
    from .output import emit_json, print_table

    def on_item(i, n, item):
        if item.error:
            print_error(f"{quoted(item.checkpoint.name)}: {item.error}")
        else:
            print(f"edgesr: [{i + 1}/{n}] {quoted(item.checkpoint.name)} -> {quoted(item.outdir)} "
                  f"({item.seconds:.1f} s)", file=sys.stderr)

    items = _convert_many(args, opts, on_item)
    failed = [it for it in items if not it.ok]
    if args.json:
        emit_json({"outroot": str(opts.outdir), "ok": not failed, "converted": sum(it.ok for it in items),
                   "failed": len(failed), "results": [it.to_dict() for it in items]})
    else:
        rows = []
        for it in items:
            d = it.to_dict()
            rows.append([it.checkpoint.name, "ok" if it.ok else ("PARITY FAILED" if it.converted else "FAILED"),
                         d.get("arch") or "", f"x{d['scale']}" if d.get("scale") else "",
                         str(it.outdir) if it.converted else (it.error_type or ""), f"{it.seconds:.1f}"])
        print_table(["checkpoint", "status", "arch", "scale", "outdir / error", "s"], rows)
        print(f"\n{len(items) - len(failed)} of {len(items)} converted" + (f", {len(failed)} failed" if failed else ""))
    return exit_code(items)


def _run_zoo(args) -> int:
    """`edgesr convert --zoo INDEX -o OUTROOT`: progress bar (plain lines when not a TTY), summary table."""
    from ..errors import EdgesrError, one_line
    from ..zoo_summary import counts, summary_text
    from .output import emit_json

    if args.checkpoint or getattr(args, "user_model", None):
        raise EdgesrError("--zoo takes its models from the index: give no CKPT or --model")
    only = [n.strip() for n in args.zoo_only.split(",") if n.strip()] if args.zoo_only else None
    from ..progress import Progress

    bar = Progress("zoo", None, "models")
    running: list[str] = []  # models in flight (--zoo-jobs N runs N at once): the bar names the oldest

    def in_flight() -> str:
        return one_line(running[0] + (f" +{len(running) - 1}" if len(running) > 1 else "")) if running else ""

    def on_start(i, n, entry):
        bar.set_total(n)
        running.append(entry.name)
        bar.set_postfix(in_flight())
        bar.write(one_line(f"edgesr: [{i + 1}/{n}] {entry.name} ..."))

    def on_done(i, n, res):
        line = (f"{res['name']}: {'ok' if res.get('ok') else 'FAILED ' + str(res.get('category'))} "
                f"({'reused, unchanged inputs; took ' if res.get('reused') else ''}{res.get('seconds')} s)"
                + ("" if res.get("ok") else f": {str(res.get('reason'))[:160]}"))
        if res["name"] in running:
            running.remove(res["name"])
        bar.set_postfix(in_flight())
        bar.update(1)
        bar.write(one_line(f"edgesr: {line}"))

    try:
        results = _zoo_results(args, only, on_start, on_done)
    finally:
        bar.close()
    c = counts(results)
    if args.json:
        emit_json({"outroot": str(args.outdir), "counts": c, "results": results})
    else:
        print(summary_text(results))
        print(f"\n{c['ok']} of {c['models']} converted end to end ({100 * c['ok_share']:.1f}%); failures: "
              + (", ".join(f"{k} {v}" for k, v in sorted(c["failures_by_category"].items())) or "none")
              + f"; {c['seconds']:.0f} s; summary: {Path(args.outdir) / 'summary.md'}")
    return 0 if c["failed"] == 0 else 1


def _convert_many(args, opts, on_item) -> list:
    """`convert DIR`: in this process, or one Ray task per checkpoint (--executor ray)."""
    from .executor_args import on_ray

    if on_ray(args):
        from ..distributed.sweep import convert_many_ray

        return convert_many_ray(opts.checkpoint, opts.outdir, opts, address=args.ray_address, on_item=on_item)
    from ..batch import convert_many

    return convert_many(opts.checkpoint, opts.outdir, opts, on_item=on_item)


def _zoo_results(args, only, on_start, on_done) -> list[dict]:
    """`convert --zoo`: subprocesses here (--zoo-jobs at a time) or one Ray task per model."""
    import sys

    from .executor_args import on_ray

    if on_ray(args):
        from ..distributed.sweep import run_zoo_ray

        def submitted(n: int) -> None:
            print(f"edgesr: {n} models submitted to Ray; results follow as they finish", file=sys.stderr, flush=True)

        if args.zoo_jobs != 1:
            print("edgesr: note: --zoo-jobs has no effect with --executor ray (the cluster's CPUs decide)",
                  file=sys.stderr)
        return run_zoo_ray(args.zoo, args.outdir, force=args.force, only=only, timeout=args.zoo_timeout, int8=True,
                           bench=not args.no_bench, address=args.ray_address, on_submit=submitted, on_done=on_done)
    from ..zoo import run_zoo

    return run_zoo(args.zoo, args.outdir, force=args.force, only=only, timeout=args.zoo_timeout, int8=True,
                   bench=not args.no_bench, jobs=args.zoo_jobs, on_start=on_start, on_done=on_done)
