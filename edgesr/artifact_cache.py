"""Artifacts derived from a model, made once and cached in a work folder: the fp32 ONNX export and
the INT8 graph, each keyed by what determines its bytes (module structure + weights or the fp32
file, the spec or quantization config, edgesr's exporter / quantizer source and library versions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .machine import package_version


def int8_available() -> tuple[bool, str]:
    """(importable, note): whether edgesr.quant (INT8) can be used in this build."""
    try:
        from .quant import QuantConfig, quantize_model  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a half-landed package may raise anything
        return False, f"INT8 not available: edgesr.quant cannot be imported ({type(e).__name__}: {e})"
    return True, "edgesr.quant"


def onnx_is_quantized(path: Path) -> bool:
    import onnx

    m = onnx.load_model(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
               for n in m.graph.node)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _module_digest(module) -> str:
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _code_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cached_onnx_export(module, spec, workdir: Path, key_hint: str = "",
                       static_hw: tuple[int, int] | None = None) -> Path:
    """ONNX export (edgesr.export.onnx.export_onnx, defaults: dynamic N/H/W, simplified, checked)
    cached by module structure + weights, spec, shape mode and the versions of edgesr's
    exporter, torch and onnx. `static_hw`: a fixed (1, C, H, W) graph instead."""
    from .export.onnx import export_onnx

    key = _digest(_module_digest(module), spec.to_dict(), _code_digest(Path(__file__).parent / "export"),
                  package_version("torch"), package_version("onnx"), package_version("onnxslim"), static_hw)
    stem = Path(key_hint).stem or "model"
    shape = f".static{static_hw[0]}x{static_hw[1]}" if static_hw else ""
    out = Path(workdir) / f"{stem}.{spec.form}{shape}.{key}.onnx"
    if not out.is_file():
        if static_hw:
            export_onnx(module, spec, out, dynamic=False, sample_shape=(1, spec.in_channels, *static_hw))
        else:
            export_onnx(module, spec, out)
    return out


DEFAULT_INT8: dict[str, Any] = {"progress": False}  # otherwise QuantConfig's defaults = `edgesr convert --int8` (0.1 dB budget)


def cached_int8(fp32: Path, spec, workdir: Path, profile: str = "cpu", config: Any = None) -> Path:
    """INT8 QDQ model from edgesr.quant.quantize_model, cached by the fp32 file, the config and
    the quantizer's source code. The QuantResult is kept beside it as JSON."""
    from .fsutil import atomic_write_json, sha256_file
    from .quant import QuantConfig, quantize_model

    cfg = config if config is not None else QuantConfig(profile=profile, **DEFAULT_INT8)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg)
    key = _digest(sha256_file(fp32), cfg_dict, _code_digest(Path(__file__).parent / "quant"),
                  package_version("onnxruntime"))
    out = Path(workdir) / f"{fp32.stem}.int8-{profile}.{key}.onnx"
    if not out.is_file():
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime.quantization's "consider pre-processing" notices
        try:
            res = quantize_model(fp32, out, spec, cfg)
        finally:
            root.setLevel(level)
        d = res.to_dict() if hasattr(res, "to_dict") else {}
        d.pop("sensitivity", None)
        atomic_write_json(out.with_suffix(".json"), d)
    return out


def int8_record(path: Path) -> dict:
    """The QuantResult stored beside a cached INT8 model ({} if none)."""
    p = Path(path).with_suffix(".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
