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
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import DatasetError, EdgesrError, one_line

ENV_ROOT = "EDGESR_ZOO_ROOT"
DEFAULT_TIMEOUT_S = 1200
# Failure categories, in pipeline order (each result has exactly one, or none when ok).
CATEGORIES = {
    "weights-absent": "the weights file is not there",
    "missing-import": "the model code imports a package that is not installed (or needs CUDA)",
    "needs-cuda": "the model code calls CUDA (e.g. .cuda() while building); this machine has no GPU",
    "user-code": "the model code fails to import, build or run",
    "weights": "the weights cannot be loaded safely or do not fit the code",
    "implausible": "no input convention gives a plausible super-resolution",
    "range-mismatch": "the inferred input range differs from the index's",
    "export": "ONNX export failed",
    "parity": "ONNX Runtime differs from the author's PyTorch module by more than 1e-4",
    "int8": "INT8 QDQ graph could not be built",
    "below-bicubic": "a converted graph (fp32 or INT8) scores below bicubic on Set5: `edgesr eval` refuses it",
    "timeout": "the model did not finish in time",
    "crash": "the model's process died",
    "internal": "an unexpected error in edgesr",
}


@dataclass
class ZooEntry:
    name: str
    code: str  # absolute FILE.py:NAME
    weights: Path
    paths: list[Path] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    strict: bool = True
    input_range: float | None = None
    scale: int | None = None
    range_finding: float | None = None  # the range evidence says, where it contradicts input_range
    range_evidence: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["weights"] = str(self.weights)
        d["paths"] = [str(p) for p in self.paths]
        return json.dumps(d)

    def user_options(self) -> dict[str, Any]:
        """This entry as --model options (`edgesr.resolve.load_user_code`, `ConvertOptions.with_user_model`).
        No input range: the index's `input_range` is what the zoo checks the measured one against."""
        return {"ref": self.code, "kwargs": self.kwargs, "strict": self.strict, "key": self.key,
                "extra_paths": tuple(self.paths), "input_range": None}

    @classmethod
    def from_json(cls, text: str) -> "ZooEntry":
        d = json.loads(text)
        d["weights"] = Path(d["weights"])
        d["paths"] = [Path(p) for p in d["paths"]]
        return cls(**d)


MAX_INDEX_BYTES = 16 << 20  # an index of a thousand models is ~200 KiB
MAX_INDEX_DEPTH = 16  # [[model]] tables with kwargs tables of lists: 4 levels
ZOO_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")  # each becomes OUTROOT/<name>/


def _optional(m: dict, key: str, kind: type, where: str) -> Any:
    """m[key] checked to be of `kind` (an int where a float is asked for is fine), or None."""
    v = m.get(key)
    if v is None:
        return None
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if kind is float and ok and not math.isfinite(v):
        ok = False
    if kind is int and ok and not 1 <= v <= 32:
        ok = False
    if not ok:
        want = {int: "an integer in [1, 32]", float: "a finite number", str: "a string", bool: "true or false"}[kind]
        raise DatasetError(f"{where}: '{key}' must be {want}, got {one_line(repr(v)[:40])}")
    return v


def read_index(index: str | Path) -> list[ZooEntry]:
    """Parse and check a zoo index (paths resolved; a missing weights file is not an error here)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    from .errors import quoted
    from .limits import json_depth

    index = Path(index)
    if not index.is_file():
        raise DatasetError(f"zoo index {quoted(index)} not found")
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise DatasetError(f"zoo index {quoted(index)} is larger than {MAX_INDEX_BYTES >> 20} MiB; an index lists "
                           "models, not their weights")
    try:
        data = tomllib.loads(index.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"zoo index {quoted(index)} is not valid TOML: {one_line(e)}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise DatasetError(f"zoo index {quoted(index)} is nested deeper than any index needs") from None
    if json_depth(data) > MAX_INDEX_DEPTH:
        raise DatasetError(f"zoo index {quoted(index)} is nested more than {MAX_INDEX_DEPTH} levels deep")
    root_text = os.environ.get(ENV_ROOT) or data.get("root", ".")
    if not isinstance(root_text, str):
        raise DatasetError(f"zoo index {quoted(index)}: 'root' must be a string (a folder)")
    root = (index.parent / root_text).resolve() if not Path(root_text).is_absolute() else Path(root_text)
    if not root.is_dir():
        raise DatasetError(f"zoo index {quoted(index)}: root {quoted(root)} is not a folder (set {ENV_ROOT} to "
                           "where the zoo is)")
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise DatasetError(f"zoo index {quoted(index)} has no [[model]] entries")
    default_scale = _optional(data, "scale", int, f"zoo index {quoted(index.name)}")
    out, seen = [], set()
    for i, m in enumerate(models):
        where = f"zoo index {quoted(index.name)}, model #{i + 1}"
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: each model must be a [[model]] table, got {type(m).__name__}")
        for k in ("name", "code", "weights"):
            if not isinstance(m.get(k), str) or not m[k]:
                raise DatasetError(f"{where}: '{k}' must be a non-empty string")
        name = m["name"]
        if name in seen or not ZOO_NAME.fullmatch(name) or name in (".", ".."):
            raise DatasetError(f"{where}: name {quoted(name)} is repeated or not a plain folder name (letters, "
                               "digits, '.', '_', '+', '-'; at most 100 characters, not starting with '.')")
        seen.add(name)
        where = f"{where} ({name})"
        file, sep, attr = m["code"].rpartition(":")
        if not sep:
            raise DatasetError(f"{where}: code must be FILE.py:NAME, got {quoted(m['code'])}")
        kwargs = m.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise DatasetError(f"{where}: kwargs must be a table")
        paths = m.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise DatasetError(f"{where}: paths must be a list of folder names")
        scale = _optional(m, "scale", int, where)
        out.append(ZooEntry(
            name=name, code=f"{root / file}:{attr}", weights=root / m["weights"],
            paths=[root / p for p in paths], kwargs=kwargs, key=_optional(m, "key", str, where),
            strict=_optional(m, "strict", bool, where) is not False,
            input_range=_optional(m, "input_range", float, where),
            scale=scale if scale is not None else default_scale,
            range_finding=_optional(m, "range_finding", float, where),
            range_evidence=_optional(m, "range_evidence", str, where)))
        if (out[-1].range_finding is None) != (out[-1].range_evidence is None):
            raise DatasetError(f"{where} ({name}): range_finding and range_evidence go together")
    return out


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
                "reason": f"inferred input range {_g(chosen)} ({conv.get('label')}), index says {expected:g}"}
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


# ---- summary -------------------------------------------------------------------------------------

SUMMARY_HEADERS = ["model", "result", "range", "Set5 fp32", "Set5 INT8", "bicubic", "reparam", "export",
                   "parity", "ms", "s"]
# What the short column names mean (printed under the table and in summary.md).
SUMMARY_LEGEND = (
    "range: input range inferred/index; Set5 fp32, INT8, bicubic: mean PSNR-Y (dB, published-table protocol) "
    "of the converted fp32 graph, the INT8 `trt` graph and a bicubic upscale; reparam: author hooks applied + "
    "regions the generic pass collapsed (mb: of them multi-branch); export: dynamic H/W or the fixed LR size; "
    "parity: max abs of ONNX Runtime vs the author's module (fp32, [0, 1]); ms: ORT fp32 latency at 64x64 LR; "
    "s: seconds the model took.")


def summary_rows(results: list[dict]) -> list[list[str]]:
    """One row of short cells per model (failure reasons are listed apart: :func:`failure_lines`)."""
    rows = []
    for r in results:
        exp = r.get("export") or {}
        rep = r.get("reparam") or {}
        hooks = [h for h in rep.get("hooks") or [] if h.get("applied")]
        n, mb = rep.get("generic_regions_collapsed"), len(rep.get("generic_multi_branch") or [])
        reparam = "+".join((["hooks"] if hooks or rep.get("author_form") else [])
                           + ([f"{n}" + (f" ({mb} mb)" if mb else "")] if rep.get("generic_applied") else []))
        ev = r.get("eval") or {}
        psnr = ev.get("psnr_y") or {}
        int8 = [v for k, v in psnr.items() if k.startswith("int8")]
        rows.append([
            r["name"], "ok" if r.get("ok") else str(r.get("category") or "FAILED"),
            (f"{_g(r.get('inferred_input_range'))}/{_g(r.get('declared_input_range'))}"
             + ("*" if (r.get("range_finding") or {}).get("confirmed") else "")
             if r.get("inferred_input_range") is not None else ""),
            _num(psnr.get("fp32"), ".2f"), _num(min(int8) if int8 else None, ".2f"),
            _num(ev.get("bicubic_psnr_y"), ".2f"),
            reparam or ("-" if "reparam" in r else ""),
            ("fixed " + "x".join(map(str, exp["fixed_input_hw"])) if exp.get("fixed_input_hw") else
             ("dynamic" if exp.get("dynamic") else "")),
            _num(r.get("parity_max_abs"), ".1e"), _num((r.get("latency_ms") or {}).get("ort:fp32"), ".1f"),
            _num(r.get("seconds"), ".0f")])
    return rows


def failure_lines(results: list[dict]) -> list[str]:
    """'name: category: reason' of every model that did not convert end to end."""
    return [f"{r['name']}: {r.get('category')}: {r.get('reason') or ''}" for r in results if not r.get("ok")]


def summary_text(results: list[dict], width: int | None = None) -> str:
    """The terminal summary: the table, its legend and the failures, wrapped to `width`
    (default: the terminal's, at least 80)."""
    import shutil
    import textwrap

    from .cli.output import format_table

    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    out = [format_table(SUMMARY_HEADERS, summary_rows(results)), ""]
    out += textwrap.wrap(SUMMARY_LEGEND, width)
    if any((r.get("range_finding") or {}).get("confirmed") for r in results):
        out += textwrap.wrap("*: the index's range is contradicted by evidence it records (see summary.md)", width)
    fails = failure_lines(results)
    if fails:
        out += ["", f"Failures ({len(fails)}):"]
        for line in fails:
            out += textwrap.wrap(one_line(line), width, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(out)


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _g(v) -> str:
    return "" if v is None else f"{v:g}"


def counts(results: list[dict]) -> dict[str, Any]:
    by_cat: dict[str, int] = {}
    for r in results:
        if not r.get("ok"):
            by_cat[r.get("category") or "?"] = by_cat.get(r.get("category") or "?", 0) + 1
    ok = sum(bool(r.get("ok")) for r in results)
    return {"models": len(results), "ok": ok, "failed": len(results) - ok,
            "ok_share": round(ok / len(results), 4) if results else 0.0, "failures_by_category": by_cat,
            "range_matches": sum(r.get("range_matches") is True for r in results),
            "range_checked": sum(r.get("range_matches") is not None for r in results),
            "range_findings_confirmed": sorted(r["name"] for r in results
                                               if (r.get("range_finding") or {}).get("confirmed")),
            "seconds": round(sum(r.get("seconds") or 0 for r in results), 1)}


def write_summary(results: list[dict], outroot: Path) -> None:
    from .fsutil import atomic_write_json, atomic_write_text

    c = counts(results)
    atomic_write_json(outroot / "summary.json", {"counts": c, "categories": CATEGORIES, "results": results})
    md = [f"# edgesr zoo conversion: {c['ok']} of {c['models']} converted end to end", "",
          "ok = ONNX exported (dynamic H/W, or fixed with the reason stated), ONNX Runtime within 1e-4 of the "
          "author's PyTorch module on Set5 LR + random inputs, INT8 `trt` QDQ graph built, inferred input "
          "range equal to the index's, and (eval after convert, where Set5 is at hand) the fp32 and INT8 graphs "
          "both above bicubic on Set5.", "",
          "| " + " | ".join(SUMMARY_HEADERS) + " |", "|" + "---|" * len(SUMMARY_HEADERS)]
    for row in summary_rows(results):
        md.append("| " + " | ".join(_md(v) for v in row) + " |")
    md += ["", SUMMARY_LEGEND, "",
           "Failures by category: " + (", ".join(f"{k} {v}" for k, v in sorted(c["failures_by_category"].items()))
                                       or "none"), ""]
    md += [f"- {_md(line)}" for line in failure_lines(results)] + ([""] if c["failed"] else [])
    findings = [r for r in results if r.get("range_finding")]
    if findings:
        md += ["Input ranges where the evidence contradicts the author's test script (\"*\" in the table; the "
               "index entry holds the evidence):", ""]
        md += [f"- {r['name']}: index {_g(r.get('declared_input_range'))}, edgesr infers "
               f"{_g(r.get('inferred_input_range'))}, evidence says {_g(r['range_finding']['range'])}: "
               f"{r['range_finding']['evidence']}" for r in findings] + [""]
    atomic_write_text(outroot / "summary.md", "\n".join(md))
    atomic_write_text(outroot / "summary.txt", summary_text(results, width=120) + "\n")


def _md(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2e}" if (v and abs(v) < 1e-2) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


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
