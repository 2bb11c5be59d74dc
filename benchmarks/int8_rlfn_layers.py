"""Where RLFN's two sensitive 3x3 convs lose the picture in the `openvino` graph, and what range search does.

    python benchmarks/int8_rlfn_layers.py [--models RLFN,SPAN-ch28,...] [--variants off,range_search,input_aware]
                                          [--skip-ablation] [--like-for-like] [--out JSON]

Needs ../shared (official NTIRE RLFN x4, the other checkpoints of benchmarks/int8_runtimes.py),
`pip install 'edgesr[openvino]'`; scikit-learn for the independent photo set (else that column is empty).

1. ``ablation`` (RLFN, `openvino` profile, 48-px calibration patches - what the profile chooses for RLFN
   without range search): starting from the graph with ``conv_2``, ``upsampler.0`` and ``block_1/c5``
   float (the fifth pass's search result), each of ``conv_2`` / ``upsampler.0`` made int8 in full, with
   only its WEIGHTS int8 (the input Q/DQ removed), or with only its INPUT int8 (float weights); held-out drop.
2. ``clip``: the same two convs, int8, with their input range shrunk by a factor (1 = ORT min-max):
   held-out drop, and the conv's output error on the calibration patches (what range search ranks by).
3. ``variants``: per model, `quantize_model` (openvino profile, default settings, search included) with
   ``off`` (the defaults), ``range_search`` (QuantConfig.range_search=True) and ``input_aware``
   (QuantConfig.input_aware=True): all-int8 and final held-out drop, float layers, the independent photos
   (scikit-learn's china/flower, 192-px tiles) and Set5 x4 - the last two for reporting only.
4. ``like_for_like`` (--like-for-like): the ``off`` variant's float layers built with each fix, scored on
   the same three sets - the fixes compared without the search choosing different layers.

Held-out = edgesr's default evaluation set (the only one anything is chosen by). One thread, the load
average is recorded. Writes benchmarks/results/int8_rlfn_layers.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_calib_variants import independent_set  # noqa: E402
from int8_runtimes import MODELS, SET5, export_deploy_fp32  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_rlfn_layers.json"
C2, UP, C5 = "/conv_2/Conv", "/upsampler/upsampler.0/Conv", "/block_1/c5/Conv"
FACTORS = (1.0, 0.8, 0.65, 0.5, 0.4, 0.3)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _variant(qs, floats: list[str], mods: list[tuple[str, str]], out: Path) -> Path:
    """qs's QDQ graph with `floats` float, then per (conv, what): 'weights_only' (the conv reads its float
    input) or 'input_only' (the conv reads its fp32 weights)."""
    import onnx
    from onnx import numpy_helper

    qs.build(out, floats)
    m = onnx.load(str(out))
    fp = onnx.load(str(qs.fp32_path))
    fp_w = {n.name: n.input[1] for n in fp.graph.node if n.op_type == "Conv"}
    fp_init = {i.name: i for i in fp.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    for name, what in mods:
        conv = next(n for n in m.graph.node if n.name == name)
        if what == "weights_only":
            conv.input[0] = prod[prod[conv.input[0]].input[0]].input[0]  # DQ <- Q <- the float tensor
        else:
            w = numpy_helper.to_array(fp_init[fp_w[name]])
            m.graph.initializer.append(numpy_helper.from_array(w, fp_w[name] + "__fp32"))
            conv.input[1] = fp_w[name] + "__fp32"
    onnx.save(m, str(out))
    return out


def ablation(tmp: Path) -> dict:
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data

    from edgesr.quant import QuantConfig
    from edgesr.quant.evaluate import evaluate, tensors_over_batches
    from edgesr.quant.quantize import QuantSession
    from edgesr.quant.range_search import _conv, fake_quant, tensor_range
    from edgesr.quant.refine import _conv_attrs

    spec, fp32 = export_deploy_fp32(MODELS["RLFN"], tmp / "RLFN")
    cfg = QuantConfig(profile="openvino", threads=1, progress=False, patch_size=48, range_search=False)
    res: dict = {"load_before": os.getloadavg(), "layers": {}, "clip": {}}
    with QuantSession(fp32, spec, cfg) as qs:
        def drop(path: Path) -> float:
            return qs.psnr_fp32 - evaluate(path, spec, qs.evalset, 1, "openvino").psnr

        out = tmp / "variant.onnx"
        res["all_int8"] = qs.psnr_fp32 - qs.psnr_int8_all
        res["base_float"] = [C2, UP, C5]
        res["base"] = drop(_variant(qs, [C2, UP, C5], [], out))
        for conv, rest in ((C2, [UP, C5]), (UP, [C2, C5])):
            res["layers"][conv] = {what: drop(_variant(qs, rest, [(conv, what)] if what != "int8" else [], out))
                                   for what in ("int8", "weights_only", "input_only")}
            log(f"  {conv}: {res['layers'][conv]}")
        both = [(C2, "weights_only"), (UP, "weights_only")]
        res["layers"]["both weights_only"] = drop(_variant(qs, [C5], both, out))
        res["layers"]["both int8"] = drop(_variant(qs, [C5], [], out))
        # range factors of the two conv inputs
        import torch
        from onnx import numpy_helper

        fpm = onnx.load(str(qs.fp32_path))
        nodes = {n.name: n for n in fpm.graph.node}
        inits = {i.name: numpy_helper.to_array(i) for i in fpm.graph.initializer}
        ranges_path = qs._qs.ranges_path
        saved = tmp / "ranges_minmax.json"
        shutil.copyfile(ranges_path, saved)
        minmax = load_tensors_data(saved)
        tensors = [nodes[C2].input[0], nodes[UP].input[0]]
        values: dict[str, list] = {t: [] for t in tensors}
        for v in tensors_over_batches(fpm, tensors, qs.source.patches, 1):
            for t, x in zip(tensors, v):
                values[t].append(x)
        for conv, rest in ((C2, [UP, C5]), (UP, [C2, C5])):
            t = nodes[conv].input[0]
            x = np.concatenate(values[t])
            lo, hi = tensor_range(minmax[t])  # type: ignore[misc]
            w = torch.from_numpy(inits[nodes[conv].input[1]])
            rows = []
            for f in FACTORS:
                r = load_tensors_data(saved)
                r[t].lowest = (np.asarray(r[t].lowest) * f).astype(np.float32)
                r[t].highest = (np.asarray(r[t].highest) * f).astype(np.float32)
                save_tensors_data(r, ranges_path)
                e = torch.from_numpy(fake_quant(x, lo * f, hi * f, False, False) - x)
                mse = float(_conv(e, w, _conv_attrs(nodes[conv])).double().pow(2).mean())
                qs.build(out, rest)
                rows.append({"factor": f, "heldout": drop(out), "output_mse": mse})
                log(f"  {conv} input range x{f}: held-out {rows[-1]['heldout']:.3f}, output MSE {mse:.3g}")
            shutil.copyfile(saved, ranges_path)
            per_ch = np.abs(x).max(axis=(0, 2, 3))
            res["clip"][conv] = {"tensor": t, "min": float(x.min()), "max": float(x.max()), "std": float(x.std()),
                                 "p99.99_abs": float(np.percentile(np.abs(x), 99.99)),
                                 "channel_max_abs_median": float(np.median(per_ch)),
                                 "channel_max_abs_top": sorted(per_ch.tolist(), reverse=True)[:4],
                                 "channel_std_range": [float(x.std(axis=(0, 2, 3)).min()),
                                                       float(x.std(axis=(0, 2, 3)).max())],
                                 "factors": rows}
    res["load_after"] = os.getloadavg()
    return res


VARIANTS = {"off": {}, "range_search": {"range_search": True}, "input_aware": {"input_aware": True},
            # GPTQ / input-aware statistics over the patches in all six RGB orders (refine.permute_colors)
            "input_aware_colours": {"input_aware": True, "gptq_color_permutations": True},
            "colours": {"gptq_color_permutations": True}}
DEFAULT_VARIANTS = ("off", "range_search", "input_aware")


def variant_models(names: list[str], variants: list[str], tmp: Path) -> dict:
    from edgesr.quant import QuantConfig, quantize_model
    from edgesr.quant.calibration import testset_eval_set
    from edgesr.quant.evaluate import evaluate

    set5 = testset_eval_set(SET5, 4)
    indep = independent_set(4)
    out: dict = {}
    for name in names:
        spec, fp32 = export_deploy_fp32(MODELS[name], tmp / name)
        out[name] = {}
        for v in variants:
            load0, t0 = os.getloadavg(), time.perf_counter()
            r = quantize_model(fp32, tmp / name / f"int8_{v}.onnx", spec,
                               QuantConfig(profile="openvino", threads=1, progress=False,
                                           **({"range_search": False, "input_aware": False} | VARIANTS[v])),
                               test_set=set5)
            secs = time.perf_counter() - t0
            ind = None
            if indep is not None:
                ind = (evaluate(fp32, spec, indep, 1, "openvino").psnr - evaluate(r.path, spec, indep, 1, "openvino").psnr)
            rs = r.range_search or {}
            row = {"heldout": r.drop, "all_int8_heldout": r.psnr_fp32 - r.psnr_int8_all, "independent": ind,
                   "set5": r.test_drop, "float_layers": r.float_layers, "layers": len(r.layers),
                   "patch_size_choice": r.calibration.get("patch_size_choice"), "quantize_seconds": round(secs, 1),
                   "ranges_changed": len(rs.get("changed", [])), "range_search_seconds": rs.get("seconds"),
                   "range_search": rs or None, "load": [load0, os.getloadavg()]}
            out[name][v] = row
            log(f"  {name} {v}: held-out {r.drop:.3f} (all int8 "
                f"{row['all_int8_heldout']:.3f}), independent {ind if ind is None else round(ind, 3)}, Set5 "
                f"{r.test_drop:.3f}, {len(r.float_layers)}/{len(r.layers)} float, {secs:.0f} s")
    return out


def like_for_like(rows: dict, tmp: Path) -> dict:
    """Each model's default float layers (the ``off`` variant's search result) built with every fix: the
    same graph shape, so held-out / independent / Set5 compare the fixes themselves, not the searches."""
    from edgesr.quant import QuantConfig
    from edgesr.quant.calibration import testset_eval_set
    from edgesr.quant.evaluate import evaluate
    from edgesr.quant.quantize import QuantSession

    set5 = testset_eval_set(SET5, 4)
    indep = independent_set(4)
    out: dict = {}
    for name, by_variant in rows.items():
        floats = by_variant["off"]["float_layers"]
        spec, fp32 = export_deploy_fp32(MODELS[name], tmp / name)
        f5 = evaluate(fp32, spec, set5, 1, "openvino").psnr
        fi = evaluate(fp32, spec, indep, 1, "openvino").psnr if indep is not None else None
        out[name] = {"float_layers": floats}
        for v in ("off", "range_search", "input_aware"):
            cfg = QuantConfig(profile="openvino", threads=1, progress=False,
                              **({"range_search": False, "input_aware": False} | VARIANTS[v]))
            with QuantSession(fp32, spec, cfg) as qs:
                path = qs.build(tmp / name / "like.onnx", floats)
                row = {"heldout": qs.psnr_fp32 - qs.score(floats), "all_int8_heldout": qs.psnr_fp32 - qs.psnr_int8_all,
                       "set5": f5 - evaluate(path, spec, set5, 1, "openvino").psnr,
                       "independent": (fi - evaluate(path, spec, indep, 1, "openvino").psnr) if indep is not None else None,
                       "load": os.getloadavg()}
            out[name][v] = row
            log(f"  {name} {len(floats)} float, {v}: held-out {row['heldout']:.3f}, independent {row['independent']}, "
                f"Set5 {row['set5']:.3f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="RLFN,SPAN-ch28,ETDS-M,ECBSR-M4C16")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--like-for-like", action="store_true",
                    help="also build each model's default float layers with every fix (needs the 'off' variant)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edgesr.machine import machine_info

    result: dict = {"machine": machine_info(), "threads": 1, "held_out": "edgesr default (sample photos, 192-px tiles)"}
    with tempfile.TemporaryDirectory(prefix="int8-rlfn-") as d:
        tmp = Path(d)
        if not args.skip_ablation:
            log("RLFN conv_2 / upsampler.0 ablation")
            result["ablation"] = ablation(tmp)
        names = [m for m in args.models.split(",") if m]
        variants = [v for v in args.variants.split(",") if v]
        log(f"{' / '.join(variants)}: {', '.join(names)}")
        result["variants"] = variant_models(names, variants, tmp)
        if args.like_for_like and "off" in variants:
            log("like for like (the defaults' float layers)")
            result["like_for_like"] = like_for_like(result["variants"], tmp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    if "ablation" in result:
        a = result["ablation"]
        print(f"\nRLFN openvino, held-out drop; base ({', '.join(x.split('/')[-2] for x in a['base_float'])} float): "
              f"{a['base']:.3f}, all int8 {a['all_int8']:.3f}")
        print("| conv made int8 | full | weights only | input only |\n|---|---|---|---|")
        for conv in (C2, UP):
            v = a["layers"][conv]
            print(f"| {conv} | {v['int8']:.3f} | {v['weights_only']:.3f} | {v['input_only']:.3f} |")
        print("\n| input range factor | " + " | ".join(f"{f}" for f in FACTORS) + " |")
        for conv in (C2, UP):
            print(f"| {conv} held-out | " + " | ".join(f"{r['heldout']:.3f}" for r in a["clip"][conv]["factors"]) + " |")
    print("\n| model | variant | all-int8 held-out | held-out | independent | Set5 | float layers | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in result["variants"].items():
        for k, r in rows.items():
            ind = "-" if r["independent"] is None else f"{r['independent']:.3f}"
            print(f"| {name} | {k} | {r['all_int8_heldout']:.3f} | {r['heldout']:.3f} | {ind} | {r['set5']:.3f} | "
                  f"{len(r['float_layers'])}/{r['layers']} | {r['quantize_seconds']} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
