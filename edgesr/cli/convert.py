"""edgesr convert: the main job, checkpoint -> verified deployable artifacts."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "convert", help="checkpoint -> reparameterize -> ONNX -> (INT8) -> parity -> latency -> OUTDIR",
        description="Convert a checkpoint into deployable artifacts with proof that nothing broke: load "
                    "(architecture detected from the state_dict), reparameterize (verified exact), export "
                    "ONNX (dynamic N/H/W, simplified, metadata), optionally INT8 QDQ, ONNX Runtime Mobile "
                    ".ort files, parity checks, CPU latency; writes OUTDIR/manifest.json, the model files "
                    "and report.json + report.md. Without CKPT, converts the bundled training-form ECBSR x4.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint (.pth/.pt/.safetensors); default: bundled model")
    p.add_argument("-o", "--outdir", required=True, help="output folder (refused if it exists, unless --force)")
    p.add_argument("--arch", help="architecture name when detection is not enough (see `edgesr list`)")
    p.add_argument("--scale", type=int, help="expected upscaling factor (checked against the checkpoint)")
    p.add_argument("--int8", action="store_true", help="also write an INT8 QDQ model (model_int8.onnx)")
    p.add_argument("--int8-profile", choices=["trt", "cpu", "both"], default="trt",
                   help="QDQ profile: trt = symmetric int8, float bias (TensorRT parses it); cpu = fastest in "
                        "ONNX Runtime on x86; both")
    p.add_argument("--calib", help="folder of images for INT8 calibration (default: bundled sample photos)")
    p.add_argument("--psnr-budget", type=float, default=0.1,
                   help="max PSNR drop (dB) INT8 may cost; sensitive layers stay float until it holds")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 ONNX (refused if a tensor overflows)")
    p.add_argument("--no-ort-format", action="store_true", help="skip the .ort (ONNX Runtime Mobile) files")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for the latency measurement")
    p.add_argument("--force", action="store_true", help="replace OUTDIR if it exists")
    p.add_argument("--json", action="store_true", help="print one JSON object (manifest + report) on stdout")
    return p


def run(args) -> int:
    import sys

    from ..errors import ScaleMismatch
    from ..pipeline import ConvertOptions, convert
    from .output import emit_json, print_table

    if args.scale is not None and args.scale < 1:
        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    if args.calib and not args.int8:
        print("edgesr: note: --calib has no effect without --int8", file=sys.stderr)
    opts = ConvertOptions(
        outdir=Path(args.outdir), checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        arch=args.arch, scale=args.scale, int8=args.int8, int8_profile=args.int8_profile,
        calib=Path(args.calib) if args.calib else None, psnr_budget=args.psnr_budget, fp16=args.fp16,
        ort_format=not args.no_ort_format, force=args.force, bench=not args.no_bench, threads=args.threads)
    result = convert(opts, log=(lambda m: print(m, file=sys.stderr)))
    if args.json:
        emit_json({"outdir": str(result.outdir), "ok": result.ok, "manifest": result.manifest,
                   "report": result.report})
    else:
        m = result.manifest
        print(f"\nwrote {result.outdir} ({'OK' if result.ok else 'PARITY FAILED'})")
        print_table(["artifact", "format", "precision", "bytes"],
                    [[a["file"], a["format"], a["precision"], a["bytes"]] for a in m["artifacts"]])
        comps = result.report["parity"].get("comparisons", [])
        if comps:
            print()
            print_table(["reference", "candidate", "max abs", "PSNR (dB)", "ok"],
                        [[c.get("reference"), c.get("candidate"), c.get("max_abs"), c.get("psnr"),
                          "yes" if c.get("ok") else "NO"] for c in comps])
    return 0 if result.ok else 1
