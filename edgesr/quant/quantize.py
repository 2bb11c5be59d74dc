"""fp32 ONNX -> QDQ INT8 ONNX that keeps the picture.

Pipeline (:func:`quantize_model`):

1. calibration patches (:class:`~edgesr.quant.calibration.CalibrationSource`, default: the
   package sample photographs, never the test set); the fp32 model is run on them and an
   all-zero / non-finite output is refused;
2. exact activation-range equalization (:mod:`edgesr.quant.equalize`), checked on the
   calibration batch;
3. one calibration pass (ORT calibrator: min-max, percentile or entropy), cached;
4. QDQ graph for the profile (:mod:`edgesr.quant.profiles`), evaluated in ONNX Runtime on
   the evaluation set (default: the held-out sample images) against fp32;
5. when the drop exceeds ``psnr_budget``: a short quantization-aware fine-tune of the int8
   weight codes and biases against the fp32 output on the calibration patches
   (:mod:`edgesr.quant.finetune`), kept only when the all-int8 graph then scores better; if
   still over budget, per-layer sensitivity, then layers kept float, most sensitive first,
   until the drop is within budget (``nodes_to_exclude``);
6. profile checks (``trt``: every zero point 0, int8 only, no int32 bias), metadata,
   atomic write. Optionally the final model is also scored on a test set (e.g. Set5) for
   reporting only - it never influences a choice.

Over 500 lines on purpose: the quantization pipeline's steps share one session (model, calibration
data, verdict); the pieces that stand alone already live beside it in edgesr/quant/.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetError, QuantizationError
from ..fsutil import atomic_path
from ..progress import progress
from ..spec import Spec
from .calibration import CalibrationSource, EvalSet, PatchSizeError, held_out_eval_set
from .evaluate import evaluate, make_session
from .profiles import QuantConfig, QuantProfile
from .sensitivity import Layer, SearchResult, SensitivityRow, quantizable_layers, ranking, search, sensitivity

PRE_ACTIVATION_EQUALIZATION = True  # cpu: equalize what ORT quantizes, the conv output before PRelu
EQUALIZE_TOL = 1e-4  # max |fp32 equalized - fp32 original| accepted (outputs in [0, 1])
_ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass
class QuantResult:
    path: Path
    profile: str
    config: dict[str, Any]
    float_nodes: list[str]  # ONNX node names left float (nodes_to_exclude)
    float_layers: list[str]  # the layers (compute nodes) kept float by the search
    psnr_fp32: float  # mean Y-PSNR on the evaluation set
    psnr_int8: float
    psnr_int8_all: float  # before mixed precision (every layer int8)
    within_budget: bool
    eval_set: str
    budget: float | None = None  # dB; None: no search, no verdict
    eval_images: list[str] = field(default_factory=list)
    criterion: str = ""
    sensitivity: list[SensitivityRow] = field(default_factory=list)
    search_steps: list[dict] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # every quantizable layer, graph order
    calibration: dict[str, Any] = field(default_factory=dict)
    equalization: dict[str, Any] | None = None
    centering: dict[str, Any] | None = None
    exact_input: dict[str, Any] | None = None  # which conv inputs read the 8-bit picture exactly (center.py)
    prelu_rewrite: dict[str, Any] | None = None
    concat_split: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None  # FinetuneReport + held-out scores; None: not run
    range_search: dict[str, Any] | None = None  # RangeSearchReport (quant/range_search.py); None: not run
    speed: dict[str, Any] | None = None  # the final graph vs fp32, timed by the search (quant/speed.py)
    test_set: str | None = None
    test_psnr_fp32: float | None = None
    test_psnr_int8: float | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.psnr_fp32 - self.psnr_int8

    @property
    def test_drop(self) -> float | None:
        if self.test_psnr_fp32 is None or self.test_psnr_int8 is None:
            return None
        return self.test_psnr_fp32 - self.test_psnr_int8

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["drop"] = self.drop
        d["test_drop"] = self.test_drop
        return d


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _quiet():
    """ORT's quantizer print()s progress and logs 'consider pre-processing' warnings through
    the root logger; neither belongs on a library caller's stdout/stderr (--json!)."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(prev)


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return getattr(CalibrationMethod, _ORT_METHODS[method])


def _fixed_hw(onnx_path) -> bool:
    """Whether the graph's input has a static height and width (a fixed-shape export)."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:])


def check_fp32_output(model_bytes: bytes, patches: np.ndarray, input_name: str, threads: int | None,
                      batch_size: int = 8) -> None:
    """Refuse a model whose output on the calibration data is all zero or not finite. `batch_size`:
    the calibration batch (1 for a fixed-shape graph, whose batch dimension is fixed too)."""
    sess = make_session(model_bytes, threads)
    peak = 0.0
    step = max(1, batch_size)
    for i in range(0, len(patches), step):
        y = sess.run(None, {input_name: patches[i:i + step]})[0]
        if not np.all(np.isfinite(y)):
            raise QuantizationError("the fp32 model produces NaN/Inf on the calibration data; "
                                    "check the model and its input range")
        peak = max(peak, float(np.abs(y).max()))
    if peak == 0.0:
        raise QuantizationError("the fp32 model's output is all zeros for the calibration data; "
                                "INT8 calibration would be meaningless (wrong weights, input range "
                                "or colour order?)")


def calibrate(model_path: Path, source: CalibrationSource, config: QuantConfig, op_types: Sequence[str] | None,
              workdir: Path):
    """Run the ORT calibrator once; returns TensorsData (activation ranges)."""
    from onnxruntime.quantization import create_calibrator

    profile = config.quant_profile
    extra: dict[str, Any] = {}
    if config.method == "percentile":
        extra["percentile"] = config.percentile
    if config.method in ("percentile", "entropy"):
        extra["symmetric"] = profile.activation_symmetric
    source.rewind()
    try:
        with _quiet():
            calibrator = create_calibrator(
                model_path, list(op_types) if op_types else [],
                augmented_model_path=str(workdir / "augmented.onnx"),
                calibrate_method=_method_enum(config.method), extra_options=extra)
            with progress("INT8 calibration", total=len(source), unit="batch", show=config.progress) as bar:
                calibrator.collect_data(_CountingReader(source, bar))
                ranges = calibrator.compute_data()
    finally:
        source.rewind()
    return ranges


class _CountingReader:
    """ORT's CalibrationDataReader over `source` that counts each batch handed out on `bar`."""

    def __init__(self, source: CalibrationSource, bar) -> None:
        self.source, self.bar = source, bar

    def get_next(self):
        batch = self.source.get_next()
        if batch is not None:
            self.bar.update()
        return batch

    def rewind(self) -> None:
        self.source.rewind()

    def __len__(self) -> int:
        return len(self.source)


def ort_quantizable_ops() -> list[str]:
    """Every op type ONNX Runtime's QDQ quantizer can quantize (its default op list)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def check_trt_qdq(model) -> list[str]:
    """Problems that keep a QDQ model from TensorRT's int8 path ([] when fine):
    non-zero or non-int8 zero points, int32 DequantizeLinear feeding a bias, quantized
    rank-0 constants."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    const = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    const[n.output[0]] = a.t
    problems = []
    dq_out = {}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.op_type == "DequantizeLinear":
            dq_out[n.output[0]] = n
            if n.input[0] in inits and len(inits[n.input[0]].dims) == 0:
                problems.append(f"{n.name}: dequantizes a quantized scalar constant")
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{n.name}: no zero point (defaults to uint8)")
            continue
        zp = inits.get(n.input[2]) or const.get(n.input[2])
        if zp is None:
            problems.append(f"{n.name}: zero point is not a constant")
            continue
        if zp.data_type != TensorProto.INT8:
            problems.append(f"{n.name}: zero point type {TensorProto.DataType.Name(zp.data_type)}, not INT8")
        if np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.name}: non-zero zero point")
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm") and len(n.input) > 2 and n.input[2] in dq_out:
            problems.append(f"{n.name}: bias is dequantized from an integer tensor")
    return problems


# --------------------------------------------------------------------------- the quantizer

class _Session:
    """One model + calibration: builds QDQ variants from the cached ranges and scores them."""

    def __init__(self, fp32_path: Path, spec: Spec, config: QuantConfig, ranges_path: Path,
                 evalset: EvalSet, workdir: Path, layers: list[Layer], refiner=None,
                 overrides: dict[str, list] | None = None):
        self.fp32_path, self.spec, self.config = fp32_path, spec, config
        self.overrides = overrides or {}  # TensorQuantOverrides: the exact 8-bit picture (center.py)
        self.profile: QuantProfile = config.quant_profile
        self.ranges_path, self.evalset, self.workdir = ranges_path, evalset, workdir
        self.layers = {layer.name: layer for layer in layers}
        self.refiner = refiner
        import onnx

        from .sensitivity import FLOAT_TAGS, constant_operand_nodes

        m = onnx.load(str(fp32_path))
        self.always_float = [n.name for n in m.graph.node if any(t in n.name for t in FLOAT_TAGS)]
        if self.profile.placement == "inputs":
            self.always_float += constant_operand_nodes(m)
        self._memo: dict[tuple, float] = {}
        self.builds = 0

    def build(self, out: Path, float_layers: Sequence[str] = (), only: str | None = None) -> None:
        from onnxruntime.quantization import QuantFormat, quantize_static

        act, wt = self.profile.ort_types()
        exclude = [n for name in float_layers for n in self.layers[name].nodes] + self.always_float
        # Exactly the nodes of the int8 layers, never ORT's "every op it can": a float layer then
        # carries no Q/DQ at all, and neither does any op that belongs to no layer.
        if only:
            quantize_ = list(self.layers[only].nodes)
        else:
            floats = set(float_layers)
            quantize_ = [n for layer in self.layers.values() if layer.name not in floats for n in layer.nodes]
        if not quantize_:  # every layer float: the fp32 graph itself (ORT reads [] as "no restriction")
            import shutil

            shutil.copyfile(self.fp32_path, out)
            self.builds += 1
            return
        extra = self.profile.extra_options()
        if self.overrides:
            extra["TensorQuantOverrides"] = dict(self.overrides)
        extra.update(self.config.extra)
        try:
            with _quiet():
                quantize_static(
                    str(self.fp32_path), str(out), None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=self.profile.op_types() or ort_quantizable_ops(),
                    per_channel=self.profile.per_channel,
                    reduce_range=self.profile.reduce_range, activation_type=act, weight_type=wt,
                    nodes_to_quantize=quantize_, nodes_to_exclude=exclude,
                    calibrate_method=_method_enum(self.config.method),
                    calibration_cache_path=str(self.ranges_path), extra_options=extra)
        except (ValueError, RuntimeError, KeyError) as e:
            raise QuantizationError(f"ONNX Runtime quantizer failed: {str(e).splitlines()[0][:300]}") from None
        self.builds += 1
        guard = self.profile.runtime == "onnxruntime" and self.profile.placement == "ort"
        if self.refiner is not None or guard or self.profile.float_reads_float:
            import onnx

            qm = onnx.load(str(out))
            if self.refiner is not None:
                self.refiner.apply(qm)
            if guard:  # ORT would quantize a float conv fed by an int8 tensor (float_layers.py)
                from .float_layers import keep_float_layers_float

                keep_float_layers_float(qm)
            if self.profile.float_reads_float:  # no dequantizing pass per float consumer (float_layers.py)
                from .float_layers import float_consumers_read_float

                float_consumers_read_float(qm)
            onnx.save(qm, str(out))

    def score(self, float_layers: Sequence[str], only: str | None = None) -> float:
        key = (tuple(sorted(float_layers)), only)
        if key not in self._memo:
            out = self.workdir / "candidate.onnx"
            self.build(out, float_layers, only)
            self._memo[key] = evaluate(out, self.spec, self.evalset, self.config.threads, self.profile.runtime).psnr
        return self._memo[key]


class _Refiners:
    """Weight refiners applied in order to every QDQ candidate (GPTQ / bias correction, then learned values)."""

    def __init__(self, *parts):
        self.parts = [p for p in parts if p is not None]

    def apply(self, qmodel) -> None:
        for p in self.parts:
            p.apply(qmodel)


class QuantSession:
    """Everything up to the all-int8 score, kept alive for building and scoring variants.

    ``with QuantSession(path, spec, config) as qs:`` loads and checks the model, makes the
    calibration patches, applies the exact rewrites, calibrates once, and scores fp32 and
    all-int8 on the evaluation set; then ``qs.score(float_layers)`` / ``qs.build(out,
    float_layers)`` are cheap (no new calibration). :func:`quantize_model` is built on it.
    """

    def __init__(self, onnx_fp32_path: str | os.PathLike, spec: Spec, config: QuantConfig | None = None,
                 calibration=None, eval_set: EvalSet | None = None):
        self.src_path = Path(onnx_fp32_path)
        self.spec = spec
        self.config = config or QuantConfig()
        self.profile = self.config.quant_profile
        self._calibration = calibration
        self._eval_set_given = eval_set  # None: the held-out sample photos (set when entered)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "QuantSession":
        self._tmp = tempfile.TemporaryDirectory(prefix="edgesr-int8-")
        try:
            # (rewrites, calibration, weight rounding, fp32 / all-int8 scores)
            with progress("INT8 preparation", show=self.config.progress):
                self._prepare_best_patch(Path(self._tmp.name))
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _prepare_best_patch(self, work: Path) -> None:
        """_prepare with the profile's calibration patch size and, where that is not SMALL_PATCH, with
        SMALL_PATCH too; the preparation whose all-int8 graph loses less on the evaluation set is kept
        (docs/int8.md, "Calibration patch size": 96-px patches help plain conv nets, not RLFN / SPAN).
        A patch size the caller set, or a CalibrationSource they passed, is used as given."""
        self.patch_choice: dict[str, Any] | None = None
        big = self.config.quant_profile.calibration_patch
        if self.config.patch_size is not None or isinstance(self._calibration, CalibrationSource) or big == SMALL_PATCH:
            self._prepare(work)
            return
        (work / "big").mkdir()
        self._prepare(work / "big")  # the profile's size, or SMALL_PATCH where the images are too small for it
        if self.source.patch_size == SMALL_PATCH:  # ... then there is nothing to choose
            return
        big_state, big_drop = dict(self.__dict__), self.psnr_fp32 - self.psnr_int8_all
        (work / "small").mkdir()
        self._prepare(work / "small", SMALL_PATCH)
        small_drop = self.psnr_fp32 - self.psnr_int8_all
        if big_drop <= small_drop:
            self.__dict__.update(big_state)
        self.patch_choice = {"all_int8_drop": {str(big): big_drop, str(SMALL_PATCH): small_drop},
                             "chosen": self.source.patch_size, "criterion": f"all-int8 Y-PSNR drop on {self.evalset.name}"}

    def _prepare(self, work: Path, patch_size: int | None = None) -> None:
        import onnx

        config, profile, spec, src_path = self.config, self.profile, self.spec, self.src_path
        if not src_path.is_file():
            raise QuantizationError(f"{src_path}: no such ONNX file")
        try:
            model = onnx.load(str(src_path))
        except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types
            raise QuantizationError(f"{src_path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
        if len(model.graph.input) != 1:
            raise QuantizationError(f"{src_path}: expected one input, found {len(model.graph.input)}")
        input_name = model.graph.input[0].name
        self.src_meta = {p.key: p.value for p in model.metadata_props}
        _name_nodes(model)

        calibration = self._calibration
        if isinstance(calibration, CalibrationSource):
            source = calibration
            source.input_name = input_name
        else:
            source = calibration_source(spec, calibration, replace(config, patch_size=patch_size) if patch_size
                                        else config, input_name)
        self.source = source
        check_fp32_output(model.SerializeToString(), source.patches, input_name, config.threads,
                          batch_size=config.batch_size)
        self.evalset: EvalSet = (self._eval_set_given if self._eval_set_given is not None
                                 else held_out_eval_set(spec.scale))
        if len(self.evalset) == 0:
            raise DatasetError("the evaluation set is empty")

        self.eq_report = self.center_report = self.prelu_report = None
        prelu_mode = profile.prelu if config.prelu is None else config.prelu
        if prelu_mode == "split":  # before equalization: the doubled channels get equalized too
            from .prelu import split_prelu

            model, prep = split_prelu(model, source.patches[: min(4, len(source.patches))])
            _check_exact(prep.max_abs_change, "the PRelu -> Relu rewrite", "prelu='split'")
            self.prelu_report = prep.to_dict() | {"mode": "split"}
        if config.equalize:
            from .equalize import equalize

            model, rep = equalize(model, source.patches, alpha=config.equalize_alpha,
                                  symmetric=profile.activation_symmetric, threads=config.threads,
                                  pre_activation=PRE_ACTIVATION_EQUALIZATION and profile.placement == "ort")
            _check_exact(rep.max_abs_change, "activation equalization", "equalize")
            self.eq_report = rep.to_dict()
        if prelu_mode == "decompose":  # after equalization, which needs the PRelu pattern
            from .prelu import decompose_prelu

            model, prep = decompose_prelu(model, source.patches[: min(4, len(source.patches))])
            _check_exact(prep.max_abs_change, "the PRelu decomposition", "prelu='decompose'")
            self.prelu_report = prep.to_dict() | {"mode": "decompose"}
        self.concat_report = None
        if config.split_concat:
            from .concat import split_concat_convs

            model, srep = split_concat_convs(model, source.patches, threads=config.threads)
            if srep.convs:
                _check_exact(srep.max_abs_change, "the concat-conv split", "split_concat")
                self.concat_report = srep.to_dict()
        from .calibration import input_levels
        from .center import CenterReport, center_conv_inputs, exact_input_overrides, picture_grids

        grids = picture_grids(model, input_levels(spec)) if config.exact_input else {}
        crep = None
        if config.center and profile.activation_symmetric:
            model, crep = center_conv_inputs(model, source.patches, threads=config.threads, grids=grids)
            _check_exact(crep.max_abs_change, "zero-centring", "center")
            self.center_report = crep.to_dict()
        self.overrides: dict[str, list] = {}
        self.exact_input_report = None
        if config.exact_input:
            self.overrides, self.exact_input_report = exact_input_overrides(
                model, profile, grids, crep if crep is not None else CenterReport())
        self.fp32_path = work / "fp32.onnx"
        onnx.save(model, str(self.fp32_path))
        from .sensitivity import constant_operand_nodes

        skip = constant_operand_nodes(model) if profile.placement == "inputs" else []
        layers = quantizable_layers(model, profile.op_types() or ort_quantizable_ops(), skip)
        if not layers:
            raise QuantizationError(f"{src_path}: no quantizable layer (Conv/Gemm/MatMul/Add) in the graph")
        self.layers = layers

        ranges = calibrate(self.fp32_path, source, config, profile.op_types(), work)
        out_name = model.graph.output[0].name
        if out_name in ranges and _all_zero(ranges[out_name]):
            raise QuantizationError("the model's output is all zeros for the calibration data")
        from .saturation import clip_saturating_ranges

        self.saturation_clipped = clip_saturating_ranges(model, ranges)
        self.range_report = self._search_ranges(model, ranges, source.patches, layers)
        from onnxruntime.quantization.calibrate import save_tensors_data

        ranges_path = work / "ranges.json"
        save_tensors_data(ranges, ranges_path)

        refiner = None
        if config.gptq or config.bias_correction:
            from .refine import WeightRefiner

            perms = profile.reduce_range if config.gptq_color_permutations is None else config.gptq_color_permutations
            aware = (profile.input_aware if config.input_aware is None else config.input_aware) \
                and profile.placement == "inputs"
            refiner = WeightRefiner(model, source.patches, gptq=config.gptq, bias_correction=config.bias_correction,
                                    color_permutations=perms, threads=config.threads,
                                    input_quant=self._input_quant(model, ranges, layers, every=aware),
                                    input_aware=aware)
        self._qs = _Session(self.fp32_path, spec, config, ranges_path, self.evalset, work, layers, refiner,
                            self.overrides)
        self.psnr_fp32 = evaluate(self.fp32_path, spec, self.evalset, config.threads, profile.runtime).psnr
        self.psnr_int8_all = self._qs.score([])
        self.workdir = work

    def _search_ranges(self, model, ranges, patches: np.ndarray, layers: list[Layer]) -> dict[str, Any] | None:
        """Conv-input ranges chosen by the conv's output error (quant/range_search.py), where enabled."""
        profile = self.profile
        enabled = profile.range_search if self.config.range_search is None else self.config.range_search
        if not enabled or profile.placement != "inputs":  # "ort" placement quantizes conv outputs instead
            return None
        from .range_search import search_ranges

        nodes = {n for layer in layers for n in layer.nodes}
        rep = search_ranges(model, ranges, patches, nodes, symmetric=profile.activation_symmetric,
                            signed=profile.activation_type == "int8", skip=set(self.overrides), threads=self.config.threads)
        return rep.to_dict()

    def _input_quant(self, model, ranges, layers: list[Layer], every: bool) -> dict[str, Any] | None:
        """{conv input tensor: its quantize-dequantize on the calibrated range}: for every input of an int8
        conv with `every` (input-aware rounding), else for the inputs whose range was searched (their
        clipping shifts the mean, which bias correction removes). Never the exact 8-bit picture."""
        changed = {c["tensor"] for c in (self.range_report or {}).get("changed", [])}
        if not every and not changed:
            return None
        from .range_search import fake_quant, tensor_range

        p = self.profile
        nodes = {n for layer in layers for n in layer.nodes}
        readers: dict[str, set] = {}
        for n in model.graph.node:
            if n.op_type == "Conv" and n.input:
                readers.setdefault(n.input[0], set()).add(n.name)
        out: dict[str, Any] = {}
        for t, names in readers.items():
            if not names <= nodes or t in self.overrides or t not in ranges or not (every or t in changed):
                continue
            r = tensor_range(ranges[t])
            if r is not None:
                out[t] = (lambda x, lo=r[0], hi=r[1]: fake_quant(x, lo, hi, p.activation_symmetric,
                                                                  p.activation_type == "int8"))
        return out or None

    _rank_qs: "_Session | None" = None  # the ranking session (centre crops), made on first use

    def finetune(self) -> dict[str, Any]:
        """Fine-tune the all-int8 graph's weight codes and biases (:mod:`edgesr.quant.finetune`).

        The learned values are applied to every candidate built afterwards - on top of GPTQ /
        bias correction - but only when the all-int8 graph scores better with them on the
        evaluation set; otherwise nothing changes. Returns what happened (the report's ``finetune``)."""
        import onnx

        from .finetune import finetune

        config, before = self.config, self.psnr_int8_all
        qmodel = onnx.load(str(self.build(self.workdir / "finetune_start.onnx")))
        try:
            learned, rep = finetune(qmodel, onnx.load(str(self.fp32_path)), self.source.patches,
                                    steps=config.finetune_steps, weight_limit=64 if self.profile.reduce_range else 127,
                                    seed=config.seed, threads=config.threads, progress=config.progress)
        except QuantizationError as e:  # an op the PyTorch mirror lacks: plain PTQ goes on
            return {"applied": False, "reason": str(e)}
        info: dict[str, Any] = rep.to_dict() | {"psnr_int8_all_before": before}
        if not rep.loss_end < rep.loss_start:  # Adam on straight-through codes can wander: nothing learned
            return info | {"applied": False, "reason": f"the error against fp32 on the calibration patches did not "
                                                       f"decrease ({rep.loss_start:.3e} -> {rep.loss_end:.3e})"}
        q = self._qs
        tuned = _Session(q.fp32_path, q.spec, q.config, q.ranges_path, q.evalset, q.workdir, list(q.layers.values()),
                         _Refiners(q.refiner, learned), q.overrides)
        after = tuned.score([])
        info |= {"psnr_int8_all_after": after, "applied": after > before}
        if info["applied"]:
            self._qs, self.psnr_int8_all, self._rank_qs = tuned, after, None
        else:
            info["reason"] = f"the fine-tuned all-int8 graph scores {after:.3f} dB, not above {before:.3f} dB"
        return info

    @property
    def layer_nodes(self) -> dict[str, Layer]:
        return self._qs.layers

    def score(self, float_layers: Sequence[str] = (), only: str | None = None) -> float:
        return self._qs.score(float_layers, only)

    def build(self, out: str | os.PathLike, float_layers: Sequence[str] = ()) -> Path:
        self._qs.build(Path(out), float_layers)
        return Path(out)

    # The per-layer sensitivity only RANKS layers (the search then scores every step on the whole
    # evaluation set): it is measured on centre crops of at most RANK_SIDE pixels, several times
    # cheaper for models with many layers (attention blocks: every Mul/Sigmoid is one).
    RANK_SIDE = 192
    RANK_PIXELS = 6 * 192 * 192

    def _rank_session(self) -> "_Session":
        if self._rank_qs is None:
            from .calibration import EvalPair, EvalSet

            s = self.spec.scale
            pairs = []
            side = self.RANK_SIDE if not _fixed_hw(self._qs.fp32_path) else 1 << 30  # a fixed-shape graph: as is
            # Many pairs (a tiled set): an evenly spread subset, about RANK_PIXELS after the crop
            px = sum(min(p.hr.shape[0], side) * min(p.hr.shape[1], side) for p in self.evalset.pairs)
            step = max(1, -(-px // self.RANK_PIXELS)) if side == self.RANK_SIDE else 1
            for p in self.evalset.pairs[::step]:
                h = min(p.hr.shape[0], side) // s * s
                w = min(p.hr.shape[1], side) // s * s
                t, l = (p.hr.shape[0] - h) // 2 // s * s, (p.hr.shape[1] - w) // 2 // s * s
                pairs.append(EvalPair(p.name, np.ascontiguousarray(p.lr[t // s:(t + h) // s, l // s:(l + w) // s]),
                                      np.ascontiguousarray(p.hr[t:t + h, l:l + w])))
            small = EvalSet(f"{self.evalset.name} (centre crops <= {min(side, self.RANK_SIDE)} px)", s, pairs)
            q = self._qs
            self._rank_qs = _Session(q.fp32_path, q.spec, q.config, q.ranges_path, small, q.workdir,
                                     list(q.layers.values()), q.refiner, q.overrides)
            self.psnr_fp32_rank = evaluate(q.fp32_path, q.spec, small, q.config.threads, q.profile.runtime).psnr
        return self._rank_qs

    def score_rank(self, float_layers: Sequence[str] = (), only: str | None = None) -> float:
        return self._rank_session().score(float_layers, only)

    @property
    def evaluations(self) -> int:
        return len(self._qs._memo)


def quantize_model(onnx_fp32_path: str | os.PathLike, out_path: str | os.PathLike, spec: Spec,
                   config: QuantConfig | None = None, calibration=None, eval_set: EvalSet | None = None,
                   test_set: EvalSet | None = None, sensitivity_png: str | os.PathLike | None = None,
                   full_sensitivity: bool = False) -> QuantResult:
    """Quantize an fp32 ONNX SR model to QDQ INT8 (see the module docstring).

    calibration: None (package sample images), a folder / list of images, or a
        CalibrationSource. eval_set: where the PSNR budget is checked (default: held-out
        sample images). test_set: scored at the end for reporting only (e.g. Set5).
    full_sensitivity: compute the sensitivity table even when no layer needs to be float.
    """
    import onnx

    t0 = time.perf_counter()
    config = config or QuantConfig()
    profile = config.quant_profile
    warnings: list[str] = []
    with QuantSession(onnx_fp32_path, spec, config, calibration, eval_set) as qs:
        evalset, layers = qs.evalset, qs.layers
        rows: list[SensitivityRow] = []
        budget = config.psnr_budget
        result_search: SearchResult | None = None
        finetune_info = None
        if config.finetune and budget is not None and qs.psnr_fp32 - qs.psnr_int8_all > budget:
            finetune_info = qs.finetune()
        psnr_fp32, psnr_all = qs.psnr_fp32, qs.psnr_int8_all
        need = budget is not None and psnr_fp32 - psnr_all > budget
        if need or full_sensitivity or sensitivity_png:
            methods = ("only", "except") if (full_sensitivity or sensitivity_png) else (config.sensitivity,)
            qs._rank_session()
            rows = sensitivity(layers, qs.score_rank, qs.psnr_fp32_rank, qs.score_rank([]), methods, config.progress)
        probe = None
        if need and budget is not None:
            order = ranking(rows, config.sensitivity)
            probe = _speed_probe(qs, spec, config)
            result_search = search(order, qs.score, psnr_fp32, psnr_all, budget, max_float_layers(config, len(layers)),
                                   progress=config.progress, speed=_speed_fn(qs, probe) if probe else None)
            if not result_search.within_budget:
                warnings.append(f"no INT8 graph held the {budget} dB budget on {evalset.name}: the best one "
                                f"evaluated loses {result_search.drop:.3f} dB with {len(result_search.float_layers)} "
                                f"of {len(layers)} layers float (all-int8: {psnr_fp32 - psnr_all:.3f} dB)")
        float_layers = result_search.float_layers if result_search else []
        final_tmp = qs.build(qs.workdir / "final.onnx", float_layers)
        speed_info = None
        if probe is not None and result_search is not None:
            ratio, fast = probe(final_tmp)
            speed_info = {"speedup_vs_fp32": ratio, "min_speedup": config.min_speedup, "lr_hw": list(probe.x.shape[2:]),
                          "timed_candidates": probe.timings,
                          "not_taken_too_slow": [{"float_layers": s.float_layers, "speedup": s.speedup}
                                                 for s in result_search.skipped_slow]}
            if result_search.skipped_slow:
                warnings.append(f"{len(result_search.skipped_slow)} float-layer candidate(s) were not taken: slower "
                                f"than {config.min_speedup}x fp32 on this machine")
        psnr_int8 = qs.score(float_layers)

        qmodel = onnx.load(str(final_tmp))
        if profile.name == "trt":
            problems = check_trt_qdq(qmodel)
            if problems:
                raise QuantizationError("trt profile produced a graph TensorRT would reject: " + "; ".join(problems[:5]))
        test_fp32 = test_int8 = None
        if test_set is not None:
            with progress(f"INT8 scoring on {test_set.name}", show=config.progress):
                test_fp32 = evaluate(qs.fp32_path, spec, test_set, config.threads, profile.runtime).psnr
                test_int8 = evaluate(final_tmp, spec, test_set, config.threads, profile.runtime).psnr
        float_nodes = [n for name in float_layers for n in qs.layer_nodes[name].nodes]
        meta = dict(qs.src_meta)
        if "precision" in meta:
            meta["precision"] = "int8"
        meta.update({
            "edgesr.int8.profile": profile.name,
            "edgesr.int8.runtime": profile.runtime,
            "edgesr.int8.method": config.method,
            "edgesr.int8.float_nodes": json.dumps(float_nodes),
            "edgesr.int8.eval_set": evalset.name,
            "edgesr.int8.psnr_fp32": f"{psnr_fp32:.4f}",
            "edgesr.int8.psnr_int8": f"{psnr_int8:.4f}",
            "edgesr.int8.equalized": json.dumps(bool(config.equalize)),
            "edgesr.int8.centered": json.dumps(bool(qs.center_report and qs.center_report["inputs"])),
            "edgesr.int8.exact_input": json.dumps((qs.exact_input_report or {}).get("exact", [])),
            "edgesr.int8.finetuned": json.dumps(bool(finetune_info and finetune_info["applied"])),
        })
        _set_metadata(qmodel, meta)
        out = Path(out_path)
        with atomic_path(out) as tmp_out:
            onnx.save(qmodel, str(tmp_out))
        source, patch_choice = qs.source, qs.patch_choice
        reports = (qs.eq_report, qs.center_report, qs.prelu_report, qs.concat_report, qs.exact_input_report)
        range_report = qs.range_report

    result = QuantResult(
        path=out, profile=profile.name, config=config.to_dict(), float_nodes=float_nodes,
        float_layers=float_layers, psnr_fp32=psnr_fp32, psnr_int8=psnr_int8, psnr_int8_all=psnr_all,
        within_budget=budget is None or psnr_fp32 - psnr_int8 <= budget, eval_set=evalset.name,
        budget=budget, eval_images=evalset.images, criterion=verdict_criterion(budget),
        sensitivity=rows, layers=[layer.name for layer in layers],
        search_steps=[asdict(s) for s in result_search.steps] if result_search else [],
        calibration=source.describe() | {"method": config.method, "patch_size_choice": patch_choice},
        equalization=reports[0],
        centering=reports[1], exact_input=reports[4], prelu_rewrite=reports[2], concat_split=reports[3], finetune=finetune_info,
        range_search=range_report,
        test_set=test_set.name if test_set is not None else None, test_psnr_fp32=test_fp32,
        test_psnr_int8=test_int8, op_counts=_op_counts(qmodel), warnings=warnings, speed=speed_info)
    if sensitivity_png and rows:
        from .sensitivity import plot_sensitivity

        model_name = (spec.variant if spec.variant else f"{spec.arch} x{spec.scale}" if spec.arch != "unknown"
                      else f"{Path(onnx_fp32_path).name} x{spec.scale}")
        plot_sensitivity(rows, sensitivity_png, title=f"{model_name}: INT8 sensitivity, {profile.name} profile\n"
                         f"(Y-PSNR on {evalset.name})", float_layers=float_layers)
    result.seconds = time.perf_counter() - t0
    return result


def _speed_probe(qs: "QuantSession", spec: Spec, config: QuantConfig):
    """A SpeedProbe for ONNX Runtime CPU graphs (None: speed not measured for this profile)."""
    profile = config.quant_profile
    if config.min_speedup is None or profile.runtime != "onnxruntime" or profile.placement != "ort":
        return None
    from .speed import SpeedProbe

    fixed = None
    if _fixed_hw(qs.src_path):
        import onnx

        dims = onnx.load(str(qs.src_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        fixed = (dims[2].dim_value, dims[3].dim_value)
    # against the fp32 graph the user has (the bundle's), not the quantizer's rewritten one: the PRelu
    # decomposition alone makes ECBSR's fp32 ~24 % faster, and the INT8 graph has to beat what ships
    return SpeedProbe(qs.src_path, spec.in_channels, config.min_speedup, config.threads, fixed)


def _speed_fn(qs: "QuantSession", probe):
    """speed(float_layers) for the search: build the candidate, time it against fp32 (memoized)."""
    memo: dict[tuple, tuple[float, bool]] = {}

    def speed(float_layers: Sequence[str]) -> tuple[float, bool]:
        key = tuple(sorted(float_layers))
        if key not in memo:
            memo[key] = probe(qs.build(qs.workdir / "speed_candidate.onnx", float_layers))
        return memo[key]

    return speed


SMALL_PATCH = 48  # LR pixels: the other calibration patch size tried, and the one for images too small


def calibration_source(spec: Spec, images, config: QuantConfig, input_name: str) -> CalibrationSource:
    """The calibration patches: `config.patch_size`, or (None) the profile's `calibration_patch` - falling
    back to SMALL_PATCH when no calibration image (or the model's size rules) fits that, so that images
    a user's smaller default worked with before still do."""
    size = config.patch_size or config.quant_profile.calibration_patch

    def make(p: int) -> CalibrationSource:
        return CalibrationSource(spec, images, num_patches=config.num_patches, patch_size=p, seed=config.seed,
                                 batch_size=config.batch_size, input_name=input_name, progress=config.progress)

    if config.patch_size is not None or size == SMALL_PATCH:
        return make(size)
    try:
        return make(size)
    except PatchSizeError:
        return make(SMALL_PATCH)


def verdict_criterion(budget: float | None) -> str:
    """The one INT8 verdict, in words (report, manifest)."""
    if budget is None:
        return "none (no PSNR budget given)"
    return (f"mean Y-PSNR drop vs fp32, both measured against the ground-truth HR images (BasicSR protocol: "
            f"Y of YCbCr, border crop = scale) of the evaluation set, disjoint from the calibration images, "
            f"<= {budget:g} dB")


def max_float_layers(config: QuantConfig, n_layers: int) -> int:
    """How many layers the search may keep float: an "INT8" graph that is mostly float is not one."""
    cap = max(0, min(n_layers - 1, int(config.max_float_fraction * n_layers)))
    return cap if config.max_float_layers is None else min(cap, config.max_float_layers)


def _check_exact(change: float | None, what: str, option: str) -> None:
    if change is not None and not change <= EQUALIZE_TOL:
        raise QuantizationError(f"{what} changed the fp32 output by {change:.2e} (> {EQUALIZE_TOL}); "
                                f"rerun with {option} off")


def _all_zero(td) -> bool:
    try:
        lo, hi = td.range_value
    except AttributeError:
        return False
    return float(np.max(np.abs(lo))) == 0.0 and float(np.max(np.abs(hi))) == 0.0


def _name_nodes(model) -> None:
    """Give unnamed nodes unique names (nodes_to_exclude needs them)."""
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def _set_metadata(model, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
