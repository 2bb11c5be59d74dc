"""edgesr parity: compare models/backends against the first one given."""

from __future__ import annotations

from pathlib import Path

from ..errors import one_line
from . import args as argtypes

FORMS = ("training", "deploy")


def add_parser(sub):
    p = sub.add_parser(
        "parity", help="check that backends agree (PyTorch, ONNX, ORT, engines)",
        description="Run the same inputs through every MODEL and compare each with the first (the reference). "
                    "MODEL is a checkpoint (.pth/.safetensors; append :training or :deploy to pick the PyTorch "
                    "form, default deploy), an .onnx / .ort file (ONNX Runtime, CPU), a .tflite (LiteRT) or "
                    ".param (ncnn) file, or a TensorRT engine "
                    "(.engine, needs the TensorRT extra and a GPU). Inputs: Set5 from ../shared when present, else "
                    "the bundled sample images, plus random images of --sizes. Exit status 0 when every "
                    "comparison is within tolerance, 1 otherwise.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="reference first, then the models to compare")
    p.add_argument("--inputs", metavar="DIR",
                   help="images to compare on: a test-set folder (HR/ + LR_bicubic/X<s>/) or a folder of LR images")
    p.add_argument("--sizes", default="17x23,32x32,31x100", metavar="HxW,...",
                   help="random input sizes, comma-separated (default: %(default)s; '' for none)")
    p.add_argument("--limit", type=argtypes.positive_int, metavar="N", help="use at most N images")
    p.add_argument("--scale", type=argtypes.scale, help="upscale factor (default: measured from the reference)")
    p.add_argument("--tol-max-abs", type=argtypes.nonneg_finite,
                   metavar="X", help="max |difference| allowed (overrides the default)")
    p.add_argument("--min-psnr", type=argtypes.finite, metavar="DB", help="minimum PSNR between outputs, dB")
    p.add_argument("--max-gt-drop", type=argtypes.finite, metavar="DB",
                   help="maximum PSNR-Y loss against ground truth relative to the reference, dB")
    p.add_argument("--heatmaps", metavar="DIR", help="write an error heatmap PNG per failing comparison")
    p.add_argument("--no-localize", action="store_true",
                   help="do not search the graph for the first diverging node on failure")
    p.add_argument("--backend", choices=["ort", "openvino"], default="ort",
                   help="runtime for .onnx MODELs (default ort; openvino needs pip install 'edgesr[openvino]'). "
                        "An OpenVINO IR (.xml) MODEL always runs in OpenVINO")
    p.add_argument("--threads", type=argtypes.threads, help="ONNX Runtime / OpenVINO / PyTorch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    from .model_args import add_model_args

    add_model_args(p)
    return p


def split_model_arg(arg: str) -> tuple[Path, str | None]:
    """``ckpt.pth:training`` -> (ckpt.pth, "training"); a plain path -> (path, None)."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail in FORMS and head:
        return Path(head), tail
    return Path(arg), None


def make_runner(arg: str, threads: int | None = None, scale: int | None = None, backend: str = "ort",
                user: dict | None = None):
    """A Runner for one MODEL argument (`edgesr.resolve.runner_for`), named after the argument."""
    from ..resolve import runner_for

    path, form = split_model_arg(arg)
    runner = runner_for(path, form=form, backend=backend, threads=threads, scale=scale, user=user,
                        engine_opener=ENGINE_HOOK, label=arg)
    runner.name = arg
    return runner


def _engine_runner(path: Path):
    """Default engine hook (replaceable: set ENGINE_HOOK): `edgesr.resolve.open_engine`."""
    from ..resolve import open_engine

    return open_engine(path)


ENGINE_HOOK = _engine_runner


def run(args) -> int:
    from ..errors import ParityError
    from ..limits import check_inference_size
    from ..parity import (
        check_parity,
        default_samples,
        detect_scale,
        fit_sizes,
        folder_samples,
        random_samples,
        size_rules,
    )
    from ..sizes import parse_hw_list
    from .output import emit_json, print_table

    if len(args.models) < 2:
        raise ParityError("give a reference MODEL and at least one MODEL to compare with it")
    sizes = parse_hw_list(args.sizes or "", "--sizes")
    from .model_args import user_options

    user = user_options(args)
    runners = [make_runner(m, args.threads, args.scale, args.backend, user) for m in args.models]
    seen: dict[str, int] = {}
    for r in runners:  # the same MODEL twice (e.g. a determinism check): keep names distinct
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} #{seen[r.name]}"
    min_size, multiple = size_rules(runners)  # every sample must be an input all models accept
    sizes = fit_sizes(sizes, min_size, multiple)
    scale = args.scale or detect_scale(runners[0], size=fit_sizes([(12, 12)], min_size, multiple)[0][0])
    for h, w in sizes:
        check_inference_size(h, w, scale=scale, what="--sizes")
    if args.inputs:
        samples = folder_samples(args.inputs, scale, args.limit) + random_samples(sizes)
    else:
        samples = default_samples(scale, sizes, limit=args.limit)
    overrides = {"max_abs": args.tol_max_abs, "min_psnr": args.min_psnr, "max_gt_psnr_drop": args.max_gt_drop}
    report = check_parity(runners, samples, overrides=overrides, scale=scale, heatmap_dir=args.heatmaps,
                          localize=not args.no_localize)
    if args.json:
        emit_json(report.to_dict())
    elif args.markdown:
        print(report.to_markdown(), end="")
    else:
        print(one_line(f"reference: {report.reference} (x{report.scale}); {len(report.samples)} inputs"))
        rows = []
        for c in report.comparisons:
            div = f"{c.divergence.node} ({c.divergence.op_type})" if c.divergence else ""
            rows.append([c.test, c.precision, "ok" if c.ok else "FAIL", c.max_abs, c.mean_abs, c.psnr,
                         c.ssim, f"{100 * c.diff8_share:.3f}%", c.gt_psnr_drop, div])
        print_table(["model", "precision", "result", "max abs", "mean abs", "PSNR dB", "SSIM", "8-bit diff",
                     "GT drop dB", "first divergence"], rows)
        for c in report.comparisons:
            for f in c.failures:
                print(one_line(f"FAIL {c.test}: {f}"))
            if c.heatmap:
                print(one_line(f"     heatmap: {c.heatmap}"))
            if c.failures and c.divergence_note:
                print(one_line(f"     {c.divergence_note}"))
    return 0 if report.ok else 1


__all__ = ["add_parser", "run", "make_runner", "split_model_arg", "ENGINE_HOOK"]
