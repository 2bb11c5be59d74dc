"""`edgesr convert`: checkpoint -> reparameterize -> ONNX -> (INT8) -> parity -> latency -> OUTDIR.

Everything is written into a hidden staging folder beside OUTDIR and renamed into
place at the end, so a crash never leaves a half-written OUTDIR that looks complete
(`edgesr.publish`); the manifest is built by `edgesr.manifest`, report.md by `edgesr.report`.

Over 500 lines on purpose: it is the one orchestration of a convert, and its steps (reparameterize,
export, INT8 with verdicts, parity, latency, engines) share ConvertOptions, the staging folder and
the report dict; split further, each step would carry that state through its signature.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import __version__
from .backends.base import BaseRunner
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from .manifest import artifact_entry, build_manifest, int8_manifest, source_info, state_fixed_shape  # noqa: F401
from .probe_inputs import verification_inputs
from .publish import STAGING_PREFIX, check_outdir, discard_staging, make_staging, publish  # noqa: F401
from .report import render_report_md
from .spec import Spec

if TYPE_CHECKING:
    from .backends.trt_convert import EngineRequest

BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "ecbsr_m4c16_x4_bundled.safetensors"


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
    engines: EngineRequest | None = None  # --trt-rtx / --trt
    tflite: bool = False  # LiteRT .tflite (fp32, INT8 with --int8)
    ncnn: bool = False  # ncnn .param/.bin (fp32, fp16, INT8 with --int8)
    coreml: bool = False  # Core ML .mlpackage (zipped; converted, not run here)
    mobile_size: tuple[int, int] | None = None  # fixed LR input of .tflite / Core ML (default: a tile box)
    # LiteRT INT8: only files with integer activations (a8w8, then a16w8), never the float-I/O dynamic scheme
    tflite_integer: bool = False
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

    def user_options(self) -> dict[str, Any] | None:
        """The --model options as `edgesr.resolve.load_user_code` takes them (None: a registry checkpoint)."""
        if self.model is None:
            return None
        return {"ref": self.model, "kwargs": self.model_kwargs, "strict": self.strict, "key": self.weights_key,
                "extra_paths": tuple(self.import_paths), "input_range": self.input_range}

    def with_user_model(self, user: dict[str, Any]) -> "ConvertOptions":
        """These options with the user's code as the model (`user`: --model options, as `user_options`)."""
        return replace(self, model=str(user["ref"]), model_kwargs=user.get("kwargs") or {},
                       strict=user.get("strict", True), weights_key=user.get("key"),
                       import_paths=tuple(user.get("extra_paths", ())))


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
        report = {"edgesr_version": __version__, "source": source_info(ckpt, spec, opts.checkpoint is None)}
        if conventions is not None:
            report["conventions"] = conventions
        if training is not None:
            report["reparameterization"] = check_reparameterization(training, deploy, inputs, deploy_spec)
            done("reparameterize", f"max abs {report['reparameterization']['max_abs']:.2e} over "
                                   f"{len(inputs)} inputs")
        else:
            report["reparameterization"] = {"applied": False, "reason": "checkpoint is already in deploy form"}
            done("reparameterize", "skipped (already deploy form)")

    staging = make_staging(outdir)
    try:
        artifacts = []
        from safetensors.torch import save

        deploy_file = staging / "deploy.safetensors"
        atomic_write_bytes(deploy_file, save({k: v.contiguous() for k, v in deploy.state_dict().items()},
                                             metadata={"arch": spec.arch, "form": "deploy", "scale": str(spec.scale)}))
        artifacts.append(artifact_entry(deploy_file, "torch_deploy", "safetensors", "fp32", "torch"))

        from .export.onnx import export_onnx

        onnx_path = staging / "model.onnx"
        if opts.model is not None:
            from .export.diagnose import export_user_model

            exported = export_user_model(deploy, deploy_spec, onnx_path, source_checkpoint=ckpt)
        else:
            exported = export_onnx(deploy, deploy_spec, onnx_path, source_checkpoint=ckpt)
        report["export"] = exported.to_dict() | {"path": onnx_path.name}
        artifacts.append(artifact_entry(onnx_path, "onnx_fp32", "onnx", "fp32", "onnxruntime"))
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
            artifacts.append(artifact_entry(fp16_path, "onnx_fp16", "onnx", "fp16", "onnxruntime"))
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
                    artifacts.append(artifact_entry(staging / name, f"onnx_int8_{profile}", "onnx", "int8",
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
                ort_res = export_ort(src)
                report["ort_format"][role] = ort_res.to_dict() | {"path": ort_res.path.name, "source": src.name}
                artifacts.append(artifact_entry(ort_res.path, role, "ort", "int8" if "int8" in role else "fp32",
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
        state_fixed_shape(manifest, report)
        atomic_write_json(staging / "report.json", report)
        atomic_write_text(staging / "report.md", render_report_md(report, manifest))
        write_manifest(staging, manifest)  # schema-validated, hashes re-checked
        publish(staging, outdir, opts.force)
    except BaseException:
        discard_staging(staging)
        raise
    return ConvertResult(outdir, manifest, report, steps)


# ---- model sources: user code (--model) and the behaviour check of registry models -----------------

def _load_user_model(ckpt: Path, opts: ConvertOptions, done) -> tuple:
    """--model FILE.py:NAME: build + load + measure (edgesr.usermodel), then the deploy form from
    the author's hooks and the generic pass (verified). The training side of parity is the
    author's own module as loaded, seen through the measured convention."""
    from .reparam.author_hooks import deploy_form
    from .resolve import load_user_code

    user = opts.user_options()
    if user is None:
        raise ValueError("_load_user_model needs ConvertOptions.model")
    um = load_user_code(ckpt, user, scale=opts.scale, check_plausible=opts.check_conventions)
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
    report = {"edgesr_version": __version__, "source": source_info(ckpt, spec, False) | {"model": str(um.ref)},
              "user_model": um.report(), "conventions": conv.to_dict(), "reparameterization": rep}
    hooks = "; ".join(f"{', '.join(h['called'])}: {'applied' if h['applied'] else h.get('reason')}"
                      for h in rep["hooks"]) or "no author hooks"
    generic = rep["generic"] or {}
    done("reparameterize", f"{hooks}; generic: {'applied' if generic.get('applied') else generic.get('reason')}")
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
        alt_best = alt.best  # (a plausible report has a chosen convention and its trial)
        if alt.plausible and alt.chosen is not None and alt_best is not None and alt.chosen != conv:
            hint = (f". Its output is plausible only as {alt.chosen.label} "
                    f"({alt_best.psnr_y:.2f} dB): the checkpoint does not follow the {spec.arch} convention; pass "
                    f"--input-range {alt.chosen.input_range:g} if that is right, or --model FILE.py:NAME with its own code")
            rep = alt if not alt.plausible else rep
        else:
            rep = alt
            hint = (f"; it may share {spec.arch}'s key layout but not its code: pass --model FILE.py:NAME with "
                    "the author's model code")
        require_plausible(rep, f"{spec.arch} ({spec.variant or 'custom'}) x{spec.scale}", hint=hint)
    return adapt, rep.to_dict()


# ---- steps ---------------------------------------------------------------------------------


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
    from .backends.openvino_runner import COMPILE_FORM, convert_to_ir

    xml = convert_to_ir(onnx_path, xml_path)
    artifacts.append(artifact_entry(xml, role, "openvino-ir", precision, "openvino", weights=xml.with_suffix(".bin").name,
                               source=onnx_path.name, compile=COMPILE_FORM))
    artifacts.append(artifact_entry(xml.with_suffix(".bin"), f"{role}_weights", "openvino-bin", precision, "openvino"))
    return xml


def quantize_for(onnx_path: Path, out_path: Path, spec: Spec, profile: str, opts: ConvertOptions) -> dict:
    """INT8 QDQ with mixed precision held to opts.psnr_budget on held-out sample photos,
    measured in the runtime the profile is made for; scored on opts.testset (e.g. Set5) too
    when given, for the report only."""
    from .quant import QuantConfig, quantize_model, testset_eval_set

    cfg = QuantConfig(profile=profile, psnr_budget=opts.psnr_budget if opts.int8_search else None,
                      progress=True)
    eval_set = None
    if not opts.int8_search:  # the zoo's cheap INT8: a calibrated QDQ graph, no search to feed, no GPTQ
        from .quant import held_out_eval_set

        cfg = replace(cfg, num_patches=8, gptq=False, patch_size=48)  # one preparation, not the 96/48 choice
        eval_set = held_out_eval_set(spec.scale, max_side=256, tile=None)
    fixed = opts_export_fixed_hw(onnx_path.parent) if onnx_path.name == "model.onnx" else None
    if fixed is not None:  # a fixed-shape graph: patches and evaluation images of exactly that size
        from .quant import held_out_eval_set

        cfg = replace(cfg, patch_size=fixed[0], batch_size=1)
        eval_set = held_out_eval_set(spec.scale, max_side=fixed[0] * spec.scale, tile=None)  # the one size
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
        if runtime in ("onnxruntime", "openvino"):  # measured on this CPU: its int8 kernels decide
            from .machine import int8_dot_product

            e["measured_on"] = int8_dot_product()
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
            speed = q.get("speed") or {}
            slow = speed.get("not_taken_too_slow") or []
            why_slow = (f"; {len(slow)} float-layer candidate(s) were slower than {speed.get('min_speedup')}x fp32 "
                        f"on this machine" if slow else "")
            out["problems"].append(
                f"{profile}: no INT8 graph met the {q.get('budget')} dB budget on {q.get('eval_set')}; the best one "
                f"evaluated loses {q['drop']:.3f} dB ({e['float_layers']} of {e['layers']} layers float){why_slow}. "
                f"It is written but not the default; accept the drop with --psnr-budget {accept:.2f}")
        e["default"] = e["within_budget"] and e.get("faster_than_fp32", True)
        out["graphs"][profile] = e
    from .export.mobile_convert import mobile_int8_problems

    out["problems"] += mobile_int8_problems(report)  # LiteRT / ncnn INT8 files judged the same way
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
    runners: list[BaseRunner]
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
        if c.get("heatmap"):  # relative to the OUTDIR (the staging folder it was drawn in is renamed)
            c["heatmap"] = f"heatmaps/{Path(c['heatmap']).name}"
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


class _ClampedRunner(BaseRunner):
    def __init__(self, runner, lo: float, hi: float):
        self.runner, self.lo, self.hi = runner, lo, hi
        self.name = runner.name + "+clamp"
        self.spec = getattr(runner, "spec", None)

    def _detect_precision(self) -> str:
        return str(getattr(self.runner, "precision", None) or super()._detect_precision())

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.runner.run(x), self.lo, self.hi)


def measure_latency(staging: Path, deploy, spec: Spec, int8_paths: dict[str, Path], opts: ConvertOptions,
                    ov_paths: dict[str, Path] | None = None) -> dict:
    """CPU latency at one standard workload, backends interleaved in one run (ORT spinning off:
    an idle session's spinning threads would compete with the one being timed)."""
    import torch

    from .machine import machine_info
    from .timing import TimingPolicy, time_interleaved

    oh, ow = opts.bench_output
    h, w = max(1, oh // spec.scale), max(1, ow // spec.scale)
    fixed = opts_export_fixed_hw(staging)
    if fixed is not None:  # a fixed-shape export runs one tile size only
        h, w = fixed
    x = np.random.default_rng(0).random((1, spec.in_channels, h, w), dtype=np.float32)
    xt = torch.from_numpy(x)
    from .backends.ort_runner import SessionRunner
    from .backends.ort_session import ort_session

    def ort(p: Path):
        return SessionRunner(ort_session(p, threads=opts.threads, spinning=False), p.name, path=p)

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

    if opts.engines is None:  # no --trt-rtx / --trt
        return

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
    ran = (res.report["run"] if isinstance(res.report["run"], str) or run is None
           else "verified on " + run["device"]["name"])
    done("engines", f"{len(res.report['builds'])} engines ({hits} from cache), run: {ran}")


