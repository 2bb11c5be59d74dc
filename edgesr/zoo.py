"""`edgesr convert --zoo INDEX -o OUTROOT`: many user models (code + weights) at once.

INDEX is a TOML file (see export/zoo/ntire-esr.toml)::

    root = "../../../shared/ntire-esr"   # resolved against INDEX's folder; $EDGESR_ZOO_ROOT replaces it
    scale = 4                            # optional default for every entry
    [[model]]
    name = "2024-team16-lightrlfn"
    code = "2024/models/team16_LightRLFN.py:LightRLFN"   # FILE.py:NAME, FILE relative to root
    paths = ["2024"]                     # extra sys.path folders (relative to root)
    kwargs = { }                         # NAME(**kwargs)
    weights = "2024/model_zoo/team16_LightRLFN.pth"
    key = "params_ema"                   # optional state_dict entry the author's loader took
    strict = true                        # as the author's load_state_dict
    input_range = 1                      # the author's data_range: checked against the inferred one
    range_finding = 255                  # optional: where evidence contradicts input_range, the range
    range_evidence = "..."               #   that must be found instead, and why (shown in the summary)

Each model runs in its own subprocess (``python -m edgesr.zoo``): its code is imported in
isolation (teams ship clashing ``models``/``block`` modules), a crash or a hang is that
model's failure only, and its memory is returned when it ends. Each model goes through
:func:`edgesr.pipeline.convert` with the zoo's settings (cheap INT8: the `trt` QDQ graph with
calibration, no sensitivity search; latency at one small size) into OUTROOT/<name>/, and
its result - stages, failure category and one-line reason - into OUTROOT/results/<name>.json;
OUTROOT/summary.json and summary.md hold the table. Each result carries a content key
(:mod:`edgesr.resume`): a rerun reuses the results whose inputs are unchanged. `--executor ray`
runs the same per-model step as Ray tasks (:mod:`edgesr.distributed.sweep`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .errors import DatasetError, EdgesrError, one_line
from .zoo_index import DEFAULT_TIMEOUT_S, ZooEntry, read_index
from .zoo_summary import short_number, write_summary

# ---- one model (runs in its own process) -------------------------------------------------------------

def category_of(e: BaseException) -> str:
    from . import errors as E

    if isinstance(e, E.UserCodeError) and ("not compiled with CUDA" in str(e) or "CUDA driver" in str(e)
                                          or "no NVIDIA driver" in str(e)):
        return "needs-cuda"
    for cls, cat in ((E.MissingDependency, "missing-import"), (E.UserCodeError, "user-code"),
                     (E.CheckpointError, "weights"), (E.KeyMismatch, "weights"), (E.InvalidWeights, "weights"),
                     (E.ImplausibleOutput, "implausible"), (E.ScaleMismatch, "user-code"),
                     (E.ExportError, "export"), (E.QuantizationError, "int8"), (E.ParityError, "parity")):
        if isinstance(e, cls):
            return cat
    return "internal"


def convert_entry(entry: ZooEntry, outdir: Path, *, force: bool = False, int8: bool = True,
                  bench: bool = True) -> dict[str, Any]:
    """Convert one zoo model (in this process) and judge the result; never raises EdgesrError."""
    from .pipeline import ConvertOptions, convert

    t0 = time.perf_counter()
    res: dict[str, Any] = {"name": entry.name, "model": entry.code, "weights": str(entry.weights),
                           "declared_input_range": entry.input_range, "ok": False, "category": None,
                           "reason": None, "steps": []}
    if not entry.weights.is_file():
        return res | {"category": "weights-absent", "reason": f"{entry.weights.name} is not in the snapshot",
                      "seconds": 0.0}
    opts = ConvertOptions(
        outdir=outdir, checkpoint=entry.weights, scale=entry.scale, int8=int8, int8_profile="trt",
        int8_search=False, light_checks=True, ort_format=False, force=force, bench=bench,
        bench_output=(256, 256)).with_user_model(entry.user_options())
    lines: list[str] = []

    def log(line: str) -> None:  # kept for the result, and printed: OUTROOT/logs/<name>.log shows progress live
        lines.append(line)
        print(line, flush=True)

    try:
        result = convert(opts, log=log)
    except EdgesrError as e:
        return res | {"category": category_of(e), "reason": str(e).splitlines()[0][:400],
                      "failed_after": _last_step(lines), "steps": lines, "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - user code can raise anything at any stage
        import traceback

        traceback.print_exc(file=sys.stdout)  # into OUTROOT/logs/<name>.log: an internal error is triaged from it
        return res | {"category": "user-code" if _in_user_code(e, entry) else "internal",
                      "reason": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                      "failed_after": _last_step(lines), "steps": lines, "seconds": round(time.perf_counter() - t0, 1)}
    try:
        scores = eval_bundle(outdir, result.report)
    except EdgesrError as e:
        scores = {"error": one_line(e)[:300]}
    return res | judge(result.report, entry, scores) | {"outdir": str(outdir), "steps": lines,
                                                          "seconds": round(time.perf_counter() - t0, 1)}


def eval_bundle(outdir: Path, report: dict[str, Any], testset: Path | None = None) -> dict[str, Any] | None:
    """Set5 PSNR-Y (evaluate's published-table protocol) of the converted fp32 graph and of each
    INT8 graph, with bicubic's on the same images: what `edgesr eval` would print after convert.
    None when there is no test set (Set5 from ../shared, or `testset`)."""
    from .conventions import bicubic_psnr_y
    from .evaluate import evaluate
    from .parity_samples import shared_dir
    from .resolve import resolve_model

    scale = int((report.get("parity") or {}).get("scale") or (report.get("user_model") or {}).get("scale") or 0)
    if testset is None:
        root = shared_dir()
        testset = root / "testsets" / "Set5" if root else None
    if not scale or testset is None or not (testset / "LR_bicubic" / f"X{scale}").is_dir():
        return None
    graphs = {"fp32": Path(outdir)} | {f"int8:{name}": Path(outdir) / q["path"]
                                        for name, q in (report.get("int8") or {}).items() if q and q.get("path")}
    out: dict[str, Any] = {"testset": testset.name, "scale": scale,
                           "bicubic_psnr_y": round(bicubic_psnr_y(testset, scale), 4), "psnr_y": {}}
    for label, path in graphs.items():
        r = resolve_model(path, backend="ort", scale=scale)
        try:
            out["psnr_y"][label] = round(evaluate(r.runner, testset, scale, spec=r.spec).psnr_y, 4)
        finally:
            r.runner.close()
    return out


def judge(report: dict[str, Any], entry: ZooEntry, scores: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stages + verdict from a convert report: fp32 parity <= 1e-4, INT8 graph built, range as declared,
    and (with `scores` from :func:`eval_bundle`) every converted graph above bicubic on the test set."""
    conv = report.get("conventions") or {}
    chosen = (conv.get("chosen") or {}).get("input_range")
    exp = report.get("export") or {}
    comps = (report.get("parity") or {}).get("comparisons", [])
    fp32 = [c for c in comps if c.get("precision") == "fp32"]
    int8 = [c for c in comps if c.get("precision") == "int8"]
    q = (report.get("int8") or {}).get("trt")
    lat = {r["backend"]: r["median_ms"] for r in (report.get("latency") or {}).get("results", [])}
    rep = report.get("reparameterization") or {}
    out: dict[str, Any] = {
        "inferred_input_range": chosen, "convention": conv.get("label"),
        "equivalent_conventions": conv.get("equivalent", []),
        "psnr_y": (conv.get("trials") or [{}])[0].get("psnr_y") if conv.get("given") else
        next((t["psnr_y"] for t in conv.get("trials", []) if t.get("label") == conv.get("label")), None),
        "bicubic_psnr_y": conv.get("bicubic_psnr_y"),
        "reparam": {"hooks": rep.get("hooks"),
                    "author_form": ((report.get("user_model") or {}).get("author_form") or {}).get("applied"),
                    "generic_applied": (rep.get("generic") or {}).get("applied"),
                    "generic_regions_collapsed": (rep.get("generic") or {}).get("regions_collapsed"),
                    "generic_multi_branch": (rep.get("generic") or {}).get("multi_branch_scopes"),
                    "params_before": rep.get("params_before"), "params_after": rep.get("params_after"),
                    "changed": rep.get("changed")},
        "export": {"dynamic": exp.get("dynamic"), "fixed_input_hw": exp.get("fixed_input_hw"),
                   "fixed_reason": exp.get("fixed_reason"), "ops": len(exp.get("op_counts") or {}),
                   "max_abs_vs_torch": exp.get("max_abs_vs_torch")},
        "parity_max_abs": max((c.get("max_abs") or 0.0 for c in fp32), default=None),
        "parity_fp32_ok": bool(fp32) and all(c.get("ok") for c in fp32),
        "int8_built": q is not None, "int8_psnr_drop": q.get("drop") if q else None,
        "int8_psnr_vs_fp32": min((c.get("psnr") for c in int8 if c.get("psnr") is not None), default=None),
        "latency_ms": lat, "eval": scores, "convention_margins_db": _margins(conv),
    }
    declared = entry.input_range
    out["range_matches"] = _range_is(chosen, declared, out["equivalent_conventions"])
    if entry.range_finding is not None:
        out["range_finding"] = {"range": entry.range_finding, "evidence": entry.range_evidence,
                                "confirmed": _range_is(chosen, entry.range_finding, out["equivalent_conventions"])}
    expected = entry.range_finding if entry.range_finding is not None else declared
    if not out["parity_fp32_ok"]:
        worst = max(fp32, key=lambda c: c.get("max_abs") or 0.0) if fp32 else {}
        out |= {"category": "parity", "reason": f"{worst.get('test')} vs {worst.get('reference')}: max abs "
                                                f"{worst.get('max_abs')} > 1e-4"}
    elif expected is not None and not _range_is(chosen, expected, out["equivalent_conventions"]):
        out |= {"category": "range-mismatch",
                "reason": f"inferred input range {short_number(chosen)} ({conv.get('label')}), index says {expected:g}"}
    elif not out["int8_built"]:
        out |= {"category": "int8", "reason": "no INT8 graph"}
    elif below := _below_bicubic(scores):
        out |= {"category": "below-bicubic", "reason": below}
    else:
        out["ok"] = True
    return out


def _margins(conv: dict[str, Any]) -> dict[str, float | None]:
    """How far the chosen convention's gain over bicubic (dB) is ahead of the best trial with the
    other input range, and of the same range with the other colour order (None: not tried)."""
    trials = [t for t in conv.get("trials") or [] if t.get("gain_db") is not None and t.get("error") is None]
    chosen = conv.get("chosen") or {}
    win = next((t for t in trials if t.get("convention") == chosen), None)
    if win is None or conv.get("given"):
        return {"range": None, "color": None}
    rng = [t["gain_db"] for t in trials if t["convention"]["input_range"] != chosen.get("input_range")]
    col = [t["gain_db"] for t in trials if t["convention"]["input_range"] == chosen.get("input_range")
           and t["convention"]["mean_shift"] == chosen.get("mean_shift")
           and t["convention"]["color_order"] != chosen.get("color_order")]
    return {"range": round(win["gain_db"] - max(rng), 3) if rng else None,
            "color": round(win["gain_db"] - max(col), 3) if col else None}


def _below_bicubic(scores: dict[str, Any] | None) -> str | None:
    """Why a converted graph fails the bicubic floor (or could not be scored), else None."""
    if not scores:
        return None
    if scores.get("error"):
        return f"eval after convert failed: {scores['error']}"
    bic = scores["bicubic_psnr_y"]
    low = {k: v for k, v in scores["psnr_y"].items() if not v > bic}
    if not low:
        return None
    return (f"on {scores['testset']} x{scores['scale']} " + ", ".join(f"{k} scores {v:.2f} dB" for k, v in low.items())
            + f", below bicubic's {bic:.2f} dB")


def _range_is(chosen: float | None, want: float | None, equivalent: list[str]) -> bool | None:
    """None when there is nothing to compare with; else whether `chosen` (or an equivalent) is `want`."""
    if want is None:
        return None
    same = chosen is not None and abs(chosen - want) < 1e-6
    return bool(same or any(lbl.startswith(f"range {want:g},") for lbl in equivalent))


def _last_step(lines: list[str]) -> str | None:
    return lines[-1].split(":")[0] if lines else None


def _in_user_code(e: BaseException, entry: ZooEntry) -> bool:
    from .user_frames import user_frame

    roots = [Path(entry.code.rpartition(":")[0]).parent, *entry.paths]
    return user_frame(e, [r.resolve() for r in roots]) is not None


def quick_check(entry: ZooEntry, workdir: Path, *, int8: bool = False) -> dict[str, Any]:
    """The CI-sized check of one entry, in this process: load, conventions (quick), verified deploy
    hooks, ONNX export (dynamic or stated fixed), ORT vs the author's module on Set5 LR crops +
    one odd random size (max abs), and optionally the INT8 `trt` QDQ graph. Raises EdgesrError."""
    from dataclasses import replace

    import numpy as np

    from .backends.ort_runner import OrtRunner
    from .export.diagnose import export_user_model, fixed_size_samples
    from .parity import default_samples, random_samples
    from .reparam.author_hooks import deploy_form
    from .resolve import load_user_code

    um = load_user_code(entry.weights, entry.user_options(), scale=entry.scale, quick=True)
    spec = replace(um.spec, form="deploy")
    samples = [s for s in default_samples(spec.scale, sizes=())[:2]]
    crops = []
    for s in samples:
        _, _, h, w = s.lr.shape
        c = max(spec.min_size, (32 // spec.size_multiple) * spec.size_multiple)
        if h >= c and w >= c:
            crops.append(np.ascontiguousarray(s.lr[:, :, :c, :c]))
    m = spec.size_multiple
    odd = random_samples([(max(spec.min_size, -(-17 // m) * m), max(spec.min_size, -(-23 // m) * m))])[0].lr
    deploy, rep = deploy_form(um.module, crops[:1])
    onnx_path = Path(workdir) / f"{entry.name}.onnx"
    exported = export_user_model(deploy, spec, onnx_path, source_checkpoint=entry.weights)
    fixed = getattr(exported, "fixed_hw", None)
    inputs = [x.lr for x in fixed_size_samples(spec.scale, tuple(fixed))[:2]] if fixed else crops + [odd]
    ort = OrtRunner(onnx_path, name="ort:fp32")
    err = 0.0
    import torch

    for x in inputs:
        with torch.inference_mode():
            ref = um.module(torch.from_numpy(x)).numpy()
        err = max(err, float(np.max(np.abs(ort.run(x).astype(np.float64) - ref))))
    out = {"name": entry.name, "scale": spec.scale, "inferred_input_range": um.conventions.chosen.input_range,
           "equivalent": um.conventions.equivalent, "psnr_y": um.conventions.best.psnr_y,
           "bicubic_psnr_y": um.conventions.bicubic_psnr_y, "hooks": rep["hooks"], "author_form": um.author_form,
           "generic_regions_collapsed": rep["generic"].get("regions_collapsed"),
           "generic_multi_branch": rep["generic"].get("multi_branch_scopes"),
           "generic_applied": rep["generic"].get("applied"), "deploy_max_abs": rep.get("max_abs"),
           "dynamic": fixed is None,
           "fixed_hw": fixed, "parity_max_abs": err, "parity_inputs": [list(x.shape) for x in inputs]}
    if int8:
        from .quant import QuantConfig, quantize_model

        q = quantize_model(onnx_path, Path(workdir) / f"{entry.name}_int8.onnx", spec,
                           QuantConfig(profile="trt", psnr_budget=None, num_patches=4, progress=False))
        out["int8_drop"] = q.drop
    return out


# ---- many models ---------------------------------------------------------------------------------

def run_zoo(index: str | Path, outroot: str | Path, *, force: bool = False, only: list[str] | None = None,
            timeout: float = DEFAULT_TIMEOUT_S, int8: bool = True, bench: bool = True, jobs: int = 1,
            on_start: Callable[[int, int, ZooEntry], None] | None = None,
            on_done: Callable[[int, int, dict], None] | None = None) -> list[dict[str, Any]]:
    """Convert every entry (or those named in `only`), one subprocess each, `jobs` at a time;
    continues past failures. Results keep the index's order; callbacks come from one thread at a time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 1:
        raise DatasetError(f"--zoo-jobs must be at least 1, got {jobs}")
    entries = select_entries(index, only)
    outroot = Path(outroot)
    (outroot / "results").mkdir(parents=True, exist_ok=True)
    (outroot / "logs").mkdir(exist_ok=True)
    lock = threading.Lock()
    results: list[dict[str, Any] | None] = [None] * len(entries)
    finished = [0]

    def one(i: int) -> None:
        entry = entries[i]
        with lock:
            if on_start:
                on_start(i, len(entries), entry)
        res = reuse_or_run(entry, outroot, force=force, timeout=timeout, int8=int8, bench=bench)
        with lock:
            results[i] = res
            if on_done:
                on_done(finished[0], len(entries), res)
            finished[0] += 1

    if jobs == 1:
        for i in range(len(entries)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for f in [pool.submit(one, i) for i in range(len(entries))]:
                f.result()
    done = [r for r in results if r is not None]
    write_summary(done, outroot)
    return done


def select_entries(index: str | Path, only: list[str] | None) -> list[ZooEntry]:
    """The index's entries, or those named in `only` (in the order given)."""
    entries = read_index(index)
    if only:
        unknown = sorted(set(only) - {e.name for e in entries})
        if unknown:
            raise DatasetError(f"not in the zoo index: {', '.join(unknown)}")
        by_name = {e.name: e for e in entries}
        entries = [by_name[n] for n in dict.fromkeys(only)]
    return entries


def reuse_or_run(entry: ZooEntry, outroot: Path, *, force: bool, timeout: float, int8: bool, bench: bool,
                 preexec_fn: Callable[[], None] | None = None,
                 measure: Callable[[dict], dict] | None = None) -> dict:
    """The stored result when its content key matches (edgesr.resume; never with `force`), else
    convert in a subprocess and publish results/<name>.json atomically, keyed. With `measure`, the
    conversion skips its latency row and ``measure(result)`` adds it (the Ray executor times models
    in a bench slot). Reused results come back with ``reused: True``."""
    from .fsutil import atomic_write_json
    from .resume import content_key, result_path, reusable_result, stale_outdir

    key = content_key(entry, {"int8": int8, "bench": bench})
    old = None if force else reusable_result(outroot, entry.name, key)
    if old is not None:
        return old | {"reused": True}
    res = _run_one(entry, outroot, force=force or stale_outdir(outroot, entry.name), timeout=timeout, int8=int8,
                   bench=bench and measure is None, preexec_fn=preexec_fn)
    if bench and measure is not None:
        res = measure(res)
    res["key"] = key
    atomic_write_json(result_path(outroot, entry.name), res)
    return res


def _run_one(entry: ZooEntry, outroot: Path, *, force: bool, timeout: float, int8: bool, bench: bool,
             preexec_fn: Callable[[], None] | None = None) -> dict:
    out_json = outroot / "results" / f".{entry.name}.partial.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "edgesr.zoo", entry.to_json(), str(outroot / entry.name), str(out_json),
           json.dumps({"force": force, "int8": int8, "bench": bench})]
    t0 = time.perf_counter()
    base = {"name": entry.name, "model": entry.code, "weights": str(entry.weights),
            "declared_input_range": entry.input_range, "ok": False}
    log = outroot / "logs" / f"{entry.name}.log"
    with open(log, "wb") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                  preexec_fn=preexec_fn)
        except subprocess.TimeoutExpired:
            return base | {"category": "timeout", "reason": f"no result after {timeout:.0f} s",
                           "seconds": round(time.perf_counter() - t0, 1)}
    if out_json.is_file():
        res = json.loads(out_json.read_text())
        out_json.unlink()
        return res
    tail = _tail(log)
    return base | {"category": "crash", "reason": f"process exited with status {proc.returncode}"
                   + (f": {tail}" if tail else ""), "seconds": round(time.perf_counter() - t0, 1)}


def _tail(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _worker(argv: list[str]) -> int:
    entry = ZooEntry.from_json(argv[0])
    outdir, out_json = Path(argv[1]), Path(argv[2])
    flags = json.loads(argv[3])
    res = convert_entry(entry, outdir, force=flags["force"], int8=flags["int8"], bench=flags["bench"])
    from .fsutil import atomic_write_json

    atomic_write_json(out_json, res)
    return 0


if __name__ == "__main__":  # the per-model subprocess
    sys.exit(_worker(sys.argv[1:]))
