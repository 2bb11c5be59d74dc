"""Read .pth/.pt/.safetensors checkpoints safely into a flat state_dict.

Checkpoints come from the internet, so a file is treated as hostile until proven a
plain dict of tensors:

* The format is sniffed from the file's first bytes, not trusted from its suffix
  (safetensors, PyTorch zip, legacy pickle); common wrong files (ONNX, images, HTML
  pages, Git LFS pointers, archives) get a message that says what they are.
* safetensors files are read natively (no pickle involved).
* Pickles are opened only with ``torch.load(weights_only=True)``: a pickle that would
  import or call anything beyond tensors and plain containers is refused
  (:class:`UnsafeCheckpoint`), never executed; the message names the global it asked for
  and suggests safetensors.
* Every other failure (truncated, random bytes, out of memory) is a one-line
  :class:`CheckpointError`; weights that are not finite or not floating point are an
  :class:`InvalidWeights`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, InvalidWeights, UnsafeCheckpoint

StateDict = dict[str, torch.Tensor]

# Wrapper keys used by common training frameworks, most preferred first: EMA weights
# before raw ones (BasicSR: params_ema / params; timm: state_dict_ema; Lightning:
# state_dict; ESRGAN-style GAN trainers: net_g / netG / generator).
WRAPPER_KEYS = ("params_ema", "state_dict_ema", "model_ema", "ema", "params", "state_dict",
                "model_state_dict", "model", "net_g", "netG", "generator", "net", "network",
                "module", "g", "weights")
# Prefixes stripped when *every* key has them (DataParallel, torch.compile, Lightning).
PREFIXES = ("module.", "_orig_mod.", "model.", "net_g.", "netG.", "generator.")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Floating dtypes a weight may have (converted to the model's dtype when loaded).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# BatchNorm's num_batches_tracked is an integer counter, the one non-float entry allowed.
_COUNTER_DTYPES = (torch.int64, torch.int32)
_MAX_UNWRAP_DEPTH = 4

SAFETENSORS_HINT = ("re-save the weights as safetensors in a trusted environment: "
                    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def load_state_dict(path: str | Path, check_finite: bool = True, key: str | None = None) -> StateDict:
    """Load a checkpoint file into ``{name: float tensor}``, unwrapped and prefix-stripped.

    ``key``: the wrapper entry to take (e.g. ``params`` where a BasicSR file also holds
    ``params_ema`` and the author's loader used ``params``); None picks by WRAPPER_KEYS."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, expected a file: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    kind = sniff_format(head, size, path.suffix)
    if kind == "safetensors":
        raw = _load_safetensors(path)
    elif kind in ("zip", "pickle"):
        raw = _load_pickle(path, kind)
    else:
        raise CheckpointError(f"{path}: {kind}")
    if key is not None:
        raw = _select_key(raw, key, path)
    sd = unwrap_state_dict(raw, source=path)
    validate_tensors(sd, source=path, check_finite=check_finite)
    return sd


def sniff_format(head: bytes, size: int, suffix: str = "") -> str:
    """'safetensors' | 'zip' | 'pickle', or a sentence saying what the file is instead."""
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8:
            return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"  # torch.save's default format (a zip holding data.pkl + storages)
    if head[:1] == b"\x80" and len(head) > 1 and 0 < head[1] <= 5:
        return "pickle"  # pickle protocol 2+ (torch's legacy format starts this way too)
    text = head.lstrip()[:32].lower()
    if head.startswith(b"version https://git-lfs"):
        return "this is a Git LFS pointer file, not the weights (run `git lfs pull` to fetch them)"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "this is an HTML/XML page, not a checkpoint (a download link that returned a web page?)"
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                        (b"\x1f\x8b", "a gzip archive (extract it first)"),
                        (b"BZh", "a bzip2 archive (extract it first)"),
                        (b"\xfd7zXZ", "an xz archive (extract it first)"),
                        (b"7z\xbc\xaf", "a 7-Zip archive (extract it first)"),
                        (b"\x89HDF", "an HDF5 (Keras/TensorFlow) file; edgesr reads PyTorch and safetensors"),
                        (b"\x7fELF", "an executable")):
        if head.startswith(magic):
            return f"this is {what}, not a checkpoint"
    if suffix.lower() in (".onnx", ".ort"):
        return ("this is an ONNX model, not a PyTorch checkpoint; `edgesr eval MODEL.onnx --backend ort` runs "
                "it, `edgesr convert` needs the .pth/.safetensors it was exported from")
    if suffix.lower() in SAFETENSORS_SUFFIXES:
        return "not a safetensors file (its header is not a length followed by JSON); corrupt or truncated?"
    if text.startswith((b"{", b"[")):
        return "this is a JSON/text file, not a checkpoint"
    # Protocol 0/1 pickles have no marker; let the (safe) unpickler decide.
    return "pickle"


def _load_safetensors(path: Path) -> Mapping:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except MemoryError:
        raise CheckpointError(f"out of memory reading {path}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"not a readable safetensors file (corrupt or truncated?): {path} "
                              f"({_first_line(e)})") from None


_GLOBAL_RE = re.compile(r"unsupported (?:global:\s*)?GLOBAL\s+([^\s`'\"]+)", re.IGNORECASE)
_CODE_MODULES = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket",
                 "runpy", "importlib", "pty", "code", "webbrowser", "ctypes", "pickle", "marshal", "types")
_CODE_NAMES = ("eval", "exec", "compile", "open", "getattr", "setattr", "__import__", "system", "popen",
               "apply", "input", "breakpoint")


def _load_pickle(path: Path, kind: str) -> object:
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            # torch.load would hand a path with this suffix to safetensors: the content decides
            # the format, never the suffix, so give it an open file instead.
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"out of memory reading {path} (it declares tensors larger than memory)") from None
    except Exception as e:  # noqa: BLE001 - weights_only never runs code; every failure is a bad file
        msg = str(e)
        name = _unsafe_global(msg)
        if name is not None:
            raise UnsafeCheckpoint(_unsafe_message(path, name)) from None
        if "Unsupported operand" in msg or "invalid load key" in msg:
            raise CheckpointError(f"not a PyTorch checkpoint (neither safetensors, zip nor pickle data): "
                                  f"{path}") from None
        what = "zip archive" if kind == "zip" else "pickle"
        raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt or truncated {what}?): {path} "
                              f"({_reason(e)})") from None


def _unsafe_global(msg: str) -> str | None:
    """The module.name a refused pickle asked for, or None if the failure is not that."""
    if "Weights only load failed" not in msg:
        return None
    m = _GLOBAL_RE.search(msg)
    if not m:
        return None
    name = m.group(1).rstrip(",")
    parts = name.split(".")
    # A truncated stream can yield a partial name ("tor."); only well-formed names count.
    if not name or not all(p.isidentifier() for p in parts):
        return None
    return name


def _unsafe_message(path: Path, name: str) -> str:
    parts = name.split(".")
    module, attr = (".".join(parts[:-1]) or "builtins"), parts[-1]
    if module.split(".")[0] in _CODE_MODULES or attr in _CODE_NAMES:
        what = f"unpickling it would run code (it calls {name})"
    else:
        what = (f"unpickling it would import and run code (it references {name}: a pickled Python object, "
                f"not a plain state_dict of tensors)")
    return (f"refusing to load {path}: {what}; edgesr never executes checkpoint code. If you trust the file, "
            f"{SAFETENSORS_HINT} and convert that")


def unwrap_state_dict(obj: object, source: object = "checkpoint") -> StateDict:
    """Find the tensor dict inside common wrappers and strip DataParallel-style prefixes."""
    path: list[str] = []
    for _ in range(_MAX_UNWRAP_DEPTH):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping) and obj[k]), None)
        if key is None:
            empty = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if empty is not None:
                raise CheckpointError(f"{source}: '{'/'.join(path + [empty])}' holds an empty state_dict "
                                      f"(no tensors)")
            break
        path.append(key)
        obj = obj[key]
    where = f" (inside {'/'.join(path)})" if path else ""
    if not isinstance(obj, Mapping) or not obj:
        found = type(obj).__name__ + (" (empty)" if isinstance(obj, Mapping) else "")
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors){where}, found {found}")
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(
            f"{source}: expected a state_dict (a dict of tensors){where}, but these entries are not tensors: "
            f"{', '.join(non_tensor[:8])}" + (" ..." if len(non_tensor) > 8 else "")
            + f" (wrapper keys understood: {', '.join(WRAPPER_KEYS[:8])}, ...)")
    sd = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in sd):
                stripped = {k[len(prefix):]: v for k, v in sd.items()}
                if len(stripped) == len(sd):
                    sd, changed = stripped, True
    return sd


def _select_key(obj: object, key: str, source: object) -> object:
    """``obj[key]`` for an explicitly named wrapper key ('a/b' descends)."""
    for part in key.split("/"):
        if not isinstance(obj, Mapping) or part not in obj:
            have = ", ".join(sorted(str(k) for k in obj)[:10]) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source}: no entry {part!r} (state_dict key {key!r}); it holds: {have}")
        obj = obj[part]
    return obj


def validate_tensors(sd: StateDict, source: object = "checkpoint", check_finite: bool = True) -> None:
    """Refuse weights that cannot be loaded faithfully: non-float dtypes (integer, bool,
    complex, float8, quantized), sparse / non-CPU-strided layouts, NaN/Inf values."""
    bad_layout = [f"{k} ({v.layout})" for k, v in sd.items() if v.layout != torch.strided]
    if bad_layout:
        raise InvalidWeights(f"{source}: sparse or non-dense tensors are not weights: {', '.join(bad_layout[:8])}")
    bad_dtype = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in sd.items()
                 if v.dtype not in FLOAT_DTYPES and not (k.endswith("num_batches_tracked") and v.dtype in _COUNTER_DTYPES)]
    if bad_dtype:
        raise InvalidWeights(f"{source}: weights must be float32/float16/bfloat16/float64; found "
                             f"{', '.join(bad_dtype[:8])}" + (" ..." if len(bad_dtype) > 8 else ""))
    if check_finite:
        bad = [k for k, v in sd.items() if v.dtype in FLOAT_DTYPES and v.numel() and not bool(torch.isfinite(v).all())]
        if bad:
            raise InvalidWeights(f"{source}: NaN/Inf values in {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else "")
                                 + " (a diverged or corrupted training run?)")


def _reason(e: BaseException) -> str:
    """First informative line of a torch.load error (its banners are dropped)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(("Weights only load failed", "(1)", "(2)", "Check the documentation")):
            ln = ln.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            ln = ln[:200].rstrip(".")
            return ln if len(ln) > 12 else f"{type(e).__name__}: {ln}"
    return type(e).__name__


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
