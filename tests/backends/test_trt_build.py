"""TensorRT-RTX engine builds on a CPU-only machine (ahead-of-time), cache and error paths.

These build real engines with `tensorrt_rtx` (pip: tensorrt-rtx-cu13) from tiny SR
networks exported here; each build takes well under a second. Running engines needs a
GPU: see tests/backends/test_trt_runner.py.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgesr.backends import trt_flavour
from edgesr.backends.trt import (
    BuildOptions,
    ShapeProfile,
    build_engine,
    inspect_onnx,
    load_flavour,
    read_sidecar,
)
from edgesr.errors import BackendUnavailable, EngineBuildError
from edgesr.fsutil import sha256_file

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'edgesr[trt-rtx]')")

SCALE = 2
# LR profile used throughout: rounds to min 16x20, opt 64x64, max 248x256 with size_multiple=4.
PROFILE = ShapeProfile(min_hw=(15, 17), opt_hw=(63, 64), max_hw=(250, 256), size_multiple=4)
OPTS = BuildOptions(max_threads=1)


class TinySR(torch.nn.Module):
    """3 convs + ReLU + PixelShuffle (DepthToSpace in ONNX): the shape of an efficient SR net."""

    def __init__(self, channels: int = 8, scale: int = SCALE) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.body = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = torch.nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.up = torch.nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.tail(torch.relu(self.body(torch.relu(self.head(x))))))


def _export(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TinySR().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 32, 32),),
            str(path),
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "h2", 3: "w2"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def _quantize(src: Path, dst: Path, **extra) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    batches = [{"lr": rng.random((1, 3, 24, 24), dtype=np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    kw = dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    kw.update(extra.pop("types", {}))
    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, extra_options=extra, **kw
    )
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    d = tmp_path_factory.mktemp("onnx")
    m = {"fp32": _export(d / "tiny_fp32.onnx")}
    fp16 = convert_float_to_float16(onnx.load(str(m["fp32"])), keep_io_types=False)
    onnx.save(fp16, str(d / "tiny_fp16.onnx"))
    m["fp16"] = d / "tiny_fp16.onnx"
    # TensorRT-friendly INT8: symmetric int8 activations + weights, per-channel, float biases.
    m["int8"] = _quantize(
        m["fp32"], d / "tiny_int8.onnx", ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False
    )
    return m


def _profile_shapes():
    return {"min": [1, 3, 16, 20], "opt": [1, 3, 64, 64], "max": [1, 3, 248, 256]}


# --------------------------------------------------------------------------- builds


@pytest.mark.parametrize(
    "kind, precision, io_dtype",
    [("fp32", "fp32", "float32"), ("fp16", "fp16", "float16"), ("int8", "int8", "float32")],
)
def test_builds_engine_with_sidecar(models, tmp_path, kind, precision, io_dtype):
    art = build_engine(models[kind], tmp_path, flavour="rtx", profile=PROFILE, options=OPTS)

    assert art.path == tmp_path / f"tiny_{kind}.trt-rtx.engine"
    assert art.path.stat().st_size > 10_000
    assert not art.cache_hit and art.build_seconds > 0
    assert art.precision == precision
    assert art.flavour == "rtx" and art.flavour_version == trt.__version__

    side = json.loads(art.sidecar_path.read_text())
    assert art.sidecar_path == art.path.with_name(art.path.name + ".json")
    assert side == art.metadata
    assert side["engine"] == {
        "file": art.path.name,
        "bytes": art.path.stat().st_size,
        "sha256": sha256_file(art.path),
    }
    assert side["cache_key"] == art.cache_key and len(art.cache_key) == 64
    assert side["flavour"]["module"] == "tensorrt_rtx" and side["flavour"]["version"] == trt.__version__
    assert side["target"] == {"compute_capabilities": "default"}
    assert side["precision"] == precision and side["onnx"]["precision"] == precision
    assert side["onnx"]["sha256"] == sha256_file(models[kind])
    assert side["profile"]["input"] == "lr"
    assert {k: side["profile"][k] for k in ("min", "opt", "max")} == _profile_shapes()
    assert side["builder"]["strongly_typed"] is True

    io = side["io"]
    assert io["source"] in ("network", "engine")
    assert [(t["name"], t["dtype"], t["shape"]) for t in io["inputs"]] == [("lr", io_dtype, [-1, 3, -1, -1])]
    assert io["inputs"][0]["profile"] == _profile_shapes()
    assert [(t["name"], t["dtype"]) for t in io["outputs"]] == [("sr", io_dtype)]
    assert io["outputs"][0]["shape"][:2] == [-1, 3]

    if kind == "int8":
        assert side["onnx"]["quant_dtypes"] == ["int8"] and side["onnx"]["quantize_nodes"] >= 3
    if kind == "fp16":
        assert side["onnx"]["fp16_tensors"] > 0 and side["onnx"]["quantize_nodes"] == 0


def test_engine_cache_reuse_and_rebuild(models, tmp_path):
    out = tmp_path / "engines"
    first = build_engine(models["fp32"], out, profile=PROFILE, options=OPTS)
    stamp = first.path.stat().st_mtime_ns

    again = build_engine(models["fp32"], out, profile=PROFILE, options=OPTS)
    assert again.cache_hit and again.build_seconds == 0.0
    assert again.cache_key == first.cache_key
    assert again.path.stat().st_mtime_ns == stamp
    assert again.metadata["built_at"] == first.metadata["built_at"]

    # Different profile -> different key -> rebuilt in place, sidecar updated.
    other = build_engine(models["fp32"], out, profile=ShapeProfile(max_hw=(512, 512)), options=OPTS)
    assert not other.cache_hit and other.cache_key != first.cache_key
    assert read_sidecar(other.path)["profile"]["max"] == [1, 3, 512, 512]

    # Changed ONNX content (one weight) under the same file name -> rebuilt.
    changed = tmp_path / "tiny_fp32.onnx"
    m = onnx.load(str(models["fp32"]))
    w = m.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.5
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    onnx.save(m, str(changed))
    base = build_engine(models["fp32"], out, profile=PROFILE, options=OPTS)
    assert not base.cache_hit  # back to the first key: the engine had been replaced meanwhile
    tweaked = build_engine(changed, out, profile=PROFILE, options=OPTS)
    assert not tweaked.cache_hit and tweaked.cache_key != base.cache_key
    assert tweaked.metadata["key_components"]["onnx_sha256"] == sha256_file(changed)

    # A damaged engine (same size, different bytes) is stale.
    data = bytearray(tweaked.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tweaked.path.write_bytes(bytes(data))
    repaired = build_engine(changed, out, profile=PROFILE, options=OPTS)
    assert not repaired.cache_hit and repaired.cache_key == tweaked.cache_key
    assert build_engine(changed, out, profile=PROFILE, options=OPTS).cache_hit

    # A missing sidecar means the engine cannot be trusted either.
    repaired.sidecar_path.unlink()
    assert not build_engine(changed, out, profile=PROFILE, options=OPTS).cache_hit

    # force=True always rebuilds.
    assert not build_engine(changed, out, profile=PROFILE, options=OPTS, force=True).cache_hit


def test_compute_capability_targets(models, tmp_path):
    art = build_engine(
        models["int8"], tmp_path, profile=PROFILE,
        options=BuildOptions(compute_capabilities=("sm86", "7.5"), max_threads=1),
    )
    assert art.metadata["target"] == {"compute_capabilities": ["SM75", "SM86"]}
    assert art.metadata["builder"]["compute_capabilities"] == ["sm86", "7.5"]
    default = build_engine(models["int8"], tmp_path, profile=PROFILE, options=OPTS, engine_name="default.engine")
    assert default.cache_key != art.cache_key
    # The same set in another order and spelling is the same engine.
    same = build_engine(
        models["int8"], tmp_path, profile=PROFILE,
        options=BuildOptions(compute_capabilities=("7.5", "SM_86"), max_threads=1),
    )
    assert same.cache_hit and same.cache_key == art.cache_key
    with pytest.raises(EngineBuildError, match=r"cannot target compute capability '9\.0'.*SM86"):
        build_engine(models["int8"], tmp_path, profile=PROFILE, options=BuildOptions(compute_capabilities=("9.0",)))


def test_shape_profile_rounding_and_validation():
    r = PROFILE.resolved()
    assert (r.min_hw, r.opt_hw, r.max_hw) == ((16, 20), (64, 64), (248, 256))
    assert ShapeProfile().shapes(["n", 3, "h", "w"]) == {
        "min": (1, 3, 16, 16), "opt": (1, 3, 256, 256), "max": (1, 3, 1088, 1920),
    }
    # Fixed ONNX dims win over the profile.
    assert ShapeProfile(batch=(1, 2, 4)).shapes([1, 3, "h", 64])["max"] == (1, 3, 1088, 64)
    with pytest.raises(EngineBuildError, match="no multiple of 64"):
        ShapeProfile(min_hw=(20, 20), max_hw=(40, 40), opt_hw=(30, 30), size_multiple=64).resolved()
    with pytest.raises(EngineBuildError, match="min <= opt <= max"):
        ShapeProfile(batch=(2, 1, 1))
    with pytest.raises(EngineBuildError, match="channel dimension"):
        ShapeProfile().shapes(["n", "c", "h", "w"])

    from edgesr.spec import Spec

    p = ShapeProfile.from_spec(Spec(arch="x", scale=4, size_multiple=8, min_size=24))
    assert p.resolved().min_hw == (24, 24) and p.resolved().max_hw == (1088, 1920)


# --------------------------------------------------------------------------- failures


def test_unsupported_op_names_the_node(models, tmp_path):
    m = onnx.load(str(models["fp32"]))
    m.graph.node.append(helper.make_node("FancyUpsample", ["sr"], ["sr2"], domain="com.example", name="my_custom_node"))
    m.graph.output[0].name = "sr2"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    bad = tmp_path / "custom.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(EngineBuildError) as ei:
        build_engine(bad, tmp_path, profile=PROFILE, options=OPTS)
    msg = str(ei.value)
    assert "could not parse custom.onnx" in msg
    assert "node 'my_custom_node'" in msg and "FancyUpsample" in msg and "com.example" in msg
    assert not (tmp_path / "custom.trt-rtx.engine").exists()


def test_int32_bias_qdq_is_refused_with_node_names(models, tmp_path):
    # onnxruntime's default QDQ quantization quantizes Conv biases to int32.
    q = _quantize(models["fp32"], tmp_path / "bias32.onnx", ActivationSymmetric=True, WeightSymmetric=True)
    g = onnx.load(str(q)).graph
    int32 = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.INT32}
    dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
    convs = [n.name for n in g.node if n.op_type == "Conv"]
    assert len(dq) == 3

    with pytest.raises(EngineBuildError) as ei:
        build_engine(q, tmp_path, profile=PROFILE, options=OPTS)
    msg = str(ei.value)
    assert "int32-quantized biases" in msg and "QuantizeBias" in msg
    for n in dq:
        assert f"DequantizeLinear '{n.name}'" in msg
    for c in convs:
        assert f"the bias of Conv '{c}'" in msg

    # Without the pre-check, TensorRT-RTX's own parser rejects it; the error still names the node.
    with pytest.raises(EngineBuildError, match=rf"could not parse bias32\.onnx.*node '{dq[0].name}'.*Int32"):
        build_engine(q, tmp_path, profile=PROFILE, options=OPTS, check=False)


def test_asymmetric_zero_point_is_refused(models, tmp_path):
    from onnxruntime.quantization import QuantType

    q = _quantize(models["fp32"], tmp_path / "u8.onnx", types={"activation_type": QuantType.QUInt8}, QuantizeBias=False)
    info = inspect_onnx(q)
    assert "uint8" in info.quant_dtypes
    with pytest.raises(EngineBuildError, match=r"only symmetric quantization \(zero point 0\).*non-zero uint8 zero point"):
        build_engine(q, tmp_path, profile=PROFILE, options=OPTS)
    # TensorRT agrees: its parser fails on the same graph.
    with pytest.raises(EngineBuildError, match="Non-zero zero point is not supported"):
        build_engine(q, tmp_path, profile=PROFILE, options=OPTS, check=False)


def test_dynamic_input_without_profile(models, tmp_path):
    with pytest.raises(EngineBuildError, match=r"input 'lr' .* dynamic dims \['n', 3, 'h', 'w'\] but no ShapeProfile"):
        build_engine(models["fp32"], tmp_path, profile=None)


def test_option_validation(models, tmp_path):
    with pytest.raises(EngineBuildError, match="precision comes from the ONNX"):
        build_engine(models["fp32"], tmp_path, profile=PROFILE, options=BuildOptions(precision_flags=("fp16",)))
    with pytest.raises(EngineBuildError, match="optimization_level must be 0..5"):
        build_engine(models["fp32"], tmp_path, profile=PROFILE, options=BuildOptions(optimization_level=7))
    with pytest.raises(EngineBuildError, match="hardware_compatibility 'bogus'"):
        build_engine(models["fp32"], tmp_path, profile=PROFILE, options=BuildOptions(hardware_compatibility="bogus"))
    with pytest.raises(EngineBuildError, match="unknown TensorRT flavour"):
        build_engine(models["fp32"], tmp_path, flavour="onnxruntime", profile=PROFILE)


def test_timing_cache_is_recorded_unused_for_rtx(models, tmp_path):
    tc = tmp_path / "timing.cache"
    art = build_engine(
        models["fp32"], tmp_path, profile=PROFILE,
        options=BuildOptions(optimization_level=2, max_threads=1), timing_cache=tc,
    )
    assert art.metadata["timing_cache"]["used"] is False and not tc.exists()
    assert art.metadata["builder"]["optimization_level"] == 2


def test_missing_package_says_which_extra(monkeypatch):
    monkeypatch.setattr(trt_flavour, "_cache", {})
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # makes `import tensorrt_rtx` fail
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgesr\[trt-rtx\]'"):
        load_flavour("rtx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgesr\[trt\]'"):
        load_flavour("trt")


def test_external_data_weights_are_part_of_the_key(models, tmp_path):
    src = tmp_path / "ext" / "tiny.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(models["fp32"])), str(src), save_as_external_data=True,
              location="tiny.weights", size_threshold=0)
    first = build_engine(src, tmp_path, profile=PROFILE, options=OPTS)  # parser reads the weights file
    assert first.path.stat().st_size > 10_000
    assert build_engine(src, tmp_path, profile=PROFILE, options=OPTS).cache_hit

    weights = src.parent / "tiny.weights"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x01  # the .onnx file itself is unchanged
    weights.write_bytes(bytes(data))
    again = build_engine(src, tmp_path, profile=PROFILE, options=OPTS)
    assert not again.cache_hit and again.cache_key != first.cache_key
