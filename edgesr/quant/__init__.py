"""INT8 post-training quantization: calibration data, QDQ profiles, sensitivity and
mixed precision. Entry point: :func:`quantize_model`."""

from .calibration import CalibrationSource, EvalSet, held_out_eval_set, testset_eval_set
from .profiles import CPU, OPENVINO, PROFILE_BACKEND, PROFILES, TRT, QuantConfig, QuantProfile, get_profile
from .quantize import QuantResult, QuantSession, check_trt_qdq, quantize_model

__all__ = [
    "CalibrationSource", "EvalSet", "held_out_eval_set", "testset_eval_set",
    "QuantConfig", "QuantProfile", "PROFILES", "PROFILE_BACKEND", "TRT", "CPU", "OPENVINO", "get_profile",
    "QuantResult", "QuantSession", "quantize_model", "check_trt_qdq",
]
