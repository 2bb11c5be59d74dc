"""The picture quantized exactly (codes = pixels) against the calibrated scale it replaced: Y-PSNR drops.

    python benchmarks/int8_exact_input.py [--models ETDS-T,ETDS-L,...] [--profiles openvino,cpu] [--threads 2]

For each model (real checkpoints from ../shared: int8_heldout.py's list) and INT8 profile, two
quantization sessions that differ only in ``QuantConfig.exact_input`` (same calibration, rewrites,
GPTQ): the old scheme scales the conv input that reads the LR picture by its calibrated range,
the new one by one grey level (edgesr/quant/center.py). Each session builds the all-int8 graph and
the graph with the picture-reading conv(s) kept float (what exactness can at most recover), scored
in the profile's runtime on the held-out photos (the verdict's set) and on Set5 (reporting only).
No search: the mixed-precision search runs on top of this in int8_runtimes.py.
Writes benchmarks/results/int8_exact_input.json (after every model) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_heldout import MODELS  # noqa: E402  (benchmarks/ is the script's folder)
from int8_runtimes import SET5, export_deploy_fp32  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_exact_input.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def picture_layers(qs) -> list[str]:
    """The quantizable layers whose conv reads the LR picture (through a mean shift, x * 255 and the centring
    Sub/Pad at most)."""
    import onnx

    m = onnx.load(str(qs.fp32_path))
    graph_in = m.graph.input[0].name
    producer = {o: n for n in m.graph.node for o in n.output}
    names = set()
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        src, hops = n.input[0], 0
        while src in producer and producer[src].op_type in ("Sub", "Pad", "Mul") and hops < 3:
            src, hops = producer[src].input[0], hops + 1
        if src == graph_in:
            names.add(n.name)
    return [name for name, layer in qs.layer_nodes.items() if names & set(layer.nodes)]


def run_model(name: str, profiles: list[str], set5, tmp: Path, threads: int) -> dict:
    from edgesr.quant import QuantConfig
    from edgesr.quant.evaluate import evaluate
    from edgesr.quant.quantize import QuantSession

    d = tmp / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    out: dict = {"checkpoint": MODELS[name], "profiles": {}}
    for profile in profiles:
        pe: dict = {}
        for scheme, exact in (("calibrated", False), ("exact", True)):
            t0 = time.perf_counter()
            cfg = QuantConfig(profile=profile, threads=threads, progress=False, exact_input=exact)
            with QuantSession(fp32, spec, cfg) as qs:
                runtime = qs.profile.runtime
                first = picture_layers(qs)
                set5_fp32 = evaluate(qs.fp32_path, spec, set5, threads, runtime).psnr
                row = {"exact_input": qs.exact_input_report, "picture_layers": first,
                       "heldout_drop": qs.psnr_fp32 - qs.psnr_int8_all}
                row["set5_drop"] = set5_fp32 - evaluate(qs.build(d / "all.onnx"), spec, set5, threads, runtime).psnr
                if first:
                    row["picture_float_heldout_drop"] = qs.psnr_fp32 - qs.score(first)
                    row["picture_float_set5_drop"] = set5_fp32 - evaluate(qs.build(d / "first.onnx", first), spec,
                                                                          set5, threads, runtime).psnr
            row["seconds"] = round(time.perf_counter() - t0, 1)
            pe[scheme] = row
            log(f"  {name} {profile} {scheme}: all-int8 held-out {row['heldout_drop']:.3f} Set5 {row['set5_drop']:.3f}"
                + (f" | picture conv float: held-out {row['picture_float_heldout_drop']:.3f} "
                   f"Set5 {row['picture_float_set5_drop']:.3f}" if first else "") + f" ({row['seconds']:.0f} s)")
        out["profiles"][profile] = pe
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--profiles", default="openvino,cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from edgesr.bench import machine_info
    from edgesr.cli.output import format_table
    from edgesr.fsutil import atomic_write_json
    from edgesr.quant.calibration import testset_eval_set

    if not SET5.is_dir():
        log(f"Set5 not found at {SET5}")
        return 2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    set5 = testset_eval_set(SET5, 4)
    result: dict = {"benchmark": "int8_exact_input", "machine": machine_info(), "threads": args.threads,
                    "load_before": os.getloadavg(), "models": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-exact-") as tmp:
        for i, name in enumerate(names):
            log(f"[{i + 1}/{len(names)}] {name} (load {os.getloadavg()[0]:.1f})")
            e = result["models"][name] = run_model(name, profiles, set5, Path(tmp), args.threads)
            result["load_after"] = os.getloadavg()
            atomic_write_json(Path(args.out), result)
            for p, pe in e["profiles"].items():
                c, x = pe["calibrated"], pe["exact"]
                rows.append([name, p, f"{c['heldout_drop']:.3f} -> {x['heldout_drop']:.3f}",
                             f"{c['set5_drop']:.3f} -> {x['set5_drop']:.3f}",
                             f"{x.get('picture_float_set5_drop', float('nan')):.3f}",
                             ", ".join(x["exact_input"]["not_exact"]) or "-"])
    print(format_table(["model", "profile", "all-int8 held-out drop (calibrated -> exact)",
                        "all-int8 Set5 drop", "Set5, picture conv float", "not exact"], rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
