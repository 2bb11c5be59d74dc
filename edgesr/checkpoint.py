"""Read .pth/.pt/.safetensors checkpoints safely into a flat state_dict.

Checkpoints come from the internet, so a file is treated as hostile until proven a
plain dict of tensors:

* The format is sniffed from the file's first bytes, not trusted from its suffix
  (safetensors, PyTorch zip, legacy pickle); common wrong files (ONNX, images, HTML
  pages, Git LFS pointers, archives) get a message that says what they are.
* What a file declares is checked against :class:`edgesr.limits.CheckpointLimits` before
  anything is allocated: a safetensors header's tensor count, shapes and data spans; a
  zip's record count, sizes and inflation ratio (a zip bomb is refused before inflating);
  a pickle's storage and opcode counts. Peak memory follows the limits, not the file.
* safetensors files are read natively (no pickle involved).
* Pickles are scanned statically first (:mod:`edgesr.pickle_scan`, nothing executed): one
  that would import or call anything beyond tensors and plain containers is refused as
  code-running (:class:`UnsafeCheckpoint`) whatever opcodes or protocol it uses, and one
  PyTorch's safe loader cannot read (pickle protocol 4/5 opcodes) gets that reason. Only
  then is it opened with ``torch.load(weights_only=True)``, its warnings silenced.
* Every other failure (truncated, random bytes, out of memory) is a one-line
  :class:`CheckpointError`; weights that are not finite or not floating point are an
  :class:`InvalidWeights`. Names in messages are quoted (:func:`edgesr.errors.quoted`).
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .errors import CheckpointError, InvalidWeights, LimitExceeded, UnsafeCheckpoint, clipped, one_line, quoted
from .limits import MAX_INFLATION_RATIO, CheckpointLimits, MiB, load_json_bounded

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
# isfinite() is checked in slices of this many elements, so it never allocates a mask as
# large as the biggest tensor.
_FINITE_CHUNK = 1 << 22

SAFETENSORS_HINT = ("re-save the weights as safetensors in a trusted environment: "
                    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def load_state_dict(path: str | Path, check_finite: bool = True, key: str | None = None,
                    limits: CheckpointLimits | None = None,
                    integer_buffer: Callable[[str], bool] | None = None) -> StateDict:
    """Load a checkpoint file into ``{name: float tensor}``, unwrapped and prefix-stripped.

    ``key``: the wrapper entry to take (e.g. ``params`` where a BasicSR file also holds
    ``params_ema`` and the author's loader used ``params``); None picks by WRAPPER_KEYS.
    `limits` (default: :meth:`CheckpointLimits.from_env`) bound what the file may declare
    (tensor bytes, tensor count); they are checked from headers before anything is allocated.
    The file is opened once; every check and the load read that one open file.
    ``integer_buffer(name)``: True where the target module has an integer buffer of that name
    (user code: a Swin-style ``relative_position_index`` saved with the weights), which may then
    be an integer tensor.
    """
    path = Path(path)
    limits = limits or CheckpointLimits.from_env()
    name = quoted(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {name}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, expected a file: {name}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a regular file: {name}")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {name}: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        raw = _load_from(f, size, path.suffix, name, limits)
    if key is not None:
        raw = _select_key(raw, key, name)
    sd = unwrap_state_dict(raw, source=name)
    validate_tensors(sd, source=name, check_finite=check_finite, integer_buffer=integer_buffer)
    return sd


def load_state_dict_bytes(data: bytes, name: str, check_finite: bool = True,
                          limits: CheckpointLimits | None = None) -> StateDict:
    """:func:`load_state_dict` of a checkpoint already in memory (e.g. a bundle artifact whose
    sha256 was checked on these very bytes); `name` is what messages call it."""
    limits = limits or CheckpointLimits.from_env()
    raw = _load_from(io.BytesIO(data), len(data), Path(name).suffix, quoted(name), limits)
    sd = unwrap_state_dict(raw, source=quoted(name))
    validate_tensors(sd, source=quoted(name), check_finite=check_finite)
    return sd


def _load_from(f: BinaryIO, size: int, suffix: str, name: str, limits: CheckpointLimits) -> object:
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {name}")
    try:
        head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {name}: {e.strerror or e}") from None
    kind = sniff_format(head, size, suffix)
    if kind == "safetensors":
        return _load_safetensors(f, size, name, limits)
    if kind in ("zip", "pickle"):
        return _load_pickle(f, size, kind, name, limits)
    raise CheckpointError(f"{name}: {kind}")


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


# ---- safetensors ------------------------------------------------------------------------------

# safetensors dtype -> bytes per element (other dtypes: the data_offsets span decides)
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}


def _load_safetensors(f: BinaryIO, size: int, name: str, limits: CheckpointLimits) -> Mapping:
    """Check the header's declarations against `limits` and the file, then load natively."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    _check_safetensors_header(f, size, name, limits)
    try:
        f.seek(0)
        return load(f.read())
    except MemoryError:
        raise CheckpointError(f"out of memory reading {name}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"not a readable safetensors file (corrupt or truncated?): {name} "
                              f"({one_line(_first_line(e))})") from None


def _check_safetensors_header(f: BinaryIO, size: int, name: str, limits: CheckpointLimits) -> None:
    """Tensor count, declared shapes and data spans, from the JSON header alone."""
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    if n > limits.max_header_bytes:
        raise LimitExceeded(f"{name}: its safetensors header is {n} bytes, more than a checkpoint of at most "
                            f"{limits.max_tensors} tensors needs ({limits.tensors_hint()})")
    try:
        header = load_json_bounded(f.read(n), "its safetensors header", max_depth=4)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"not a readable safetensors file (corrupt header: {one_line(_first_line(e))}): "
                              f"{name}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"not a readable safetensors file (its header is not a JSON object): {name}")
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if len(entries) > limits.max_tensors:
        raise LimitExceeded(f"{name}: {len(entries)} tensors, more than the limit ({limits.tensors_hint()})")
    data_size = size - 8 - n
    total = 0
    for key, info in entries:
        bad = _bad_safetensors_entry(info, data_size)
        if bad:
            raise CheckpointError(f"not a readable safetensors file (tensor {quoted(key)}: {bad}): {name}")
        item = _ST_ITEMSIZE.get(info["dtype"])
        total += math.prod(info["shape"]) * item if item else info["data_offsets"][1] - info["data_offsets"][0]
    if total > limits.max_bytes:
        raise LimitExceeded(f"{name}: its tensors hold {total / MiB:.0f} MiB; {limits.bytes_hint()}")


def _bad_safetensors_entry(info: object, data_size: int) -> str | None:
    if not isinstance(info, dict):
        return "its entry is not an object"
    shape, offsets, dtype = info.get("shape"), info.get("data_offsets"), info.get("dtype")
    if not isinstance(dtype, str):
        return "no dtype"
    if not (isinstance(shape, list) and len(shape) <= 16
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        return "shape is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return "data_offsets is not [begin, end]"
    b, e = offsets
    if not 0 <= b <= e <= data_size:
        return f"data_offsets [{b}, {e}] lie outside the {data_size} data bytes; truncated?"
    item = _ST_ITEMSIZE.get(dtype)
    if item is not None and math.prod(shape) * item != e - b:
        return f"shape {shape} of {dtype} needs {math.prod(shape) * item} bytes, data_offsets span {e - b}"
    return None


# ---- pickles (torch zip / legacy / raw) -------------------------------------------------------


def _load_pickle(f: BinaryIO, size: int, kind: str, name: str, limits: CheckpointLimits) -> object:
    """torch.load(weights_only=True) after a static scan: refuses code-running pickles by
    name, pickles torch's safe loader cannot read by reason, and zip records / storage
    counts beyond `limits`, all before anything is unpickled or inflated."""
    _scan_before_load(f, size, kind, name, limits)
    f.seek(0)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols and more; edgesr's own line says what matters
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"out of memory reading {name} (it declares tensors larger than memory)") from None
    except Exception as e:  # noqa: BLE001 - weights_only never runs code; every failure is a bad file
        msg = str(e)
        unsafe = _unsafe_global(msg)
        if unsafe is not None:
            raise UnsafeCheckpoint(_unsafe_message(name, unsafe)) from None
        if "Unsupported operand" in msg or "invalid load key" in msg:
            raise CheckpointError(f"not a PyTorch checkpoint (neither safetensors, zip nor pickle data): "
                                  f"{name}") from None
        what = "zip archive" if kind == "zip" else "pickle"
        raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt or truncated {what}?): {name} "
                              f"({one_line(_reason(e))})") from None


def _scan_before_load(f: BinaryIO, size: int, kind: str, name: str, limits: CheckpointLimits) -> None:
    import zipfile
    import zlib

    from .pickle_scan import ScanLimit, scan_pickle, scan_pickles, torch_allowed_globals

    scan_kw: dict[str, Any] = {"max_ops": 64 * limits.max_tensors + 100_000,
                               "max_persistent_ids": limits.max_tensors}
    try:
        if kind == "zip":
            pkl = _check_zip(f, size, name, limits)
            if pkl is None:
                return  # data.pkl cannot be opened: torch.load's own failure names the problem
            try:
                with pkl:
                    scans = [scan_pickle(pkl, **scan_kw)]
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # bad CRC, bad deflate stream
                raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt zip archive): {name} "
                                      f"({one_line(_first_line(e))})") from None
        else:
            f.seek(0)
            scans = scan_pickles(f, max_pickles=5, **scan_kw)  # torch's legacy format: 5 pickles
    except ScanLimit as e:
        raise LimitExceeded(f"{name}: {e} ({limits.tensors_hint()})") from None
    allowed = torch_allowed_globals()
    unsafe = [g for s in scans for g in s.unsafe_globals(allowed)]
    if unsafe:
        raise UnsafeCheckpoint(_unsafe_message(name, unsafe[0]))
    unsupported = list(dict.fromkeys(op for s in scans if s.complete for op in s.unsupported_ops))
    if unsupported and all(s.complete for s in scans):
        proto = max(s.protocol for s in scans)
        raise CheckpointError(
            f"{name} was written with pickle protocol {proto} (opcodes {', '.join(unsupported[:4])}), which "
            "PyTorch's safe loader (weights_only=True) cannot read; re-save it with torch.save's default "
            f"protocol, or {SAFETENSORS_HINT}")


def _check_zip(f: BinaryIO, size: int, name: str, limits: CheckpointLimits):
    """Refuse zip archives declaring more records or bytes than `limits`, or a record that
    inflates far beyond its stored size (torch.save stores records uncompressed); refuse an
    archive that is not readable or holds no data.pkl; return the opened ``data.pkl`` record
    (None if that one record cannot be opened: torch.load then names the problem)."""
    import zipfile

    entries = _zip_entry_count(f, size)
    if entries is not None and entries > limits.max_tensors + 16:
        raise LimitExceeded(f"{name}: its zip archive has {entries} records, more than a checkpoint of at most "
                            f"{limits.max_tensors} tensors holds ({limits.tensors_hint()})")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, struct.error) as e:
        why = ("its end-of-archive record is missing: cut short?" if entries is None
               else one_line(_first_line(e)))
        raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt or truncated zip archive?): {name} "
                              f"({why})") from None
    total = 0
    for info in infos:
        total += info.file_size
        if info.compress_type != zipfile.ZIP_STORED and \
                info.file_size > MAX_INFLATION_RATIO * info.compress_size + MiB:
            raise LimitExceeded(
                f"{name}: zip record {quoted(info.filename)} inflates from {info.compress_size} to "
                f"{info.file_size} bytes (more than {MAX_INFLATION_RATIO}x: a zip bomb? torch.save stores "
                "records uncompressed)")
    if total > limits.max_bytes + 16 * MiB:
        raise LimitExceeded(f"{name}: its zip records hold {total / MiB:.0f} MiB; {limits.bytes_hint()}")
    pkl = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
    if not pkl:
        raise CheckpointError(f"not a PyTorch checkpoint (a zip archive without data.pkl, which torch.save "
                              f"writes): {name}")
    try:
        return zf.open(pkl[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        return None


def _zip_entry_count(f: BinaryIO, size: int) -> int | None:
    """Records declared by the zip's end-of-central-directory record (ZIP64 aware), read
    without parsing the central directory; None when there is none."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) - i < 22:
        return None
    count = int.from_bytes(tail[i + 10:i + 12], "little")
    if count == 0xFFFF and i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07":
        off = int.from_bytes(tail[i - 12:i - 4], "little")
        if 0 <= off <= size - 56:
            f.seek(off)
            rec = f.read(56)
            if rec[:4] == b"PK\x06\x06":
                count = int.from_bytes(rec[32:40], "little")
    return count


_GLOBAL_RE = re.compile(r"unsupported (?:global:\s*)?GLOBAL\s+([^\s`'\"]+)", re.IGNORECASE)


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


def _unsafe_message(name: str, global_name: str) -> str:
    from .pickle_scan import describe_global

    return (f"refusing to load {name}: {describe_global(one_line(global_name))}; edgesr never executes "
            f"checkpoint code. If you trust the file, {SAFETENSORS_HINT} and convert that")


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
    non_tensor = [one_line(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
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
            raise CheckpointError(f"{source}: no entry {quoted(part)} (state_dict key {quoted(key)}); it holds: "
                                  f"{one_line(have)}")
        obj = obj[part]
    return obj


def validate_tensors(sd: StateDict, source: object = "checkpoint", check_finite: bool = True,
                     integer_buffer: Callable[[str], bool] | None = None) -> None:
    """Refuse weights that cannot be loaded faithfully: non-float dtypes (integer, bool,
    complex, float8, quantized), sparse / non-CPU-strided layouts, NaN/Inf values."""
    bad_layout = [f"{one_line(k)} ({v.layout})" for k, v in sd.items() if v.layout != torch.strided]
    if bad_layout:
        raise InvalidWeights(f"{source}: sparse or non-dense tensors are not weights: {', '.join(bad_layout[:8])}")
    bad_dtype = [f"{one_line(k)} ({str(v.dtype).replace('torch.', '')})" for k, v in sd.items()
                 if v.dtype not in FLOAT_DTYPES and not (k.endswith("num_batches_tracked") and v.dtype in _COUNTER_DTYPES)
                 and not (integer_buffer is not None and v.dtype in _COUNTER_DTYPES and integer_buffer(k))]
    if bad_dtype:
        raise InvalidWeights(f"{source}: weights must be float32/float16/bfloat16/float64; found "
                             f"{', '.join(bad_dtype[:8])}" + (" ..." if len(bad_dtype) > 8 else ""))
    if check_finite:
        bad = [one_line(k) for k, v in sd.items() if v.dtype in FLOAT_DTYPES and not _all_finite(v)]
        if bad:
            raise InvalidWeights(f"{source}: NaN/Inf values in {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else "")
                                 + " (a diverged or corrupted training run?)")


def _all_finite(v: torch.Tensor) -> bool:
    flat = v.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + _FINITE_CHUNK]).all()) for i in range(0, flat.numel(), _FINITE_CHUNK))


def _reason(e: BaseException) -> str:
    """First informative line of a torch.load error (its banners are dropped)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(("Weights only load failed", "(1)", "(2)", "Check the documentation")):
            ln = ln.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            ln = clipped(ln).rstrip(".")
            return ln if len(ln) > 12 else f"{type(e).__name__}: {ln}"
    return type(e).__name__


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return clipped(s[0]) if s else type(e).__name__
