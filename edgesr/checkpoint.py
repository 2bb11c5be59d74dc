"""Read .pth/.pt/.safetensors checkpoints safely into a flat state_dict.

Pickles are opened with ``weights_only=True``: a file that would run code on load
is refused, never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, InvalidWeights, UnsafeCheckpoint

StateDict = dict[str, torch.Tensor]

# Wrapper keys used by common training frameworks (BasicSR: params / params_ema).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "model_state_dict", "net", "generator", "g")
PREFIXES = ("module.", "model.", "_orig_mod.")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def load_state_dict(path: str | Path, check_finite: bool = True) -> StateDict:
    """Load a checkpoint file into ``{name: float tensor}``, unwrapped and prefix-stripped."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, expected a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        raw = _load_safetensors(path)
    else:
        raw = _load_pickle(path)
    sd = unwrap_state_dict(raw, source=path)
    validate_tensors(sd, source=path, check_finite=check_finite)
    return sd


def _load_safetensors(path: Path) -> Mapping:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"not a readable safetensors file: {path} ({_first_line(e)})") from None


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "Unsupported operand" in msg:
            raise UnsafeCheckpoint(
                f"refusing to load {path}: it contains pickled code or objects that a plain "
                f"state_dict does not need ({_unsafe_reason(msg)}). Re-save it as safetensors "
                f"(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) or as a "
                f"plain state_dict of tensors."
            ) from None
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt or truncated?): {path} ({_first_line(e)})") from None


def unwrap_state_dict(obj: object, source: object = "checkpoint") -> StateDict:
    """Find the tensor dict inside common wrappers and strip DataParallel-style prefixes."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), found {type(obj).__name__}"
                              + (" (empty)" if isinstance(obj, Mapping) else ""))
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(f"{source}: state_dict has non-tensor entries: {', '.join(non_tensor[:8])}"
                              + (" ..." if len(non_tensor) > 8 else ""))
    sd = {str(k): v for k, v in obj.items()}
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def validate_tensors(sd: StateDict, source: object = "checkpoint", check_finite: bool = True) -> None:
    bad_dtype = [f"{k} ({v.dtype})" for k, v in sd.items()
                 if not (v.is_floating_point() or k.endswith("num_batches_tracked"))]
    if bad_dtype:
        raise InvalidWeights(f"{source}: non-floating-point weights: {', '.join(bad_dtype[:8])}")
    if check_finite:
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise InvalidWeights(f"{source}: NaN/Inf values in {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else ""))


def _unsafe_reason(msg: str) -> str:
    for line in msg.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip().lstrip("WeightsUnpickler error: ").strip()
    return "weights_only=True rejected it"


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
