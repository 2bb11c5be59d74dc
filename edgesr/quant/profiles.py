"""Typed INT8 configuration: QDQ profiles (what the graph looks like) and QuantConfig.

Profiles
--------
``trt``  symmetric int8 activations and weights (every zero point 0), per-channel weights,
         biases left float (TensorRT refuses int32-quantized biases in QDQ graphs and wants
         zero point 0). Relu/Clip nodes are kept (symmetric ranges cannot absorb them).
``cpu``  what ran fastest *and* most accurately in ONNX Runtime's CPU provider on an x86
         CPU without VNNI (measured, docs/int8.md): asymmetric uint8 activations with ORT's
         own QDQ placement (fused into QLinearConv), per-channel int8 weights limited to 7 bits
         (``reduce_range``: 8-bit weights overflow the AVX2 u8*s8 int16 pair sums), int32
         biases, PRelu decomposed into float Relu/Sub/Mul/Add (ORT's PRelu kernel is slow).
``openvino`` uint8 activations (zero point 0 where a tensor is non-negative), per-channel int8
         weights, float biases, Q/DQ on the inputs of Conv (OpenVINO fuses them into u8 x s8
         kernels), residual Adds left float (an int8 Add buys no int8 kernel there, only extra
         Convert/Subtract passes), every float op reading the float tensor rather than its Q/DQ
         copy; scored and searched in OpenVINO.

Every profile quantizes the picture exactly where the input is 8-bit levels (QuantConfig.exact_input).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import QuantizationError

METHODS = ("minmax", "percentile", "entropy")
# Ops whose inputs are quantized with placement="inputs" (and the layers of the sensitivity table).
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantProfile:
    name: str
    activation_type: str  # "int8" | "uint8"
    weight_type: str  # "int8" | "uint8"
    activation_symmetric: bool
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights (ORT's option for non-VNNI x86)
    quantize_bias: bool = True  # False: biases stay float (no int32 DequantizeLinear)
    # "inputs": QuantizeLinear/DequantizeLinear only on the inputs (and weights) of `quantized_ops`,
    #           activations run on the float conv output (TensorRT's canonical placement);
    # "ort":    ONNX Runtime's default placement (outputs quantized too, Relu/Clip folded
    #           into asymmetric ranges) which its CPU provider fuses into QLinearConv.
    placement: str = "inputs"
    # PRelu handling (edgesr/quant/prelu.py): "keep"; "decompose" (bit-exact Relu/Sub/Mul/Add,
    # float); "split" (Conv(2C) -> Relu -> Conv, int8-friendly, twice the channels)
    prelu: str = "keep"
    # The runtime the graph is made for: every PSNR of the budget check and the search is
    # measured by running the candidate there ("onnxruntime" | "openvino").
    runtime: str = "onnxruntime"
    # placement="inputs": the op types whose inputs get Q/DQ (the layers of the search)
    quantized_ops: tuple[str, ...] = COMPUTE_OPS
    # ops that are not int8 compute nodes read an activation's float tensor, not its Q/DQ copy
    # (edgesr/quant/float_layers.py: float_consumers_read_float)
    float_reads_float: bool = False
    # Side (LR pixels) of the calibration patches when QuantConfig.patch_size is None. 96 for the uint8
    # profiles, which then also prepare with 48 and keep the lower all-int8 held-out drop: 96 lowered it
    # for ETDS-T/M/L, ECBSR and ABPN in `cpu` and `openvino`, not for RLFN / SPAN; for `trt` it was
    # mixed (docs/int8.md, "Calibration patch size").
    calibration_patch: int = 48
    # placement="inputs": conv-input ranges shrunk where that lowers the model's output error on the
    # calibration patches (edgesr/quant/range_search.py; QuantConfig.range_search overrides it). Off
    # everywhere: lower all-int8 held-out drops for RLFN / SPAN, higher for ETDS-M / ECBSR, and the
    # searched RLFN / SPAN graphs lose more on Set5 and the independent photos (docs/int8.md)
    range_search: bool = False
    # placement="inputs": int8 weights rounded for the quantized input they read (edgesr/quant/refine.py,
    # WeightRefiner input_aware; QuantConfig.input_aware overrides it)
    input_aware: bool = False
    description: str = ""

    def ort_types(self):
        from onnxruntime.quantization import QuantType

        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        try:
            return types[self.activation_type], types[self.weight_type]
        except KeyError as e:
            raise QuantizationError(f"profile {self.name}: unsupported type {e.args[0]!r} (int8/uint8)") from None

    def op_types(self) -> list[str] | None:
        """op_types_to_quantize for ORT (None: ORT's default, every op it can quantize)."""
        return list(self.quantized_ops) if self.placement == "inputs" else None

    def extra_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "QuantizeBias": self.quantize_bias,
        }
        if self.placement == "inputs":
            opts["OpTypesToExcludeOutputQuantization"] = list(COMPUTE_OPS)
        elif self.placement != "ort":
            raise QuantizationError(f"profile {self.name}: unknown placement {self.placement!r} (inputs/ort)")
        return opts


TRT = QuantProfile(
    name="trt", activation_type="int8", weight_type="int8", activation_symmetric=True,
    weight_symmetric=True, per_channel=True, reduce_range=False, quantize_bias=False,
    description="TensorRT: symmetric int8 activations + per-channel int8 weights, zero points 0, float biases")

# Chosen by benchmarks/int8_latency.py + docs/int8.md (Zen 3, AVX2, no VNNI): see there.
CPU = QuantProfile(
    name="cpu", activation_type="uint8", weight_type="int8", activation_symmetric=False,
    weight_symmetric=True, per_channel=True, reduce_range=True, quantize_bias=True, placement="ort",
    prelu="decompose", calibration_patch=96,
    description="ONNX Runtime CPU (x86 without VNNI): asymmetric uint8 activations, per-channel "
                "7-bit (reduce_range) int8 weights, int32 biases, PRelu decomposed into float "
                "Relu/Sub/Mul/Add")

# OpenVINO CPU (issue 21, docs/int8.md "OpenVINO findings"): uint8 activations with ORT's asymmetric
# ranges - a non-negative tensor (a Relu output, the picture) gets zero point 0 and all 256 levels,
# as NNCF's unsigned scheme does - and no zero-centring: the trt graph's centring Sub/Pad/Clip nodes
# made OpenVINO's compiled graph twice as long and ETDS-M 1.3x slower at the same held-out drop.
# Scored in OpenVINO itself: its int8 kernels differ from ORT's emulation on some patterns (RLFN's
# ESA), and the search must see that.
# Residual Adds stay float (fifth pass, benchmarks/int8_ov_profile.py): OpenVINO runs an Add on
# int8 inputs as an f32 eltwise anyway; quantizing them only quantized the producing conv's output,
# and where that tensor also feeds a float op (SPAN's Sigmoid gate, ECBSR's output) OpenVINO adds a
# Convert plus a zero-point Subtract pass over the full-size tensor (~6 ms each on SPAN at 180x320).
OPENVINO = QuantProfile(
    name="openvino", activation_type="uint8", weight_type="int8", activation_symmetric=False,
    weight_symmetric=True, per_channel=True, reduce_range=False, quantize_bias=False, runtime="openvino",
    quantized_ops=WEIGHTED_OPS, float_reads_float=True, calibration_patch=96,
    description="OpenVINO CPU: uint8 activations (zero point 0 for non-negative tensors and the picture), "
                "per-channel int8 weights, float biases, Q/DQ on conv inputs (residual Adds float), "
                "evaluated and searched in OpenVINO")

PROFILES: dict[str, QuantProfile] = {p.name: p for p in (TRT, CPU, OPENVINO)}
# The runtime each profile's graph is made for (what bench/eval/upscale run it with).
PROFILE_BACKEND = {"trt": "tensorrt", "cpu": "onnxruntime", "openvino": "openvino"}


def get_profile(name: str | QuantProfile) -> QuantProfile:
    if isinstance(name, QuantProfile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise QuantizationError(f"unknown INT8 profile {name!r}; known: {', '.join(PROFILES)}") from None


@dataclass(frozen=True)
class QuantConfig:
    """Everything `quantize_model` needs besides the model and data.

    profile        "trt" | "cpu" | "openvino" (or a QuantProfile)
    method         calibration: "minmax" | "percentile" | "entropy"
    percentile     for method="percentile" (ORT keeps this percentile of |x|)
    num_patches    calibration LR patches; patch_size their side in LR pixels (None: the profile's
                   calibration_patch - where that is not 48, both it and 48 are tried and the lower
                   all-int8 drop on the evaluation set is kept; 48 where the images are too small); seed
    per_channel    per-output-channel weight scales (overrides the profile's)
    psnr_budget    allowed Y-PSNR drop (dB) vs fp32 on the evaluation set; None = no
                   mixed-precision search (everything quantizable is quantized)
    equalize       exact per-channel activation-range equalization before quantization
                   (rescales conv output channels through Relu/PRelu, compensated in the
                   next conv; see edgesr/quant/equalize.py)
    equalize_alpha exponent of the equalization scales (1: all channels span the tensor's range)
    center         exact zero-centring of conv inputs for symmetric activation profiles
                   (edgesr/quant/center.py): a [0, R] tensor gets the whole int8 range
    exact_input    quantize the picture exactly where the model input is 8-bit levels (RGB in its value
                   range): scale = one grey level, codes = the pixels (edgesr/quant/center.py); off: the
                   calibrated per-tensor range, which merges some of the 256 levels
    split_concat   exact split of Conv(Concat(parts)) into a float sum of per-part convs, so each
                   part gets its own int8 input scale (edgesr/quant/concat.py; SPAN's conv_cat)
    prelu          "keep" | "decompose" | "split" PRelu rewrite (None = the profile's)
    gptq           error-compensating rounding of int8 weights (edgesr/quant/refine.py)
    gptq_color_permutations  GPTQ statistics over all 6 RGB channel orders (robust to colours
                   the calibration photos lack; see edgesr/quant/refine.py). None: on when
                   the profile's weights are 7-bit (cpu), off for 8-bit weights (trt)
    bias_correction  remove the mean output shift of the weight error from the bias
    range_search   conv-input activation ranges shrunk where that lowers the model's output error on
                   the calibration patches (edgesr/quant/range_search.py; placement "inputs" only).
                   None: the profile's choice (off for all three: measured, docs/int8.md "RLFN's two 3x3
                   convs")
    input_aware    int8 conv weights fitted (least squares) and GPTQ-rounded for the QUANTIZED input they
                   read, so they undo the predictable part of its quantization error (edgesr/quant/refine.py;
                   placement "inputs" only). None: the profile's choice
    finetune       when the all-int8 graph misses psnr_budget: a short quantization-aware
                   fine-tune of its int8 weight codes and biases against the fp32 output on
                   the calibration patches (edgesr/quant/finetune.py), kept only when the
                   all-int8 graph then scores better on the evaluation set
    finetune_steps its optimizer steps (batches of 8 calibration patches)
    sensitivity    "only" (quantize only that layer) | "except" (everything but that layer)
    max_float_layers  stop the greedy search after this many float layers
    max_float_fraction  ... and after this share of all layers (an INT8 graph that is mostly
                   float is slower than fp32 and is not what was asked for; the search then
                   reports the budget as missed)
    min_speedup    ONNX Runtime graphs (cpu): the search takes a float layer only when the graph
                   with it, timed against fp32 side by side on this machine (quant/speed.py), is at
                   least this many times faster; None: speed is not measured
    threads        ORT intra-op threads for calibration/evaluation (None = ORT default)
    progress       tqdm bars
    """

    profile: str | QuantProfile = "trt"
    method: str = "minmax"
    percentile: float = 99.999
    num_patches: int = 32
    patch_size: int | None = None  # None: the profile's calibration_patch
    seed: int = 0
    batch_size: int = 8
    per_channel: bool = True
    psnr_budget: float | None = 0.1
    equalize: bool = True
    equalize_alpha: float = 1.0
    center: bool = True
    exact_input: bool = True
    split_concat: bool = True
    prelu: str | None = None  # None: the profile's choice (QuantProfile.prelu)
    gptq: bool = True
    gptq_color_permutations: bool | None = None  # None: on for 7-bit (reduce_range) weights only
    bias_correction: bool = True
    range_search: bool | None = None  # None: the profile's choice (QuantProfile.range_search)
    input_aware: bool | None = None  # None: the profile's choice (QuantProfile.input_aware)
    finetune: bool = False  # opt-in: minutes of CPU per model, helped one of three measured cases (docs/int8.md)
    finetune_steps: int = 300
    sensitivity: str = "only"
    max_float_layers: int | None = None
    max_float_fraction: float = 0.5
    min_speedup: float | None = 1.1
    threads: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed to ORT's extra_options last

    def __post_init__(self):
        get_profile(self.profile)
        if self.method not in METHODS:
            raise QuantizationError(f"unknown calibration method {self.method!r}; known: {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise QuantizationError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.finetune_steps < 1:
            raise QuantizationError(f"finetune_steps must be >= 1, got {self.finetune_steps}")
        if self.num_patches < 1 or (self.patch_size is not None and self.patch_size < 1) or self.batch_size < 1:
            raise QuantizationError("num_patches, patch_size and batch_size must be >= 1")
        if self.psnr_budget is not None and self.psnr_budget < 0:
            raise QuantizationError(f"psnr_budget must be >= 0 dB, got {self.psnr_budget}")
        if self.prelu not in (None, "keep", "decompose", "split"):
            raise QuantizationError(f"prelu must be keep, decompose or split, got {self.prelu!r}")
        if not 0.0 <= self.max_float_fraction <= 1.0:
            raise QuantizationError(f"max_float_fraction must be in [0, 1], got {self.max_float_fraction}")
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise QuantizationError(f"min_speedup must be > 0 (or None), got {self.min_speedup}")
        if self.sensitivity not in ("only", "except"):
            raise QuantizationError(f"sensitivity must be 'only' or 'except', got {self.sensitivity!r}")

    @property
    def quant_profile(self) -> QuantProfile:
        p = get_profile(self.profile)
        return p if p.per_channel == self.per_channel else replace(p, per_channel=self.per_channel)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = asdict(self.quant_profile)
        return d
