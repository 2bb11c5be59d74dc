"""Mobile formats on this CPU: conversion, parity, INT8 quality and latency, side by side with ORT.

Models: the four ETDS-repo checkpoints of issue 18 and one attention family with real weights,
SAFMN++ (NTIRE 2024 ESR, team 23: the organisers' code and weights, loaded as its test_demo.py
does).

* **parity**: LiteRT fp32 and ncnn fp32 vs PyTorch, max |diff| over the five Set5 x4 LR images.
  LiteRT files are fixed-size, so one .tflite is converted per LR size; ncnn runs any size unless
  pnnx cannot keep the model's shapes dynamic (SAFMN++'s adaptive pooling: one .param per size).
* **INT8**: Set5 x4 Y-PSNR (BasicSR protocol, edgesr.metrics.psnr_y) of LiteRT full-integer INT8
  and ncnn INT8 against the same format's fp32, with edgesr's recipes
  (edgesr.export.litert.LiteRtInt8 / edgesr.export.ncnn_int8.NcnnInt8) and their verdict: the drop
  on the held-out sample photos, convolutions kept float while it exceeds 0.1 dB. Set5 takes no
  part in any choice. `--ablation` measures each step's effect with every convolution INT8.
* **kernels**: does the runtime's int8 arithmetic saturate on this CPU (no VNNI)? LiteRT: the
  XNNPACK output vs LiteRT's reference kernels (exact int32) on the same INT8 file; ncnn: each
  INT8 convolution's output vs a float64 simulation of it from its own input blob, scales and
  int8 weights.
* **latency**: one LR workload (default 128x128 -> 512x512), all runtimes timed in ONE
  interleaved run (edgesr.bench.time_interleaved; ORT with intra-op spinning off), 1 thread each
  unless --threads; ratios are time / ORT fp32 time from the same run (< 1: faster; paired per-round
  ratios give the p10-p90 spread).
* **Core ML**: converted (fp16) and checked statically; no runtime here.

Prints a table; writes benchmarks/results/mobile.json (--ablation: mobile_int8_ablation.json);
`--readme` rewrites the README block between <!-- mobile-coverage:start --> and
<!-- mobile-coverage:end --> from mobile.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesr.export.litert import SCHEMES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mobile.json"
ABLATION = ROOT / "benchmarks" / "results" / "mobile_int8_ablation.json"
SHARED = ROOT.parent / "shared"
MODELS = {  # name -> checkpoint under shared/checkpoints/etds-repo, or a loader name
    "ETDS-T (ETDS_M5C16_x4)": "ETDS/ETDS_M5C16_x4.pth",
    "ETDS-M (ETDS_M6C32_x4)": "ETDS/ETDS_M6C32_x4.pth",
    "ECBSR_M4C16_x4": "ECBSR/ECBSR_M4C16_x4.pth",
    "ABPN_M4C28_x4": "ABPN/ABPN_M4C28_x4.pth",
    "SAFMN++ (NTIRE 2024 team23)": "safmnpp",
}
BUDGET = 0.1  # held-out dB, edgesr convert's default
PRECISION = {name: s.precision for name, s in SCHEMES.items()}  # LiteRT scheme -> precision label
SCHEME_OF = {p: s for s, p in PRECISION.items()}
START, END = "<!-- mobile-coverage:start -->", "<!-- mobile-coverage:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(name: str):
    import torch

    from edgesr.registry import load_model
    from edgesr.reparam import reparameterize
    from edgesr.spec import Spec

    rel = MODELS[name]
    if rel == "safmnpp":  # as ntire-esr/2024/test_demo.py builds and loads model 23
        root = SHARED / "ntire-esr" / "2024"
        spec_ = importlib.util.spec_from_file_location("team23_safmnpp", root / "models" / "team23_safmnpp.py")
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
        m = mod.SAFMNPP(dim=36, n_blocks=6, ffn_scale=1.5, upscaling_factor=4)
        sd = torch.load(root / "model_zoo" / "team23_safmnpp.pth", map_location="cpu", weights_only=True)
        m.load_state_dict(sd["params_ema"], strict=True)
        return m.eval(), Spec(arch="safmnpp", scale=4)
    lm = load_model(SHARED / "checkpoints" / "etds-repo" / rel)
    m = lm.module.eval()
    return (reparameterize(m) if lm.spec.form == "training" else m), lm.spec


def set5():
    from edgesr.quant.calibration import testset_eval_set

    return testset_eval_set(SHARED / "testsets" / "Set5", 4).pairs


def _x(p, spec) -> np.ndarray:
    from edgesr.quant.calibration import to_model_input

    return to_model_input(p.lr, spec)[None]


def _psnr(y: np.ndarray, p, spec) -> float:
    from edgesr.metrics import psnr_y
    from edgesr.quant.calibration import from_model_output

    return psnr_y(np.clip(from_model_output(y[0], spec), 0, 1), p.hr, spec.scale)


def _drop(a: list[float], b: list[float]) -> float:
    return round(float(np.mean(a) - np.mean(b)), 4)


def _ncnn_mode(module, spec):
    from edgesr.export.ncnn import shape_mode

    hw, why = shape_mode(module, spec, (64, 64))
    return hw is not None, why


CHOSEN: dict = {}  # model -> (float ops, scheme) of this process's LiteRT verdict
RECIPES: dict = {}  # (model, format) -> INT8 recipe of this process: latency reuses quality's (a SAFMN++
# preparation is ~70 forward passes, 8 minutes at load 20 on 2 CPUs)


def quality(name: str, module, spec, pairs, int8: bool = True, formats: tuple[str, ...] = ("litert", "ncnn")
            ) -> dict:
    """Per format: max |fp32 - torch| over Set5; Set5 Y-PSNR of torch / fp32 / INT8 (edgesr's
    recipe with its held-out verdict) and of all-INT8 when the verdict kept layers float
    (`int8=False`: fp32 only, for a model whose INT8 runs in another process)."""
    import torch

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.litert import LiteRtInt8, convert_fp32_bytes
    from edgesr.export.ncnn import convert_bytes
    from edgesr.export.ncnn_int8 import NcnnInt8

    out: dict = {k: [] for k in ("torch", "litert_fp32", "litert_int8", "litert_int8_all", "ncnn_fp32",
                                 "ncnn_int8", "ncnn_int8_all")}
    out |= {"max_abs": {"litert_fp32": 0.0, "ncnn_fp32": 0.0}, "errors": {}, "verdict": {}, "kernels": {}}
    fixed, why = _ncnn_mode(module, spec)
    out["ncnn_shapes"] = "one .param per LR size: " + why if fixed else "dynamic (one .param for every size)"
    recipes: dict = {}  # format -> (INT8 recipe or None, float layers)
    if int8 and "litert" in formats:
        try:
            t0 = time.time()
            lr = RECIPES[(name, "litert")] = LiteRtInt8(module, spec)
            float_ops, v = lr.verdict(BUDGET)
            out["verdict"]["litert"] = v
            recipes["litert"] = (lr, float_ops)
            CHOSEN[name] = (float_ops, v["scheme"])
            log(f"  {name}: LiteRT INT8 verdict {v['scheme']} {v['drop']:.3f} dB ({time.time() - t0:.0f} s)")
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out["errors"]["litert"] = f"{type(e).__name__}: {e}"[:300]
    if int8 and "ncnn" in formats:
        try:
            t0 = time.time()
            nc = RECIPES[(name, "ncnn")] = NcnnInt8(module, spec, fixed=fixed)
            skip, out["verdict"]["ncnn"] = nc.verdict(BUDGET)
            recipes["ncnn"] = (nc, skip)
            log(f"  {name}: ncnn INT8 verdict {out['verdict']['ncnn']['drop']:.3f} dB ({time.time() - t0:.0f} s)")
        except Exception as e:  # noqa: BLE001
            out["errors"]["ncnn"] = f"{type(e).__name__}: {e}"[:300]
    if not int8:
        recipes = {f: (None, []) for f in formats}
    nc32_dyn = None if fixed or "ncnn" not in recipes else NcnnRunner(*convert_bytes(module, spec))
    for p in pairs:
        x = _x(p, spec)
        hw = x.shape[2:]
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()
        out["torch"].append(_psnr(ref, p, spec))
        if "litert" in recipes:
            lr, float_ops = recipes["litert"]
            y = LiteRtRunner(convert_fp32_bytes(module, spec, hw)).run(x)
            out["max_abs"]["litert_fp32"] = max(out["max_abs"]["litert_fp32"], float(np.abs(y - ref).max()))
            out["litert_fp32"].append(_psnr(y, p, spec))
            if lr is not None:
                scheme = out["verdict"]["litert"]["scheme"]
                q = lr.build(hw, float_ops, scheme=scheme)
                out["litert_int8"].append(_psnr(LiteRtRunner(q).run(x), p, spec))
                if float_ops or scheme != "a8w8":  # what the all-a8w8 file would lose
                    out["litert_int8_all"].append(_psnr(LiteRtRunner(lr.build(hw)).run(x), p, spec))
                if p is pairs[0]:
                    out["kernels"]["litert"] = litert_kernel_check(q, x, y)
        if "ncnn" in recipes:
            nc, skip = recipes["ncnn"]
            r32 = nc32_dyn or NcnnRunner(*(nc.reference(hw) if nc else convert_bytes(module, spec, hw=hw)))
            y = r32.run(x)
            out["max_abs"]["ncnn_fp32"] = max(out["max_abs"]["ncnn_fp32"], float(np.abs(y - ref).max()))
            out["ncnn_fp32"].append(_psnr(y, p, spec))
            if nc is not None:
                param, weights, _ = nc.build(hw, skip)
                out["ncnn_int8"].append(_psnr(NcnnRunner(param, weights).run(x), p, spec))
                if skip:
                    out["ncnn_int8_all"].append(_psnr(NcnnRunner(*nc.build(hw)[:2]).run(x), p, spec))
                if p is pairs[0]:
                    out["kernels"]["ncnn"] = ncnn_kernel_check(param, weights, x)
        log(f"  {name} {p.name}: done")
    mean = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in out.items() if isinstance(v, list)}
    drop = {f: (_drop(out[f"{f}_fp32"], out[f"{f}_int8"]) if out[f"{f}_int8"] else None) for f in ("litert", "ncnn")}
    drop_all = {f: (_drop(out[f"{f}_fp32"], out[f"{f}_int8_all"]) if out[f"{f}_int8_all"] else drop[f])
                for f in ("litert", "ncnn")}
    return {"formats": list(formats), "set5_psnr_y": mean, "int8_drop_db": drop, "int8_drop_all_int8_db": drop_all,
            "fp32_max_abs_vs_torch": out["max_abs"], "verdict": out["verdict"], "kernels": out["kernels"],
            "ncnn_shapes": out["ncnn_shapes"], "errors": out["errors"]}


# --------------------------------------------------------------------------- int8 kernels


def litert_kernel_check(model: bytes, x: np.ndarray, ref: np.ndarray) -> dict:
    """XNNPACK (the interpreter's default CPU path) vs LiteRT's reference kernels (exact int32
    accumulation) on one INT8 file, both also against the fp32 model's output `ref` (NCHW): a
    saturating int8 kernel would fall far behind the reference kernels there."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def run(**kw):
        it = Interpreter(model_content=model, **kw)
        it.allocate_tensors()
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        if d["dtype"] == np.float32:  # dynamic int8: float I/O, output compared in 1/255 steps
            it.set_tensor(d["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32))
            it.invoke()
            y = it.get_tensor(o["index"]).astype(np.float64).transpose(0, 3, 1, 2)
            return np.round(y * 255).astype(np.int32), y
        s, z = d["quantization"]
        info = np.iinfo(d["dtype"])
        it.set_tensor(d["index"], np.clip(np.round(x.transpose(0, 2, 3, 1) / s + z), info.min, info.max
                                          ).astype(d["dtype"]))
        it.invoke()
        so, zo = o["quantization"]
        q = it.get_tensor(o["index"]).astype(np.int32)
        return q, (q - zo).astype(np.float64).transpose(0, 3, 1, 2) * so

    (fq, fy), (rq, ry) = run(), run(experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    d = np.abs(fq - rq)

    def psnr(y):
        return round(float(10 * np.log10(1.0 / np.mean((np.clip(y, 0, 1) - np.clip(ref, 0, 1)) ** 2))), 3)

    return {"what": "integer output codes (float I/O: output x 255, rounded), default kernels vs LiteRT reference "
                    "kernels; PSNR of each vs the fp32 file (Set5 baby)", "dtype": np.dtype(it_dtype(model)).name,
            "max_code_diff": int(d.max()),
            "share_differing": round(float((d > 0).mean()), 5),
            "psnr_xnnpack_vs_fp32": psnr(fy), "psnr_reference_vs_fp32": psnr(ry)}


def it_dtype(model: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model).get_input_details()[0]["dtype"]


def ncnn_kernel_check(param: str, weights: bytes, x: np.ndarray) -> dict:
    """Each INT8 Convolution's output vs float64 arithmetic on its own input blob: quantize with
    the layer's input scale (float32 product, as ncnn), exact int32 conv with its int8 weights,
    dequantize, bias, activation."""
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.ncnn_int8 import NcnnModel, _pads

    model = NcnnModel(param, weights)
    runner = NcnnRunner(param, weights, name="ncnn:check")
    worst, nearest, ties = [], [], 0
    for i, la in enumerate(model.layers):
        if la.type != "Convolution" or int(la.get(8)) != 2:
            continue
        blobs = runner.blobs(x, [la.bottoms[0], la.tops[0]])
        yout = blobs[la.tops[0]].astype(np.float64)
        n_out, k = int(la.get(0)), int(la.get(1))
        chunk = model.chunks[i]
        size = int(la.get(6))
        w8 = np.frombuffer(chunk, np.int8, size, 4).astype(np.float64).reshape(n_out, -1, k, k)
        off = 4 + (size + 3) // 4 * 4
        bias = np.frombuffer(chunk, "<f4", n_out, off).astype(np.float64) if int(la.get(5)) else np.zeros(n_out)
        off += 4 * n_out if int(la.get(5)) else 0
        w_scale = np.frombuffer(chunk, "<f4", n_out, off).astype(np.float64)
        in_scale = float(np.frombuffer(chunk, "<f4", 1, off + 4 * n_out)[0])
        # input codes: the float32 product ncnn computes, rounded to nearest. Inputs within 1e-4 of a
        # .5 tie may round either way (ncnn's SIMD rounding of a near-tie differed from numpy's on
        # SAFMN++'s 1x1 convolutions: one input code, one weight code in the sum: measured), so the
        # simulation gives an interval and only what lies outside it counts against the kernels
        v = (blobs[la.bottoms[0]] * np.float32(in_scale)).astype(np.float64)
        tie = np.abs(np.abs(v - np.trunc(v)) - 0.5) < 1e-4  # ~13 float32 ulps at 127
        lo_q = np.clip(np.where(tie, np.floor(v), np.round(v)), -127, 127)
        hi_q = np.clip(np.where(tie, np.ceil(v), np.round(v)), -127, 127)
        top, bottom, left, right = _pads(la)

        def conv(q, w):
            q = np.pad(q, ((0, 0), (top, bottom), (left, right)))
            ho, wo = q.shape[1] - k + 1, q.shape[2] - k + 1
            acc = np.zeros((n_out, ho, wo))
            for dy in range(k):
                for dx in range(k):
                    acc += np.einsum("oc,chw->ohw", w[:, :, dy, dx], q[:, dy:dy + ho, dx:dx + wo])
            return acc

        mid, half = conv(np.round(v).clip(-127, 127), w8), conv(hi_q - lo_q, np.abs(w8)) / 2
        centre = conv((lo_q + hi_q) / 2, w8)
        act = int(la.get(9))

        def out(acc):
            y = acc / (in_scale * w_scale[:, None, None]) + bias[:, None, None]
            if act == 1:
                y = np.maximum(y, 0)
            elif act == 3:
                lo, hi = (float(t) for t in la.params[-23310].split(",")[1:3])
                y = np.clip(y, lo, hi)
            return y

        scale_out = max(1e-12, np.abs(yout).max())
        y_lo, y_hi = out(centre - half), out(centre + half)
        nearest.append(float(np.abs(out(mid) - yout).max() / scale_out))
        worst.append(float(np.maximum(0, np.maximum(y_lo - yout, yout - y_hi)).max() / scale_out))
        ties += int(tie.sum())
    return {"what": "max |ncnn - float64 simulation| / max |output| per INT8 convolution (Set5 baby); input codes "
                    "from the float32 product; max_relative_diff: outside the interval of either rounding of "
                    "near-tie inputs, max_relative_diff_nearest: against round-to-nearest-even alone",
            "layers": len(worst), "max_relative_diff": max(worst) if worst else None,
            "max_relative_diff_nearest": max(nearest) if nearest else None, "near_tie_inputs": ties}


# --------------------------------------------------------------------------- ablation

LITERT_STEPS = [  # (label, Int8Options overrides) - cumulative
    ("first pass: ai-edge-quantizer defaults (moving-average ranges)",
     dict(equalize=False, bias_correction=False, gptq=False, ranges="moving-average", full_input_range=False,
          split_prelu=False)),
    ("+ true min-max ranges, input range = [0, 1]",
     dict(equalize=False, bias_correction=False, gptq=False, split_prelu=False)),
    ("+ activation equalization", dict(bias_correction=False, gptq=False, split_prelu=False)),
    ("+ bias correction", dict(gptq=False, split_prelu=False)),
    ("+ GPTQ weight rounding", dict(split_prelu=False)),
    ("+ PReLU split into ReLU on doubled channels = edgesr default", {}),
]
NCNN_STEPS = [
    ("first pass: min-max, no rewrites", dict(equalize=False, bias_correction=False, gptq=False, center=False)),
    ("+ activation equalization", dict(bias_correction=False, gptq=False, center=False)),
    ("+ bias correction", dict(gptq=False, center=False)),
    ("+ GPTQ weight rounding", dict(center=False)),
    ("+ zero-centring = edgesr default", {}),
]


def ablation(name: str, module, spec, pairs) -> dict:
    """Set5 and held-out drops of all-INT8 models (no float layers) for each cumulative step."""
    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.litert import LiteRtInt8, convert_fp32_bytes
    from edgesr.export.mobile_int8 import Int8Options
    from edgesr.export.ncnn_int8 import NcnnInt8
    from edgesr.quant.calibration import held_out_eval_set

    sets = {"set5": pairs, "held_out": held_out_eval_set(spec.scale).pairs}
    fixed, _ = _ncnn_mode(module, spec)
    out: dict = {"litert": [], "ncnn": []}
    base_lt = {k: [_psnr(LiteRtRunner(convert_fp32_bytes(module, spec, _x(p, spec).shape[2:])).run(_x(p, spec)),
                         p, spec) for p in v] for k, v in sets.items()}
    for label, kw in LITERT_STEPS:
        t0 = time.time()
        r = LiteRtInt8(module, spec, options=Int8Options(**kw))
        q = {k: [_psnr(LiteRtRunner(r.build(_x(p, spec).shape[2:])).run(_x(p, spec)), p, spec) for p in v]
             for k, v in sets.items()}
        out["litert"].append({"step": label, **{f"{k}_drop": _drop(base_lt[k], q[k]) for k in sets}})
        log(f"  {name} LiteRT {label}: {out['litert'][-1]} ({time.time() - t0:.0f} s)")
    nc0 = NcnnInt8(module, spec, fixed=fixed)
    base_nc = {k: [_psnr(NcnnRunner(*nc0.reference(_x(p, spec).shape[2:])).run(_x(p, spec)), p, spec) for p in v]
               for k, v in sets.items()}
    for label, kw in NCNN_STEPS:
        t0 = time.time()
        r = NcnnInt8(module, spec, options=Int8Options(**kw), fixed=fixed)
        q = {k: [_psnr(NcnnRunner(*r.build(_x(p, spec).shape[2:])[:2]).run(_x(p, spec)), p, spec) for p in v]
             for k, v in sets.items()}
        out["ncnn"].append({"step": label, **{f"{k}_drop": _drop(base_nc[k], q[k]) for k in sets}})
        log(f"  {name} ncnn {label}: {out['ncnn'][-1]} ({time.time() - t0:.0f} s)")
    return out


# --------------------------------------------------------------------------- latency


def latency(module, spec, hw: tuple[int, int], threads: int, policy, int8: bool = True, name: str = "") -> dict:
    import torch

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.bench import SessionRunner, ort_session, ratio_summary, time_interleaved
    from edgesr.export.litert import LiteRtInt8, convert_fp32_bytes
    from edgesr.export.ncnn import convert_bytes
    from edgesr.export.ncnn_int8 import NcnnInt8
    from edgesr.export.onnx import export_onnx

    x = np.random.default_rng(0).random((1, spec.in_channels, *hw), dtype=np.float32)
    xt = torch.from_numpy(x)
    torch.set_num_threads(threads)
    runners: dict = {}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        try:
            export_onnx(module, spec, onnx_path)
            note = "dynamic"
        except Exception:  # noqa: BLE001 - SAFMN++'s pooling: a fixed-size graph
            export_onnx(module, spec, onnx_path, dynamic=False, sample_shape=(1, spec.in_channels, *hw))
            note = f"fixed {hw[0]}x{hw[1]}"
        runners["ort:fp32"] = SessionRunner(ort_session(onnx_path, threads=threads, spinning=False), "ort:fp32")
    fixed, _ = _ncnn_mode(module, spec)
    try:
        runners["litert:fp32"] = LiteRtRunner(convert_fp32_bytes(module, spec, hw), threads=threads)
        if int8:
            recipe = RECIPES.get((name, "litert")) or LiteRtInt8(module, spec)
            runners["litert:int8"] = LiteRtRunner(recipe.build(hw), threads=threads)
            float_ops, scheme = CHOSEN.get(name, ((), "a8w8"))
            if scheme != "a8w8":  # the verdict's file is another scheme: time it too
                runners[f"litert:{PRECISION[scheme]}"] = LiteRtRunner(recipe.build(hw, float_ops, scheme=scheme),
                                                                      threads=threads)
    except Exception as e:  # noqa: BLE001
        errors["litert"] = f"{type(e).__name__}: {e}"[:300]
    try:
        runners["ncnn:fp32"] = NcnnRunner(*convert_bytes(module, spec, hw=hw if fixed else None), threads=threads)
        if int8:
            recipe = RECIPES.get((name, "ncnn")) or NcnnInt8(module, spec, fixed=fixed)
            runners["ncnn:int8"] = NcnnRunner(*recipe.build(hw)[:2], threads=threads)
    except Exception as e:  # noqa: BLE001
        errors["ncnn"] = f"{type(e).__name__}: {e}"[:300]

    def torch_fn():
        with torch.inference_mode():
            module(xt)

    fns = {"torch:fp32": torch_fn} | {k: (lambda r=r: r.run(x)) for k, r in runners.items()}
    load_before = os.getloadavg()
    stats = time_interleaved(fns, policy)
    load_after = os.getloadavg()
    base = stats["ort:fp32"]
    rows = {k: {"median_ms": round(s.median_ms, 3), "p10_ms": round(float(np.percentile(s.samples_ms, 10)), 3),
                "p90_ms": round(s.p90_ms, 3), "runs": s.runs, "vs_ort_fp32": ratio_summary(s, base)}
            for k, s in stats.items()}
    return {"lr_hw": list(hw), "threads": threads, "results": rows, "errors": errors, "ort_graph": note,
            "int8_note": "int8: all-a8w8 builds (the verdict's float layers, if any, change little of the time); "
                         "int8-dynamic / int16x8: the verdict's dynamic / a16w8 file, where it chose one",
            "loadavg_before": load_before, "loadavg_after": load_after}


def coreml_check(module, spec, hw) -> dict:
    try:
        from edgesr.export.coreml import export_coreml

        with tempfile.TemporaryDirectory() as tmp:
            r = export_coreml(module, spec, Path(tmp) / "m.mlpackage.zip", precision="fp16", hw=hw)
        return {"status": r.status, "ops_outside_ane_list": r.static_check["ops_outside_ane_list"],
                "concerns": r.static_check["concerns"], "ane_likely": r.static_check["ane_likely"]}
    except Exception as e:  # noqa: BLE001
        return {"status": f"does not convert: {type(e).__name__}: {e}"[:300]}


# --------------------------------------------------------------------------- README


def readme_block(data: dict) -> str:
    lat_hw = data["latency_lr_hw"]
    loads = ", ".join(f"{m['latency']['loadavg_before'][0]:.0f}" for m in data["models"].values())
    lines = [START, "",
             f"Generated by `python benchmarks/mobile.py --readme` from `benchmarks/results/mobile.json` "
             f"({data['machine'].get('cpu_model')}, {data['threads']} thread(s), one interleaved run per model; "
             f"latency at {lat_hw[0]}x{lat_hw[1]} LR -> x4; (x) = format time / ORT fp32 time, < 1 is faster, "
             f"paired per-round p10-p90). Parity: max |fp32 - PyTorch| over the Set5 x4 LR images (LiteRT: one "
             f"fixed-size file per image size). INT8 drop: Set5 x4 Y-PSNR of fp32 minus INT8 in the same format, "
             f"edgesr's recipe (docs/deploy.md section 7) with its verdict on the held-out sample photos "
             f"({BUDGET} dB budget; float layers kept, if any, in brackets with the all-INT8 drop; '-': not "
             f"measured in this run, see docs/mobile_int8.md). Core ML: "
             f"converted and checked statically, not run (no runtime on Linux). 1-minute load average when each "
             f"model was timed: {loads} on {data['machine'].get('logical_cpus')} CPUs: a shared, heavily loaded "
             "machine where a process waits for a CPU most of the time, so medians measure the queue as much as "
             "the runtime; only the same-run ratios mean anything, and their spread is wide.", "",
             "| model | LiteRT fp32 parity | LiteRT INT8 drop dB | ncnn fp32 parity | ncnn INT8 drop dB | "
             "ORT fp32 ms | LiteRT fp32 ms (x vs ORT) | LiteRT INT8 ms (x) | ncnn fp32 ms (x) | ncnn INT8 ms (x) | "
             "Core ML |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(rows, k):
        r = rows.get(k)
        if not r:
            return "-"
        v = r["vs_ort_fp32"]
        spread = f", {v['paired_p10']:.2f}-{v['paired_p90']:.2f}" if "paired_p10" in v else ""
        return f"{r['median_ms']:.1f} ({v['ratio']:.2f}x{spread})"

    def lt_int(rows):  # the file convert writes: a16w8 where the verdict chose it
        other = next((k for k in ("litert:int8-dynamic", "litert:int16x8") if k in rows), None)
        return (f"{SCHEME_OF[other.split(':')[1]]} {ms(rows, other)}; a8w8 {ms(rows, 'litert:int8')}" if other
                else ms(rows, "litert:int8"))

    for name, m in data["models"].items():
        q, rows = m["quality"], m["latency"]["results"]
        mx = q["fp32_max_abs_vs_torch"]

        def par(fmt):
            if fmt in q["errors"]:
                return "does not convert"
            note = " (per size)" if fmt == "ncnn" and q["ncnn_shapes"].startswith("one") else ""
            return f"{mx[f'{fmt}_fp32']:.1e} ({'ok' if mx[f'{fmt}_fp32'] <= 1e-4 else 'FAIL'}){note}"

        def drop(fmt):
            d = q["int8_drop_db"][fmt]
            if d is None:
                return "-"
            v = q["verdict"].get(fmt) or {}
            fl = v.get("float_layers") or []
            over = "" if v.get("within_budget", True) else f" (over the budget: {v['drop']:.3f} held-out)"
            scheme = v.get("scheme") or ("a16w8" if v.get("activation_bits", 8) == 16 else "a8w8")
            if fmt == "litert" and scheme != "a8w8":  # the verdict fell back to another LiteRT scheme
                what = {"dynamic": "int8 activations at run time, float I/O", "a16w8": "int16 activations"}[scheme]
                n = f", {len(fl)} float" if fl else ""
                return f"{d:.3f} ({scheme}: {what}{n}; all-a8w8 {q['int8_drop_all_int8_db'][fmt]:.3f})" + over
            return (f"{d:.3f}" + (f" ({len(fl)} float; all-INT8 {q['int8_drop_all_int8_db'][fmt]:.3f})" if fl else "")
                    + over)

        cm = m["coreml"]
        cml = ("converted, not run; ANE list: " + ("ok" if cm.get("ane_likely") else
               ", ".join(cm.get("ops_outside_ane_list") or cm.get("concerns") or ["?"]))
               if cm["status"].startswith("converted") else cm["status"][:60])
        lines.append(f"| {name} | {par('litert')} | {drop('litert')} | {par('ncnn')} | {drop('ncnn')} | "
                     f"{rows['ort:fp32']['median_ms']:.1f} | {ms(rows, 'litert:fp32')} | {lt_int(rows)} | "
                     f"{ms(rows, 'ncnn:fp32')} | {ms(rows, 'ncnn:int8')} | {cml} |")
    lines += ["", END]
    return "\n".join(lines)


DOCS = ROOT / "docs" / "mobile_int8.md"


def _block(key: str) -> tuple[str, str]:
    return f"<!-- mobile-int8:{key}:start -->", f"<!-- mobile-int8:{key}:end -->"


def docs_blocks(data: dict, ablation_data: dict | None) -> dict[str, str]:
    """The generated parts of docs/mobile_int8.md: what the shipped INT8 files lose, the ablation,
    the kernel checks and the SAFMN++ row."""
    shipped = ["| model | format | held-out drop, all INT8 | scheme shipped | float convs kept | held-out drop, shipped | "
               "Set5 drop, shipped | Set5 drop, all INT8 | within 0.15 dB on Set5 |",
               "|---|---|---|---|---|---|---|---|---|"]
    kernels = ["| model | LiteRT: max code diff XNNPACK vs reference (share) | PSNR vs fp32: XNNPACK / reference dB | "
               "ncnn: INT8 convs checked | max relative diff vs float64, near-tie inputs either way (round-to-nearest "
               "codes only) |",
               "|---|---|---|---|---|"]
    for name, m in data["models"].items():
        q = m["quality"]
        for fmt in ("litert", "ncnn"):
            v = q["verdict"].get(fmt)
            if v is None or q["int8_drop_db"].get(fmt) is None:
                shipped.append(f"| {name} | {fmt} | {q['errors'].get(fmt, 'not measured')[:80]} | | | | | | |")
                continue
            d, da = q["int8_drop_db"][fmt], q["int8_drop_all_int8_db"][fmt]
            fl = v.get("float_layers") or []
            scheme = v.get("scheme") or ("a8w8" if fmt == "litert" else "ncnn int8")
            shipped.append(f"| {name} | {fmt} | {v['drop_all_int8']:.3f} | {scheme} | {len(fl)} | {v['drop']:.3f}"
                           f"{'' if v['within_budget'] else ' (over budget)'} | {d:.3f} | {da:.3f} | "
                           f"{'yes' if d <= 0.15 else 'no'} |")
        k = q.get("kernels") or {}
        lt, nc = k.get("litert"), k.get("ncnn")
        kernels.append(f"| {name} | " + (f"{lt['max_code_diff']} ({lt['share_differing']:.2%})" if lt else "-")
                       + " | "
                       + (f"{lt['psnr_xnnpack_vs_fp32']:.2f} / {lt['psnr_reference_vs_fp32']:.2f}" if lt else "-")
                       + " | " + (str(nc["layers"]) if nc else "-") + " | "
                       + ((f"{nc['max_relative_diff']:.1e} ({nc['max_relative_diff_nearest']:.1e})"
                           if "max_relative_diff_nearest" in nc else f"not measured ({nc['max_relative_diff']:.1e})")
                          if nc and nc["max_relative_diff"] is not None else "-")
                       + " |")
    sets = {m["quality"]["verdict"][f]["eval_set"] for m in data["models"].values() for f in ("litert", "ncnn")
            if m["quality"]["verdict"].get(f)}
    ev = "; ".join(sorted(_eval_set_summary(e) for e in sets)) or "sample-held-out"
    intro = (f"Generated from `benchmarks/results/mobile.json` (held-out = {ev}; budget {BUDGET} dB). Drops in dB, "
             "fp32 minus INT8 in the same format; `shipped` = the file `convert --int8` writes (convolutions the "
             "held-out verdict keeps float, if any; where no a8w8 choice held the budget, LiteRT's next scheme: "
             "dynamic = int8 weights with activations quantized at run time (float I/O), a16w8 = int16 "
             "activations); `all INT8` = every convolution INT8, a8w8 for LiteRT.")
    blocks = {"shipped": "\n".join([intro, ""] + shipped), "kernels": "\n".join(kernels)}
    if ablation_data:
        rows = ["| model | format | step (cumulative) | Set5 drop | held-out drop |", "|---|---|---|---|---|"]
        for name, m in ablation_data["models"].items():
            for fmt in ("litert", "ncnn"):
                rows += [f"| {name} | {fmt} | {r['step']} | {r['set5_drop']:.3f} | {r['held_out_drop']:.3f} |"
                         for r in m[fmt]]
        blocks["ablation"] = "\n".join(rows + ["", f"Measured for: {', '.join(ablation_data['models'])}."])
    return blocks


def _eval_set_summary(eval_set: str) -> str:
    """'sample-held-out (a.png@0,0, a.png@0,192, b.png)' -> 'sample-held-out: 2 photos (a.png, b.png), 3 tiles'."""
    name, _, items = eval_set.partition(" (")
    parts = [p.strip() for p in items.rstrip(")").split(",") if p.strip() and not p.strip()[0].isdigit()]
    photos = sorted({p.split("@")[0] for p in parts})
    return f"{name}: {len(photos)} photos ({', '.join(photos)}), {len(parts)} " + ("tiles" if "@" in items else "images")


def write_docs(data: dict) -> None:
    text = DOCS.read_text()
    abl = json.loads(ABLATION.read_text()) if ABLATION.is_file() else None
    for key, body in docs_blocks(data, abl).items():
        a, b = _block(key)
        if a not in text or b not in text:
            raise SystemExit(f"{DOCS} lacks the {a} ... {b} markers")
        i, j = text.index(a), text.index(b) + len(b)
        text = text[:i] + a + "\n\n" + body + "\n\n" + b + text[j:]
    DOCS.write_text(text)


def write_readme(data: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} ... {END} markers")
    a, b = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:a] + readme_block(data) + text[b:])


def merge_quality(entry: dict, part: dict, command: str, machine: dict) -> None:
    """Update `entry` (a saved model) with the quality numbers of the formats a --quality-only run
    measured (`part`), each format keeping the command and machine it came from."""
    q = entry["quality"]
    for fmt in part["formats"]:
        for key in ("int8_drop_db", "int8_drop_all_int8_db"):
            q[key][fmt] = part[key][fmt]
        for k in (f"{fmt}_fp32", f"{fmt}_int8", f"{fmt}_int8_all"):
            q["set5_psnr_y"][k] = part["set5_psnr_y"][k]
        q["fp32_max_abs_vs_torch"][f"{fmt}_fp32"] = part["fp32_max_abs_vs_torch"][f"{fmt}_fp32"]
        for key in ("verdict", "kernels", "errors"):
            q[key].pop(fmt, None)
            if fmt in part[key]:
                q[key][fmt] = part[key][fmt]
        entry.setdefault("quality_commands", {})[fmt] = {"command": command, "machine": machine}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _command_args(argv: list[str]) -> str:
    """The command line's arguments without ``--out PATH`` (where a part was written is no result)."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--out="):
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        out.append(f"'{a}'" if " " in a else a)
    return " ".join(out)


def main(argv=None) -> int:
    from edgesr.bench import TimingPolicy, machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--size", type=int, default=128, help="LR side of the latency workload")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per runtime")
    ap.add_argument("--ablation", action="store_true", help="INT8 step-by-step ablation instead (all-INT8 models)")
    ap.add_argument("--update", action="store_true", help="keep the other models' entries of the saved JSON")
    ap.add_argument("--readme", action="store_true", help="only rewrite README's block from the saved JSON")
    ap.add_argument("--no-int8", action="store_true", help="fp32 parity, fp32 latency and Core ML only")
    ap.add_argument("--formats", default="litert,ncnn", help="quality of these formats only (litert, ncnn)")
    ap.add_argument("--quality-only", action="store_true",
                    help="parity and INT8 quality only; --merge then updates only these formats' quality numbers "
                         "of the saved entry (run one format per process on a loaded machine)")
    ap.add_argument("--out", type=Path, help="write here instead of benchmarks/results/ (e.g. one model per process)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="only merge the models of these result files into benchmarks/results/mobile.json")
    args = ap.parse_args(argv)
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        write_docs(json.loads(RESULTS.read_text()))
        print(f"README.md block and {DOCS.name}'s tables rewritten from {RESULTS}")
        return 0
    if args.merge:
        data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        for part in args.merge:
            extra = json.loads(part.read_text())
            for name, m in extra["models"].items():  # each model keeps the command, machine and load it was measured on
                old = data.setdefault("models", {}).get(name)
                if "latency" not in m and old is not None:
                    merge_quality(old, m["quality"], extra["command"], extra["machine"])
                else:
                    data["models"][name] = m | {"command": extra["command"], "machine": extra["machine"]}
            data = {k: v for k, v in extra.items() if k != "models"} | data if "machine" not in data else data
        data["models"] = {n: data["models"][n] for n in MODELS if n in data["models"]}
        _save(RESULTS, data)
        print(f"merged {len(args.merge)} file(s) into {RESULTS}")
        return 0
    if not (SHARED / "testsets" / "Set5").is_dir():
        raise SystemExit(f"needs {SHARED} (checkpoints + Set5)")
    names = [n for n in MODELS if n in args.models.split(",")] or list(MODELS)
    formats = tuple(f for f in ("litert", "ncnn") if f in args.formats.split(","))
    pairs = set5()
    target = args.out or (ABLATION if args.ablation else RESULTS)
    data = {"machine": machine_info(), "threads": args.threads, "latency_lr_hw": [args.size, args.size],
            "command": "python benchmarks/mobile.py " + _command_args(argv if argv is not None else sys.argv[1:]),
            "models": {}}
    if args.update and target.is_file():
        data["models"] = json.loads(target.read_text()).get("models", {})
    policy = TimingPolicy(warmup_seconds=0.5, min_runs=10, min_seconds=args.seconds)
    for name in names:
        t0 = time.time()
        module, spec = load(name)
        if args.ablation:
            log(f"{name}: INT8 ablation ...")
            data["models"][name] = ablation(name, module, spec, pairs) | {"seconds": round(time.time() - t0, 1),
                                                                          "loadavg": os.getloadavg()}
        else:
            log(f"{name}: quality on Set5 ...")
            q = quality(name, module, spec, pairs, int8=not args.no_int8, formats=formats)
            if args.quality_only:
                data["models"][name] = {"quality": q, "seconds": round(time.time() - t0, 1)}
                _save(target, data)
                continue
            log(f"{name}: latency ...")
            lat = latency(module, spec, (args.size, args.size), args.threads, policy, int8=not args.no_int8,
                          name=name)
            log(f"{name}: Core ML ...")
            cm = coreml_check(module, spec, (args.size, args.size))
            data["models"][name] = {"quality": q, "latency": lat, "coreml": cm,
                                    "seconds": round(time.time() - t0, 1)}
        _save(target, data)
    if args.quality_only:
        print(json.dumps({n: m["quality"]["int8_drop_db"] for n, m in data["models"].items()}))
    elif args.ablation:
        for name, m in data["models"].items():
            for fmt in ("litert", "ncnn"):
                for row in m[fmt]:
                    print(f"{name} | {fmt} | {row['step']} | {row['set5_drop']:.3f} | {row['held_out_drop']:.3f}")
    else:
        print(readme_block(data))
    print(f"\nwrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
