"""Where OpenVINO spends the time of an INT8 graph, per op: edgesr's `openvino` graph vs NNCF's default.

    python benchmarks/int8_ov_profile.py [--models ETDS-M,ECBSR-M4C16,RLFN,SPAN-ch28] [--runs 20]
                                         [--keep DIR] [--float-layers | --ablation | --shapes]

Per model (the ../shared checkpoints of benchmarks/int8_runtimes.py): the fp32 ONNX, edgesr's
`openvino` graph (`quantize_model`, openvino profile, the default 0.1 dB held-out budget and search)
and `nncf.quantize` with its defaults on the same 32 calibration patches. Each graph is compiled by
OpenVINO with per-node profiling on (``PERF_COUNT``; f32 inference precision, one thread, one stream,
the input shape fixed as edgesr's runner compiles it since the sixth pass; earlier results: dynamic)
and run `--runs` times on a 180x320 input, the three graphs interleaved round by round. Per graph:
the median wall time, and from ``request.get_profiling_info()`` the real time of every executed node,
summed per (node type, exec type) - e.g. ``Convolution`` run by ``jit_avx512_amx_I8`` / ``..._FP32`` -
and averaged per inference. Printed as one table per model (edgesr ms vs NNCF ms per row, largest
difference first); the per-node list of each graph goes to the JSON
(benchmarks/results/int8_ov_profile.json) with the load average before and after each model.

``--float-layers`` also measures what each layer the search kept float costs: for every such layer,
the edgesr graph with that one layer int8 (the rest as the search left it), timed interleaved against
the search's graph (median of per-round ratios, p10-p90), with its held-out drop.

``--ablation`` instead measures the fifth pass's two changes to the `openvino` profile, one model at a
time: the fourth-pass graph (residual Adds int8, float ops reading the Q/DQ copy), residual Adds float,
and the current profile (Adds float, float ops reading the float tensor), each made by the same search,
with held-out and Set5 drops, timed interleaved with ORT fp32 and NNCF's default INT8
(benchmarks/results/int8_ov_ablation.json).

``--shapes`` instead measures OpenVINO's dynamic-shape compile against the static one edgesr's runner
makes (one compile per input shape, edgesr/backends/openvino_runner.py), one model at a time: ORT fp32
(and ORT fp32 with the input size fixed in the ONNX), OpenVINO fp32, edgesr's `openvino` graph, the
same graph all-int8 (the speed ceiling of int8 in this graph form) and NNCF's default INT8, each of the
OpenVINO graphs compiled for dynamic and for static shapes, all timed interleaved in one run; per-op
profiles of edgesr's graph both ways and static with Snippets off (where the element-wise time goes:
shape-specialised kernels vs the Snippets fusion); held-out and Set5 drops of
edgesr's graph both ways (benchmarks/results/int8_ov_shapes.json).

``--keep DIR`` keeps (and on a rerun reuses) the quantized graphs there, so a second profile of the
same graphs does not quantize again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_runtimes import LR_HW, MODELS, SET5, export_deploy_fp32, missing_requirements, nncf_default, runtime_nodes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_ov_profile.json"
ABLATION_RESULTS = REPO / "benchmarks" / "results" / "int8_ov_ablation.json"
SHAPES_RESULTS = REPO / "benchmarks" / "results" / "int8_ov_shapes.json"
GRAPHS = ("openvino fp32", "edgesr openvino", "nncf default")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ProfiledGraph:
    """One OpenVINO graph compiled with per-node profiling; `run` times one inference and adds its
    per-node real times to the totals."""

    def __init__(self, path: Path, threads: int, static_shape: tuple[int, ...] | None = None,
                 config: dict | None = None):
        from edgesr.backends.openvino_runner import compile_config, core, read_model

        cfg = compile_config(threads) | {"PERF_COUNT": True} | (config or {})
        model = read_model(path)
        if static_shape is not None:  # as edgesr's OpenVinoRunner compiles it for an input of this shape
            model.reshape({model.inputs[0]: list(static_shape)})
        self.compiled = core().compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.nodes: dict[str, dict] = {}  # node name -> {type, exec, ms (sum), runs}
        self.runs = 0

    def run(self, x: np.ndarray, record: bool = True) -> None:
        self.request.infer({0: x})
        if not record:
            return
        self.runs += 1
        for p in self.request.get_profiling_info():
            if p.status.name != "EXECUTED":
                continue
            n = self.nodes.setdefault(p.node_name, {"type": p.node_type, "exec": p.exec_type, "ms": 0.0})
            n["ms"] += p.real_time.total_seconds() * 1e3

    def per_op(self) -> dict[str, dict]:
        """(node type : exec type) -> {"ms": per inference, "nodes": count}."""
        out: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "nodes": 0})
        for n in self.nodes.values():
            k = f"{n['type']}:{n['exec']}"
            out[k]["ms"] += n["ms"] / max(1, self.runs)
            out[k]["nodes"] += 1
        return dict(out)

    def runtime_precisions(self) -> dict[str, int]:
        """The compiled graph's ops as `layerType:runtimePrecision` counts (constants left out)."""
        from collections import Counter

        return dict(sorted(Counter(runtime_nodes(self.compiled, ("runtimePrecision",))).items()))


def time_graphs(graphs: dict[str, ProfiledGraph], x: np.ndarray, runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """Interleaved rounds (order rotated), wall ms per graph per round."""
    from edgesr.timing import interleaved_order

    names = list(graphs)
    for _ in range(warmup):
        for g in graphs.values():
            g.run(x, record=False)
    wall: dict[str, list[float]] = {k: [] for k in names}
    for i in range(runs):
        for k in interleaved_order(names, i):
            t0 = time.perf_counter()
            graphs[k].run(x)
            wall[k].append((time.perf_counter() - t0) * 1e3)
    return wall


def _pct(a, q):
    return float(np.percentile(np.asarray(a), q))


def float_layer_costs(qs, base_path: Path, float_layers: list[str], x: np.ndarray, runs: int, threads: int,
                      work: Path) -> list[dict]:
    """Each float layer's cost: the graph with that layer int8 too, timed against the search's graph."""
    rows = []
    for name in float_layers:
        rest = [f for f in float_layers if f != name]
        p = qs.build(work / f"one_int8_{len(rows)}.onnx", rest)
        drop = qs.psnr_fp32 - qs.score(rest)
        gs = {"search": ProfiledGraph(base_path, threads, x.shape), "int8": ProfiledGraph(p, threads, x.shape)}
        wall = time_graphs(gs, x, runs)
        r = np.asarray(wall["search"]) / np.asarray(wall["int8"])
        rows.append({"layer": name, "heldout_drop_with_it_int8": drop, "speedup_if_int8": float(np.median(r)),
                     "p10": _pct(r, 10), "p90": _pct(r, 90), "search_ms": float(np.median(wall["search"])),
                     "int8_ms": float(np.median(wall["int8"]))})
        log(f"    {name}: int8 -> {rows[-1]['speedup_if_int8']:.3f}x ({rows[-1]['p10']:.3f}-{rows[-1]['p90']:.3f}), "
            f"held-out drop {drop:.3f}")
    return rows


def run_model(name: str, args, tmp: Path) -> dict:
    from edgesr.quant import QuantConfig, QuantSession
    from edgesr.quant.calibration import CalibrationSource
    from edgesr.quant.quantize import quantize_model

    d = (Path(args.keep) if args.keep else tmp) / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    entry: dict = {"checkpoint": MODELS[name], "load_before": os.getloadavg()}
    ours = d / "int8_openvino.onnx"
    cfg = QuantConfig(profile="openvino", threads=1, progress=False)
    if not ours.is_file():
        t0 = time.perf_counter()
        res = quantize_model(fp32, ours, spec, cfg)
        entry["edgesr"] = {"heldout_drop": res.drop, "float_layers": res.float_layers, "layers": len(res.layers),
                           "quantize_seconds": round(time.perf_counter() - t0, 1)}
        log(f"  {name}: edgesr openvino held-out {res.drop:.3f} dB, {len(res.float_layers)}/{len(res.layers)} float")
    else:
        import json

        import onnx

        meta = {p.key: p.value for p in onnx.load(str(ours), load_external_data=False).metadata_props}
        entry["edgesr"] = {"reused": True, "float_nodes": json.loads(meta.get("edgesr.int8.float_nodes", "[]"))}
    nncf_xml = d / "nncf.xml"
    if not nncf_xml.is_file():
        patches = CalibrationSource(spec, None, num_patches=32, patch_size=48, progress=False).patches
        nncf_default(fp32, patches, nncf_xml)
    x = np.random.default_rng(0).random((1, spec.in_channels, *LR_HW), dtype=np.float32)
    graphs = {k: ProfiledGraph(p, args.threads, x.shape)  # compiled for the input's shape, as edgesr's runner does
              for k, p in (("openvino fp32", fp32), ("edgesr openvino", ours), ("nncf default", nncf_xml))}
    wall = time_graphs(graphs, x, args.runs)
    entry["wall_ms"] = {k: {"median": float(np.median(v)), "p10": _pct(v, 10), "p90": _pct(v, 90)}
                        for k, v in wall.items()}
    r = np.asarray(wall["nncf default"]) / np.asarray(wall["edgesr openvino"])
    entry["edgesr_vs_nncf_speed"] = {"median": float(np.median(r)), "p10": _pct(r, 10), "p90": _pct(r, 90)}
    entry["per_op"] = {k: g.per_op() for k, g in graphs.items()}
    entry["compiled_ops"] = {k: g.runtime_precisions() for k, g in graphs.items()}
    entry["nodes"] = {k: sorted(({"name": n} | v | {"ms": v["ms"] / g.runs} for n, v in g.nodes.items()),
                                key=lambda n: -n["ms"]) for k, g in graphs.items()}
    if args.float_layers and entry["edgesr"].get("float_layers"):
        with QuantSession(fp32, spec, cfg) as qs:
            entry["float_layer_costs"] = float_layer_costs(qs, ours, entry["edgesr"]["float_layers"], x,
                                                           max(5, args.runs // 2), args.threads, d)
    entry["load_after"] = os.getloadavg()
    return entry


def ablation_variants():
    """name -> QuantProfile: the fourth pass's `openvino` profile, each fifth-pass change, the current one,
    and the current one with residual Adds int8 again."""
    from dataclasses import replace

    from edgesr.quant.profiles import COMPUTE_OPS, OPENVINO

    return {"fourth pass (Adds int8, float ops read Q/DQ)": replace(OPENVINO, quantized_ops=COMPUTE_OPS,
                                                                     float_reads_float=False),
            "Adds float": replace(OPENVINO, float_reads_float=False),
            "Adds float + float ops read float (current)": OPENVINO,
            # sixth pass: with the static-shape compile OpenVINO fuses an int8 Add into a Snippets Subgraph
            # (NNCF's ECBSR graph), which the fifth pass's dynamic-shape measurements could not see
            "Adds int8 + float ops read float": replace(OPENVINO, quantized_ops=COMPUTE_OPS)}


def run_ablation(name: str, args, tmp: Path) -> dict:
    from edgesr.backends.openvino_runner import OpenVinoRunner
    from edgesr.bench import SessionRunner, ort_session
    from edgesr.quant import QuantConfig, quantize_model, testset_eval_set
    from edgesr.quant.calibration import CalibrationSource
    from edgesr.quant.evaluate import evaluate
    from edgesr.timing import TimingPolicy, ratio_summary, time_interleaved

    d = tmp / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    set5 = testset_eval_set(SET5, spec.scale)
    entry: dict = {"checkpoint": MODELS[name], "load_before": os.getloadavg(), "variants": {}}
    paths = {}
    for i, (label, profile) in enumerate(ablation_variants().items()):
        res = quantize_model(fp32, d / f"variant{i}.onnx", spec, QuantConfig(profile=profile, threads=1, progress=False),
                             test_set=set5)
        paths[label] = res.path
        entry["variants"][label] = {"heldout_drop": res.drop, "all_int8_heldout_drop": res.psnr_fp32 - res.psnr_int8_all,
                                    "set5_drop": res.test_drop, "float_layers": res.float_layers,
                                    "layers": len(res.layers)}
        log(f"  {name} {label}: held-out {res.drop:.3f} (all-int8 {res.psnr_fp32 - res.psnr_int8_all:.3f}), "
            f"Set5 {res.test_drop:.3f}, {len(res.float_layers)}/{len(res.layers)} float")
    nncf_xml = nncf_default(fp32, CalibrationSource(spec, None, num_patches=32, patch_size=48, progress=False).patches,
                            d / "nncf.xml")
    entry["nncf_set5_drop"] = (evaluate(fp32, spec, set5, 1, "openvino").psnr
                               - evaluate(nncf_xml, spec, set5, 1, "openvino").psnr)
    x = np.random.default_rng(0).random((1, spec.in_channels, *LR_HW), dtype=np.float32)
    runners = {"ort fp32": SessionRunner(ort_session(fp32, threads=args.threads, spinning=False), str(fp32))}
    runners |= {k: OpenVinoRunner(p, threads=args.threads) for k, p in paths.items()}
    runners["nncf default"] = OpenVinoRunner(nncf_xml, threads=args.threads)
    st = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()},
                          TimingPolicy(warmup_seconds=1.0, min_runs=args.runs, min_seconds=0))
    entry["latency_ms"] = {k: v.to_dict() for k, v in st.items()}
    entry["vs_ort_fp32"] = {k: ratio_summary(st["ort fp32"], v) for k, v in st.items() if k != "ort fp32"}
    entry["vs_nncf"] = {k: ratio_summary(st["nncf default"], v) for k, v in st.items() if k in paths}
    entry["load_after"] = os.getloadavg()
    return entry


def static_onnx(src: Path, dst: Path, shape: tuple[int, ...]) -> Path:
    """A copy of the ONNX `src` with its input shape fixed to `shape` (the fair ORT counterpart of a
    static OpenVINO compile)."""
    import onnx

    m = onnx.load(str(src))
    for dim, n in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = int(n)
    onnx.save(m, str(dst))
    return dst


# The element-wise node types of a compiled OpenVINO graph (what a Snippets Subgraph replaces)
ELTWISE_OPS = ("Sigmoid", "Add", "Subtract", "Multiply", "FakeQuantize", "Eltwise", "Subgraph", "PowerStatic",
               "Swish", "Tanh", "Clamp", "Relu", "PRelu")


def run_shapes(name: str, args, tmp: Path) -> dict:
    """Dynamic vs static-shape OpenVINO compiles of the same graphs, timed interleaved with ORT fp32."""
    from edgesr.backends.openvino_runner import OpenVinoRunner
    from edgesr.bench import SessionRunner, ort_session
    from edgesr.quant import QuantConfig, QuantSession, quantize_model, testset_eval_set
    from edgesr.quant.calibration import CalibrationSource, held_out_eval_set
    from edgesr.quant.evaluate import RunnerSession, evaluate
    from edgesr.timing import TimingPolicy, ratio_summary, time_interleaved

    d = tmp / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    set5, held = testset_eval_set(SET5, spec.scale), held_out_eval_set(spec.scale)
    entry: dict = {"checkpoint": MODELS[name], "load_before": os.getloadavg()}
    cfg = QuantConfig(profile="openvino", threads=1, progress=False)
    res = quantize_model(fp32, d / "int8_openvino.onnx", spec, cfg, test_set=set5)
    with QuantSession(fp32, spec, cfg) as qs:  # the same preparation, every layer int8
        all_int8 = qs.build(d / "int8_all.onnx", [])
        entry["all_int8_heldout_drop"] = qs.psnr_fp32 - qs.psnr_int8_all
    entry["edgesr"] = {"heldout_drop": res.drop, "set5_drop": res.test_drop, "float_layers": res.float_layers,
                       "layers": len(res.layers)}
    log(f"  {name}: edgesr openvino held-out {res.drop:.3f}, Set5 {res.test_drop:.3f}, "
        f"{len(res.float_layers)}/{len(res.layers)} float; all-int8 held-out {entry['all_int8_heldout_drop']:.3f}")
    nncf_xml = nncf_default(fp32, CalibrationSource(spec, None, num_patches=32, patch_size=48, progress=False).patches,
                            d / "nncf.xml")
    # the picture both ways: the same graph compiled dynamic (a plain compile) and static (edgesr's runner)
    entry["picture"] = {}
    for label, static in (("dynamic", False), ("static", True)):
        ov = lambda p: RunnerSession(OpenVinoRunner(p, threads=1, static_shapes=static))  # noqa: E731
        f_held, q_held = evaluate(ov(fp32), spec, held).psnr, evaluate(ov(res.path), spec, held).psnr
        f_set5, q_set5 = evaluate(ov(fp32), spec, set5).psnr, evaluate(ov(res.path), spec, set5).psnr
        entry["picture"][label] = {"heldout_drop": f_held - q_held, "set5_drop": f_set5 - q_set5}
        log(f"  {name} {label} compile: held-out drop {f_held - q_held:.3f}, Set5 drop {f_set5 - q_set5:.3f}")
    shape = (1, spec.in_channels, *LR_HW)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    graphs = {"openvino fp32": fp32, "edgesr openvino": res.path, "all-int8": all_int8, "nncf default": nncf_xml}
    runners = {"ort fp32": SessionRunner(ort_session(fp32, threads=args.threads, spinning=False), str(fp32))}
    fixed = static_onnx(fp32, d / "fp32_static.onnx", shape)
    runners["ort fp32 (static shape)"] = SessionRunner(ort_session(fixed, threads=args.threads, spinning=False), str(fixed))
    for k, p in graphs.items():
        runners[f"{k} (dynamic)"] = OpenVinoRunner(p, threads=args.threads, static_shapes=False)
        runners[f"{k} (static)"] = OpenVinoRunner(p, threads=args.threads)
    outs = {k: r.run(x) for k, r in runners.items()}  # (also the static compile, before timing)
    entry["max_abs_static_vs_dynamic"] = {k: float(np.abs(outs[f"{k} (static)"] - outs[f"{k} (dynamic)"]).max())
                                          for k in graphs}
    st = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()},
                          TimingPolicy(warmup_seconds=1.0, min_runs=args.runs, min_seconds=0))
    entry["latency_ms"] = {k: v.to_dict() for k, v in st.items()}
    entry["vs_ort_fp32"] = {k: ratio_summary(st["ort fp32"], v) for k, v in st.items() if k != "ort fp32"}
    entry["static_vs_dynamic"] = {k: ratio_summary(st[f"{k} (dynamic)"], st[f"{k} (static)"]) for k in graphs}
    # where edgesr's graph spends its time, per op, both ways (profiling on: separate, shorter run); static
    # with Snippets off separates the shape-specialised kernels from the Snippets fusion
    prof = {"dynamic": ProfiledGraph(res.path, args.threads), "static": ProfiledGraph(res.path, args.threads, shape),
            "static, Snippets off": ProfiledGraph(res.path, args.threads, shape, {"SNIPPETS_MODE": "DISABLE"})}
    wall = time_graphs(prof, x, max(5, args.runs // 2))
    entry["profiled_wall_ms"] = {k: float(np.median(v)) for k, v in wall.items()}
    entry["per_op"] = {k: g.per_op() for k, g in prof.items()}
    entry["compiled_ops"] = {k: g.runtime_precisions() for k, g in prof.items()}
    entry["eltwise_ms"] = {k: sum(v["ms"] for op, v in g.per_op().items() if op.split(":")[0] in ELTWISE_OPS)
                           for k, g in prof.items()}
    entry["nodes_ms"] = {k: sum(v["ms"] for v in g.per_op().values()) for k, g in prof.items()}
    entry["load_after"] = os.getloadavg()
    return entry


def shapes_table(name: str, e: dict) -> str:
    from edgesr.cli.output import format_table

    rows = []
    for k, r in e["vs_ort_fp32"].items():
        base = k.rsplit(" (", 1)[0]
        sv = e["static_vs_dynamic"].get(base) if k.endswith("(static)") else None
        rows.append([k, f"{e['latency_ms'][k]['median_ms']:.1f}",
                     f"{r['paired_median']:.2f}x ({r['paired_p10']:.2f}-{r['paired_p90']:.2f})",
                     f"{sv['paired_median']:.2f}x ({sv['paired_p10']:.2f}-{sv['paired_p90']:.2f})" if sv else ""])
    pic = e["picture"]
    el, tot = e["eltwise_ms"], e["nodes_ms"]
    off = "static, Snippets off"
    return (f"{name} (ORT fp32 {e['latency_ms']['ort fp32']['median_ms']:.1f} ms, load "
            f"{e['load_before'][0]:.1f}/{e['load_after'][0]:.1f}); edgesr openvino: {len(e['edgesr']['float_layers'])}/"
            f"{e['edgesr']['layers']} float, held-out drop dynamic {pic['dynamic']['heldout_drop']:.3f} / static "
            f"{pic['static']['heldout_drop']:.3f}, Set5 {pic['dynamic']['set5_drop']:.3f} / {pic['static']['set5_drop']:.3f}; "
            f"all-int8 held-out {e['all_int8_heldout_drop']:.3f}; element-wise nodes {el['dynamic']:.1f} of "
            f"{tot['dynamic']:.1f} ms (dynamic) vs {el[off]:.1f} of {tot[off]:.1f} ms (static, Snippets off) vs "
            f"{el['static']:.1f} of {tot['static']:.1f} ms (static)\n"
            + format_table(["graph (OpenVINO compile)", "median ms", "x ORT fp32 (p10-p90)", "static vs dynamic"], rows))


def ablation_table(name: str, e: dict) -> str:
    from edgesr.cli.output import format_table

    rows = []
    for k, v in e["variants"].items():
        r, n = e["vs_ort_fp32"][k], e["vs_nncf"][k]
        rows.append([k, f"{r['paired_median']:.2f}x ({r['paired_p10']:.2f}-{r['paired_p90']:.2f})",
                     f"{n['paired_median']:.2f}x ({n['paired_p10']:.2f}-{n['paired_p90']:.2f})",
                     f"{v['heldout_drop']:.3f} (all-int8 {v['all_int8_heldout_drop']:.3f})", f"{v['set5_drop']:.3f}",
                     f"{len(v['float_layers'])}/{v['layers']}"])
    r = e["vs_ort_fp32"]["nncf default"]
    rows.append(["NNCF default INT8", f"{r['paired_median']:.2f}x ({r['paired_p10']:.2f}-{r['paired_p90']:.2f})", "1.00x",
                 "", f"{e['nncf_set5_drop']:.3f}", ""])
    return (f"{name} (ORT fp32 {e['latency_ms']['ort fp32']['median_ms']:.1f} ms, load "
            f"{e['load_before'][0]:.1f}/{e['load_after'][0]:.1f})\n"
            + format_table(["openvino graph", "x ORT fp32 (p10-p90)", "x NNCF speed", "held-out drop", "Set5 drop",
                            "float"], rows))


def table(entry: dict, top: int) -> str:
    from edgesr.cli.output import format_table

    ours, theirs = entry["per_op"]["edgesr openvino"], entry["per_op"]["nncf default"]
    keys = sorted(set(ours) | set(theirs), key=lambda k: -abs(ours.get(k, {}).get("ms", 0) - theirs.get(k, {}).get("ms", 0)))
    rows = []
    for k in keys[:top]:
        a, b = ours.get(k, {"ms": 0.0, "nodes": 0}), theirs.get(k, {"ms": 0.0, "nodes": 0})
        rows.append([k, f"{a['ms']:.2f} ({a['nodes']})", f"{b['ms']:.2f} ({b['nodes']})", f"{a['ms'] - b['ms']:+.2f}"])
    tot = lambda p: sum(v["ms"] for v in p.values())  # noqa: E731
    rows.append(["sum of nodes", f"{tot(ours):.2f}", f"{tot(theirs):.2f}", f"{tot(ours) - tot(theirs):+.2f}"])
    w = entry["wall_ms"]
    rows.append(["wall (median)", f"{w['edgesr openvino']['median']:.2f}", f"{w['nncf default']['median']:.2f}",
                 f"{w['edgesr openvino']['median'] - w['nncf default']['median']:+.2f}"])
    return format_table(["node type:exec type", "edgesr ms (nodes)", "NNCF ms (nodes)", "edgesr - NNCF"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ETDS-M,ECBSR-M4C16,RLFN,SPAN-ch28")
    ap.add_argument("--runs", type=int, default=20, help="timed inferences per graph (default 20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12, help="table rows per model")
    ap.add_argument("--float-layers", action="store_true", help="also time each float layer made int8")
    ap.add_argument("--keep", metavar="DIR", help="keep/reuse the quantized graphs in DIR")
    ap.add_argument("--ablation", action="store_true",
                    help="instead: the fourth-pass openvino graph vs each fifth-pass change, timed and scored")
    ap.add_argument("--shapes", action="store_true",
                    help="instead: OpenVINO's dynamic- vs static-shape compile of each graph, timed and scored")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if missing := missing_requirements():
        print(missing, file=sys.stderr)
        return 2
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    import nncf

    from edgesr.backends.openvino_runner import openvino_version
    from edgesr.fsutil import atomic_write_json
    from edgesr.machine import machine_info

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    result = {"benchmark": "int8_ov_profile", "lr_size": list(LR_HW), "threads": args.threads, "runs": args.runs,
              "machine": machine_info(), "openvino": openvino_version(), "nncf": nncf.__version__, "models": {}}
    for flag, default_out, kind, run, table_of in (("shapes", SHAPES_RESULTS, "int8_ov_shapes", run_shapes, shapes_table),
                                                   ("ablation", ABLATION_RESULTS, "int8_ov_ablation", run_ablation,
                                                    ablation_table)):
        if not getattr(args, flag):
            continue
        out = Path(args.out) if args.out != str(RESULTS) else default_out
        result["benchmark"] = kind
        with tempfile.TemporaryDirectory(prefix=f"edgesr-{flag}-") as tmp:
            for i, name in enumerate(names):
                log(f"[{i + 1}/{len(names)}] {name} (load {os.getloadavg()[0]:.1f})")
                result["models"][name] = run(name, args, Path(tmp))
                print("\n" + table_of(name, result["models"][name]), flush=True)
                atomic_write_json(out.with_suffix(".partial.json"), result)
        atomic_write_json(out, result)
        out.with_suffix(".partial.json").unlink(missing_ok=True)
        print(f"\nwrote {out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="edgesr-ovprof-") as tmp:
        for i, name in enumerate(names):
            log(f"[{i + 1}/{len(names)}] {name} (load {os.getloadavg()[0]:.1f})")
            e = result["models"][name] = run_model(name, args, Path(tmp))
            v = e["edgesr_vs_nncf_speed"]
            print(f"\n{name}: edgesr openvino is {v['median']:.3f}x NNCF's speed (p10-p90 {v['p10']:.3f}-{v['p90']:.3f}), "
                  f"load {e['load_before'][0]:.1f}/{e['load_after'][0]:.1f}")
            print(table(e, args.top))
            atomic_write_json(Path(args.out).with_suffix(".partial.json"), result)
    atomic_write_json(args.out, result)
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
