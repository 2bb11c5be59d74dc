"""edgesr eval: Y-channel PSNR/SSIM on a benchmark test set (published-table protocol)."""

from __future__ import annotations

from ..errors import one_line
from . import args as argtypes


def add_parser(sub):
    p = sub.add_parser(
        "eval", help="PSNR/SSIM (Y channel) of a model on a test set",
        description="Evaluate MODEL (checkpoint, .onnx/.ort, or a `convert` OUTDIR) on a test set laid out as "
                    "DIR/HR/<name>.png and DIR/LR_bicubic/X<s>/<name>x<s>.png. Y of YCbCr (BT.601, as "
                    "MATLAB rgb2ycbcr), SR rounded to 8 bits, border crop = scale, HR cropped to LR size * scale.")
    p.add_argument("model", help="checkpoint, .onnx/.ort file, or convert OUTDIR")
    p.add_argument("--testset", required=True, help="test set folder (HR/ and LR_bicubic/X<s>/)")
    p.add_argument("--scale", type=argtypes.scale, required=True, help="upscaling factor (must match the model)")
    argtypes.add_runtime_backend(p)
    p.add_argument("--arch", help="architecture name, when detection from the checkpoint is not enough")
    p.add_argument("--threads", type=argtypes.threads, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--allow-below-bicubic", action="store_true",
                   help="report the scores even when they are below bicubic's (default: refuse, non-zero exit)")
    from .model_args import add_model_args

    add_model_args(p)
    return p


def run(args) -> int:
    from ..evaluate import evaluate
    from ..file_types import implied_backend
    from ..resolve import resolve_model
    from .output import emit_json, print_table

    args.backend = args.backend or implied_backend(args.model, "torch")

    if args.scale < 1:
        from ..errors import ScaleMismatch

        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    from .model_args import registry_input_range, user_options

    user = user_options(args, registry_range_ok=True)
    if user is not None:
        from ..resolve import resolve_user_model

        resolved = resolve_user_model(args.model, backend=args.backend, threads=args.threads, scale=args.scale,
                                      **user)
    else:
        resolved = resolve_model(args.model, backend=args.backend, scale=args.scale, arch=args.arch,
                                 threads=args.threads, input_range=registry_input_range(args))
    from ..backends.mobile import file_backend

    backend = file_backend(resolved.path) or args.backend  # a .tflite / .param runs on its own runtime
    result = evaluate(resolved.runner, args.testset, args.scale, backend=backend, spec=resolved.spec)
    bicubic = None
    from ..conventions import checks_enabled

    if not args.allow_below_bicubic and checks_enabled():
        from ..conventions import require_beats_bicubic

        bicubic = require_beats_bicubic(result.psnr_y, args.testset, args.scale,
                                        f"{args.model} ({resolved.spec.arch} x{args.scale})")
    out = result.to_dict()
    out["bicubic_psnr_y"] = round(bicubic, 4) if bicubic is not None else None
    out.update(model=str(args.model), architecture=resolved.spec.arch, variant=resolved.spec.variant)
    if args.json:
        emit_json(out)
        return 0
    rows = [[i.name, i.psnr_y, i.ssim_y] for i in result.images]
    rows.append(["mean", result.psnr_y, result.ssim_y])
    print(one_line(f"{args.model}  ({resolved.spec.arch} x{args.scale}, backend {backend})"))
    print_table(["image", "PSNR-Y (dB)", "SSIM-Y"], rows)
    return 0
