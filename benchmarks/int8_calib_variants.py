"""Calibration variants for the INT8 profiles - patch size (48 or 96 LR pixels) and GPTQ's statistics
(the patches as they are, or in all six colour orders) - judged by the held-out set, an independent
photo set and Set5 side by side: which variant does each prefer, and does the held-out set predict
the others?

    python benchmarks/int8_calib_variants.py [--models ETDS-L,RLFN,...] [--profiles openvino,cpu]

For each model (real checkpoints from ../shared) and profile, one quantization session per variant
(``QuantConfig.patch_size`` x ``gptq_color_permutations``; everything else the profile's default)
builds the all-int8 graph and, where an earlier `int8_runtimes.py` run left one (benchmarks/results/
int8_runtimes.json), the float-layer set its search chose. Each graph is scored in the runtime it is
made for, with the one verdict's criterion (mean Y-PSNR drop vs fp32 against ground truth), on:

* ``held-out``: the default evaluation set (`held_out_eval_set`: 4 photos, 192-px tiles) - the only
  set the quantizer ever chooses by;
* ``independent``: scikit-learn's two sample photographs (china.jpg, flower.jpg; 512-px centre crop,
  192-px tiles), disjoint from calibration, held-out set and Set5; only when scikit-learn is installed
  (it comes with `nncf`). A second, unrelated judge of the held-out set's choices;
* ``Set5`` x4: reported, never chosen by.

Writes benchmarks/results/int8_calib_variants.json (after every model) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from int8_heldout import MODELS  # noqa: E402  (benchmarks/ is the script's folder; int8_runtimes' models + ETDS-T)
from int8_runtimes import export_deploy_fp32  # noqa: E402

SHARED = Path(os.environ.get("EDGESR_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results" / "int8_calib_variants.json"
EARLIER = REPO / "benchmarks" / "results" / "int8_runtimes.json"
DEFAULT_MODELS = ("ETDS-T", "ETDS-M", "ETDS-L", "ECBSR-M4C16", "ABPN-M4C28", "RLFN")
VARIANTS = {"48 px": {"patch_size": 48, "gptq_color_permutations": False},
            "48 px, colour orders": {"patch_size": 48, "gptq_color_permutations": True},
            "96 px": {"patch_size": 96, "gptq_color_permutations": False},
            "96 px, colour orders": {"patch_size": 96, "gptq_color_permutations": True}}
BASE = "48 px"
INDEPENDENT = ("china.jpg", "flower.jpg")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def independent_set(scale: int, tile: int = 192):
    """scikit-learn's sample photographs as an EvalSet (None when scikit-learn is not installed)."""
    import importlib.util

    from edgesr.quant.calibration import EvalPair, EvalSet, _centre_crop, _tiles, bicubic_downscale, read_rgb_u8

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
    pairs = []
    for n in INDEPENDENT:
        if (folder / n).is_file():
            for name, hr in _tiles(n, _centre_crop(read_rgb_u8(folder / n), 512, scale), tile, scale):
                pairs.append(EvalPair(name, bicubic_downscale(hr, scale), hr))
    return EvalSet(f"scikit-learn photos ({tile}-px tiles)", scale, pairs) if pairs else None


def earlier_float_layers(name: str, profile: str) -> list[str]:
    try:
        return list(json.loads(EARLIER.read_text())["models"][name]["int8"][profile]["float_layers"])
    except (OSError, KeyError, ValueError):
        return []


def run_model(name: str, profiles: list[str], sets: dict, tmp: Path, threads: int) -> dict:
    from edgesr.quant import QuantConfig
    from edgesr.quant.evaluate import evaluate
    from edgesr.quant.quantize import QuantSession

    d = tmp / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    out: dict = {"checkpoint": MODELS[name], "profiles": {}}
    for profile in profiles:
        t0 = time.perf_counter()
        rows: dict = {}
        ref = None
        for variant, kw in VARIANTS.items():
            cfg = QuantConfig(profile=profile, threads=threads, progress=False, psnr_budget=None, **kw)
            with QuantSession(fp32, spec, cfg) as qs:
                runtime = qs.profile.runtime
                if ref is None:
                    ref = {s: evaluate(qs.fp32_path, spec, es, threads, runtime).psnr for s, es in sets.items()}
                layers = [layer.name for layer in qs.layers]
                graphs = {"all-int8": []}
                old = earlier_float_layers(name, profile)
                if old and set(old) <= set(layers):
                    graphs[f"earlier search result ({len(old)}/{len(layers)} float)"] = old
                for g, floats in graphs.items():
                    path = qs.build(d / f"{profile}.onnx", floats)
                    drops = {s: ref[s] - evaluate(path, spec, es, threads, runtime).psnr for s, es in sets.items()}
                    rows.setdefault(g, {})[variant] = drops
                    log(f"  {name} {profile} {g} {variant}: " + " | ".join(f"{s} {v:.3f}" for s, v in drops.items()))
        out["profiles"][profile] = {"runtime": runtime, "graphs": rows, "seconds": round(time.perf_counter() - t0, 1),
                                    "load": os.getloadavg()}
    return out


def summarize(result: dict, sets: list[str]) -> dict:
    """Per profile: which variant each set prefers, and how often the held-out set agrees with the others."""
    summary: dict = {}
    for m, e in result["models"].items():
        for p, pe in e["profiles"].items():
            s = summary.setdefault(p, {"cases": 0, **{f"held-out agrees with {x}": 0 for x in sets if x != "held-out"},
                                       "ratios held-out / Set5 (48 px, all-int8)": {}})
            for g, r in pe["graphs"].items():
                prefer = {x: min(VARIANTS, key=lambda v: r[v][x]) for x in sets}
                s["cases"] += 1
                for x in sets:
                    if x != "held-out":
                        s[f"held-out agrees with {x}"] += prefer["held-out"] == prefer[x]
                    for v in list(VARIANTS)[1:]:  # how often each variant beats the first (48 px, plain)
                        key = f"{v} lower than {BASE} on {x}"
                        s[key] = s.get(key, 0) + (r[v][x] < r[BASE][x])
                if g == "all-int8" and r["48 px"]["Set5"] > 0.02:
                    s["ratios held-out / Set5 (48 px, all-int8)"][m] = round(r["48 px"]["held-out"] / r["48 px"]["Set5"], 2)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--profiles", default="openvino,cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if any(n not in MODELS for n in names):
        print(f"unknown model in {names}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if not (SHARED / "testsets" / "Set5").is_dir():
        print(f"needs Set5 and the checkpoints under {SHARED}", file=sys.stderr)
        return 2
    import tempfile

    from edgesr.bench import machine_info
    from edgesr.fsutil import atomic_write_json
    from edgesr.quant import testset_eval_set
    from edgesr.quant.calibration import held_out_eval_set

    sets = {"held-out": held_out_eval_set(4)}
    indep = independent_set(4)
    if indep is None:
        log("scikit-learn is not installed: no independent photo set (pip install scikit-learn)")
    else:
        sets["independent"] = indep
    sets["Set5"] = testset_eval_set(SHARED / "testsets" / "Set5", 4)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    result: dict = {"benchmark": "int8_gptq_stats", "scale": 4, "threads": args.threads, "machine": machine_info(),
                    "sets": {k: {"name": v.name, "images": v.images, "pairs": len(v)} for k, v in sets.items()},
                    "variants": VARIANTS, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgesr-gptq-stats-") as tmp:
        for i, name in enumerate(names):
            log(f"[{i + 1}/{len(names)}] {name} (load {os.getloadavg()[0]:.1f})")
            result["models"][name] = run_model(name, profiles, sets, Path(tmp), args.threads)
            result["summary"] = summarize(result, list(sets))
            atomic_write_json(args.out, result)
    from edgesr.cli.output import format_table

    rows = []
    for m, e in result["models"].items():
        for p, pe in e["profiles"].items():
            for g, r in pe["graphs"].items():
                rows.append([m, p, g] + [" / ".join(f"{r[v][x]:.3f}" for v in VARIANTS) for x in sets])
    print("drops in dB, variants in the order " + " / ".join(VARIANTS))
    print(format_table(["model", "profile", "graph"] + [f"{x} drop" for x in sets], rows))
    print(json.dumps(result["summary"], indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
