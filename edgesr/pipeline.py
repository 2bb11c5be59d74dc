"""`edgesr convert`: checkpoint -> reparameterize -> ONNX -> (INT8) -> parity -> latency -> OUTDIR.

Everything is written into a hidden staging folder beside OUTDIR and renamed into
place at the end, so a crash never leaves a half-written OUTDIR that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .errors import OutputError, OutputExists, quoted
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file, text_name
from .spec import Spec

BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "ecbsr_m4c16_x4_bundled.safetensors"
STAGING_PREFIX = ".edgesr-partial-"


@dataclass
class ConvertOptions:
    outdir: Path
    checkpoint: Path | None = None  # None: the bundled training-form ECBSR x4
    arch: str | None = None
    scale: int | None = None
    int8: bool = False
    int8_profile: str = "auto"  # "auto" (the targets' runtimes) | "trt" | "cpu" | "openvino" | "both" (trt + cpu)
    calib: Path | None = None
    psnr_budget: float = 0.1
    fp16: bool = False
    ort_format: bool = True
    force: bool = False
    bench: bool = True
    bench_output: tuple[int, int] = (720, 1280)  # output size the latency row is measured at
    threads: int | None = None
    testset: Path | None = None  # HR/LR folder for quality numbers (default: none)
    executorch: bool = False  # also .pte files (XNNPACK delegate)
    openvino: bool = False  # also OpenVINO IR (model.xml/.bin; the INT8 openvino graph as IR)
    engines: object | None = None  # --trt-rtx / --trt: an edgesr.backends.trt_convert.EngineRequest
    tflite: bool = False  # LiteRT .tflite (fp32, INT8 with --int8)
    ncnn: bool = False  # ncnn .param/.bin (fp32, fp16, INT8 with --int8)
    coreml: bool = False  # Core ML .mlpackage (zipped; converted, not run here)
    mobile_size: tuple[int, int] | None = None  # fixed LR input of .tflite / Core ML (default: a tile box)
    # --model FILE.py:NAME (user code; see edgesr.usermodel) and its options
    model: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    strict: bool = True
    weights_key: str | None = None  # state_dict wrapper entry the author's loader used
    import_paths: tuple = ()  # extra sys.path folders for the user's code (e.g. its repository root)
    input_range: float | None = None  # --input-range: skip the range search (still checked for plausibility)
    # refuse models whose output is no plausible SR (edgesr.conventions; $EDGESR_ALLOW_IMPLAUSIBLE=1 turns it off)
    check_conventions: bool = field(default_factory=lambda: __import__("edgesr.conventions").conventions.checks_enabled())
    int8_search: bool = True  # False: all-int8 QDQ graph only (no sensitivity / mixed-precision search, no GPTQ)
    # The zoo's light run (edgesr.zoo): a failed parity comparison is reported without localising the
    # divergence or drawing heatmaps, and latency times the ONNX graphs only, briefly (not the torch module).
    light_checks: bool = False


@dataclass
class Step:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class ConvertResult:
    outdir: Path
    manifest: dict
    report: dict
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))


def convert(opts: ConvertOptions, log: Callable[[str], None] | None = None) -> ConvertResult:
    """Run the whole pipeline; raises EdgesrError subclasses on bad input."""
    import time

    from .bundle import write_manifest
    from .registry import load_model
    from .reparam import reparameterize

    log = log or (lambda msg: print(msg, file=sys.stderr))
    outdir = Path(opts.outdir)
    ckpt = Path(opts.checkpoint) if opts.checkpoint else BUNDLED_CHECKPOINT
    user_code = [Path(opts.model.rsplit(":", 1)[0]), *map(Path, opts.import_paths)] if opts.model else []
    check_outdir(outdir, opts.force, inputs=[ckpt, opts.calib, opts.testset, *user_code])
    steps: list[Step] = []
    t = time.perf_counter()

    def done(name: str, detail: str = "") -> None:
        nonlocal t
        now = time.perf_counter()
        steps.append(Step(name, round(now - t, 2), detail))
        log(f"[{len(steps)}] {name}: {detail} ({now - t:.1f} s)")
        t = now

    if opts.model is not None:
        training, deploy, spec, inputs, report = _load_user_model(ckpt, opts, done)
        deploy_spec = replace(spec, form="deploy")
    else:
        loaded = load_model(ckpt, arch=opts.arch, scale=opts.scale)
        spec = loaded.spec
        done("load", f"{spec.arch} ({spec.variant or 'custom'}) x{spec.scale}, {spec.form} form, "
                     f"{loaded.state_dict_keys} tensors")
        adapt, conventions = _registry_conventions(loaded.module, spec, opts)

        training = adapt(loaded.module) if spec.form == "training" else None
        deploy = adapt(reparameterize(loaded.module)) if training is not None else adapt(loaded.module)
        deploy_spec = replace(spec, form="deploy")
        inputs = verification_inputs(deploy_spec)
        report = {"edgesr_version": __version__, "source": _source_info(ckpt, spec, opts.checkpoint is None)}
        if conventions is not None:
            report["conventions"] = conventions
        if training is not None:
            report["reparameterization"] = check_reparameterization(training, deploy, inputs, deploy_spec)
            done("reparameterize", f"max abs {report['reparameterization']['max_abs']:.2e} over "
                                   f"{len(inputs)} inputs")
        else:
            report["reparameterization"] = {"applied": False, "reason": "checkpoint is already in deploy form"}
            done("reparameterize", "skipped (already deploy form)")

    staging = _make_staging(outdir)
    try:
        artifacts = []
        from safetensors.torch import save

        deploy_file = staging / "deploy.safetensors"
        atomic_write_bytes(deploy_file, save({k: v.contiguous() for k, v in deploy.state_dict().items()},
                                             metadata={"arch": spec.arch, "form": "deploy", "scale": str(spec.scale)}))
        artifacts.append(_artifact(deploy_file, "torch_deploy", "safetensors", "fp32", "torch"))

        from .export.onnx import export_onnx

        onnx_path = staging / "model.onnx"
        if opts.model is not None:
            from .export.diagnose import export_user_model

            exported = export_user_model(deploy, deploy_spec, onnx_path, source_checkpoint=ckpt)
        else:
            exported = export_onnx(deploy, deploy_spec, onnx_path, source_checkpoint=ckpt)
        report["export"] = exported.to_dict() | {"path": onnx_path.name}
        artifacts.append(_artifact(onnx_path, "onnx_fp32", "onnx", "fp32", "onnxruntime"))
        done("export", f"opset {exported.opset}, {sum(exported.op_counts.values())} nodes "
                       f"{dict(exported.op_counts)}, max abs vs torch {exported.max_abs_vs_torch:.2e}")

        tiling = measure_bundle_tiling(onnx_path, deploy_spec, opts)
        report["tiling"] = tiling.to_dict()
        deploy_spec = replace(deploy_spec, receptive_field=tiling.receptive_field,
                              min_size=max(deploy_spec.min_size, tiling.min_size or 1))
        done("tiling", tiling.summary())

        if opts.fp16:
            from .export.fp16 import export_fp16

            fp16_path = staging / "model_fp16.onnx"
            res = export_fp16(onnx_path, fp16_path, inputs)
            report["fp16"] = res.to_dict() | {"path": fp16_path.name}
            artifacts.append(_artifact(fp16_path, "onnx_fp16", "onnx", "fp16", "onnxruntime"))
            done("fp16", f"largest activation {res.worst.max_abs:.3g} ({res.worst.name}), "
                         f"max abs vs fp32 {res.max_abs_vs_fp32}")

        int8_paths: dict[str, Path] = {}
        ov_paths: dict[str, Path] = {}
        if opts.int8:
            report["int8"] = {}
            profiles = int8_profiles(opts)
            for profile in profiles:
                name = "model_int8.onnx" if profile == profiles[0] else f"model_int8_{profile}.onnx"
                q = quantize_for(onnx_path, staging / name, deploy_spec, profile, opts)
                report["int8"][profile] = q
                if profile == "openvino":  # the artifact is the OpenVINO IR of this graph
                    ov_paths["int8"] = write_openvino_ir(staging / name, staging / "model_int8_openvino.xml",
                                                         artifacts, "openvino_int8", "int8")
                    (staging / name).unlink()
                    q["path"] = ov_paths["int8"].name
                else:
                    int8_paths[profile] = staging / name
                    artifacts.append(_artifact(staging / name, f"onnx_int8_{profile}", "onnx", "int8",
                                               PROFILE_RUNTIME[profile], profile=profile))
                done(f"int8 ({profile})", f"{'within' if q['within_budget'] else 'OVER'} budget: drop "
                                          f"{q['drop']:.3f} dB (budget {q['budget']}) on {q['eval_set']}, float layers: "
                                          f"{len(q['float_layers'])}/{len(q['layers'])}")

        if opts.openvino:
            ov_paths["fp32"] = write_openvino_ir(onnx_path, staging / "model.xml", artifacts, "openvino_fp32", "fp32")
            done("openvino", ", ".join(p.name for p in ov_paths.values()))

        if opts.ort_format:
            from .export.ort_format import export_ort

            report["ort_format"] = {}
            for role, src in [("ort_fp32", onnx_path)] + [(f"ort_int8_{p}", q) for p, q in int8_paths.items()]:
                res = export_ort(src)
                report["ort_format"][role] = res.to_dict() | {"path": res.path.name, "source": src.name}
                artifacts.append(_artifact(res.path, role, "ort", "int8" if "int8" in role else "fp32",
                                           "onnxruntime-mobile"))
            done("ort format", f"{1 + len(int8_paths)} .ort files")

        if opts.executorch:
            from .export.executorch import export_executorch

            report["executorch"] = {}
            for precision in ["fp32"] + (["int8"] if opts.int8 else []):
                box = tiling.tile + 2 * tiling.overlap  # one recommended tile box (measured)
                pte = export_executorch(deploy, deploy_spec, staging / f"model_{precision}.pte", precision=precision,
                                        max_hw=(box, box))
                art = pte.artifact()
                report["executorch"][precision] = {k: art.get(k) for k in (
                    "file", "bytes", "shape_range", "max_abs_vs_torch", "psnr_vs_torch", "executorch_version")}
                artifacts.append(art)
                done(f"executorch ({precision})", f"{art['file']}, vs PyTorch max abs {art['max_abs_vs_torch']:.2e}, "
                                                 f"PSNR {art['psnr_vs_torch']:.1f} dB")

        report["parity"] = run_parity(training, deploy, deploy_spec, staging, int8_paths, opts, ov_paths)
        done("parity", "ok" if report["parity"]["ok"] else "FAILED")

        if opts.tflite or opts.ncnn or opts.coreml:
            from .export.mobile_convert import export_mobile

            export_mobile(deploy, deploy_spec, staging, opts, artifacts, report, done)

        if opts.bench:
            report["latency"] = measure_latency(staging, deploy, deploy_spec, int8_paths, opts, ov_paths)
            done("latency", ", ".join(f"{r['backend']} {r['median_ms']:.1f} ms" for r in report["latency"]["results"]))

        if opts.engines is not None:
            build_engines(staging, deploy, deploy_spec, inputs, int8_paths, artifacts, report, opts, done)

        if opts.int8:
            report["int8_verdict"] = int8_verdict(report)
            for line in report["int8_verdict"]["problems"] + report["int8_verdict"]["notes"]:
                log(f"INT8: {line}")
        report["ok"] = bool(report["parity"]["ok"]) and not (report.get("int8_verdict") or {}).get("problems")
        report["steps"] = [s.__dict__ for s in steps]
        manifest = build_manifest(deploy_spec, artifacts, staging, report)
        _state_fixed_shape(manifest, report)
        atomic_write_json(staging / "report.json", report)
        atomic_write_text(staging / "report.md", render_report_md(report, manifest))
        write_manifest(staging, manifest)  # schema-validated, hashes re-checked
        _publish(staging, outdir, opts.force)
    except BaseException:
        _discard_staging(staging)
        raise
    return ConvertResult(outdir, manifest, report, steps)


# ---- model sources: user code (--model) and the behaviour check of registry models -----------------

def _load_user_model(ckpt: Path, opts: ConvertOptions, done) -> tuple:
    """--model FILE.py:NAME: build + load + measure (edgesr.usermodel), then the deploy form from
    the author's hooks and the generic pass (verified). The training side of parity is the
    author's own module as loaded, seen through the measured convention."""
    from .reparam.author_hooks import deploy_form
    from .usermodel import load_user_model

    um = load_user_model(ckpt, opts.model, opts.model_kwargs, strict=opts.strict, key=opts.weights_key,
                         extra_paths=tuple(Path(p) for p in opts.import_paths), input_range=opts.input_range,
                         scale=opts.scale, check_plausible=opts.check_conventions)
    spec = um.spec
    conv = um.conventions
    done("load", f"{um.ref.name} from {um.ref.file.name} x{spec.scale} (measured), {um.state_dict_keys} tensors; "
                 f"input convention {conv.chosen.label if conv.chosen else '?'} "
                 f"({'given' if conv.given else 'inferred'}: {conv.best.psnr_y:.2f} dB vs bicubic "
                 f"{conv.bicubic_psnr_y:.2f} dB on {conv.source})")
    inputs = verification_inputs(replace(spec, form="deploy"))
    deploy, rep = deploy_form(um.module, inputs)
    rep["applied"] = rep["changed"]
    if rep["changed"]:
        rep["max_abs"] = rep.get("max_abs", 0.0)
        rep["inputs"] = [{"shape": list(x.shape)} for x in inputs]
    else:
        rep["reason"] = "no author deploy hook or generic collapse changed the module"
    report = {"edgesr_version": __version__, "source": _source_info(ckpt, spec, False) | {"model": str(um.ref)},
              "user_model": um.report(), "conventions": conv.to_dict(), "reparameterization": rep}
    hooks = "; ".join(f"{', '.join(h['called'])}: {'applied' if h['applied'] else h.get('reason')}"
                      for h in rep["hooks"]) or "no author hooks"
    done("reparameterize", f"{hooks}; generic: {'applied' if (rep['generic'] or {}).get('applied') else (rep['generic'] or {}).get('reason')}")
    return (um.module if rep["changed"] else None), deploy, spec, inputs, report


def _registry_conventions(module, spec: Spec, opts: ConvertOptions):
    """Check that a registry model's output is a plausible SR under its family's convention
    (or the --input-range given). -> (adapter function, report dict or None)."""
    from .conventions import Convention, infer_convention, make_adapter, native_range_of, require_plausible

    native = native_range_of(module)
    if opts.input_range is not None:
        conv = Convention(input_range=opts.input_range)

        def adapt(m):
            return make_adapter(m, conv, native)
    else:
        conv = Convention(input_range=native)

        def adapt(m):
            return m
    if not opts.check_conventions or spec.in_channels != 3:
        return adapt, None
    rep = infer_convention(module, spec.scale, multiple=spec.size_multiple, min_size=spec.min_size, given=conv,
                           native_range=native)
    if not rep.plausible:
        alt = infer_convention(module, spec.scale, multiple=spec.size_multiple, min_size=spec.min_size,
                               native_range=native)
        hint = ""
        if alt.plausible and alt.chosen != conv:
            hint = (f". Its output is plausible only as {alt.chosen.label} "
                    f"({alt.best.psnr_y:.2f} dB): the checkpoint does not follow the {spec.arch} convention; pass "
                    f"--input-range {alt.chosen.input_range:g} if that is right, or --model FILE.py:NAME with its own code")
            rep = alt if not alt.plausible else rep
        else:
            rep = alt
            hint = (f"; it may share {spec.arch}'s key layout but not its code: pass --model FILE.py:NAME with "
                    "the author's model code")
        require_plausible(rep, f"{spec.arch} ({spec.variant or 'custom'}) x{spec.scale}", hint=hint)
    return adapt, rep.to_dict()


# ---- steps ---------------------------------------------------------------------------------

def verification_inputs(spec: Spec, seed: int = 0) -> list[np.ndarray]:
    """Real images (bundled sample photos, center crops) + random inputs of odd sizes."""
    from .imaging import read_image
    from .sample_images import sample_images

    rng = np.random.default_rng(seed)
    out = []
    for p in sample_images()[:3]:
        rgb = read_image(p).rgb
        h, w = min(96, rgb.shape[0]), min(128, rgb.shape[1])
        y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        out.append(np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w].transpose(2, 0, 1)[None], dtype=np.float32))
    for h, w in ((17, 23), (1, 1), (32, 7)):
        out.append(rng.random((1, spec.in_channels, h, w), dtype=np.float32))
    return [_fit(x, spec) for x in out]


def _fit(x: np.ndarray, spec: Spec) -> np.ndarray:
    m = max(1, spec.size_multiple)
    h = max(spec.min_size, -(-x.shape[2] // m) * m)
    w = max(spec.min_size, -(-x.shape[3] // m) * m)
    if (h, w) == x.shape[2:]:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, h - x.shape[2]), (0, w - x.shape[3])), mode="reflect" if
                  min(x.shape[2:]) > 1 else "edge")


def measure_bundle_tiling(onnx_path: Path, spec: Spec, opts: ConvertOptions):
    """Tiling measured on the exported fp32 ONNX with ONNX Runtime (see edgesr.tiling). A
    fixed-size export runs on one input size only: nothing to measure, and the result says so."""
    from .backends.ort_runner import OrtRunner
    from .tiling import TilingMeasurement, measure_tiling

    fixed = opts_export_fixed_hw(onnx_path.parent) if onnx_path.name == "model.onnx" else None
    if fixed is not None:
        h, w = fixed
        return TilingMeasurement(
            exact=False, tile=min(h, w), overlap=0, alignment=1, locality="unknown", receptive_field=None,
            probe_radius=None, min_size=max(h, w), method="not measured (fixed-size graph)",
            reasons=[f"fixed-size export: the graph runs on {h}x{w} LR inputs only, so tiling was not measured "
                     f"(run larger images as {h}x{w} boxes)"])

    return measure_tiling(OrtRunner(onnx_path, name="ort:fp32", threads=opts.threads), spec, onnx_path,
                          threads=opts.threads)


def check_reparameterization(training, deploy, inputs: list[np.ndarray], spec: Spec, tol: float = 1e-5) -> dict:
    """Training form vs deploy form in fp32. Deploy forms may clamp to the value range
    (ETDS's ReLU clip), so the training output is clamped the same way before comparing."""
    import torch

    from .errors import ParityError

    lo, hi = spec.value_range
    worst = 0.0
    per = []
    with torch.inference_mode():
        for x in inputs:
            t = torch.from_numpy(x)
            a, b = training(t), deploy(t)
            if _clamps(deploy):
                a = a.clamp(lo, hi)
            err = float((a - b).abs().max())
            worst = max(worst, err)
            per.append({"shape": list(x.shape), "max_abs": err})
    if not np.isfinite(worst) or worst > tol:
        raise ParityError(f"reparameterization is not exact: max abs difference {worst:.3g} > {tol:g}")
    return {"applied": True, "max_abs": worst, "tolerance": tol, "inputs": per}


def _clamps(module) -> bool:
    """Deploy forms that clamp to the value range declare `clamps_output = True`."""
    return bool(getattr(module, "clamps_output", False))


# The runtime each INT8 profile's graph is made for (manifest `backend` of its artifact).
PROFILE_RUNTIME = {"trt": "tensorrt", "cpu": "onnxruntime", "openvino": "openvino"}
# Latency rows (measure_latency) of each runtime's fp32 and INT8 graph.
LATENCY_NAMES = {"onnxruntime": ("ort:fp32", "ort:int8-cpu"), "openvino": ("openvino:fp32", "openvino:int8-openvino")}


def int8_profiles(opts: ConvertOptions) -> list[str]:
    """The INT8 graphs a bundle gets: one per runtime it targets (auto), or the named profile(s).

    auto: ``cpu`` (ONNX Runtime on the CPU, every bundle's baseline runtime), ``openvino`` with
    --openvino, ``trt`` with --trt-rtx/--trt. The first one is written as model_int8.onnx."""
    if opts.int8_profile == "auto":
        return ["cpu"] + (["openvino"] if opts.openvino else []) + (["trt"] if opts.engines is not None else [])
    if opts.int8_profile == "both":
        return ["trt", "cpu"]
    return [opts.int8_profile]


def write_openvino_ir(onnx_path: Path, xml_path: Path, artifacts: list[dict], role: str, precision: str) -> Path:
    """OpenVINO IR of an ONNX file: the .xml as artifact `role`, its .bin as `role`_weights."""
    from .backends.openvino_runner import convert_to_ir

    xml = convert_to_ir(onnx_path, xml_path)
    artifacts.append(_artifact(xml, role, "openvino-ir", precision, "openvino", weights=xml.with_suffix(".bin").name,
                               source=onnx_path.name))
    artifacts.append(_artifact(xml.with_suffix(".bin"), f"{role}_weights", "openvino-bin", precision, "openvino"))
    return xml


def quantize_for(onnx_path: Path, out_path: Path, spec: Spec, profile: str, opts: ConvertOptions) -> dict:
    """INT8 QDQ with mixed precision held to opts.psnr_budget on held-out sample photos,
    measured in the runtime the profile is made for; scored on opts.testset (e.g. Set5) too
    when given, for the report only."""
    from .quant import QuantConfig, quantize_model, testset_eval_set

    cfg = QuantConfig(profile=profile, psnr_budget=opts.psnr_budget if opts.int8_search else None,
                      progress=sys.stderr.isatty())
    eval_set = None
    if not opts.int8_search:  # the zoo's cheap INT8: a calibrated QDQ graph, no search to feed, no GPTQ
        from .quant import held_out_eval_set

        cfg = replace(cfg, num_patches=8, gptq=False)
        eval_set = held_out_eval_set(spec.scale, max_side=256)
    fixed = opts_export_fixed_hw(onnx_path.parent) if onnx_path.name == "model.onnx" else None
    if fixed is not None:  # a fixed-shape graph: patches and evaluation images of exactly that size
        from .quant import held_out_eval_set

        cfg = replace(cfg, patch_size=fixed[0], batch_size=1)
        eval_set = held_out_eval_set(spec.scale, max_side=fixed[0] * spec.scale)
    test_set = testset_eval_set(opts.testset, spec.scale) if opts.testset else None
    png = out_path.parent / f"sensitivity_{profile}.png" if opts.int8_search else None
    res = quantize_model(onnx_path, out_path, spec, cfg, calibration=opts.calib, test_set=test_set,
                         sensitivity_png=png, eval_set=eval_set)
    d = res.to_dict() | {"path": out_path.name, "runtime": PROFILE_RUNTIME[profile]}
    if png is not None and png.exists():
        d["sensitivity_png"] = png.name
    return d


def int8_verdict(report: dict) -> dict:
    """The one INT8 verdict per graph: the quantizer's budget check (Y-PSNR drop vs fp32 against
    ground truth on evaluation images disjoint from calibration) decides; parity's comparisons
    of INT8 outputs are information. Also whether the graph is faster than fp32 in its runtime
    on this machine (when latency was measured), which decides the bundle's default artifact."""
    lat = {r["backend"]: r["median_ms"] for r in (report.get("latency") or {}).get("results", [])}
    out: dict = {"graphs": {}, "problems": [], "notes": []}
    for profile, q in (report.get("int8") or {}).items():
        runtime = q.get("runtime") or PROFILE_RUNTIME.get(profile, "onnxruntime")
        e = {"runtime": runtime, "within_budget": bool(q["within_budget"]), "drop_db": q["drop"],
             "budget_db": q.get("budget"), "criterion": q.get("criterion"), "eval_set": q.get("eval_set"),
             "eval_images": q.get("eval_images", []), "calibration_images": (q.get("calibration") or {}).get("images", []),
             "float_layers": len(q.get("float_layers") or []), "layers": len(q.get("layers") or []),
             "all_int8_drop_db": q["psnr_fp32"] - q["psnr_int8_all"]}
        if q.get("test_drop") is not None:
            e["test_set"], e["test_drop_db"] = q.get("test_set"), q["test_drop"]
        fp32_name, int8_name = LATENCY_NAMES.get(runtime, (None, None))
        if fp32_name in lat and int8_name in lat:
            e["fp32_ms"], e["int8_ms"] = lat[fp32_name], lat[int8_name]
            e["speedup"] = round(lat[fp32_name] / lat[int8_name], 3)
            e["faster_than_fp32"] = lat[int8_name] < lat[fp32_name]
            if not e["faster_than_fp32"]:
                out["notes"].append(f"{profile}: the INT8 graph ({lat[int8_name]:.1f} ms) is NOT faster than fp32 "
                                    f"({lat[fp32_name]:.1f} ms) in {runtime} on this machine; the bundle's default "
                                    f"for {runtime} stays fp32")
        if not e["within_budget"]:
            import math

            accept = math.ceil(q["drop"] * 100) / 100
            out["problems"].append(
                f"{profile}: no INT8 graph met the {q.get('budget')} dB budget on {q.get('eval_set')}; the best one "
                f"evaluated loses {q['drop']:.3f} dB ({e['float_layers']} of {e['layers']} layers float). It is "
                f"written but not the default; accept the drop with --psnr-budget {accept:.2f}")
        e["default"] = e["within_budget"] and e.get("faster_than_fp32", True)
        out["graphs"][profile] = e
    return out


def run_parity(training, deploy, spec: Spec, staging: Path, int8_paths: dict[str, Path], opts: ConvertOptions,
               ov_paths: dict[str, Path] | None = None) -> dict:
    """PyTorch deploy form is the reference; every exported artifact is compared with it on real
    images plus random odd-sized inputs: fp32/fp16 are gated by their tolerances; INT8 outputs
    are reported for information only (the INT8 verdict is the quantizer's budget check on
    ground truth, see `int8_verdict`)."""
    from .backends.ort_runner import OrtRunner
    from .backends.torch_runner import TorchRunner
    from .parity import Tolerance, check_parity

    ov_paths = ov_paths or {}
    user = opts.model is not None
    if user:  # the author's own module (through the measured convention) is the reference
        runners = [TorchRunner(training if training is not None else deploy, name="torch:author")]
        if training is not None:
            runners.append(TorchRunner(deploy, name="torch:deploy"))
    else:
        runners = [TorchRunner(deploy, name="torch:deploy")]
        if training is not None:
            runners.append(TorchRunner(training, name="torch:training"))
    runners.append(OrtRunner(staging / "model.onnx", name="ort:fp32"))
    if (staging / "model.ort").exists():
        runners.append(OrtRunner(staging / "model.ort", name="ort-format:fp32"))
    if (staging / "model_fp16.onnx").exists():
        runners.append(OrtRunner(staging / "model_fp16.onnx", name="ort:fp16"))
    if "fp32" in ov_paths:
        from .backends.openvino_runner import OpenVinoRunner

        runners.append(OpenVinoRunner(ov_paths["fp32"], name="openvino:fp32"))
    info = {}
    for profile, p in int8_paths.items():
        runners.append(OrtRunner(p, name=f"ort:int8-{profile}"))
        info[runners[-1].name] = Tolerance()
    if "int8" in ov_paths:
        from .backends.openvino_runner import OpenVinoRunner

        runners.append(OpenVinoRunner(ov_paths["int8"], name="openvino:int8-openvino"))
        runners[-1].precision = "int8"
        info[runners[-1].name] = Tolerance()
    if training is not None and _clamps(deploy) and not user:
        # The deploy form clamps to [0, 1]; compare the training form's output clamped too.
        runners[1] = _ClampedRunner(runners[1], *spec.value_range)
    tolerances: dict = dict(info)
    samples = None
    if user:
        # Author code is compared at the zoo's bar (1e-4): attention, LayerNorm and large
        # activations sum in a different order in ORT than in PyTorch.
        tolerances.update({r.name: Tolerance(max_abs=USER_FP32_TOL) for r in runners[1:]
                           if r.name in ("torch:deploy", "ort:fp32", "ort-format:fp32")})
    fixed = opts_export_fixed_hw(staging)
    if fixed is not None:
        from .export.diagnose import fixed_size_samples

        samples = fixed_size_samples(spec.scale, fixed)
    report = check_parity(runners, samples, tolerances=tolerances or None, scale=spec.scale,
                          heatmap_dir=None if opts.light_checks else staging / "heatmaps",
                          localize=not opts.light_checks)
    d = report.to_dict()
    for c in d["comparisons"]:
        if c["test"] in info:
            c["gate"] = False
            c["note"] = "information only: INT8 is judged by the budget check on ground truth (see int8_verdict)"
    return d


USER_FP32_TOL = 1e-4


def opts_export_fixed_hw(staging: Path) -> tuple[int, int] | None:
    """The fixed LR size of a fixed-shape export (model.onnx's metadata), or None when dynamic."""
    from .export.onnx import read_metadata

    meta = read_metadata(staging / "model.onnx")
    if meta.get("dynamic_shapes", "true") == "true":
        return None
    import json

    hw = json.loads(meta.get("fixed_input_hw", "null"))
    return tuple(hw) if hw else None


class _ClampedRunner:
    def __init__(self, runner, lo: float, hi: float):
        self.runner, self.lo, self.hi = runner, lo, hi
        self.name = runner.name + "+clamp"

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.runner.run(x), self.lo, self.hi)


def measure_latency(staging: Path, deploy, spec: Spec, int8_paths: dict[str, Path], opts: ConvertOptions,
                    ov_paths: dict[str, Path] | None = None) -> dict:
    """CPU latency at one standard workload, backends interleaved in one run (ORT spinning off:
    an idle session's spinning threads would compete with the one being timed)."""
    import torch

    from .backends.ort_runner import OrtRunner
    from .bench import TimingPolicy, machine_info, time_interleaved

    oh, ow = opts.bench_output
    h, w = max(1, oh // spec.scale), max(1, ow // spec.scale)
    fixed = opts_export_fixed_hw(staging)
    if fixed is not None:  # a fixed-shape export runs one tile size only
        h, w = fixed
    x = np.random.default_rng(0).random((1, spec.in_channels, h, w), dtype=np.float32)
    xt = torch.from_numpy(x)
    from .bench import SessionRunner, ort_session

    def ort(p: Path):
        return SessionRunner(ort_session(p, threads=opts.threads, spinning=False), p.name)

    runners = {"ort:fp32": ort(staging / "model.onnx")}
    for profile, p in int8_paths.items():
        if profile != "trt":  # the TensorRT graph is timed by TensorRT (engines), not on the CPU
            runners[f"ort:int8-{profile}"] = ort(p)
    ov_paths = ov_paths or {}
    if ov_paths:
        from .backends.openvino_runner import OpenVinoRunner

        runners["openvino:fp32"] = OpenVinoRunner(ov_paths.get("fp32", staging / "model.onnx"), threads=opts.threads)
        if "int8" in ov_paths:
            runners["openvino:int8-openvino"] = OpenVinoRunner(ov_paths["int8"], threads=opts.threads)

    def torch_fn():
        with torch.inference_mode():
            deploy(xt)

    fns = ({} if opts.light_checks else {"torch:deploy": torch_fn}) | {k: (lambda r=r: r.run(x)) for k, r in runners.items()}
    policy = (TimingPolicy(warmup_seconds=0.2, min_runs=3, min_seconds=0.3, max_runs=20) if opts.light_checks
              else TimingPolicy(warmup_seconds=0.5, min_runs=5, min_seconds=1.0))
    stats = time_interleaved(fns, policy)
    mpx = (h * spec.scale) * (w * spec.scale) / 1e6
    results = [{"backend": k, "size": f"{h}x{w}", "output": f"{h * spec.scale}x{w * spec.scale}",
                **s.to_dict(), "mpix_per_s": round(mpx / (s.median_ms / 1e3), 2)} for k, s in stats.items()]
    return {"machine": machine_info(), "threads": opts.threads or "ort default", "ort_spinning": "off",
            "results": results}


def build_engines(staging: Path, deploy, spec: Spec, inputs: list[np.ndarray], int8_paths: dict[str, Path],
                  artifacts: list[dict], report: dict, opts: ConvertOptions, done: Callable[..., None]) -> None:
    """--trt-rtx / --trt: an engine per ONNX written above (fp32, fp16, INT8 `trt` profile), built
    into the engine cache and copied with its sidecar to engines/; manifest entries and
    report["engines"]. With a CUDA GPU the engines also join report["parity"] (PyTorch deploy
    form as reference) and report["latency"]; without one the report says so."""
    from .backends.torch_runner import TorchRunner
    from .backends.trt_convert import build_for_bundle, verify_on_gpu

    sources = [(staging / "model.onnx", "fp32")]
    if (staging / "model_fp16.onnx").exists():
        sources.append((staging / "model_fp16.onnx", "fp16"))
    if "trt" in int8_paths:
        sources.append((int8_paths["trt"], "int8 (trt profile)"))
    oh, ow = opts.bench_output
    workload = (max(1, oh // spec.scale), max(1, ow // spec.scale))
    res = build_for_bundle(sources, staging, spec, opts.engines, workload_lr_hw=workload)
    res.report["skipped"] = [f"{p.name}: the '{k}' INT8 profile is not TensorRT's (use --int8-profile trt or both)"
                             for k, p in int8_paths.items() if k != "trt"]
    artifacts.extend(res.artifacts)
    report["engines"] = res.report
    run = verify_on_gpu(res, staging, TorchRunner(deploy, name="torch:deploy"), inputs, spec.scale,
                        bench_lr_hw=workload if opts.bench else None)
    if run is not None:
        par = run.get("parity") or {}
        report["parity"]["comparisons"] += par.get("comparisons", [])
        report["parity"]["ok"] = bool(report["parity"]["ok"] and par.get("ok", True) and "error" not in run)
        if run.get("latency") and "latency" in report:
            report["latency"]["results"] += run["latency"]
    hits = sum(b["cache_hit"] for b in res.report["builds"])
    done("engines", f"{len(res.report['builds'])} engines ({hits} from cache), run: "
                    f"{res.report['run'] if isinstance(res.report['run'], str) else 'verified on ' + run['device']['name']}")


def build_manifest(spec: Spec, artifacts: list[dict], folder: Path, report: dict) -> dict:
    from .bundle import manifest_extras

    lat = {r["backend"]: r["median_ms"] for r in report.get("latency", {}).get("results", [])}
    return {
        "format": "edgesr-bundle",
        "format_version": 1,
        "edgesr_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": report["source"],
        "spec": spec.to_dict(),
        "io": {"input": {"name": "input", "dtype": "float32", "layout": spec.layout,
                         "shape": ["N", spec.in_channels, "H", "W"], "value_range": list(spec.value_range),
                         "color_order": spec.color_order},
               "output": {"name": "output", "dtype": "float32", "layout": spec.layout,
                          "shape": ["N", spec.out_channels, f"H*{spec.scale}", f"W*{spec.scale}"],
                          "value_range": list(spec.value_range), "color_order": spec.color_order},
               "scale": spec.scale, "size_multiple": spec.size_multiple, "min_size": spec.min_size,
               "receptive_field": spec.receptive_field},
        "artifacts": artifacts,
        "parity": {"ok": report["parity"]["ok"],
                   "comparisons": [{"reference": c["reference"], "candidate": c["test"], "precision": c.get("precision"),
                                    "max_abs": c.get("max_abs"), "psnr": c.get("psnr"), "ok": c["ok"],
                                    "gate": c.get("gate", True)}
                                   for c in report["parity"].get("comparisons", [])]},
        "latency_ms_median": lat,
    } | manifest_extras(spec, report) | int8_manifest(artifacts, report)


def int8_manifest(artifacts: list[dict], report: dict) -> dict:
    """``int8``: each INT8 graph's verdict (criterion, images, drop, budget, speed vs fp32) and
    ``default_artifacts``: the artifact role an application should load per runtime - the INT8
    graph made for that runtime when it met the budget and (where measured) is faster than fp32
    here, else the fp32 one."""
    roles = {a["role"] for a in artifacts}
    verdict = (report.get("int8_verdict") or {}).get("graphs", {})
    int8_role = {"cpu": "onnx_int8_cpu", "openvino": "openvino_int8", "trt": "onnx_int8_trt"}
    defaults: dict[str, str] = {}
    for runtime, fp32_role, profile in (("onnxruntime", "onnx_fp32", "cpu"), ("openvino", "openvino_fp32", "openvino"),
                                        ("tensorrt", "onnx_fp32", "trt")):
        v = verdict.get(profile)
        if v is not None and v.get("default") and int8_role[profile] in roles:
            defaults[runtime] = int8_role[profile]
        elif fp32_role in roles and (runtime != "tensorrt" or "engines" in report):
            defaults[runtime] = fp32_role
        elif runtime == "openvino" and int8_role[profile] in roles:
            defaults[runtime] = "onnx_fp32"  # OpenVINO reads the fp32 ONNX directly
    out: dict = {"default_artifacts": defaults}
    if verdict:
        out["int8"] = {p: {**v, "artifact": int8_role.get(p)} for p, v in verdict.items()}
    return out


def _state_fixed_shape(manifest: dict, report: dict) -> None:
    """A fixed-shape export (user code whose trace bakes sizes in) says so in the manifest: the
    input/output shapes are numbers, the shape range is that one size, and why."""
    hw = (report.get("export") or {}).get("fixed_input_hw")
    if not hw:
        return
    h, w = hw
    s = manifest["spec"]["scale"]
    manifest["io"]["input"]["shape"] = ["N", manifest["spec"]["in_channels"], h, w]
    manifest["io"]["output"]["shape"] = ["N", manifest["spec"]["out_channels"], h * s, w * s]
    manifest["io"]["fixed_input_hw"] = [h, w]
    manifest["io"]["fixed_reason"] = report["export"].get("fixed_reason", "")
    for dim, v in (("height", h), ("width", w)):
        manifest["shape_range"][dim].update({"min": v, "max": v, "opt": v})


def render_report_md(report: dict, manifest: dict) -> str:
    spec = manifest["spec"]
    lines = [f"# edgesr conversion report: {spec['arch']} ({spec.get('variant') or 'custom'}) x{spec['scale']}", "",
             f"- source: `{report['source']['checkpoint']}` (sha256 `{report['source']['sha256'][:16]}...`, "
             f"{report['source']['form']} form)",
             f"- result: **{'OK' if report['ok'] else 'FAILED'}**", ""]
    rp = report["reparameterization"]
    lines += ["## Reparameterization", "",
              (f"training form vs deploy form, fp32 max abs = {rp['max_abs']:.2e} (tolerance {rp['tolerance']:g}) "
               f"over {len(rp['inputs'])} inputs" if rp.get("applied") else f"not applied: {rp.get('reason')}"), ""]
    ex = report["export"]
    lines += ["## ONNX export", "", f"- opset {ex['opset']}, dynamic N/H/W: {ex['dynamic']}, simplified: {ex['simplified']}",
              f"- operators: {ex['op_counts']}",
              f"- ONNX Runtime vs PyTorch max abs: {ex['max_abs_vs_torch']:.2e}", ""]
    par = report["parity"]
    lines += ["## Parity", "", f"Inputs: {', '.join(par.get('samples', []))}", "",
              "| reference | candidate | max abs | mean abs | p99 abs | PSNR (dB) | SSIM | 8-bit pixels differing "
              "| PSNR vs HR (ref / cand) | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in par.get("comparisons", []):
        gt = (f"{_f(c.get('ref_psnr_gt'))} / {_f(c.get('test_psnr_gt'))}"
              if c.get("ref_psnr_gt") is not None else "-")
        lines.append(f"| {c['reference']} | {c['test']} | {_f(c.get('max_abs'))} | {_f(c.get('mean_abs'))} | "
                     f"{_f(c.get('p99_abs'))} | {_f(c.get('psnr'))} | {_f(c.get('ssim'))} | "
                     f"{_f(c.get('diff8_share'))} | {gt} | {'info' if c.get('gate') is False else 'yes' if c['ok'] else 'NO'} |")
    for c in par.get("comparisons", []):
        if c.get("first_divergence"):
            d = c["first_divergence"]
            lines += ["", f"{c['test']}: first diverging operator `{d.get('node', d)}` ({d.get('op_type', '')})"]
        for fail in c.get("failures", []):
            lines.append(f"- {c['test']}: {fail}")
    lines.append("")
    if "int8" in report:
        crit = next(iter(report["int8"].values())).get("criterion", "")
        lines += ["## INT8", "", f"Verdict (the only one; parity's INT8 rows above are information): {crit}.",
                  "Y-PSNR (dB) on the evaluation set (held-out crops of the sample photos, never the "
                  "calibration patches), measured in the runtime each graph is made for; `all-int8` is before "
                  "mixed precision.", "",
                  "| profile | eval set | fp32 | all-int8 | int8 | drop | within budget | float layers | test set fp32 / int8 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for prof, q in report["int8"].items():
            test = (f"{_f(q.get('test_psnr_fp32'))} / {_f(q.get('test_psnr_int8'))} ({q.get('test_set')})"
                    if q.get("test_psnr_int8") is not None else "-")
            lines.append(f"| {prof} | {q.get('eval_set')} | {_f(q['psnr_fp32'])} | {_f(q['psnr_int8_all'])} | "
                         f"{_f(q['psnr_int8'])} | {_f(q['drop'])} | {q['within_budget']} | "
                         f"{', '.join(q.get('float_layers') or []) or '-'} | {test} |")
        v = report.get("int8_verdict") or {}
        lines.append("")
        for p, g in v.get("graphs", {}).items():
            speed = (f"{g['speedup']:.2f}x fp32 in {g['runtime']} ({g['int8_ms']:.1f} vs {g['fp32_ms']:.1f} ms)"
                     if "speedup" in g else f"speed in {g['runtime']} not measured here")
            lines.append(f"- {p}: {'within budget' if g['within_budget'] else 'OVER BUDGET'}, {speed}; "
                         f"{'the default for ' + g['runtime'] if g['default'] else 'not the default (fp32 is)'}; "
                         f"evaluation images: {', '.join(g['eval_images'])}; calibration images: "
                         f"{', '.join(g['calibration_images'])}")
        for line in v.get("problems", []) + v.get("notes", []):
            lines.append(f"- **{line}**")
        lines.append("")
    if "engines" in report:
        eng = report["engines"]
        run = eng["run"] if isinstance(eng["run"], str) else f"verified on {eng['run'].get('device', {}).get('name')}"
        p = eng["profile"]
        lines += ["## TensorRT engines", "", f"- profile (LR H x W): min {p['min_hw']}, opt {p['opt_hw']}, "
                  f"max {p['max_hw']}; targets: {eng['options']['compute_capabilities']}",
                  f"- run: {run}", "",
                  "| engine | flavour | precision | source | cache hit | build s | MiB |", "|---|---|---|---|---|---|---|"]
        for b in eng["builds"]:
            lines.append(f"| {b['file']} | {b['flavour']} {b['flavour_version']} | {b['precision']} | {b['source']} | "
                         f"{b['cache_hit']} | {b['build_seconds']} | {b['bytes'] / 2**20:.2f} |")
        for note in eng.get("skipped", []):
            lines.append(f"- skipped: {note}")
        lines.append("")
    if any(k in report for k in ("tflite", "ncnn", "coreml")):
        from .export.mobile_convert import render_mobile_md

        lines += render_mobile_md(report)
    if "latency" in report:
        m = report["latency"]["machine"]
        lines += ["## CPU latency", "", f"{m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, "
                  f"onnxruntime {m.get('onnxruntime_version')}, torch {m.get('torch_version')}", "",
                  "| backend | input | output | median ms | p90 ms | CV | Mpix/s |", "|---|---|---|---|---|---|---|"]
        for r in report["latency"]["results"]:
            lines.append(f"| {r['backend']} | {r['size']} | {r['output']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['cv']:.2f} | {r['mpix_per_s']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"
    return str(v)


def _source_info(ckpt: Path, spec: Spec, bundled: bool) -> dict:
    return {"checkpoint": text_name(ckpt.name), "sha256": sha256_file(ckpt), "bundled": bundled, "form": spec.form,
            "arch": spec.arch, "variant": spec.variant, "hyperparams": spec.hyperparams}


def _artifact(path: Path, role: str, fmt: str, precision: str, backend: str, **extra) -> dict:
    return {"role": role, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "format": fmt, "precision": precision, "backend": backend, **extra}


def check_outdir(outdir: Path, force: bool, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse an OUTDIR whose replacement could lose data, before any work (and again just
    before publishing): the current folder or one of its parents (`-o .`); a folder holding
    (or being) one of `inputs` (the checkpoint, --calib, --testset, --model code), even with --force; an
    existing OUTDIR without --force; and, with --force, anything but a bundle edgesr wrote
    itself (a real folder with an edgesr manifest and only edgesr's files in it)."""
    from .bundle import not_written_by_edgesr

    out = _absolute(outdir)
    cwd = _absolute(Path.cwd())
    if not outdir.name or out == cwd or out in cwd.parents:
        raise OutputError(f"output folder {quoted(outdir)} is the current folder or one of its parents; convert "
                          "writes a new folder and --force would replace it: name one, e.g. -o out/model")
    for p in inputs:
        if p is None:
            continue
        ip = _absolute(Path(p))
        if ip == out or out in ip.parents:
            raise OutputError(f"output folder {quoted(outdir)} holds the input {quoted(p)}; replacing it would "
                              "delete that: choose another output folder")
    if not os.path.lexists(outdir):
        return
    if not force:
        raise OutputExists(f"{quoted(outdir)} exists; pass --force to replace it")
    why = not_written_by_edgesr(outdir)
    if why is not None:
        raise OutputError(f"refusing to replace {quoted(outdir)} even with --force: {why}; edgesr only replaces "
                          "bundles it wrote. Move what you need out of it, or choose another -o")


def _absolute(p: Path) -> Path:
    """Absolute, symlinks resolved where they exist (a missing tail is kept as written)."""
    try:
        return p.expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # e.g. a symlink loop
        return Path(os.path.abspath(p))


def _staging_name(outdir_name: str, tag: str = "") -> str:
    """``.edgesr-partial-[tag]<name>-<pid>``, the name shortened (with a hash, so two long
    names stay apart) when the result plus ``.lock`` would pass the file system's name limit:
    a legal 250-character OUTDIR must not fail because its staging name is longer."""
    import hashlib

    pid = str(os.getpid())
    budget = _name_max() - len(_LOCK_SUFFIX) - len(STAGING_PREFIX) - len(tag) - 1 - len(pid)
    name = outdir_name
    if len(os.fsencode(name)) > budget:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        keep = os.fsencode(name)[: max(0, budget - len(digest) - 1)].decode("utf-8", "ignore")
        name = f"{keep}~{digest}"
    return f"{STAGING_PREFIX}{tag}{name}-{pid}"


def _name_max() -> int:
    return 255  # NAME_MAX of ext4, XFS, btrfs, APFS, NTFS (UTF-16 units there)


def _make_staging(outdir: Path) -> Path:
    """A fresh hidden folder beside OUTDIR, owned by this process (see `_lock_staging`)."""
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(outdir.parent)
        staging = outdir.parent / _staging_name(outdir.name)
        _lock_staging(staging)  # before mkdir: a folder whose lock nobody holds is a stale leftover
        if os.path.lexists(staging):
            _remove_path(staging)
        staging.mkdir()
    except OSError as e:
        blocker = next((a for a in [outdir.parent, *outdir.parent.parents] if os.path.lexists(a)), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"cannot create the output folder {quoted(outdir)}: {quoted(blocker)} is a file, "
                              "not a folder") from None
        raise OutputError(f"cannot create the output folder {quoted(outdir)}: {e.strerror or e}") from None
    return staging


def _clean_stale_staging(parent: Path) -> None:
    """Remove staging folders (and their lock files) left by killed runs.

    A folder is stale when its lock file is not held by a live process (the kernel drops
    an flock when its holder dies, so a reused PID cannot keep a leftover alive), or, for
    a folder without a lock file, when the PID in its name is not running. Folders of
    running conversions, this process's included, are left alone.
    """
    try:
        entries = sorted(parent.glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return
    for p in entries:
        if p.name.endswith(_LOCK_SUFFIX):
            folder = p.with_name(p.name[: -len(_LOCK_SUFFIX)])
            if _HAVE_FLOCK and str(folder) not in _STAGING_LOCKS and not os.path.lexists(folder):
                fd = _try_lock(p)
                if fd is not None:  # orphan lock (killed right after publishing, or before mkdir)
                    _unlink_quietly(p)
                    os.close(fd)
            continue
        if str(p) in _STAGING_LOCKS:
            continue  # ours
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        lock = p.with_name(p.name + _LOCK_SUFFIX)
        if _HAVE_FLOCK and lock.exists():
            fd = _try_lock(lock)
            if fd is None:
                continue  # a live conversion holds it
            try:
                _remove_path(p)
                _unlink_quietly(lock)
            finally:
                os.close(fd)
        elif not _pid_alive(int(pid)):
            _remove_path(p)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. Windows: an invalid PID
        return False
    return True


def _publish(staging: Path, outdir: Path, force: bool) -> None:
    """Rename the finished staging folder onto OUTDIR (replacing it only with --force).

    On Linux the replacement is one atomic exchange (renameat2 RENAME_EXCHANGE), so OUTDIR
    is at every instant either the complete old bundle or the complete new one; elsewhere
    it is two renames, and a kill between them leaves no OUTDIR (never a partial one) with
    the old bundle in a stale staging folder that the next run removes.
    """
    try:
        if os.path.lexists(outdir):
            if not force:
                raise OutputExists(f"{quoted(outdir)} appeared while converting; pass --force to replace it")
            check_outdir(outdir, force)  # still a bundle edgesr wrote? (it may have changed meanwhile)
            if _rename2(staging, outdir, _RENAME_EXCHANGE):
                _fsync_parent(outdir)
                _remove_path(staging)  # now holds the previous OUTDIR
            else:
                old = outdir.parent / _staging_name(outdir.name, "old-")
                os.replace(outdir, old)
                os.replace(staging, outdir)
                _fsync_parent(outdir)
                _remove_path(old)
        else:
            if not _rename2(staging, outdir, _RENAME_NOREPLACE):
                os.rename(staging, outdir)
            _fsync_parent(outdir)
    except FileExistsError:
        raise OutputExists(f"{quoted(outdir)} appeared while converting; pass --force to replace it") from None
    except OSError as e:
        raise OutputError(f"cannot publish {quoted(outdir)}: {e.strerror or e}") from None
    finally:
        _unlock_staging(staging)


def _discard_staging(staging: Path) -> None:
    """Remove an unfinished staging folder and release its lock (on any failure)."""
    _remove_path(staging)
    _unlock_staging(staging)


# ---- staging helpers: lock files, atomic renames --------------------------------------------

_LOCK_SUFFIX = ".lock"
_STAGING_LOCKS: dict[str, int] = {}  # staging folder -> fd of the lock file this process holds
try:
    import fcntl as _fcntl

    _HAVE_FLOCK = True
except ImportError:  # Windows: stale folders are recognised by PID only
    _fcntl = None
    _HAVE_FLOCK = False
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _lock_staging(staging: Path) -> None:
    """Create and hold ``<staging>.lock`` (flock) while this process converts into `staging`."""
    if not _HAVE_FLOCK or str(staging) in _STAGING_LOCKS:
        return
    lock = staging.with_name(staging.name + _LOCK_SUFFIX)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputExists(f"{staging} is in use by another edgesr process") from None
    _STAGING_LOCKS[str(staging)] = fd


def _unlock_staging(staging: Path) -> None:
    fd = _STAGING_LOCKS.pop(str(staging), None)
    if fd is not None:
        _unlink_quietly(staging.with_name(staging.name + _LOCK_SUFFIX))
        os.close(fd)


def _try_lock(lock: Path) -> int | None:
    """An fd holding `lock` exclusively, or None when a live process holds it."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(src, dst, flags); False when the C library or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        _unlink_quietly(p)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_parent(path: Path) -> None:
    from .fsutil import _fsync_dir

    _fsync_dir(path.parent)
