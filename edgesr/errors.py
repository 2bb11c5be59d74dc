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


class OutputError(EdgesrError):
    """An output location cannot be used (not writable, or replacing it would lose data)."""


class OutputExists(OutputError):
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


class LimitExceeded(EdgesrError):
    """An input declares more than a configured limit allows (bytes, tensors, nesting, time)."""


class BackendRunError(EdgesrError):
    """A backend failed while running a model, or was stopped (time limit)."""


class RunStopped(BackendRunError):
    """A run stopped by --time-limit or a signal: the answer to the whole command, never a
    fallback (an analysis that catches failures must let this one through)."""


# ---------------------------------------------------------------------------- names in messages

# Characters that would break "one message = one line" or fake terminal output, beyond what
# str.isprintable() already rejects (it passes none of C0/C1 controls, line/paragraph
# separators or bidi controls, which are categories Cc/Zl/Zp/Cf).
_QUOTE_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str, quote: bool) -> str:
    if quote and ch in _QUOTE_ESCAPES:
        return _QUOTE_ESCAPES[ch]
    if ch.isprintable():
        return ch
    if not quote and ch in _QUOTE_ESCAPES:
        return _QUOTE_ESCAPES[ch]
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o <= 0xFF else (f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")


def quoted(name: object) -> str:
    """A file name (or other untrusted text) as it appears in a message: in single quotes,
    with quotes, backslashes, control characters, line separators, bidi controls and bytes
    that are not UTF-8 escaped, so the message stays one honest line whatever the name holds."""
    import os

    if isinstance(name, bytes):
        name = os.fsdecode(name)
    elif isinstance(name, os.PathLike):
        name = os.fspath(name)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
    return "'" + "".join(_escape_char(c, True) for c in str(name)) + "'"


def one_line(text: object) -> str:
    """`text` with every character that could start a new line or drive the terminal escaped
    (the last line of defence before edgesr prints a message; names should already be quoted)."""
    return "".join(_escape_char(c, False) for c in str(text))


def clipped(text: object, limit: int = 200) -> str:
    """`text` shortened to about `limit` characters at a word boundary, ending in '...' when cut
    (a library's long error quoted in a message must not stop mid-word)."""
    t = " ".join(str(text).split())
    if len(t) <= limit:
        return t
    cut = t[:limit]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:(") + " ..."
