"""edgesr's GPU half in one command, with a CPU dry run that CI runs.

    python benchmarks/gpu_check.py --prepare                 # here: copy what the run needs out of ../shared
    python benchmarks/gpu_check.py --out DIR                 # on a GPU machine: DIR/gpu.json, gpu.md, gpu_latency.png
    python benchmarks/gpu_check.py --dry-run --out DIR       # on the CPU, tiny sizes: the same code paths

`--prepare` copies the checkpoints, images and challenge results the run needs into the git-ignored
`benchmarks/gpu_payload/` (about 19 MB; manifest.json lists every file with its sha256 and which NTIRE
zoo models edgesr can load), so that the working tree plus that folder is all a GPU machine needs:
nothing is installed there, and `../shared` does not travel.

Sections run in this order, each in its own process under a time box (a share of `--budget`, plus
whatever earlier sections left unused). A section that runs out of time stops before its next item
and records the rest as cut; one that overruns its box by the grace is killed, keeping every row it
reported. gpu.json and gpu.md are rewritten after every row, so a run killed from outside leaves
everything measured until then.

  env      torch / CUDA / cuDNN / Triton versions, device properties, the CPU (edgesr.bench.machine_info);
           the parent reads nvidia-smi (driver, clocks, power, throttle reasons) at the start and the end
  parity   PyTorch on the GPU in fp32 (IEEE, TF32 off), fp32 with PyTorch's defaults (cuDNN convolutions
           may use TF32), fp16 and bf16, each against PyTorch fp32 on the CPU (edgesr.parity.check_parity:
           max abs, PSNR, Set5 Y-PSNR against ground truth) for every ETDS-repo checkpoint, the NTIRE zoo
           models edgesr loads and a seeded untrained variant of every registry family that no checkpoint
           covers; a non-finite fp16/bf16 output names the first module whose output overflowed
  latency  GPU time from CUDA events (edgesr.bench.time_cuda_events; trtexec statistics, Mpix/s) of
           ETDS-T/S/M/L x4, SPAN and RLFN at 720p, 1080p and 4K output, fp32 (IEEE), fp32 (TF32) and fp16,
           each eager / CUDA graph / channels_last / channels_last + CUDA graph, every output checked
           against the fp32 eager one; plus host latency with H2D/D2H copies (edgesr.bench.bench_prepared,
           what `edgesr bench -b torch-cuda [--cuda-graph]` reports)
  ntire    the NTIRE ESR runtime protocol (the challenge's test_demo.py: fp32, cuDNN benchmark off, one
           image at a time, CUDA events around the forward pass, the average over all images including
           the first) next to the challenge's own numbers from its results.json (another GPU)
  trt      TensorRT / TensorRT-RTX: whether each can run here and why not; engine rows when one can
  tests    the test suite's GPU-marked tests (pytest -m gpu)
  compile  torch.compile(mode="max-autotune") of the latency models, most wanted first, as many as
           compile within the time left

The dry run (`--dry-run`) runs every section on the CPU at tiny sizes: edgesr.bench.HostCalls stands
in for the CUDA-only calls (events, streams, graph capture), so everything around them is exercised;
its numbers are CPU numbers and say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working tree's edgesr (the GPU machine has no installed copy)

from edgesr.fsutil import atomic_write_json, atomic_write_text, json_safe, sha256_file  # noqa: E402  (no torch)

SCHEMA = 1
DEFAULT_PAYLOAD = ROOT / "benchmarks" / "gpu_payload"
DEFAULT_SHARED = ROOT.parent / "shared"
SECTIONS = ("env", "parity", "latency", "ntire", "trt", "tests", "compile")
# Share of the budget per section; a section also gets what the ones before it left unused.
SHARES = {"env": 0.04, "parity": 0.22, "latency": 0.28, "ntire": 0.08, "trt": 0.03, "tests": 0.08, "compile": 0.27}
GPU_BUDGET_S = 360.0  # with the last box's grace, under 7 minutes: fits the lent machine's 8-minute command
DRY_BUDGET_S = 1800.0  # no time-box pressure on a loaded CI machine: the dry run needs ~2 CPU-minutes

# What the sections measure on a GPU, and the tiny stand-ins of the dry run.
OUTPUTS = {"720p": (720, 1280), "1080p": (1080, 1920), "4K": (2160, 3840)}
DRY_OUTPUTS = {"64x64": (64, 64)}
DRY_LATENCY_MODELS = ("ETDS-T", "RLFN (NTIRE22 winner)")  # one per loader; parity loads the others
LATENCY_MODELS = (  # label, payload path, registry variant used when the file is absent
    ("ETDS-T", "checkpoints/etds-repo/ETDS/ETDS_M5C16_x4.pth", "etds-t-x4"),
    ("ETDS-S", "checkpoints/etds-repo/ETDS/ETDS_M4C32_x4.pth", "etds-s-x4"),
    ("ETDS-M", "checkpoints/etds-repo/ETDS/ETDS_M6C32_x4.pth", "etds-m-x4"),
    ("ETDS-L", "checkpoints/etds-repo/ETDS/ETDS_M7C48_x4.pth", "etds-l-x4"),
    ("SPAN (NTIRE24 team38, ch28)", "ntire-esr/2024/model_zoo/team38_span_ch28_slim.pth", "span-ch48-x4"),
    ("RLFN (NTIRE22 winner)", "ntire-esr/2024/model_zoo/team00_rlfn.pth", "rlfn-ntire-x4"),
)
# precision label -> (TorchCudaRunner precision, tf32)
LATENCY_PRECISIONS = {"fp32": ("fp32", False), "fp32-tf32": ("fp32", True), "fp16": ("fp16", None)}
MODES = {"eager": (False, False), "cuda-graph": (True, False), "channels-last": (False, True),
         "channels-last+cuda-graph": (True, True)}
# parity label -> (precision, tf32, tolerance preset); TF32 keeps fp16's 10-bit mantissa
PARITY_PRECISIONS = {"fp32": ("fp32", False, "fp32"), "fp32-default": ("fp32", None, "fp16"),
                     "fp16": ("fp16", None, "fp16"), "bf16": ("bf16", None, "bf16")}
PARITY_SET5 = ("butterfly", "woman")  # square and non-square
COMPILE_ORDER = ("ETDS-M", "SPAN (NTIRE24 team38, ch28)", "RLFN (NTIRE22 winner)", "ETDS-T", "ETDS-S", "ETDS-L")
COMPILE_OUTPUT_ORDER = ("1080p", "720p", "4K")
COMPILE_MODE = "max-autotune"
# The NTIRE protocol: DIV2K validation LR images are 510x339 (most; a few differ), x4.
NTIRE_LR = (339, 510)
NTIRE_IMAGES = 100  # the DIV2K half of DIV2K_LSDIR_valid
DRY_NTIRE_LR, DRY_NTIRE_IMAGES = (20, 30), 3
IMPLAUSIBLE_PSNR_Y = 20.0  # dB on Set5 (bicubic: ~28.6 at x4): below this the model as loaded is wrong
# TensorRT-RTX support matrix (1.0-1.5): compute capabilities its engines run on (RTX GPUs).
TRT_RTX_CCS = ("7.5", "8.6", "8.9", "12.0", "12.1")
TRT_NOTE = ("TensorRT 10/11 is not installed on the lent GPU machine and cannot be installed in this "
            "environment (no package registry there; its CUDA libraries are far larger than the 64 MiB "
            "that travels with the working tree). TensorRT-RTX engines run only on RTX GPUs (compute "
            "capability 7.5, 8.6, 8.9, 12.0 per its support matrix), not on an H200 (9.0). The engine "
            "paths stay in edgesr and in this script; they run the day either combination is available.")
NVIDIA_SMI_FIELDS = ("name", "driver_version", "pci.bus_id", "memory.total", "memory.used", "utilization.gpu",
                     "temperature.gpu", "power.draw", "power.limit", "pstate", "clocks.sm", "clocks.mem",
                     "clocks.max.sm", "clocks.max.mem", "clocks.applications.graphics",
                     "clocks.applications.memory", "persistence_mode", "compute_mode", "mig.mode.current",
                     "clocks_event_reasons.active")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# =========================================================================== prepare (here, with ../shared)

def ntire_registry_loader(path: Path):
    """edgesr's registry: detect the family from the state_dict's keys and shapes."""
    from edgesr.registry import load_model

    return load_model(path)


# Loaders tried in order on every NTIRE zoo file; the first that loads it is recorded in the manifest and
# used by the run. Loading a team's own model code (models/teamNN_*.py with test_demo.py's arguments) is a
# loader to add here (and its code to copy in `prepare`) once edgesr can import user model code.
NTIRE_LOADERS: dict[str, Callable[[Path], Any]] = {"registry": ntire_registry_loader}


def prepare(shared: Path, payload: Path) -> dict:
    """Copy what the GPU run needs from `shared` into `payload` (replacing an earlier payload)."""
    from edgesr.errors import EdgesrError
    from edgesr.registry import load_model

    if not (shared / "checkpoints" / "etds-repo").is_dir():
        raise SystemExit(f"gpu_check: {shared} has no checkpoints/etds-repo (pass --shared DIR)")
    if payload.exists():
        if not (payload / "manifest.json").is_file():
            raise SystemExit(f"gpu_check: {payload} exists and is not a payload this script wrote; "
                             "remove it or pass another --payload")
        shutil.rmtree(payload)
    payload.mkdir(parents=True)
    copied: list[Path] = []

    def copy(rel: str) -> Path:
        dst = payload / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared / rel, dst)
        copied.append(dst)
        return dst

    models = []
    for p in sorted((shared / "checkpoints" / "etds-repo").rglob("*.pth")):
        rel = str(p.relative_to(shared))
        lm = load_model(p)  # every checkpoint must load here, or the run would find out on the GPU
        models.append({"path": rel, "kind": "checkpoint", "arch": lm.spec.arch, "variant": lm.spec.variant,
                       "scale": lm.spec.scale, "form": lm.spec.form})
        copy(rel)
    set5 = shared / "testsets" / "Set5"
    for p in sorted(set5.rglob("*.png")):
        copy(str(p.relative_to(shared)))
    ntire: dict[str, Any] = {"loadable": [], "not_loadable": [], "challenge": {}}
    for year_dir in sorted((shared / "ntire-esr").glob("20*")):
        year = year_dir.name
        for p in sorted((year_dir / "model_zoo").glob("*")):
            rel = str(p.relative_to(shared))
            reasons = []
            for name, loader in NTIRE_LOADERS.items():
                try:
                    lm = loader(p)
                except (EdgesrError, OSError, ValueError, RuntimeError) as e:
                    reasons.append(f"{name}: {str(e).splitlines()[0][:160]}")
                    continue
                ntire["loadable"].append({"path": rel, "kind": "ntire", "year": year, "loader": name,
                                          "team": p.name.split("_")[0], "arch": lm.spec.arch,
                                          "variant": lm.spec.variant, "scale": lm.spec.scale,
                                          "form": lm.spec.form})
                copy(rel)
                break
            else:
                ntire["not_loadable"].append({"path": rel, "year": year, "reasons": reasons})
        for name in ("results.json", "results.txt"):
            if (year_dir / name).is_file():
                copy(str((year_dir / name).relative_to(shared)))
        readme = year_dir / "README.md"
        if readme.is_file():
            ntire["challenge"][year] = {"gpu": _challenge_gpu(readme.read_text(errors="replace"))}
    files = [{"path": str(p.relative_to(payload)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in copied]
    manifest = {"schema": SCHEMA, "created_utc": _now(), "source": str(shared), "models": models, "ntire": ntire,
                "files": files, "total_bytes": sum(f["bytes"] for f in files)}
    atomic_write_json(payload / "manifest.json", manifest)
    return manifest


def _challenge_gpu(readme: str) -> str | None:
    """The GPU the challenge's organisers timed on, as its README names it."""
    import re

    m = re.search(r"NVIDIA GeForce [A-Z]+ ?\d{3,4}(?: Ti)?|Titan X[p]?", readme)
    return m.group(0) if m else None


def load_manifest(payload: Path) -> dict:
    p = payload / "manifest.json"
    if not p.is_file():
        raise SystemExit(f"gpu_check: no payload at {payload}: run `python benchmarks/gpu_check.py --prepare` "
                         "(on a machine with ../shared) and carry that folder")
    return json.loads(p.read_text())


# =========================================================================== child side: events and time boxes

class Emitter:
    """Events of one section, one JSON object per line, appended to a file the parent follows."""

    def __init__(self, path: Path | None):
        self.path = path
        self.events: list[dict] = []  # kept when path is None (tests)

    def _put(self, ev: dict) -> None:
        if self.path is None:
            self.events.append(ev)
            return
        line = json.dumps(json_safe(ev), allow_nan=False, default=_scalar)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def plan(self, items: Sequence[str]) -> None:
        self._put({"t": "plan", "items": list(items)})

    def start(self, item: str) -> None:
        self._put({"t": "start", "item": item, "at": time.time()})

    def row(self, item: str, row: dict) -> None:
        self._put({"t": "row", "item": item, "row": row})

    def info(self, key: str, value: Any) -> None:
        self._put({"t": "info", "key": key, "value": value})

    def done(self, item: str, seconds: float) -> None:
        self._put({"t": "done", "item": item, "seconds": round(seconds, 3)})

    def cut(self, items: Sequence[str], reason: str) -> None:
        if items:
            self._put({"t": "cut", "items": list(items), "reason": reason})

    def error(self, item: str | None, exc: BaseException) -> None:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self._put({"t": "error", "item": item, "error": scrub_paths(f"{type(exc).__name__}: {_first_line(exc)}"),
                   "trace": scrub_paths("".join(tb[-3:]))[-1500:]})

    def fatal(self, message: str) -> None:
        self._put({"t": "fatal", "message": message})


def scrub_paths(text: str) -> str:
    """Error text as it may appear in a committed report: the checkout's and Python's folders on the
    machine that ran it become relative or symbolic."""
    import re

    text = text.replace(str(ROOT) + os.sep, "")
    text = re.sub(r"/[^\s\"']*/(?:site|dist)-packages/", "<site-packages>/", text)
    return re.sub(r"/[^\s\"']*/lib/python3\.\d+/", "<python>/", text)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:400]


def _scalar(v: Any) -> Any:
    """numpy / torch scalars -> Python numbers (json.dumps' fallback); anything else -> its text."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        x = v.item()
        return x if not isinstance(x, float) or math.isfinite(x) else str(x)
    return str(v)


def run_items(items: Sequence[tuple[str, Callable[[], None]]], deadline: float, emit: Emitter,
              clock: Callable[[], float] = time.time) -> None:
    """Run items in order under a time box: before each item, stop when the time left is gone or
    shorter than the last item took, and record the rest as cut. An item that raises is recorded
    as an error and the next one runs."""
    emit.plan([i for i, _ in items])
    last = 0.0
    for k, (item, fn) in enumerate(items):
        left = deadline - clock()
        if left <= 0 or left < last:
            emit.cut([i for i, _ in items[k:]], f"time box: {max(0.0, left):.0f} s left, the last item took "
                                                 f"{last:.0f} s")
            return
        emit.start(item)
        t0 = clock()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one item's failure is a finding, not the end of the section
            emit.error(item, e)
        last = clock() - t0
        emit.done(item, last)


# =========================================================================== child side: shared helpers

@dataclass
class Ctx:
    dry_run: bool
    payload: Path
    manifest: dict
    deadline: float
    emit: Emitter
    calls: Any = None  # edgesr.bench.CudaCalls or HostCalls
    torch: Any = None
    cuda: bool = False
    _samples: dict = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, tuple[int, int]]:
        return DRY_OUTPUTS if self.dry_run else OUTPUTS

    def empty_cache(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def make_ctx(args, emit: Emitter) -> Ctx:
    import torch

    from edgesr.bench import CudaCalls, HostCalls

    payload = Path(args.payload)
    cuda = (not args.dry_run) and torch.cuda.is_available()
    calls = CudaCalls() if cuda else HostCalls()
    if args.dry_run:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return Ctx(args.dry_run, payload, load_manifest(payload), args.deadline, emit, calls, torch, cuda)


@dataclass
class Loaded:
    label: str
    module: Any  # deploy form, CPU, fp32, eval
    spec: Any
    source: str  # "trained checkpoint" | "NTIRE zoo" | "registry variant, seeded untrained weights"
    loaded_form: str


def load_entry(ctx: Ctx, entry: dict) -> Loaded:
    """A payload model (checkpoint / NTIRE zoo file) or a registry variant, in deploy form."""
    from dataclasses import replace

    from edgesr.registry import build_variant
    from edgesr.reparam import reparameterize

    torch = ctx.torch
    if entry["kind"] == "variant":
        torch.manual_seed(0)
        lm = build_variant(entry["variant"], entry["form"])
        source = "registry variant, seeded untrained weights"
    else:
        path = ctx.payload / entry["path"]
        loader = NTIRE_LOADERS[entry.get("loader", "registry")]
        lm = loader(path)
        source = "NTIRE zoo" if entry["kind"] == "ntire" else "trained checkpoint"
    module, spec = lm.module.eval(), lm.spec
    loaded_form = spec.form
    if spec.form == "training":
        module, spec = reparameterize(module).eval(), replace(spec, form="deploy")
    return Loaded(entry.get("label") or entry.get("path") or entry["variant"], module, spec, source, loaded_form)


def fit_hw(h: int, w: int, spec) -> tuple[int, int]:
    """(h, w) rounded down to the model's size multiple and raised to its minimum size."""
    m = max(1, int(spec.size_multiple))
    lo = max(int(spec.min_size), m)
    return max(lo, h // m * m), max(lo, w // m * m)


def _smooth(shape: Sequence[int], seed: int, spec) -> Any:
    from edgesr.parity import random_image

    return random_image(shape, seed=seed, value_range=tuple(spec.value_range))


# =========================================================================== section: env

def section_env(ctx: Ctx) -> None:
    from edgesr.bench import machine_info

    torch = ctx.torch
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(), "dry_run": ctx.dry_run,
                            "device": "cuda:0" if ctx.cuda else "cpu"}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - informational
        info["triton"] = f"not importable ({type(e).__name__})"
    conv = getattr(torch.backends.cudnn, "conv", None)
    info["fp32_precision_defaults"] = {
        "cudnn.conv": getattr(conv, "fp32_precision", None),
        "cuda.matmul": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "float32_matmul_precision": torch.get_float32_matmul_precision()}
    info["cudnn_benchmark_default"] = bool(torch.backends.cudnn.benchmark)
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{p.major}.{p.minor}",
                 "multiprocessors": p.multi_processor_count, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "cudnn": torch.backends.cudnn.version()}
    elif not ctx.dry_run:
        ctx.emit.fatal(f"no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                       "on a machine without one, run with --dry-run")
    ctx.emit.info("torch", info)
    ctx.emit.info("machine", machine_info())


# =========================================================================== section: parity

def parity_entries(ctx: Ctx) -> list[dict]:
    """One model per registry family first (a trained x4 file where the payload has one, else a seeded
    untrained variant), then every other ETDS-repo checkpoint and loadable NTIRE zoo model: a time box
    that runs short cuts from the end of this list."""
    from edgesr.registry import architectures

    files = [dict(m, label=m["path"]) for m in ctx.manifest["models"]]
    files += [dict(m, label=m["path"]) for m in ctx.manifest["ntire"]["loadable"]]
    first, rest = [], []
    for a in architectures():
        mine = [f for f in files if f["arch"] == a.name]
        if mine:
            first.append(min(mine, key=lambda f: (f["scale"] != 4, f["kind"] != "checkpoint", f["label"])))
            continue
        if not a.variants:
            continue
        form = "training" if "training" in a.forms else "deploy"
        x4 = [v for v in a.variants if v.name.endswith("-x4")] or list(a.variants)
        v = min(x4, key=lambda v: _param_count(ctx, a, v, form)) if ctx.dry_run else x4[0]
        first.append({"kind": "variant", "arch": a.name, "variant": v.name, "form": form,
                      "label": f"{v.name} ({form} form, seeded)"})
    rest = [f for f in files if f not in first]
    return first + rest


def _param_count(ctx: Ctx, arch, variant, form: str) -> int:
    """Parameters of a variant (the dry run times the smallest x4 variant of each family on the CPU)."""
    m = arch.build(dict(variant.hyperparams), form)
    return sum(p.numel() for p in m.parameters())


def parity_samples(ctx: Ctx, spec) -> list:
    """Two Set5 LR/HR pairs at the model's scale (a 16x16 crop of one in the dry run) + one smooth random
    image of an odd size, fitted to the model's size rules. (Two, not five: the metrics of ~80 models x 4
    precisions on the CPU would not fit the section's time box.)"""
    import numpy as np

    from edgesr.parity import Sample, testset_samples

    key = (spec.scale, spec.size_multiple, spec.min_size, tuple(spec.value_range))
    if key in ctx._samples:
        return ctx._samples[key]
    out = []
    set5 = ctx.payload / "testsets" / "Set5"
    plain_range = tuple(spec.value_range) == (0.0, 1.0)
    if plain_range and (set5 / "LR_bicubic" / f"X{spec.scale}").is_dir():
        pairs = testset_samples(set5, spec.scale)
        for s in pairs[:1] if ctx.dry_run else [p for p in pairs if p.name in PARITY_SET5]:
            h, w = s.lr.shape[2:]
            if ctx.dry_run:
                h, w = min(h, 16), min(w, 16)
            h, w = fit_hw(h, w, spec)
            if h > s.lr.shape[2] or w > s.lr.shape[3]:
                continue
            lr = np.ascontiguousarray(s.lr[:, :, :h, :w])
            hr = np.ascontiguousarray(s.hr[:h * spec.scale, :w * spec.scale]) if s.hr is not None else None
            out.append(Sample(s.name, lr, hr))
    h, w = fit_hw(*((15, 17) if ctx.dry_run else (67, 101)), spec)
    out.append(Sample(f"random:{h}x{w}", _smooth((1, spec.in_channels, h, w), 7, spec), None, "random"))
    ctx._samples[key] = out
    return out


def _hook_output(out) -> Any:
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if hasattr(o, "is_floating_point")), None)
    return out if hasattr(out, "is_floating_point") and out.is_floating_point() else None


def activation_peak(torch, module, x) -> dict:
    """Largest |output| of any submodule on one input (fp32): the fp16 headroom of the model."""
    best = {"module": None, "max_abs": 0.0}
    hooks = []
    for name, m in module.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            t = _hook_output(out)
            if t is not None and t.numel():
                v = float(t.detach().abs().max())
                if not v <= best["max_abs"]:
                    best.update(module=name, max_abs=v)
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    best["fp16_headroom"] = (65504.0 / best["max_abs"]) if best["max_abs"] > 0 else None
    return best


def first_nonfinite_module(torch, module, x) -> dict | None:
    """The first submodule (in the order outputs are produced) whose output holds NaN/Inf."""
    found: dict = {}
    hooks = []
    for name, m in module.named_modules():
        if not name:
            continue

        def hook(mod, _i, out, name=name):
            if found:
                return
            t = _hook_output(out)
            if t is not None and not bool(torch.isfinite(t).all()):
                found.update(module=name, type=type(mod).__name__,
                             nonfinite_share=float((~torch.isfinite(t)).float().mean()))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return found or None


def parity_one(ctx: Ctx, entry: dict) -> dict:
    from edgesr.backends.torch_runner import TorchRunner
    from edgesr.bench import TorchCudaRunner, fp32_math
    from edgesr.parity import PRESETS, check_parity

    torch = ctx.torch
    t0 = time.perf_counter()
    m = load_entry(ctx, entry)
    samples = parity_samples(ctx, m.spec)
    lo, hi = m.spec.value_range
    ref = TorchRunner(m.module, name="torch:cpu:fp32")
    gpu = {label: TorchCudaRunner(m.module, precision=prec, tf32=tf32, calls=ctx.calls)
           for label, (prec, tf32, _) in PARITY_PRECISIONS.items()}
    tols = {gpu[label].name: PRESETS[preset] for label, (_, _, preset) in PARITY_PRECISIONS.items()}
    rep = check_parity([ref] + list(gpu.values()), samples, tolerances=tols, scale=m.spec.scale, localize=False,
                       data_range=float(hi - lo))
    row: dict[str, Any] = {"model": m.label, "source": m.source, "arch": m.spec.arch, "variant": m.spec.variant,
                           "scale": m.spec.scale, "loaded_form": m.loaded_form, "fp16_safe": m.spec.fp16_safe,
                           "inputs": rep.samples, "precisions": {}, "overflow": {}}
    by_name = {s.name: s for s in samples}
    for (label, r), c in zip(gpu.items(), rep.comparisons):
        s = c.summary()
        row["precisions"][label] = {
            "runner": r.name, "ok": c.ok, "failures": c.failures, "tolerance": c.tolerance.to_dict(),
            "max_abs": s["max_abs"], "mean_abs": s["mean_abs"], "p99_abs": s["p99_abs"], "psnr": s["psnr"],
            "worst_input": s["worst_sample"], "psnr_y_cpu": s["ref_psnr_gt"], "psnr_y_gpu": s["test_psnr_gt"]}
        if any("NaN/Inf" in f for f in c.failures):
            bad = next((st.name for st in c.samples if not math.isfinite(st.max_abs)), c.samples[0].name)
            with fp32_math(r.tf32):
                row["overflow"][label] = first_nonfinite_module(torch, r.module, r.to_device(by_name[bad].lr)) or {
                    "module": None, "note": "no submodule output is non-finite: a functional op in forward()"}
            row["overflow"][label]["input"] = bad
    row["activation_peak"] = activation_peak(torch, m.module, torch.from_numpy(samples[-1].lr))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    del gpu
    ctx.empty_cache()
    return row


def section_parity(ctx: Ctx) -> None:
    ctx.emit.info("tolerances", {label: preset for label, (_, _, preset) in PARITY_PRECISIONS.items()})
    items = []
    for e in parity_entries(ctx):
        items.append((e["label"], lambda e=e: ctx.emit.row(e["label"], parity_one(ctx, e))))
    run_items(items, ctx.deadline, ctx.emit)


# =========================================================================== section: latency

def latency_entries(ctx: Ctx) -> list[dict]:
    out = []
    for label, rel, variant in LATENCY_MODELS:
        if ctx.dry_run and label not in DRY_LATENCY_MODELS:
            continue
        if (ctx.payload / rel).is_file():
            kind = "ntire" if rel.startswith("ntire-esr/") else "checkpoint"
            out.append({"kind": kind, "path": rel, "label": label, "loader": "registry"})
        else:  # the payload lacks it: the same architecture with seeded weights times the same
            out.append({"kind": "variant", "variant": variant, "form": "deploy", "label": label})
    return out


def lr_size(out_hw: tuple[int, int], spec) -> tuple[int, int]:
    return fit_hw(out_hw[0] // spec.scale, out_hw[1] // spec.scale, spec)


def timing_policy(ctx: Ctx):
    from edgesr.bench import TimingPolicy

    if ctx.dry_run:
        return TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=3, min_seconds=0.0, max_runs=3)
    return TimingPolicy(warmup_seconds=0.05, warmup_runs=3, min_runs=30, min_seconds=0.15, max_runs=3000)


def gpu_time(ctx: Ctx, runner, launch, policy):
    """CUDA-event statistics of `launch` on the runner's device (host clock in the dry run)."""
    from edgesr.bench import time_cuda_events

    calls = runner.calls if runner is not None else ctx.calls
    stream = calls.current_stream(runner.device if runner is not None else None)
    return time_cuda_events(launch, policy, stream=stream, event_factory=calls.event,
                            synchronize=lambda: calls.synchronize(stream))


def _vs(ref, out) -> dict:
    """Max abs difference and PSNR (peak 1) of an output against the fp32 eager one (float32 differences,
    float64 sums: a 4K output is 25 M values)."""
    import numpy as np

    if out.shape != ref.shape:
        return {"max_abs_vs_fp32": None, "psnr_vs_fp32": None, "shape_mismatch": [list(ref.shape), list(out.shape)]}
    d = np.subtract(out, ref, dtype=np.float32)
    mse = float(np.mean(np.square(d), dtype=np.float64))
    return {"max_abs_vs_fp32": float(np.max(np.abs(d))) if d.size else 0.0,
            "psnr_vs_fp32": (10 * math.log10(1.0 / mse)) if mse > 0 else math.inf}


def latency_group(ctx: Ctx, entry: dict, out_name: str, out_hw: tuple[int, int]) -> None:
    from edgesr.bench import Prepared, TorchCudaRunner, bench_prepared, megapixels_per_second

    item = f"{entry['label']} @ {out_name}"
    m = load_entry(ctx, entry)
    lr = lr_size(out_hw, m.spec)
    out_real = (lr[0] * m.spec.scale, lr[1] * m.spec.scale)
    x = _smooth((1, m.spec.in_channels, *lr), 11, m.spec)
    policy = timing_policy(ctx)
    base = {"model": entry["label"], "output": out_name, "out_hw": list(out_real), "lr_hw": list(lr),
            "source": m.source}
    ref_runner = TorchCudaRunner(m.module, precision="fp32", tf32=False, calls=ctx.calls)
    ref = ref_runner.run(x)
    for plabel, (prec, tf32) in LATENCY_PRECISIONS.items():
        for mode, (graph, cl) in MODES.items():
            row = dict(base, precision=plabel, mode=mode)
            try:
                r = ref_runner if (plabel == "fp32" and mode == "eager") else TorchCudaRunner(
                    m.module, cuda_graph=graph, precision=prec, tf32=tf32, channels_last=cl, calls=ctx.calls)
                row["runner"] = r.name
                row |= _vs(ref, r.run(x))
                st = gpu_time(ctx, r, r.device_launch(x), policy)
                row["stats"] = st.to_dict()
                row["mpix_per_s"] = megapixels_per_second(out_real, st.median_ms)
            except Exception as e:  # noqa: BLE001 - e.g. a model that cannot be captured in a CUDA graph
                row["error"] = f"{type(e).__name__}: {_first_line(e)}"
            ctx.emit.row(item, row)
    # Host latency (numpy in -> numpy out) with H2D/D2H: the edgesr bench torch-cuda path.
    for graph in (False, True):
        row = dict(base, kind="host", precision="fp32 (torch defaults)", mode="cuda-graph" if graph else "eager")
        try:
            p = Prepared("torch-cuda", TorchCudaRunner(m.module, cuda_graph=graph, calls=ctx.calls), item, "fp32",
                         gpu=True)
            row["bench"] = bench_prepared([p], [lr], m.spec, policy)[0].to_dict()
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {_first_line(e)}"
        ctx.emit.row(item, row)
    del ref_runner
    ctx.empty_cache()


def section_latency(ctx: Ctx) -> None:
    torch = ctx.torch
    torch.backends.cudnn.benchmark = True  # fastest algorithm per shape, picked during warm-up
    ctx.emit.info("settings", {"cudnn_benchmark": True, "policy": timing_policy(ctx).to_dict(),
                               "precisions": {k: {"precision": p, "tf32": t} for k, (p, t) in LATENCY_PRECISIONS.items()},
                               "modes": list(MODES), "outputs": ctx.outputs})
    entries = latency_entries(ctx)
    items = []
    for out_name, out_hw in ctx.outputs.items():
        for e in entries:
            items.append((f"{e['label']} @ {out_name}",
                          lambda e=e, n=out_name, hw=out_hw: latency_group(ctx, e, n, hw)))
    run_items(items, ctx.deadline, ctx.emit)


# =========================================================================== section: compile

def compile_cell(ctx: Ctx, entry: dict, out_name: str, out_hw: tuple[int, int], prec: str) -> None:
    import copy

    from edgesr.bench import TORCH_PRECISIONS, TorchCudaRunner, fp32_math, megapixels_per_second

    torch = ctx.torch
    item = f"{entry['label']} @ {out_name} {prec}"
    m = load_entry(ctx, entry)
    lr = lr_size(out_hw, m.spec)
    out_real = (lr[0] * m.spec.scale, lr[1] * m.spec.scale)
    x = _smooth((1, m.spec.in_channels, *lr), 11, m.spec)
    policy = timing_policy(ctx)
    tf32 = False if prec == "fp32" else None
    ref = TorchCudaRunner(m.module, precision="fp32", tf32=False, calls=ctx.calls).run(x)
    eager = TorchCudaRunner(m.module, precision=prec, tf32=tf32, calls=ctx.calls)
    row: dict[str, Any] = {"model": entry["label"], "output": out_name, "out_hw": list(out_real), "lr_hw": list(lr),
                           "precision": prec, "mode": COMPILE_MODE}
    st_eager = gpu_time(ctx, eager, eager.device_launch(x), policy)
    row["eager_stats"] = st_eager.to_dict()
    dtype = getattr(torch, TORCH_PRECISIONS[prec])
    module = copy.deepcopy(m.module).eval().to(eager.device, dtype)
    xd = eager.to_device(x)
    torch._dynamo.reset()
    compiled = torch.compile(module, mode=COMPILE_MODE, dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode(), fp32_math(tf32):
        y = compiled(xd).float().cpu().numpy()
    ctx.synchronize()
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row |= _vs(ref, y)

    def launch():
        with torch.inference_mode(), fp32_math(tf32):
            return compiled(xd)

    st = gpu_time(ctx, eager, launch, policy)
    row["stats"] = st.to_dict()
    row["mpix_per_s"] = megapixels_per_second(out_real, st.median_ms)
    row["speedup_vs_eager"] = st_eager.median_ms / st.median_ms if st.median_ms > 0 else None
    ctx.emit.row(item, row)
    compiled = module = eager = None  # free the GPU copies before the next model
    torch._dynamo.reset()
    ctx.empty_cache()


def section_compile(ctx: Ctx) -> None:
    entries = {e["label"]: e for e in latency_entries(ctx)}
    outputs = ctx.outputs
    names = [n for n in COMPILE_OUTPUT_ORDER if n in outputs] or list(outputs)
    cells = [(e, n, p) for n in names for e in COMPILE_ORDER for p in ("fp16", "fp32")]
    if ctx.dry_run:
        cells = [("ETDS-T", names[0], "fp32")]  # one inductor compile on the CPU keeps CI short
    ctx.emit.info("settings", {"mode": COMPILE_MODE, "dynamic": False, "order": [f"{e} @ {n} {p}" for e, n, p in cells]})
    items = [(f"{e} @ {n} {p}", lambda e=e, n=n, p=p: compile_cell(ctx, entries[e], n, outputs[n], p))
             for e, n, p in cells]
    run_items(items, ctx.deadline, ctx.emit)


# =========================================================================== section: ntire

def challenge_numbers(ctx: Ctx, entry: dict) -> dict | None:
    """The challenge's own runtime for this team from its results.json (timed on another GPU)."""
    year, team = entry["year"], entry["team"]
    p = ctx.payload / "ntire-esr" / year / "results.json"
    if not p.is_file() or not team.startswith("team"):
        return None
    results = json.loads(p.read_text())
    key = next((k for k in results if k.startswith(f"{team[4:]}_")), None)
    if key is None:
        return None
    r = results[key]
    out = {"results_key": key, "gpu": (ctx.manifest["ntire"].get("challenge", {}).get(year) or {}).get("gpu"),
           "valid_ave_runtime_ms": r.get("valid_ave_runtime"), "test_ave_runtime_ms": r.get("test_ave_runtime"),
           "valid_memory_mib": r.get("valid_memory")}
    valid = r.get("valid_runtime") or []
    if len(valid) == 200:  # sorted file names: 100 LSDIR images (000001...) then DIV2K 0801-0900
        import numpy as np

        out["valid_div2k_median_ms"] = float(np.median(valid[100:]))
        out["valid_first_image_ms"] = float(valid[0])
        out["valid_mean_excluding_first_ms"] = float(np.mean(valid[1:]))
    return out


def ntire_one(ctx: Ctx, entry: dict) -> dict:
    import numpy as np

    from edgesr.bench import megapixels_per_second, stats_from_samples

    torch = ctx.torch
    m = load_entry(ctx, entry)
    device = ctx.calls.device(0)
    model = m.module.to(device).eval()
    for p in model.parameters():
        p.requires_grad = False
    torch.backends.cudnn.benchmark = False  # as test_demo.py sets it
    h, w = fit_hw(*(DRY_NTIRE_LR if ctx.dry_run else NTIRE_LR), m.spec)
    n = DRY_NTIRE_IMAGES if ctx.dry_run else NTIRE_IMAGES
    images = [torch.from_numpy(_smooth((1, 3, h, w), 100 + i, m.spec)) for i in range(min(n, 4))]
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    start, end = ctx.calls.event(), ctx.calls.event()
    times = []
    for i in range(n):
        x = images[i % len(images)].to(device)  # test_demo.py: img_lr.to(device) before the timed region
        start.record()
        y = model(x)
        end.record()
        ctx.synchronize()
        times.append(float(start.elapsed_time(end)))
        del y
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None
    st = stats_from_samples(times[1:] if len(times) > 1 else times)
    out_hw = (h * m.spec.scale, w * m.spec.scale)
    row = {"model": entry["path"], "arch": m.spec.arch, "variant": m.spec.variant, "loader": entry["loader"],
           "lr_hw": [h, w], "images": n, "first_ms": times[0], "mean_all_ms": float(np.mean(times)),
           "mean_excluding_first_ms": float(np.mean(times[1:])) if n > 1 else times[0],
           "stats_excluding_first": st.to_dict(), "mpix_per_s": megapixels_per_second(out_hw, st.median_ms),
           "peak_memory_mib": peak, "challenge": challenge_numbers(ctx, entry)}
    del model
    ctx.empty_cache()
    return row


def section_ntire(ctx: Ctx) -> None:
    ctx.emit.info("protocol", {
        "lr_hw": list(DRY_NTIRE_LR if ctx.dry_run else NTIRE_LR), "images": DRY_NTIRE_IMAGES if ctx.dry_run else NTIRE_IMAGES,
        "what": "test_demo.py's: fp32, cuDNN benchmark off, PyTorch's default TF32 settings, parameters without "
                "grad, input moved to the GPU before the timed region, CUDA events around model(x), synchronize, "
                "elapsed time per image; the challenge's 'average runtime' is the mean over all images, the first "
                "(cold) one included. The models run one after another in one process (the challenge starts one "
                "process per model), so only the first model's first image pays for CUDA and cuDNN start-up",
        "not_loadable": ctx.manifest["ntire"]["not_loadable"]})
    items = [(e["path"], lambda e=e: ctx.emit.row(e["path"], ntire_one(ctx, e))) for e in ctx.manifest["ntire"]["loadable"]]
    run_items(items, ctx.deadline, ctx.emit)


# =========================================================================== section: trt

def trt_one(ctx: Ctx, backend: str) -> dict:
    from edgesr.backends.trt_flavour import gpu_info, load_flavour
    from edgesr.errors import EdgesrError

    flavour = "rtx" if backend == "trt-rtx" else "trt"
    row: dict[str, Any] = {"backend": backend}
    try:
        row["version"] = load_flavour(flavour).version
        row["installed"] = True
    except EdgesrError as e:
        row["installed"], row["reason"] = False, str(e)
    gpu = gpu_info(0) if ctx.cuda else None
    row["gpu"] = gpu
    if gpu is None:
        row["runs_here"] = False
        row.setdefault("reason", "no CUDA GPU visible" + (" (dry run)" if ctx.dry_run else ""))
    elif flavour == "rtx" and gpu["compute_capability"] not in TRT_RTX_CCS:
        row["runs_here"] = False
        row["reason"] = (row.get("reason", "") + "; " if row.get("reason") else "") + (
            f"TensorRT-RTX engines run on compute capability {', '.join(TRT_RTX_CCS)} (RTX GPUs), not on "
            f"{gpu['name']} ({gpu['compute_capability']})")
    else:
        row["runs_here"] = bool(row["installed"])
    if row["runs_here"]:
        row |= trt_engine_rows(ctx, backend)
    return row


def trt_engine_rows(ctx: Ctx, backend: str) -> dict:
    """ETDS-M x4 through edgesr's engine path: build, time (bench_prepared), parity vs PyTorch fp32 CPU."""
    from edgesr.backends.torch_runner import TorchRunner
    from edgesr.bench import bench_prepared, open_model, prepare_backend
    from edgesr.parity import check_parity

    src = open_model(ctx.payload / "checkpoints/etds-repo/ETDS/ETDS_M6C32_x4.pth")
    try:
        lr = [lr_size(hw, src.spec) for hw in ctx.outputs.values()]
        samples = parity_samples(ctx, src.spec)
        # one engine profile from the smallest parity input to the largest timed size
        p = prepare_backend(src, backend, engine_sizes=lr + [tuple(s.lr.shape[2:]) for s in samples])
        try:
            res = [r.to_dict() for r in bench_prepared([p], lr, src.spec, timing_policy(ctx))]
            rep = check_parity([TorchRunner(src.module, name="torch:cpu:fp32"), p.runner], samples,
                               scale=src.spec.scale, localize=False)
        finally:
            if p.close:
                p.close()
        return {"bench": res, "parity": rep.to_dict()}
    finally:
        src.close()


def section_trt(ctx: Ctx) -> None:
    ctx.emit.info("note", TRT_NOTE)
    items = [(b, lambda b=b: ctx.emit.row(b, trt_one(ctx, b))) for b in ("trt", "trt-rtx")]
    run_items(items, ctx.deadline, ctx.emit)


# =========================================================================== section: tests

GPU_TEST_FILES = ("tests/bench/test_bench.py", "tests/backends/test_trt_runner.py")


def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line ('3 passed, 2 skipped, 40 deselected in 1.2s')."""
    import re

    counts: dict[str, int] = {}
    for line in reversed(text.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)", line)
        if found:
            for n, k in found:
                counts[k.rstrip("s") if k in ("errors", "warnings") else k] = int(n)
            break
    return counts


def section_tests(ctx: Ctx) -> None:
    def run() -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TEST_FILES]
        env = dict(os.environ, EDGESR_SHARED=str(ctx.payload))  # the payload mirrors ../shared's layout
        t0 = time.perf_counter()
        left = max(10.0, ctx.deadline - time.time())
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
            text, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc = None
        lines = scrub_paths(text).strip().splitlines()
        ctx.emit.row("pytest -m gpu", {"command": " ".join(cmd[2:]), "returncode": rc,
                                       "seconds": round(time.perf_counter() - t0, 1),
                                       "counts": parse_pytest_summary(text),
                                       "failed": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20],
                                       "skipped": [ln for ln in lines if ln.startswith("SKIPPED")][:20],
                                       "tail": lines[-5:]})
    run_items([("pytest -m gpu", run)], ctx.deadline, ctx.emit)


CHILD_SECTIONS: dict[str, Callable[[Ctx], None]] = {
    "env": section_env, "parity": section_parity, "latency": section_latency, "ntire": section_ntire,
    "trt": section_trt, "tests": section_tests, "compile": section_compile}


def die_with_parent() -> None:
    """A section runs in its own process session (so that the parent can kill it together with its
    compile workers); if the parent is killed from outside, the section must not run on, holding the
    GPU: the kernel's parent-death signal where prctl exists, and a watcher thread everywhere."""
    import threading

    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="gpu-check-parent-watch").start()


def child_main(args) -> int:
    die_with_parent()
    emit = Emitter(Path(args.events))
    try:
        ctx = make_ctx(args, emit)
        CHILD_SECTIONS[args.child](ctx)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which keeps what came before
        emit.error(None, e)
        return 1
    return 0


# =========================================================================== parent: nvidia-smi, sections, output

def parse_nvidia_smi_csv(text: str, fields: Sequence[str]) -> list[dict[str, str | None]]:
    """`nvidia-smi --query-gpu=F1,F2,... --format=csv,noheader` output -> one dict per GPU
    ('[N/A]' and '[Not Supported]' become None)."""
    import csv
    import io

    gpus = []
    for rec in csv.reader(io.StringIO(text.strip())):
        if not rec:
            continue
        vals = [v.strip() for v in rec]
        if len(vals) != len(fields):
            raise ValueError(f"nvidia-smi gave {len(vals)} values for {len(fields)} fields: {text.strip()[:200]}")
        gpus.append({f: (None if v in ("[N/A]", "[Not Supported]", "N/A", "") else v) for f, v in zip(fields, vals)})
    return gpus


def nvidia_smi() -> dict:
    """What nvidia-smi reads now (all fields at once; field by field when an old driver rejects one)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "reason": "nvidia-smi not found"}

    def query(fields: Sequence[str]) -> list[dict]:
        p = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise ValueError((p.stdout + p.stderr).strip()[:200])
        return parse_nvidia_smi_csv(p.stdout, fields)

    at = _now()
    try:
        return {"available": True, "at": at, "gpus": query(NVIDIA_SMI_FIELDS)}
    except (ValueError, OSError, subprocess.TimeoutExpired):
        merged: dict[str, Any] = {}
        errors = {}
        for f in NVIDIA_SMI_FIELDS:
            try:
                merged[f] = query([f])[0][f]
            except (ValueError, OSError, subprocess.TimeoutExpired, IndexError) as e:
                errors[f] = str(e)[:120]
        return {"available": bool(merged), "at": at, "gpus": [merged], "field_errors": errors}


def _git(*a: str) -> str | None:
    try:
        p = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _public_path(p: str | Path) -> str:
    """A path as it may appear in a committed report: relative to the checkout, else only its name."""
    q = Path(p)
    if not q.is_absolute():
        return str(q)
    try:
        return str(q.resolve().relative_to(ROOT))
    except ValueError:
        return f"<{q.name}>"


def _public_command(argv: Sequence[str]) -> str:
    return "python benchmarks/gpu_check.py " + " ".join(_public_path(a) if a.startswith("/") else a
                                                        for a in argv[1:])


def code_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "edgesr").rglob("*.py")) + [Path(__file__).resolve()]:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


class Run:
    """The parent: runs the sections as child processes under their time boxes, follows their
    events, and rewrites gpu.json + gpu.md after every change."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.budget = float(args.budget or (DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S))
        self.child: subprocess.Popen | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="edgesr-gpu-check-"))
        manifest = load_manifest(Path(args.payload))
        self.record: dict[str, Any] = {
            "tool": "benchmarks/gpu_check.py", "schema": SCHEMA, "status": "running", "dry_run": bool(args.dry_run),
            "started_utc": _now(), "budget_s": self.budget, "command": _public_command(sys.argv),
            "code": {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
                     "edgesr_and_script_sha256_16": code_digest()},
            "payload": {"path": _public_path(args.payload), "total_bytes": manifest["total_bytes"],
                        "files": len(manifest["files"]), "created_utc": manifest["created_utc"]},
            "machine": {"nvidia_smi_start": nvidia_smi()}, "trt_note": TRT_NOTE,
            "sections": {s: {"status": "pending"} for s in self.sections()}}
        self.write()

    def sections(self) -> list[str]:
        want = [s.strip() for s in (self.args.sections or ",".join(SECTIONS)).split(",") if s.strip()]
        bad = [s for s in want if s not in SECTIONS]
        if bad:
            raise SystemExit(f"gpu_check: unknown section(s) {', '.join(bad)}; known: {', '.join(SECTIONS)}")
        return [s for s in SECTIONS if s in want or s == "env"]  # env always: it says what ran where

    def write(self) -> None:
        self.record["elapsed_s"] = round(time.time() - self.t0, 1)
        atomic_write_json(self.out / "gpu.json", self.record)
        atomic_write_text(self.out / "gpu.md", render_markdown(self.record))

    def say(self, msg: str) -> None:
        print(f"[gpu_check {time.time() - self.t0:6.1f}s] {msg}", flush=True)

    def run(self) -> int:
        names = list(self.record["sections"])
        rc = 0
        for i, name in enumerate(names):
            left = self.budget - (time.time() - self.t0)
            share = SHARES[name] / sum(SHARES[n] for n in names[i:])
            budget = max(0.0, left * share)
            if left < 5:
                self.record["sections"][name] = {"status": "cut", "reason": "no time left in the budget"}
                self.write()
                continue
            status = self.run_section(name, budget)
            if status == "fatal":
                for n in names[i + 1:]:
                    self.record["sections"][n] = {"status": "skipped", "reason": self.record["sections"][name]["fatal"]}
                rc = 2
                break
            if status == "error":
                rc = 1
        self.record["machine"]["nvidia_smi_end"] = nvidia_smi()
        self.record["status"] = "complete"
        self.record["finished_utc"] = _now()
        self.write()
        self.plot()
        self.say(f"done in {time.time() - self.t0:.0f} s: {self.out / 'gpu.json'}, {self.out / 'gpu.md'}")
        print(summary_lines(self.record), flush=True)
        return rc

    def run_section(self, name: str, budget: float) -> str:
        sec: dict[str, Any] = {"status": "running", "budget_s": round(budget, 1), "planned": [], "done": [],
                               "cut": [], "errors": [], "rows": [], "info": {}, "running": None}
        self.record["sections"][name] = sec
        self.write()
        events = self.tmp / f"{name}.jsonl"
        deadline = time.time() + budget
        grace = self.args.grace if self.args.grace is not None else 10.0 + 0.1 * budget
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--payload", str(self.args.payload),
               "--events", str(events), "--deadline", repr(deadline)] + (["--dry-run"] if self.args.dry_run else [])
        self.say(f"{name}: start (time box {budget:.0f} s)")
        t0 = time.time()
        self.child = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        offset, killed = 0, False
        while True:
            rc = self.child.poll()
            offset = self.consume(name, sec, events, offset)
            if rc is not None:
                break
            if time.time() > deadline + grace:
                self.kill_child()
                killed = True
                rc = self.child.wait()
                break
            time.sleep(0.25)
        offset = self.consume(name, sec, events, offset)
        self.child = None
        sec["seconds"] = round(time.time() - t0, 1)
        sec["returncode"] = rc
        left = [i for i in sec["planned"] if i not in sec["done"] and i not in {c["item"] for c in sec["cut"]}]
        if killed:
            why = f"killed at the hard limit ({budget:.0f} s box + {grace:.0f} s grace)"
            if sec["running"]:
                why += f" while running {sec['running']!r}"
            sec["cut"] += [{"item": i, "reason": why} for i in left]
            sec["killed"] = why
        elif left:
            sec["cut"] += [{"item": i, "reason": f"the section's process exited with code {rc}"} for i in left]
        if sec.get("fatal"):
            sec["status"] = "fatal"
        elif killed or sec["cut"]:
            sec["status"] = "cut"
        elif rc != 0:
            sec["status"] = "error"
        else:
            sec["status"] = "done"
        if killed and not sec["planned"]:
            sec["cut"].append({"item": "(whole section)", "reason": sec["killed"]})
        sec["running"] = None
        self.write()
        self.say(f"{name}: {sec['status']} in {sec['seconds']:.0f} s ({len(sec['done'])}/{len(sec['planned'])} items"
                 + (f", {len(sec['cut'])} cut" if sec["cut"] else "") + (f", {len(sec['errors'])} errors" if sec["errors"] else "")
                 + ")")
        return sec["status"]

    def consume(self, name: str, sec: dict, events: Path, offset: int) -> int:
        if not events.is_file():
            return offset
        with open(events, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            if line.strip():
                self.apply(name, sec, json.loads(line))
        self.write()
        return offset + end + 1

    def apply(self, name: str, sec: dict, ev: dict) -> None:
        t = ev["t"]
        if t == "plan":
            sec["planned"] = ev["items"]
        elif t == "start":
            sec["running"] = ev["item"]
        elif t == "row":
            sec["rows"].append(dict(ev["row"], item=ev["item"]))
            self.say(f"{name}: {progress_line(name, ev['row'])}")
        elif t == "info":
            sec["info"][ev["key"]] = ev["value"]
        elif t == "done":
            sec["done"].append(ev["item"])
            sec.setdefault("item_seconds", {})[ev["item"]] = ev["seconds"]
            sec["running"] = None
        elif t == "cut":
            sec["cut"] += [{"item": i, "reason": ev["reason"]} for i in ev["items"]]
            self.say(f"{name}: {len(ev['items'])} item(s) cut: {ev['reason']}")
        elif t == "error":
            sec["errors"].append({k: ev.get(k) for k in ("item", "error", "trace")})
            self.say(f"{name}: error in {ev.get('item') or 'the section'}: {ev['error']}")
        elif t == "fatal":
            sec["fatal"] = ev["message"]
            self.say(f"{name}: {ev['message']}")

    def kill_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signal.SIGKILL)  # the child's own session: it and its compile workers
            except ProcessLookupError:
                pass

    def interrupted(self) -> None:
        self.kill_child()
        for sec in self.record["sections"].values():
            if sec.get("status") in ("running", "pending"):
                sec["status"] = "interrupted"
        self.record["status"] = "interrupted"
        self.write()

    def plot(self) -> None:
        try:
            made = plot_latency(self.record, self.out / "gpu_latency.png")
        except Exception as e:  # noqa: BLE001 - a missing matplotlib must not lose the numbers
            self.record["plot_error"] = f"{type(e).__name__}: {_first_line(e)}"
            made = None
        self.record["plot"] = made
        self.write()

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def progress_line(section: str, row: dict) -> str:
    if row.get("error"):
        return f"{row.get('model', '')} {row.get('output', '')} {row.get('precision', '')} {row.get('mode', '')}: " \
               f"{row['error']}"
    if section == "parity":
        parts = [f"{k} {_e(v['max_abs'])}{'' if v['ok'] else ' FAIL'}" for k, v in row["precisions"].items()]
        return f"{row['model']}: " + ", ".join(parts) + (f"; overflow {row['overflow']}" if row["overflow"] else "")
    if section == "latency" and "stats" in row:
        return (f"{row['model']} @ {row['output']} {row['precision']} {row['mode']}: "
                f"{row['stats']['median_ms']:.3f} ms, {row['mpix_per_s']:.1f} Mpix/s")
    if section == "compile" and "stats" in row:
        return (f"{row['model']} @ {row['output']} {row['precision']}: compiled in {row['compile_s']} s, "
                f"{row['stats']['median_ms']:.3f} ms ({_g(row.get('speedup_vs_eager'))}x eager)")
    if section == "ntire":
        return f"{row['model']}: mean {row['mean_all_ms']:.2f} ms (excluding the first {row['mean_excluding_first_ms']:.2f})"
    if section == "trt":
        return f"{row['backend']}: " + ("runs" if row.get("runs_here") else f"not here: {row.get('reason')}")
    if section == "tests":
        return f"pytest -m gpu: {row['counts']} (rc {row['returncode']})"
    return ", ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, (dict, list)))[:200]


def _g(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0:
        return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}e}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


# =========================================================================== markdown + plot

def _secs(record: dict, name: str) -> dict:
    return record.get("sections", {}).get(name) or {}


def render_markdown(record: dict) -> str:
    """The GPU report section (gpu.md) from gpu.json's record."""
    L: list[str] = []
    env = _secs(record, "env").get("info", {}).get("torch", {})
    dry = record.get("dry_run")
    title = "## GPU check" + (" (dry run on the CPU: no GPU numbers)" if dry else "")
    L += [title, ""]
    where = env.get("gpu") or ("CPU (dry run)" if dry else "?")
    L.append(f"`python benchmarks/gpu_check.py` ({'dry run, ' if dry else ''}status: {record.get('status')}), "
             f"started {record.get('started_utc')}, {record.get('elapsed_s')} s of a {record.get('budget_s'):.0f} s "
             f"budget, on {where}. Code: git {str((record.get('code') or {}).get('git_commit'))[:12]}"
             f"{' (dirty)' if (record.get('code') or {}).get('git_dirty') else ''}. Every number: gpu.json.")
    if dry:
        L += ["", "The dry run runs every section at tiny sizes on the CPU; edgesr.bench.HostCalls stands in for "
              "the CUDA calls. Its timings are CPU timings of tiny inputs and mean nothing for a GPU."]
    L += ["", "### Machine", ""] + _md_machine(record, env)
    L += ["", "### Parity on the GPU (PyTorch CUDA vs PyTorch fp32 on the CPU)", ""] + _md_parity(record)
    L += ["", "### Latency (GPU compute time from CUDA events)", ""] + _md_latency(record)
    L += ["", "### NTIRE ESR runtime protocol", ""] + _md_ntire(record)
    L += ["", "### TensorRT", ""] + _md_trt(record)
    L += ["", "### GPU-marked tests", ""] + _md_tests(record)
    L += ["", f"### torch.compile (mode {COMPILE_MODE})", ""] + _md_compile(record)
    L += ["", "### Time boxes", "", "| section | box s | took s | status | items done / planned | cut | errors |",
          "|---|---|---|---|---|---|---|"]
    for name, sec in record.get("sections", {}).items():
        L.append(f"| {name} | {sec.get('budget_s', '-')} | {sec.get('seconds', '-')} | {sec.get('status')} | "
                 f"{len(sec.get('done', []))} / {len(sec.get('planned', []))} | {len(sec.get('cut', []))} | "
                 f"{len(sec.get('errors', []))} |")
    for name, sec in record.get("sections", {}).items():
        for c in sec.get("cut", [])[:12]:
            L.append(f"- {name}: cut `{c['item']}`: {c['reason']}")
        if len(sec.get("cut", [])) > 12:
            L.append(f"- {name}: ... {len(sec['cut']) - 12} more cut (gpu.json)")
        for e in sec.get("errors", [])[:12]:
            L.append(f"- {name}: error in `{e.get('item') or '(section)'}`: {e.get('error')}")
        if sec.get("reason"):
            L.append(f"- {name}: {sec['status']}: {sec['reason']}")
    return "\n".join(L) + "\n"


def _md_machine(record: dict, env: dict) -> list[str]:
    L = []
    m = _secs(record, "env").get("info", {}).get("machine", {})
    if env:
        L.append(f"- GPU: {env.get('gpu', 'none (dry run)')}" + (
            f", compute capability {env['compute_capability']}, {env['multiprocessors']} SMs, "
            f"{env['gpu_memory_gib']} GiB" if env.get("compute_capability") else ""))
        L.append(f"- torch {env.get('torch')} (CUDA build {env.get('cuda_build')}, cuDNN {env.get('cudnn', '-')}), "
                 f"Triton {env.get('triton')}; fp32 defaults {env.get('fp32_precision_defaults')}")
    if m:
        L.append(f"- CPU: {m.get('cpu_model')}, {m.get('usable_cpus', m.get('logical_cpus'))} usable CPUs, "
                 f"{m.get('memory_gib')} GiB; python {m.get('python')}, numpy {m.get('numpy_version')}, "
                 f"onnxruntime {m.get('onnxruntime_version')}, load {m.get('loadavg')}")
    for when in ("start", "end"):
        smi = (record.get("machine") or {}).get(f"nvidia_smi_{when}")
        if not smi:
            continue
        if not smi.get("available"):
            L.append(f"- nvidia-smi at the {when}: {smi.get('reason')}")
            continue
        g = (smi.get("gpus") or [{}])[0]
        L.append(f"- nvidia-smi at the {when} ({smi.get('at')}): {g.get('name')}, driver {g.get('driver_version')}, "
                 f"SM clock {g.get('clocks.sm')} (max {g.get('clocks.max.sm')}), memory clock {g.get('clocks.mem')} "
                 f"(max {g.get('clocks.max.mem')}), {g.get('pstate')}, power {g.get('power.draw')} of "
                 f"{g.get('power.limit')}, {g.get('temperature.gpu')} C, utilization {g.get('utilization.gpu')}, "
                 f"clock event reasons {g.get('clocks_event_reasons.active')}, MIG {g.get('mig.mode.current')}")
    return L or ["- (env section did not run)"]


def _md_parity(record: dict) -> list[str]:
    sec = _secs(record, "parity")
    rows = [r for r in sec.get("rows", []) if "precisions" in r]
    if not rows:
        return [f"Not measured ({sec.get('status', 'not run')})."]
    labels = list(PARITY_PRECISIONS)
    L = [f"{len(rows)} models, each on {', '.join(rows[0]['inputs'])} (inputs fitted to each model's size rules). "
         "fp32 = IEEE fp32 on the GPU (TF32 off); fp32-default = PyTorch's defaults (cuDNN convolutions may use "
         "TF32); tolerances: fp32 max abs <= 1e-5, fp32-default and fp16 max abs <= 4e-3 and PSNR >= 50 dB, "
         "bf16 max abs <= 3.2e-2 and PSNR >= 32 dB (edgesr.parity.PRESETS).", ""]
    for label in labels:
        got = [r for r in rows if label in r["precisions"]]
        ok = [r for r in got if r["precisions"][label]["ok"]]
        worst = max(got, key=lambda r: _num(r["precisions"][label]["max_abs"]), default=None)
        L.append(f"- {label}: {len(ok)}/{len(got)} within tolerance" + (
            f"; largest max abs {_e(worst['precisions'][label]['max_abs'])} ({worst['model']})" if worst else ""))
    over = [(r["model"], k, v) for r in rows for k, v in r.get("overflow", {}).items()]
    if over:
        safe = {r["model"]: r.get("fp16_safe") for r in rows}
        L.append("- non-finite outputs: " + "; ".join(
            f"{m} {k}: first in `{v.get('module')}` ({v.get('type', '')})"
            + (" although its Spec says fp16_safe" if k == "fp16" and safe.get(m) else "") for m, k, v in over))
    else:
        L.append("- no fp16/bf16 output held NaN/Inf")
    L += ["", "| model | source | " + " | ".join(f"{k} max abs (PSNR dB)" for k in labels)
          + " | Set5 PSNR-Y CPU / GPU fp16 | peak activation (fp16 headroom) |",
          "|---|---|" + "---|" * len(labels) + "---|---|"]
    for r in rows:
        cells = []
        for k in labels:
            v = r["precisions"].get(k)
            if not v:
                cells.append("-")
                continue
            cells.append(f"{_e(v['max_abs'])} ({_g(v['psnr'], 1)})" + ("" if v["ok"] else " **FAIL**"))
        f16 = r["precisions"].get("fp16", {})
        gt = (f"{_g(f16.get('psnr_y_cpu'), 3)} / {_g(f16.get('psnr_y_gpu'), 3)}"
              if f16.get("psnr_y_cpu") is not None else "-")
        if r["source"].startswith("registry variant"):
            gt = "untrained"
        pk = r.get("activation_peak") or {}
        room = pk.get("fp16_headroom")
        L.append(f"| `{r['model']}` | {r['source']} | " + " | ".join(cells) + f" | {gt} | "
                 f"{_g3(pk.get('max_abs'))} in `{pk.get('module')}` ({'-' if room is None else f'{room:.0f}'}x) |")
    wrong = [r for r in rows if not r["source"].startswith("registry variant")
             and _num((r["precisions"].get("fp32") or {}).get("psnr_y_cpu")) < IMPLAUSIBLE_PSNR_Y]
    for r in wrong:
        L.append(f"- `{r['model']}`: Set5 PSNR-Y of PyTorch fp32 on the CPU is "
                 f"{_g(r['precisions']['fp32']['psnr_y_cpu'], 1)} dB (bicubic scores ~28-34): the model as edgesr "
                 "loads it does not reproduce images; the CPU/GPU agreement above says nothing about that")
    fails = [(r["model"], k, v["failures"]) for r in rows for k, v in r["precisions"].items() if not v["ok"]]
    for m, k, f in fails[:30]:
        L.append(f"- `{m}` {k}: " + "; ".join(f))
    return L


def _e(v: Any) -> str:
    """A difference or magnitude: 0, or three significant digits in e-notation."""
    if v is None or isinstance(v, str):
        return "-" if v is None else v
    return "0" if v == 0 else f"{v:.2e}"


def _g3(v: Any) -> str:
    return "-" if v is None else (v if isinstance(v, str) else f"{v:.3g}")


def _ms(v: Any) -> str:
    if v is None or isinstance(v, str):
        return "-" if v is None else v
    return f"{v:.4f}" if v < 0.01 else f"{v:.3f}"


def _num(v: Any) -> float:
    if isinstance(v, str):
        return math.inf if v in ("inf", "nan") else -math.inf
    return float(v) if v is not None else -math.inf


def _md_latency(record: dict) -> list[str]:
    sec = _secs(record, "latency")
    rows = [r for r in sec.get("rows", []) if r.get("kind") != "host"]
    if not rows:
        return [f"Not measured ({sec.get('status', 'not run')})."]
    st = sec.get("info", {}).get("settings", {})
    pol = st.get("policy", {})
    L = [f"GPU time per inference from CUDA events recorded around each launch, launches queued back to back in "
         f"chunks of 10 (edgesr.bench.time_cuda_events), input already on the GPU, batch 1; warm-up "
         f"{pol.get('warmup_seconds')} s, at least {pol.get('min_runs')} runs and {pol.get('min_seconds')} s; "
         f"cuDNN benchmark {'on' if st.get('cudnn_benchmark') else 'off'}. Median ms per mode; Mpix/s = output "
         "megapixels per second at the median. fp32 = IEEE (TF32 off), fp32-tf32 = TF32 allowed. Every output was "
         "compared with the fp32 eager one (max abs in gpu.json).", "",
         "| model | output | precision | " + " | ".join(MODES) + " | best Mpix/s | max abs vs fp32 |",
         "|---|---|---|" + "---|" * len(MODES) + "---|---|"]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["model"], r["output"], r["precision"]), {})[r["mode"]] = r
    for (model, output, prec), modes in groups.items():
        cells, best, worst_diff = [], None, None
        for mode in MODES:
            r = modes.get(mode)
            if r is None:
                cells.append("-")
            elif r.get("error"):
                cells.append("error")
            else:
                cells.append(f"{r['stats']['median_ms']:.3f}")
                best = max(best or 0.0, r["mpix_per_s"])
                d = r.get("max_abs_vs_fp32")
                worst_diff = d if worst_diff is None or (d is not None and d > worst_diff) else worst_diff
        L.append(f"| {model} | {output} | {prec} | " + " | ".join(cells) + f" | {_g(best, 1)} | {_e(worst_diff)} |")
    L += ["", "trtexec-style statistics of the fastest variant per model and output (ms):", "",
          "| model | output | variant | min | median | mean | p90 | p95 | p99 | max | CV | runs |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best_rows: dict[tuple, dict] = {}
    for r in rows:
        if r.get("error"):
            continue
        k = (r["model"], r["output"])
        if k not in best_rows or r["stats"]["median_ms"] < best_rows[k]["stats"]["median_ms"]:
            best_rows[k] = r
    for (model, output), r in best_rows.items():
        s = r["stats"]
        L.append(f"| {model} | {output} | {r['precision']} {r['mode']} | " + " | ".join(
            f"{s[k]:.3f}" for k in ("min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"))
            + f" | {s['cv']:.1%} | {s['runs']} |")
    host = [r for r in sec.get("rows", []) if r.get("kind") == "host" and r.get("bench")]
    if host:
        L += ["", "Host latency (numpy in, numpy out: H2D + compute + D2H + sync; `edgesr bench -b torch-cuda "
              "[--cuda-graph]`, PyTorch's default fp32 settings), median ms:", "",
              "| model | output | mode | host | GPU compute | H2D | D2H |", "|---|---|---|---|---|---|---|"]
        for r in host:
            b, g = r["bench"], r["bench"].get("gpu", {})
            L.append(f"| {r['model']} | {r['output']} | {r['mode']} | {_ms(b['median_ms'])} | "
                     f"{_ms(g.get('compute', {}).get('median_ms'))} | {_ms(g.get('h2d', {}).get('median_ms'))} | "
                     f"{_ms(g.get('d2h', {}).get('median_ms'))} |")
    if record.get("plot"):
        L += ["", f"![GPU latency]({record['plot']})"]
    return L


def _md_ntire(record: dict) -> list[str]:
    sec = _secs(record, "ntire")
    info = sec.get("info", {}).get("protocol", {})
    rows = [r for r in sec.get("rows", []) if "mean_all_ms" in r]
    L = []
    if info:
        L.append(f"Protocol ({info.get('images')} images of {info.get('lr_hw', ['?', '?'])[1]}x"
                 f"{info.get('lr_hw', ['?', '?'])[0]} LR, x4): {info.get('what')}.")
    if not rows:
        L.append(f"Not measured ({sec.get('status', 'not run')}).")
    else:
        gpu = next((r["challenge"]["gpu"] for r in rows if r.get("challenge")), None)
        L += ["", f"Challenge numbers come from the challenge's results.json, timed by its organisers on "
              f"{gpu or 'another GPU'} over the DIV2K_LSDIR valid set (mixed image sizes): a different GPU and "
              "different images, so compare orders of magnitude, not digits. 'DIV2K median' is the median of the "
              "100 DIV2K images (LR mostly 510x339), the closest match to the size timed here.", "",
              "| model | edgesr loader | mean (all) ms | mean (excl. first) | median | p90 | first | peak MiB | "
              "challenge valid avg ms | challenge DIV2K median ms | challenge valid MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        wrong = {r["model"] for r in _secs(record, "parity").get("rows", []) if "precisions" in r
                 and _num((r["precisions"].get("fp32") or {}).get("psnr_y_cpu")) < IMPLAUSIBLE_PSNR_Y}
        for r in rows:
            c = r.get("challenge") or {}
            s = r["stats_excluding_first"]
            flag = " **loaded wrongly (see parity)**" if r["model"] in wrong else ""
            L.append(f"| `{r['model']}` ({r['variant'] or r['arch']}){flag} | {r['loader']} | {r['mean_all_ms']:.2f} | "
                     f"{r['mean_excluding_first_ms']:.2f} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | "
                     f"{r['first_ms']:.1f} | {_g(r.get('peak_memory_mib'), 1)} | "
                     f"{_g(c.get('valid_ave_runtime_ms'))} | {_g(c.get('valid_div2k_median_ms'))} | "
                     f"{_g(c.get('valid_memory_mib'), 1)} |")
        if not any(r.get("challenge") for r in rows):
            L.append("- none of these teams has a runtime in the shared results files")
        else:
            L.append("- teams without a runtime in the shared results files show '-'")
    nl = info.get("not_loadable") or []
    if nl:
        L.append(f"- {len(nl)} NTIRE zoo files edgesr cannot load yet (registry detection only; loading a team's own "
                 "model code is a loader to add in NTIRE_LOADERS): " + ", ".join(
                     Path(n["path"]).name for n in nl))
    return L


def _md_trt(record: dict) -> list[str]:
    sec = _secs(record, "trt")
    L = [sec.get("info", {}).get("note") or record.get("trt_note", TRT_NOTE), ""]
    for r in sec.get("rows", []):
        if r.get("runs_here"):
            L.append(f"- {r['backend']} {r.get('version')}: ran on {r['gpu']['name']} (rows in gpu.json)")
        else:
            L.append(f"- {r['backend']}: {'installed ' + str(r.get('version')) if r.get('installed') else 'not installed'}"
                     f"; not run here: {r.get('reason')}")
    return L


def _md_tests(record: dict) -> list[str]:
    rows = _secs(record, "tests").get("rows", [])
    if not rows:
        return [f"Not run ({_secs(record, 'tests').get('status', 'not run')})."]
    r = rows[0]
    L = [f"`python -m {r['command']}`: {r['counts']} (exit code {r['returncode']}, {r['seconds']} s)."]
    L += [f"- {ln}" for ln in r.get("failed", [])]
    L += [f"- {ln}" for ln in r.get("skipped", [])[:6]]
    return L


def _md_compile(record: dict) -> list[str]:
    sec = _secs(record, "compile")
    rows = [r for r in sec.get("rows", []) if "stats" in r]
    L = ["`torch.compile(module, mode=\"max-autotune\", dynamic=False)`, one compile per model, output and "
         "precision, most wanted first (1080p; ETDS-M, SPAN, RLFN, then the other ETDS sizes), as many as fit the "
         "time box; 'compile s' is the first call (compilation and autotuning). Timed like the latency section, "
         "next to eager in the same precision measured in the same process."]
    if not rows:
        L.append(f"Nothing compiled ({sec.get('status', 'not run')}).")
        return L
    L += ["", "| model | output | precision | compile s | median ms | eager median ms | speedup | Mpix/s | "
          "max abs vs fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['output']} | {r['precision']} | {r['compile_s']} | "
                 f"{r['stats']['median_ms']:.3f} | {r['eager_stats']['median_ms']:.3f} | "
                 f"{_g(r.get('speedup_vs_eager'))}x | {r['mpix_per_s']:.1f} | {_e(r.get('max_abs_vs_fp32'))} |")
    return L


def summary_lines(record: dict) -> str:
    """A short table for the end of the console output (the device tool keeps the output's tail)."""
    L = ["", "section    status       took s  items  cut  errors"]
    for name, sec in record["sections"].items():
        L.append(f"{name:<10} {sec.get('status', ''):<12} {str(sec.get('seconds', '-')):>6}  "
                 f"{len(sec.get('done', [])):>2}/{len(sec.get('planned', [])):<3} {len(sec.get('cut', [])):>3}  "
                 f"{len(sec.get('errors', [])):>3}")
    par = [r for r in _secs(record, "parity").get("rows", []) if "precisions" in r]
    for label in PARITY_PRECISIONS:
        got = [r["precisions"][label] for r in par if label in r["precisions"]]
        if got:
            L.append(f"parity {label}: {sum(v['ok'] for v in got)}/{len(got)} within tolerance")
    lat = [r for r in _secs(record, "latency").get("rows", []) if "stats" in r]
    for model in dict.fromkeys(r["model"] for r in lat):
        for out in dict.fromkeys(r["output"] for r in lat if r["model"] == model):
            rs = [r for r in lat if r["model"] == model and r["output"] == out]
            b = min(rs, key=lambda r: r["stats"]["median_ms"])
            e32 = next((r for r in rs if r["precision"] == "fp32" and r["mode"] == "eager"), None)
            L.append(f"latency {model} @ {out}: fp32 eager {e32['stats']['median_ms']:.3f} ms; best "
                     f"{b['precision']} {b['mode']} {b['stats']['median_ms']:.3f} ms ({b['mpix_per_s']:.0f} Mpix/s)"
                     if e32 else f"latency {model} @ {out}: best {b['stats']['median_ms']:.3f} ms")
    for r in _secs(record, "ntire").get("rows", []):
        if "mean_all_ms" in r:
            L.append(f"ntire {Path(r['model']).name}: mean {r['mean_all_ms']:.2f} ms, median "
                     f"{r['stats_excluding_first']['median_ms']:.2f} ms")
    for r in _secs(record, "compile").get("rows", []):
        if "stats" in r:
            L.append(f"compile {r['model']} @ {r['output']} {r['precision']}: {r['stats']['median_ms']:.3f} ms "
                     f"({_g(r.get('speedup_vs_eager'))}x eager, compiled in {r['compile_s']} s)")
    return "\n".join(L)


def plot_latency(record: dict, path: Path) -> str | None:
    """Throughput (output Mpix/s, log scale) per model and output size: fp32 eager vs the best fp16 mode."""
    rows = [r for r in _secs(record, "latency").get("rows", []) if "stats" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = list(dict.fromkeys(r["output"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(models):
        c = colors[i % len(colors)]
        for prec, style, marker, mode_filter in (("fp32", "--", "s", {"eager"}), ("fp16", "-", "o", set(MODES))):
            xs, ys = [], []
            for j, out in enumerate(outputs):
                rs = [r for r in rows if r["model"] == model and r["output"] == out and r["precision"] == prec
                      and r["mode"] in mode_filter]
                if rs:
                    xs.append(j)
                    ys.append(max(r["mpix_per_s"] for r in rs))
            if xs:
                ax.plot(xs, ys, style, marker=marker, color=c,
                        label=f"{model} {'fp32 eager' if prec == 'fp32' else 'fp16 fastest mode'}")
    ax.set_xticks(range(len(outputs)), outputs)
    ax.set_yscale("log")
    ax.set_xlabel("output size (x4 from LR = output / 4)")
    ax.set_ylabel("output megapixels per second (median)")
    env = _secs(record, "env").get("info", {}).get("torch", {})
    where = env.get("gpu") or "CPU dry run: not GPU numbers"
    ax.set_title(f"edgesr models on {where}, PyTorch {env.get('torch', '')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# =========================================================================== main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--prepare", action="store_true", help="copy what the run needs from --shared into --payload")
    ap.add_argument("--shared", default=str(DEFAULT_SHARED), help="the shared data folder (default ../shared)")
    ap.add_argument("--payload", default=str(DEFAULT_PAYLOAD), help="the prepared payload (default %(default)s)")
    ap.add_argument("--out", help="folder for gpu.json, gpu.md and gpu_latency.png (required for a run)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the same code paths, no GPU numbers")
    ap.add_argument("--budget", type=float, help=f"seconds for all sections (default {GPU_BUDGET_S:.0f}; "
                                                   f"dry run {DRY_BUDGET_S:.0f})")
    ap.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (env always runs)")
    ap.add_argument("--render-only", action="store_true", help="rewrite gpu.md and the plot from --out's gpu.json")
    ap.add_argument("--grace", type=float, help=argparse.SUPPRESS)  # seconds past a box before the kill
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--events", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.prepare:
        m = prepare(Path(args.shared), Path(args.payload))
        print(f"gpu_check: payload {args.payload}: {len(m['files'])} files, {m['total_bytes'] / 2**20:.1f} MiB; "
              f"{len(m['models'])} ETDS-repo checkpoints, {len(m['ntire']['loadable'])} NTIRE zoo models edgesr "
              f"loads ({len(m['ntire']['not_loadable'])} it cannot yet)")
        if not args.out:
            return 0
    if not args.out:
        ap.error("--out DIR is required (e.g. --out $OUT on the GPU machine)")
    if args.render_only:
        out = Path(args.out)
        record = json.loads((out / "gpu.json").read_text())
        record["plot"] = plot_latency(record, out / "gpu_latency.png")
        atomic_write_text(out / "gpu.md", render_markdown(record))
        print(f"gpu_check: rewrote {out / 'gpu.md'}" + (f" and {out / record['plot']}" if record["plot"] else ""))
        return 0
    run = Run(args)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run.run()
    except KeyboardInterrupt:
        run.interrupted()
        print("gpu_check: interrupted; partial results kept in " + str(run.out), file=sys.stderr)
        return 130
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
