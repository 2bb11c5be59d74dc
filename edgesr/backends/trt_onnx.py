"""Read an ONNX model the way the TensorRT builder will see it, before building.

- which precision the graph carries (fp32 / fp16 tensors / INT8 Q/DQ) — TensorRT 11 and
  TensorRT-RTX take precision from the ONNX itself, so this is what the engine will be;
- the known ways a QDQ model is rejected (int32-quantized biases; uint8 or non-zero zero
  points), reported with the node names instead of a parser backtrace;
- a content hash that includes external-data files (engine-cache key).

Pure `onnx` + numpy: runs without TensorRT installed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesr.errors import EngineBuildError
from edgesr.fsutil import sha256_file

_BIAS_CONSUMERS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "QLinearConv": 8}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy-style name: "float32", "float16", "int8", ...
    shape: tuple[int | str | None, ...]  # int, symbolic name, or None (unknown)

    @property
    def dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OnnxInfo:
    path: Path
    sha256: str
    opset: int | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    precision: str  # "fp32" | "fp16" | "bf16" | "int8" | "int8+fp16" | ...
    quantize_nodes: int
    dequantize_nodes: int
    quant_dtypes: tuple[str, ...]  # dtypes of the quantized tensors, e.g. ("int8",)
    fp16_tensors: int
    bf16_tensors: int
    custom_domain_ops: tuple[str, ...] = field(default=())  # "domain::OpType (node)"
    problems: tuple[str, ...] = field(default=())  # known TensorRT blockers

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "opset": self.opset,
            "precision": self.precision,
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
            "quant_dtypes": list(self.quant_dtypes),
            "fp16_tensors": self.fp16_tensors,
            "bf16_tensors": self.bf16_tensors,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(vi: Any) -> TensorInfo:
    tt = vi.type.tensor_type
    dims: list[int | str | None] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorInfo(vi.name, _dtype_name(tt.elem_type), tuple(dims))


def onnx_sha256(path: str | os.PathLike) -> str:
    """sha256 of the model file, combined with its external-data files when it has any."""
    import onnx

    return _content_sha256(Path(path), onnx.load(str(path), load_external_data=False))


def _content_sha256(path: Path, model: Any) -> str:
    import onnx

    main = sha256_file(path)
    locations: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    if not locations:
        return main
    h = hashlib.sha256(main.encode())
    for loc in sorted(locations):
        f = path.parent / loc
        h.update(loc.encode())
        h.update(sha256_file(f).encode() if f.exists() else b"missing")
    return h.hexdigest()


def inspect_onnx(path: str | os.PathLike) -> OnnxInfo:
    """Parse the graph (without external weights) and report precision and blockers."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise EngineBuildError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError etc.
        raise EngineBuildError(f"cannot read ONNX model {path}: {e}") from e
    g = model.graph
    TP = onnx.TensorProto

    dtypes: dict[str, int] = {}
    consts: dict[str, Any] = {}  # name -> TensorProto (initializers and Constant outputs)
    for init in g.initializer:
        dtypes[init.name] = init.data_type
        consts[init.name] = init
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type:
            dtypes.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    dtypes[node.output[0]] = a.t.data_type
                    consts[node.output[0]] = a.t

    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, i))

    def label(node: Any) -> str:
        return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"

    def const_array(name: str) -> Any:
        t = consts.get(name)
        if t is None or t.data_location == TP.EXTERNAL:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:
            return None

    n_q = n_dq = 0
    quant_types: set[int] = set()
    int32_dq: list[str] = []
    asym: list[str] = []
    scalar_q: list[str] = []
    custom: list[str] = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            custom.append(f"{node.domain}::{node.op_type} ({label(node)})")
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in (
            "",
            "ai.onnx",
        ):
            continue
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "QuantizeLinear":
            n_q += 1
            qtype = dtypes.get(zp) if zp else None
            if qtype is None:
                for a in node.attribute:
                    if a.name == "output_dtype" and a.i:
                        qtype = a.i
            quant_types.add(qtype if qtype is not None else TP.INT8)  # TensorRT reads it as int8
        else:
            n_dq += 1
            qtype = dtypes.get(node.input[0]) or (dtypes.get(zp) if zp else None)
            if qtype is not None:
                quant_types.add(qtype)
            if qtype == TP.INT32:
                uses = []
                for cons, idx in consumers.get(node.output[0], []):
                    if _BIAS_CONSUMERS.get(cons.op_type) == idx:
                        uses.append(f"the bias of {cons.op_type} '{label(cons)}'")
                    else:
                        uses.append(f"input {idx} of {cons.op_type} '{label(cons)}'")
                where = "; feeds " + ", ".join(uses) if uses else ""
                int32_dq.append(f"DequantizeLinear '{label(node)}' (int32 '{node.input[0]}'{where})")
                continue
            src = consts.get(node.input[0])
            if src is not None and len(src.dims) == 0:
                # TensorRT(-RTX) refuses rank-0 quantized constants ("Quantized constant ... is
                # only allowed before DQ"); the same value stored with shape [1] builds.
                feeds = [f"{c.op_type} '{label(c)}'" for c, _ in consumers.get(node.output[0], [])]
                scalar_q.append(
                    f"DequantizeLinear '{label(node)}' (scalar {_QUANT_NAMES.get(qtype or 0, '?')} "
                    f"'{node.input[0]}'" + (f"; feeds {', '.join(feeds[:3])}" if feeds else "")
                    + (f" and {len(feeds) - 3} more" if len(feeds) > 3 else "") + ")"
                )
        if zp is not None:
            arr = const_array(zp)
            if arr is not None and arr.size and bool((arr != 0).any()):
                zt = _QUANT_NAMES.get(dtypes.get(zp, 0), "?")
                asym.append(f"{node.op_type} '{label(node)}' has a non-zero {zt} zero point")

    problems: list[str] = []
    if int32_dq:
        problems.append(
            "INT8 QDQ model has int32-quantized biases, which TensorRT rejects "
            "(its DequantizeLinear accepts int8/uint8/int4/fp8/fp4 only): "
            + "; ".join(int32_dq)
            + ". Re-quantize with biases kept in float "
            "(onnxruntime quantize_static extra_options={'QuantizeBias': False})."
        )
    if scalar_q:
        shown = scalar_q[:8] + ([f"... and {len(scalar_q) - 8} more"] if len(scalar_q) > 8 else [])
        problems.append(
            "INT8 QDQ model quantizes scalar (rank-0) constants, which TensorRT rejects "
            "('Quantized constant ... is only allowed before DQ'): "
            + "; ".join(shown)
            + ". Keep those constants float (exclude their consumer from quantization) "
            "or store them with shape [1]."
        )
    if asym:
        shown = asym[:8] + ([f"... and {len(asym) - 8} more"] if len(asym) > 8 else [])
        problems.append(
            "TensorRT supports only symmetric quantization (zero point 0): "
            + "; ".join(shown)
            + ". Re-quantize with activation_type=QInt8, weight_type=QInt8 and "
            "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}."
        )

    fp16 = sum(1 for t in dtypes.values() if t == TP.FLOAT16)
    bf16 = sum(1 for t in dtypes.values() if t == TP.BFLOAT16)
    for node in g.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to":
                    fp16 += a.i == TP.FLOAT16
                    bf16 += a.i == TP.BFLOAT16

    float_kind = "fp16" if fp16 else ("bf16" if bf16 else "fp32")
    qnames = sorted(
        {_QUANT_NAMES.get(t, _dtype_name(t)) for t in quant_types if t != TP.INT32}
    )
    if n_q or n_dq:
        q = "+".join(qnames) if qnames else "int8"
        precision = q if float_kind == "fp32" else f"{q}+{float_kind}"
    else:
        precision = float_kind

    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    init_names = {i.name for i in g.initializer}
    return OnnxInfo(
        path=path,
        sha256=_content_sha256(path, model),
        opset=opset,
        inputs=tuple(_value_info(v) for v in g.input if v.name not in init_names),
        outputs=tuple(_value_info(v) for v in g.output),
        precision=precision,
        quantize_nodes=n_q,
        dequantize_nodes=n_dq,
        quant_dtypes=tuple(qnames),
        fp16_tensors=fp16,
        bf16_tensors=bf16,
        custom_domain_ops=tuple(custom),
        problems=tuple(problems),
    )


def _quant_names() -> dict[int, str]:
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a core dependency
        return {}
    TP = onnx.TensorProto
    names = {TP.INT8: "int8", TP.UINT8: "uint8", TP.INT32: "int32"}
    for attr, name in (
        ("INT4", "int4"),
        ("UINT4", "uint4"),
        ("FLOAT8E4M3FN", "fp8"),
        ("FLOAT8E5M2", "fp8e5m2"),
        ("FLOAT4E2M1", "fp4"),
    ):
        if hasattr(TP, attr):
            names[getattr(TP, attr)] = name
    return names


_QUANT_NAMES = _quant_names()


def check_onnx_for_tensorrt(info: OnnxInfo) -> None:
    """Raise EngineBuildError naming the nodes when a known TensorRT blocker is present."""
    if info.problems:
        raise EngineBuildError(f"{info.path.name}: " + " ".join(info.problems))
