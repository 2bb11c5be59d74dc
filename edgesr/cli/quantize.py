"""edgesr quantize: fp32 ONNX -> INT8 QDQ ONNX that keeps the picture."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import one_line
from . import args as argtypes
from .args import print_error


def add_parser(sub):
    p = sub.add_parser(
        "quantize", help="fp32 ONNX -> INT8 QDQ ONNX (calibration, sensitivity, mixed precision)",
        description="Post-training INT8 quantization of an fp32 SR model exported by edgesr. Calibrates on LR "
                    "patches of real photos (default: the bundled sample images, never a test set), applies "
                    "exact range equalization (and zero-centring for symmetric profiles), rounds weights with "
                    "error compensation, and keeps the most sensitive layers in float until the Y-PSNR drop on "
                    "held-out sample images is within --psnr-budget.")
    p.add_argument("model", help="fp32 ONNX model (edgesr export; its metadata gives scale and value range)")
    p.add_argument("-o", "--output", required=True, help="INT8 ONNX file to write")
    p.add_argument("--profile", choices=["trt", "cpu", "openvino"], default="trt",
                   help="trt: symmetric int8, zero points 0, float biases (TensorRT); cpu: fastest+most "
                        "accurate in ONNX Runtime on x86 without VNNI; openvino: the trt graph scored and "
                        "searched in OpenVINO (needs pip install 'edgesr[openvino]'; see docs/int8.md)")
    p.add_argument("--calib", help="folder of calibration images (default: bundled sample photos)")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="activation range calibration")
    p.add_argument("--percentile", type=argtypes.float_range(0.0, 100.0, lo_open=True),
                   default=99.999, help="for --method percentile")
    p.add_argument("--num-patches", type=argtypes.int_range(1, 100_000), default=32, help="calibration LR patches")
    p.add_argument("--patch-size", type=argtypes.int_range(1, 4096), default=None,
                   help="calibration patch side (LR pixels; default: trt 48; cpu/openvino try 96 and 48 and keep the lower held-out drop)")
    p.add_argument("--seed", type=argtypes.int_range(0, 2**63 - 1), default=0, help="patch position seed")
    p.add_argument("--psnr-budget", type=argtypes.finite, default=0.1,
                   help="max Y-PSNR drop (dB) vs fp32 on the held-out sample images; a negative value "
                        "disables the mixed-precision search")
    p.add_argument("--test-set", help="also report fp32/int8 Y-PSNR on this test set (HR/ + LR_bicubic/X<s>/), "
                                      "for information only")
    p.add_argument("--scale", type=argtypes.scale, help="upscaling factor, for ONNX files without edgesr metadata")
    p.add_argument("--sensitivity-png", help="write the per-layer sensitivity bar chart here (computes the table)")
    p.add_argument("--no-equalize", action="store_true", help="skip activation-range equalization")
    p.add_argument("--no-center", action="store_true", help="skip zero-centring (trt profile)")
    p.add_argument("--no-gptq", action="store_true", help="round weights to nearest (ORT default)")
    p.add_argument("--finetune", action="store_true",
                   help="when the all-int8 graph misses the budget, fine-tune its int8 weights/biases against the "
                        "fp32 output (minutes of CPU; kept only when it scores better held-out)")
    p.add_argument("--threads", type=argtypes.threads, help="ONNX Runtime threads")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from .model_args import add_model_args

    add_model_args(p)
    return p


def run(args) -> int:
    import math

    from ..errors import OutputExists, QuantizationError
    from ..quant import QuantConfig, quantize_model
    from .model_args import user_options
    from .output import emit_json, print_table

    user = user_options(args)
    model = Path(args.model)
    if not model.is_file():
        raise QuantizationError(f"{model}: no such {'weights' if user else 'ONNX'} file")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise OutputExists(f"{out} exists; pass --force to overwrite it")
    if out.resolve() == model.resolve():
        raise QuantizationError("the output would overwrite the fp32 input model; choose another -o")
    if user is not None:  # MODEL is the weights: export the user's model first (checked), then quantize it
        import tempfile

        from ..export.diagnose import export_user_model
        from ..resolve import user_deploy_model

        module, spec, _ = user_deploy_model(model, scale=args.scale, **user)
        tmp = tempfile.TemporaryDirectory(prefix="edgesr-quantize-")
        fp32 = Path(tmp.name) / "model.onnx"
        export_user_model(module, spec, fp32, source_checkpoint=model)
        model = fp32
    else:
        refuse_quantized(model)
    spec = spec_from_onnx(model, args.scale)
    budget = None if args.psnr_budget is not None and args.psnr_budget < 0 else args.psnr_budget
    cfg = QuantConfig(profile=args.profile, method=args.method, percentile=args.percentile,
                      num_patches=args.num_patches, patch_size=args.patch_size, seed=args.seed,
                      psnr_budget=budget, equalize=not args.no_equalize, center=not args.no_center,
                      gptq=not args.no_gptq, finetune=args.finetune, threads=args.threads, progress=True)
    test_set = None
    if args.test_set:
        from ..quant import testset_eval_set

        test_set = testset_eval_set(args.test_set, spec.scale)
    res = quantize_model(model, out, spec, cfg, calibration=args.calib, test_set=test_set,
                         sensitivity_png=args.sensitivity_png)
    over = [] if res.within_budget else [
        f"no INT8 graph met the {res.budget} dB budget on {res.eval_set}: {res.path.name} is the best one evaluated "
        f"({res.drop:.3f} dB, {len(res.float_layers)} of {len(res.layers)} layers float); accept the drop with "
        f"--psnr-budget {math.ceil(res.drop * 100) / 100:.2f}"]
    if args.json:
        emit_json(res.to_dict())
        for line in over:
            print_error(line)
        return 1 if over else 0
    print(one_line(f"wrote {res.path} ({res.profile} profile, {cfg.method} calibration, "
                   f"{res.calibration.get('num_patches')} patches)"))
    rows = [["fp32", res.eval_set, res.psnr_fp32, ""],
            ["int8 (all layers)", res.eval_set, res.psnr_int8_all, res.psnr_fp32 - res.psnr_int8_all],
            ["int8 (final)", res.eval_set, res.psnr_int8, res.drop]]
    if res.test_set:
        rows += [["fp32", res.test_set, res.test_psnr_fp32, ""],
                 ["int8 (final)", res.test_set, res.test_psnr_int8, res.test_drop]]
    print_table(["model", "set", "Y-PSNR (dB)", "drop (dB)"], rows)
    print(one_line(f"float layers: {', '.join(res.float_layers) if res.float_layers else 'none'}"))
    if res.finetune:
        print(one_line(finetune_line(res.finetune, res.psnr_fp32)))
    if res.sensitivity:
        print_table(["layer", "op", "cost if only it is int8", "gain if only it is float"],
                    [[r.layer, r.op_type, r.only_cost, r.except_gain] for r in res.sensitivity])
    if args.sensitivity_png:
        print(one_line(f"sensitivity chart: {args.sensitivity_png}"))
    for w in res.warnings:
        if not over:
            print(one_line(f"edgesr: warning: {w}"), file=sys.stderr)
    for line in over:
        print_error(line)
    return 1 if over else 0


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear")


def refuse_quantized(path: Path) -> None:
    """An INT8 graph given as the fp32 input: say so (quantizing it again would calibrate
    ranges of already-rounded values and stack a second rounding on the first)."""
    import onnx

    from ..errors import QuantizationError, quoted

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable as ONNX: reported by the metadata read that follows
        return
    ops: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    meta = {p.key: p.value for p in model.metadata_props}
    if not ops and "edgesr.int8.profile" not in meta:
        return
    what = ", ".join(f"{c} {op}" for op, c in sorted(ops.items())) or "edgesr INT8 metadata"
    profile = f", made by edgesr quantize with the {meta['edgesr.int8.profile']} profile" \
        if "edgesr.int8.profile" in meta else ""
    raise QuantizationError(f"{quoted(path.name)} is already INT8 ({what}{profile}); quantize its fp32 source "
                            "instead (e.g. a convert OUTDIR's model.onnx)")


def finetune_line(ft: dict, psnr_fp32: float) -> str:
    """What the quantization-aware fine-tune of the all-int8 graph did, in one line."""
    if "steps" not in ft:
        return f"fine-tuning: not run ({ft.get('reason', 'unknown reason')})"
    if "psnr_int8_all_after" not in ft:
        return f"fine-tuning ({ft['steps']} steps, {ft['seconds']:.0f} s): not kept ({ft.get('reason', '')})"
    before, after = psnr_fp32 - ft["psnr_int8_all_before"], psnr_fp32 - ft["psnr_int8_all_after"]
    return (f"fine-tuning ({ft['steps']} steps, {ft['seconds']:.0f} s): all-int8 drop {before:.3f} -> {after:.3f} dB, "
            + ("kept" if ft["applied"] else "not kept (no gain)"))


def spec_from_onnx(path: Path, scale: int | None):
    """Spec from an edgesr ONNX file's metadata (``spec``), or a default RGB [0, 1] Spec at --scale."""
    import json

    from ..errors import QuantizationError, ScaleMismatch
    from ..export.onnx import read_metadata
    from ..spec import Spec

    meta = read_metadata(path)
    if "spec" in meta:
        try:
            spec = Spec.from_dict(json.loads(meta["spec"]))
        except (ValueError, TypeError) as e:
            raise QuantizationError(f"{path.name}: invalid 'spec' metadata ({e})") from None
        if scale is not None and scale != spec.scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path.name} (x{spec.scale} in its metadata)")
        return spec
    if scale is None:
        raise ScaleMismatch(f"{path.name} carries no edgesr metadata: pass --scale")
    return Spec(arch="unknown", scale=scale)
