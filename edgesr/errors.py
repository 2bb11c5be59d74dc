"""Typed errors. The CLI prints each as one line (no traceback unless --debug)."""

from __future__ import annotations


class EdgesrError(Exception):
    """Base of every error edgesr raises on purpose; its message is user-facing."""

    exit_code = 2


class CheckpointError(EdgesrError):
    """A checkpoint file is missing, corrupt, unsafe or not a state_dict."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle that would execute code on load."""


class UnknownArchitecture(EdgesrError):
    """No registered architecture matches a state_dict."""


class KeyMismatch(EdgesrError):
    """A state_dict does not fit the architecture it was detected as / asked to be."""


class InvalidWeights(EdgesrError):
    """NaN/Inf or wrong-dtype tensors in a checkpoint."""


class ScaleMismatch(EdgesrError):
    """--scale disagrees with the checkpoint, or is unsupported."""


class ImageError(EdgesrError):
    """An image cannot be read or has an unsupported mode/size."""


class DatasetError(EdgesrError):
    """A test set or calibration folder is missing, empty or incomplete."""


class ExportError(EdgesrError):
    """ONNX export, simplification or checking failed."""


class Fp16Overflow(ExportError):
    """A tensor would exceed the fp16 range."""


class ParityError(EdgesrError):
    """Two backends disagree beyond tolerance."""


class QuantizationError(EdgesrError):
    """INT8 calibration or quantization failed."""


class BackendUnavailable(EdgesrError):
    """An optional backend is not installed (message says which extra to install)."""


class EngineBuildError(EdgesrError):
    """TensorRT / TensorRT-RTX failed to parse or build."""


class OutputExists(EdgesrError):
    """Refusing to overwrite an existing output without --force."""


class BundleError(EdgesrError):
    """A bundle/manifest is invalid or its files do not match their hashes."""


class UserCodeError(EdgesrError):
    """The user's model code (``--model FILE.py:NAME``) cannot be imported, built or run.

    ``category`` names the kind of failure for summaries (``missing-import``, ``user-code``)."""

    category = "user-code"


class MissingDependency(UserCodeError):
    """The user's model code imports a package that is not installed."""

    category = "missing-import"


class ImplausibleOutput(EdgesrError):
    """No input convention (range, mean shift, colour order) makes the model's output a
    plausible super-resolution: refusing rather than reporting garbage."""
