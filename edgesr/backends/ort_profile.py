"""What ONNX Runtime does with a graph: per-operator profile and the optimized graph's operators."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .ort_runner import SessionRunner
from .ort_session import ort_session


def profile_ort(path: str | Path, x: np.ndarray, *, runs: int = 3, threads: int | None = None,
                graph_opt: str = "all", disabled_optimizers: Sequence[str] = ()) -> dict:
    """Per-operator time from ONNX Runtime's profiler (`so.enable_profiling`): `runs`
    inferences after one warm-up; node events grouped by op type (fused nodes keep ORT's
    names, e.g. FusedConv, QLinearConv). Returns totals per op, share of node time and the
    slowest nodes."""
    with tempfile.TemporaryDirectory(prefix="edgesr-prof-") as tmp:
        sess = ort_session(path, threads=threads, graph_opt=graph_opt, disabled_optimizers=disabled_optimizers,
                           profile_prefix=str(Path(tmp) / "ort"))
        r = SessionRunner(sess, "profile")
        r.run(x)  # warm-up (still profiled: dropped below by run index)
        t0 = time.perf_counter()
        for _ in range(runs):
            r.run(x)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        prof = sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    return summarize_ort_profile(events, runs=runs) | {"wall_ms_per_run": round(wall_ms, 3),
                                                        "graph_opt": graph_opt, "threads": threads,
                                                        "disabled_optimizers": list(disabled_optimizers)}


def summarize_ort_profile(events: list[dict], runs: int) -> dict:
    """Aggregate ORT profile events: node 'kernel_time' events of the last `runs` model runs."""
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_after = None
    if len(model_runs) > runs:
        keep_after = sorted(e["ts"] for e in model_runs)[-runs]
    by_op: dict[str, float] = {}
    by_node: dict[str, tuple[str, float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if keep_after is not None and e.get("ts", 0) < keep_after:
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        dur = float(e.get("dur", 0)) / 1e3  # us -> ms
        by_op[op] = by_op.get(op, 0.0) + dur
        node = e["name"][: -len("_kernel_time")]
        prev = by_node.get(node, (op, 0.0))
        by_node[node] = (op, prev[1] + dur)
    total = sum(by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    nodes = sorted(by_node.items(), key=lambda kv: -kv[1][1])[:8]
    run_ms = [float(e["dur"]) / 1e3 for e in model_runs][-runs:]
    return {"runs": runs, "model_run_ms": [round(v, 3) for v in run_ms],
            "node_ms_per_run": round(total / max(1, runs), 3),
            "ops": [{"op": k, "ms_per_run": round(v / max(1, runs), 3), "share": round(v / total, 4)} for k, v in ops],
            "top_nodes": [{"node": k, "op": op, "ms_per_run": round(v / max(1, runs), 3)} for k, (op, v) in nodes]}


def optimized_ops(path: str | Path, *, graph_opt: str = "all", disabled_optimizers: Sequence[str] = ()) -> dict:
    """Operator counts of the graph ONNX Runtime actually runs (optimized_model_filepath)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgesr-opt-") as tmp:
        ort_session(path, threads=1, graph_opt=graph_opt, disabled_optimizers=disabled_optimizers,
                    optimized_model_path=Path(tmp) / "opt.onnx")
        m = onnx.load(str(Path(tmp) / "opt.onnx"))
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
