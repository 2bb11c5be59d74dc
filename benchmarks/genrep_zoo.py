"""Generic reparameterization over the NTIRE ESR 2022 + 2024 zoo: what it finds and collapses.

    python benchmarks/genrep_zoo.py [--years 2022 2024] [--ids 3 38] [--size 48] [--timeout 600]

Each team's model is built with the team's own code exactly as the organisers' test_demo.py
builds it (`select_model`), in its own subprocess (the repo root on sys.path, cwd = the repo),
with two shims that touch no model code: torch.load maps to the CPU and `.cuda()` is a no-op
(some teams move the model to the GPU in `__init__`). Only test_demo.py's `select_model` is
executed (the rest of that script needs OpenCV and fvcore for images and FLOP counts). `edgesr.reparam.generic.collapse_linear`
then runs on a centred 48x48 crop of Set5 `baby` (x4 LR), scaled to the team's data_range,
with one torch thread.

Prints one row per team (collapsed / left regions, multi-branch blocks, params and MACs per
output pixel before -> after, whole-model fp32 / fp64 differences, capture method, seconds) and
writes benchmarks/results/genrep_zoo.json. A "multi-branch" region is a collapsed region that
joined branches with an add (conv + identity, parallel convs) or chained two or more convs
with no non-linearity between them: the shapes of training-form (rep-style) blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EDGESR_SHARED", ROOT.parent / "shared"))
ZOO = SHARED / "ntire-esr"
LR = SHARED / "testsets" / "Set5" / "LR_bicubic" / "X4" / "babyx4.png"


def model_ids(year: str) -> list[int]:
    text = (ZOO / year / "test_demo.py").read_text()
    return sorted({int(m) for m in re.findall(r"^\s*(?:el)?if model_id == (-?\d+):", text, re.M)})


def worker(year: str, model_id: int, size: int) -> dict:
    """Runs in a subprocess: build one team's model with its own code, run the generic pass."""
    import types

    import torch
    from torch import nn

    torch.set_num_threads(1)  # one team at a time on a shared machine: no thread oversubscription
    repo = ZOO / year
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    real_load = torch.load
    torch.load = lambda f, *a, **k: real_load(f, *a, **{**k, "map_location": "cpu"})
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    select_model = _select_model(repo / "test_demo.py")
    args = types.SimpleNamespace(model_id=model_id)
    try:
        model, name, data_range, _ = select_model(args, torch.device("cpu"))
    except Exception as e:  # noqa: BLE001 - the team's own code or weights fail to load
        return {"year": year, "id": model_id, "status": "load failed", "reason": f"{type(e).__name__}: {e}"[:200]}
    from edgesr.imaging import read_image, to_tensor
    from edgesr.reparam.generic import collapse_linear

    x = to_tensor(read_image(LR).rgb)  # 1x3xHxW in [0, 1]
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[:, :, top:top + size, left:left + size].contiguous() * float(data_range)
    t0 = time.perf_counter()
    try:
        res = collapse_linear(model.float().eval(), x)
    except Exception as e:  # noqa: BLE001
        return {"year": year, "id": model_id, "name": name, "status": "pass failed",
                "reason": f"{type(e).__name__}: {e}"[:200]}
    rep = res.report
    # branches joined by an add (conv + identity, parallel convs) or chained convs with no
    # non-linearity between them: the shapes training-form (rep-style) blocks have
    multi = [r for r in res.collapsed if r["ops"].get("add", 0) >= 1 or r["ops"].get("conv", 0) >= 2]
    return {
        "year": year, "id": model_id, "name": name, "status": "ok", "seconds": round(time.perf_counter() - t0, 1),
        "capture": rep["capture"]["method"], "untraced": rep["capture"].get("untraced", []),
        "collapsed": len(res.collapsed), "left": len(res.left), "multi_branch": len(multi),
        "multi_branch_scopes": sorted({r["scope"] for r in multi}),
        "params_before": rep["params_before"], "params_after": rep["params_after"],
        "macs_px_before": rep["macs_per_output_pixel_before"], "macs_px_after": rep["macs_per_output_pixel_after"],
        "fp32_max_abs": rep["verification"]["max_abs_fp32"], "fp64_max_rel": rep["verification"]["max_rel_fp64"],
        "verified": rep["verification"]["ok"], "splits": len(rep.get("splits", [])),
        "hooks": (rep.get("deploy_hooks") or {}).get("hooks", []),
        "regions": [{k: r.get(k) for k in ("scope", "ops", "status", "reason", "kernel", "dilation", "params_before",
                                           "params_after", "macs_per_pixel_before", "macs_per_pixel_after",
                                           "max_abs_fp32")} for r in res.regions],
    }


def _select_model(test_demo: Path):
    """test_demo.py's own `select_model`, without importing the rest of the script (its image
    utilities need OpenCV, its FLOP counter fvcore: neither builds a model)."""
    import ast

    import torch
    from torch.nn import functional as F

    tree = ast.parse(test_demo.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "select_model")
    ns = {"os": os, "torch": torch, "F": F}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(test_demo), "exec"), ns)  # noqa: S102
    return ns["select_model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--years", nargs="+", default=["2022", "2024"])
    ap.add_argument("--ids", nargs="+", type=int, default=None, help="only these model ids")
    ap.add_argument("--size", type=int, default=48, help="LR crop side")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per team")
    ap.add_argument("--worker", nargs=2, metavar=("YEAR", "ID"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "genrep_zoo.json")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.size), default=str))
        return
    if not ZOO.is_dir():
        sys.exit(f"genrep_zoo: {ZOO} not found (set EDGESR_SHARED)")
    jobs = [(y, i) for y in args.years for i in model_ids(y) if args.ids is None or i in args.ids]
    rows = []
    try:
        from tqdm import tqdm
        bar = tqdm(jobs, unit="team", disable=not sys.stderr.isatty())
    except ImportError:  # pragma: no cover
        bar = jobs
    started = time.perf_counter()
    partial = args.out.with_suffix(".partial.jsonl")  # one line per finished team, for long runs
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    for n, (year, mid) in enumerate(bar, 1):
        cmd = [sys.executable, __file__, "--worker", year, str(mid), "--size", str(args.size)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(last[-1]) if last else {
                "year": year, "id": mid, "status": "crashed",
                "reason": (p.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        except subprocess.TimeoutExpired:
            row = {"year": year, "id": mid, "status": "timeout", "reason": f">{args.timeout:.0f}s"}
        rows.append(row)
        with partial.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if not sys.stderr.isatty():
            print(f"[{n}/{len(jobs)}] {year} team {mid}: {row['status']}", file=sys.stderr, flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from edgesr.bench import machine_info
    from edgesr.fsutil import atomic_write_json

    atomic_write_json(args.out, {"command": " ".join(["python", "benchmarks/genrep_zoo.py", *sys.argv[1:]]),
                                 "machine": machine_info(), "load_avg": os.getloadavg(),
                                 "seconds": round(time.perf_counter() - started, 1), "crop": args.size,
                                 "rows": rows})
    partial.unlink()
    print(f"wrote {args.out}")


def table(rows: list[dict]) -> str:
    head = (f"{'year':4} {'id':>3} {'model':24} {'status':11} {'coll':>4} {'left':>4} {'multi':>5} "
            f"{'params':>17} {'MACs/out px':>17} {'fp32 abs':>8} {'fp64 rel':>8} {'hooks':>5} {'capture':13} {'s':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        name = str(r.get("name", ""))[:24]
        if r["status"] != "ok":
            lines.append(f"{r['year']:4} {r['id']:>3} {name:24} {r['status']:11} {r.get('reason', '')[:90]}")
            continue
        fp64 = "n/a" if r["fp64_max_rel"] is None else f"{r['fp64_max_rel']:.1e}"
        lines.append(
            f"{r['year']:4} {r['id']:>3} {name:24} {'ok' if r['verified'] else 'NOT VERIFIED':11} {r['collapsed']:>4} "
            f"{r['left']:>4} {r['multi_branch']:>5} {r['params_before']:>8}->{r['params_after']:<8} "
            f"{_n(r['macs_px_before']):>8}->{_n(r['macs_px_after']):<8} {r['fp32_max_abs']:8.1e} {fp64:>8} "
            f"{sum(h['status'] == 'kept' for h in r['hooks'])}/{len(r['hooks']):<3} {r['capture']:13} "
            f"{r['seconds']:5.1f}")
    multi = [r for r in rows if r.get("multi_branch")]
    lines.append("")
    lines.append(f"{len(multi)} team(s) with collapsed multi-branch blocks: " + "; ".join(
        f"{r['year']} team {r['id']} {r['name']} ({', '.join(r['multi_branch_scopes'][:4])}"
        f"{', ...' if len(r['multi_branch_scopes']) > 4 else ''})" for r in multi))
    return "\n".join(lines)


def _n(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


if __name__ == "__main__":
    main()
