"""PyTorch -> ncnn (.param text, .bin bytes) through pnnx, in memory; no checks, no files written.

Shared by the fp32/fp16 exporter (`edgesr.export.ncnn`) and the INT8 rewriter
(`edgesr.export.ncnn_int8`), which converts the prepared fp32 model before quantizing it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import BackendUnavailable, ExportError
from ..spec import Spec
from .mobile import converter_rewrites, fixed_shape_form, quiet_native
from .ncnn_format import _layer_types, declare_input_shape

EXTRA = "pip install 'edgesr[ncnn]'"


TRACE_SIZES = ((64, 64), (48, 80))  # pnnx traces twice to learn which dims are dynamic


def _require() -> None:
    try:
        with quiet_native():
            import ncnn  # noqa: F401
            import pnnx  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"ncnn export needs pnnx and ncnn ({e.name or e}): {EXTRA}") from None


def _fit(hw: Sequence[int], spec: Spec) -> tuple[int, int]:
    m = max(1, spec.size_multiple)
    h, w = (max(spec.min_size, -(-int(v) // m) * m) for v in hw)
    return h, w


def convert_bytes(module, spec: Spec, *, fp16: bool = False, hw: Sequence[int] | None = None) -> tuple[str, bytes]:
    """(.param text, .bin bytes) of `module` through pnnx: dynamic H/W (traced at two sizes), or
    for `hw` one fixed size (the fixed-shape form traced once, with the fixed-size rewrites; the
    Input layer then declares its W, H, C, which :class:`edgesr.backends.ncnn_runner.NcnnRunner`
    enforces: ncnn layers would otherwise run other sizes with sizes frozen at trace time)."""
    import torch

    _require()
    import pnnx

    module = module.eval().float().cpu()
    gen = torch.Generator().manual_seed(0)
    if hw is None:
        traces = [(torch.rand(1, spec.in_channels, *_fit(s, spec), generator=gen),) for s in TRACE_SIZES]
    else:
        module = fixed_shape_form(module)
        traces = [(torch.rand(1, spec.in_channels, int(hw[0]), int(hw[1]), generator=gen),)]
    with tempfile.TemporaryDirectory(prefix="edgesr-pnnx-") as tmp:
        pt = Path(tmp) / "model.pt"
        try:
            with quiet_native(), converter_rewrites(fixed_size=hw is not None), torch.no_grad():
                pnnx.export(module, str(pt), *traces, fp16=fp16)
        except Exception as e:  # noqa: BLE001 - tracing and pnnx raise many types
            raise ExportError(f"pnnx (PyTorch -> ncnn) failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
        param, weights = pt.with_suffix(".ncnn.param"), pt.with_suffix(".ncnn.bin")
        if not param.is_file() or not weights.is_file():
            raise ExportError("pnnx wrote no ncnn model (an operator it cannot convert?)")
        text = param.read_text()
        bad = [t for t in _layer_types(text) if "." in t]  # pnnx leaves unconvertible ops as torch.xxx layers
        if bad:
            raise ExportError(f"ncnn has no layer for {', '.join(sorted(set(bad)))} (pnnx left them unconverted)")
        if hw is not None:
            text = declare_input_shape(text, (int(hw[0]), int(hw[1])), spec.in_channels)
        return text, weights.read_bytes()
