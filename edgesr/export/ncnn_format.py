"""The ncnn model files: .param text (layers, blobs, the Input layer's declared size) and the .bin
weight layout (which layer reads which blob, with which encoding tag).

Read by the exporter, the INT8 rewriter and the runner alike, so none of them imports another.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import ExportError, QuantizationError

# .bin tags (ncnn ModelBin): a weight blob read with type 0 starts with one of these
TAG_FP32, TAG_FP16, TAG_INT8 = 0x00000000, 0x01306B47, 0x000D4B38


def declare_input_shape(text: str, hw: tuple[int, int], channels: int) -> str:
    """The .param with its Input layer declaring ``0=W 1=H 2=C`` (a fixed-size model)."""
    header, layers = parse_param(text)
    for la in layers:
        if la.type == "Input":
            la.params.update({0: str(hw[1]), 1: str(hw[0]), 2: str(channels)})
    return "\n".join(header + [la.line() for la in layers]) + "\n"


def input_shape(text: str) -> tuple[int, int] | None:
    """The fixed (H, W) an Input layer declares, None for a dynamic model."""
    for la in parse_param(text)[1]:
        if la.type == "Input" and int(la.get(0)) > 0 and int(la.get(1)) > 0:
            return int(la.get(1)), int(la.get(0))
    return None


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)  # raw values ('1', '0.5', '2,1,3' for arrays)

    def get(self, key: int, default: float = 0) -> float:
        v = self.params.get(key)
        return default if v is None else float(v)

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} " \
               f"{' '.join(self.bottoms + self.tops)}"
        return f"{head} {kv}".rstrip()


def parse_param(text: str) -> tuple[list[str], list[Layer]]:
    """(header lines, layers) of an ncnn .param text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise ExportError("not an ncnn .param file (magic 7767517 missing)")
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        typ, name, nb, nt = tok[0], tok[1], int(tok[2]), int(tok[3])
        bottoms, tops = tok[4:4 + nb], tok[4 + nb:4 + nb + nt]
        params = {}
        for kv in tok[4 + nb + nt:]:
            k, _, v = kv.partition("=")
            params[int(k)] = v
        layers.append(Layer(typ, name, bottoms, tops, params))
    return lines[:2], layers


def _layer_types(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in parse_param(text)[1]:
        out[layer.type] = out.get(layer.type, 0) + 1
    return out


def io_names(text: str) -> tuple[list[str], list[str]]:
    """(input blob names, output blob names): Input layers' tops; blobs nobody consumes."""
    _, layers = parse_param(text)
    consumed = {b for la in layers for b in la.bottoms}
    inputs = [t for la in layers if la.type == "Input" for t in la.tops]
    outputs = [t for la in layers for t in la.tops if t not in consumed and la.type != "Input"]
    return inputs, outputs


# Layers whose load_model reads weights, as a list of (kind, count-function): "tagged" blobs start
# with a 4-byte tag (fp32 / fp16 / int8 data), "raw" blobs are plain float32.
def _conv_blobs(la: Layer) -> list[tuple[str, int]]:
    n_out, size = int(la.get(0)), int(la.get(6))
    blobs = [("tagged", size)]
    if int(la.get(5)):
        blobs.append(("raw", n_out))
    scale_term = int(la.get(8))
    if scale_term:
        blobs += [("raw", n_out if la.type != "ConvolutionDepthWise" else int(la.get(7, 1))), ("raw", 1)]
        if scale_term > 100:
            blobs.append(("raw", 1))
    return blobs


_WEIGHTED = {
    "Convolution": _conv_blobs,
    "ConvolutionDepthWise": _conv_blobs,
    "PReLU": lambda la: [("raw", int(la.get(0, 1)))],
    "MemoryData": lambda la: [("raw", max(1, int(la.get(0))) * max(1, int(la.get(1))) * max(1, int(la.get(11)))
                               * max(1, int(la.get(2))))],
    "LayerNorm": lambda la: [("raw", int(la.get(0))), ("raw", int(la.get(0)))] if int(la.get(2, 1)) else [],
    "Padding": lambda la: [("raw", int(la.get(6)))] if int(la.get(6)) else [],
    "InnerProduct": lambda la: [("tagged", int(la.get(2)))] + ([("raw", int(la.get(0)))] if int(la.get(1)) else []),
}


_NO_WEIGHTS = {"Input", "Split", "Concat", "Crop", "Slice", "PixelShuffle", "BinaryOp", "UnaryOp", "ReLU", "Sigmoid",
               "GELU", "Interp", "Pooling", "Reshape", "Permute", "Eltwise", "Reduction", "Flatten", "Noop", "Clip",
               "Swish", "Softmax", "Dropout", "Tile", "ExpandDims", "Squeeze", "HardSwish", "HardSigmoid", "TanH",
               "Erf", "Gather"}


def _blob_bytes(buf: bytes, pos: int, kind: str, count: int) -> int:
    if kind == "raw":
        return 4 * count
    (tag,) = struct.unpack_from("<I", buf, pos)
    if tag == TAG_FP16:
        return 4 + _align4(2 * count)
    if tag == TAG_INT8:
        return 4 + _align4(count)
    if tag == TAG_FP32:
        return 4 + 4 * count
    raise QuantizationError(f"ncnn .bin: unsupported weight encoding (tag 0x{tag:08x})")


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def walk_bin(layers: list[Layer], buf: bytes) -> list[list[tuple[int, int]]]:
    """For each layer, the (offset, length) of each of its weight blobs in the .bin."""
    pos, out = 0, []
    for la in layers:
        spans = []
        if la.type in _WEIGHTED:
            for kind, count in _WEIGHTED[la.type](la):
                n = _blob_bytes(buf, pos, kind, count)
                spans.append((pos, n))
                pos += n
        elif la.type not in _NO_WEIGHTS:
            raise QuantizationError(f"ncnn INT8: layer type {la.type} ({la.name}) is not known to edgesr's .bin "
                                    "reader; use fp32/fp16 for this model")
        out.append(spans)
    if pos != len(buf):
        raise QuantizationError(f"ncnn .bin: read {pos} of {len(buf)} bytes; the layer table does not match")
    return out


def _read_weights(buf: bytes, span: tuple[int, int], count: int) -> np.ndarray:
    off, _ = span
    (tag,) = struct.unpack_from("<I", buf, off)
    if tag == TAG_FP32:
        return np.frombuffer(buf, "<f4", count, off + 4).astype(np.float32)
    if tag == TAG_FP16:
        return np.frombuffer(buf, "<f2", count, off + 4).astype(np.float32)
    raise QuantizationError(f"ncnn INT8: weights are already quantized (tag 0x{tag:08x})")
