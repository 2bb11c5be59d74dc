"""Argument parsing that keeps edgesr's promises: every numeric option states its domain
(finite, positive, bounded) and every usage error is one ``edgesr: error: ...`` line.

The types here are argparse ``type=`` callables; a bad value is reported by argparse as
``argument --threads: must be an integer >= 1, got '-1'``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

from ..errors import one_line

# Upper bounds that keep a typo from turning into hours of work or a huge allocation.
MAX_THREADS = 1024
MAX_SECONDS = 24 * 3600.0


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line naming the subcommand (no usage block)."""

    def error(self, message: str) -> NoReturn:
        prog = self.prog
        sub = prog[len("edgesr"):].strip() if prog.startswith("edgesr") else prog
        where = f"{sub}: " if sub else ""
        line = f"{where}{one_line(message)} (see `{prog} --help`)"
        if json_errors_requested():
            from .output import emit_json_error

            emit_json_error(line, "UsageError", 2)
        self.exit(2, f"edgesr: error: {line}\n")


# Set by `edgesr.cli.main` for each run: --json was asked for, so a failure is also one JSON
# object on stdout (scripts parse stdout; people read the stderr line).
_json_errors = False


def request_json_errors(on: bool) -> None:
    global _json_errors
    _json_errors = on


def json_errors_requested() -> bool:
    return _json_errors


def int_range(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"must be {what}{_bounds(lo, hi)}, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {what}{_bounds(lo, hi)}, got {text!r}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                what: str = "a finite number") -> Callable[[str], float]:
    """argparse type: a finite float in [lo, hi] (or (lo, hi] with lo_open); never NaN or inf."""

    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except (ValueError, AttributeError):
            v = math.nan
        ok = math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}{_bounds(lo, hi, lo_open)}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


def _bounds(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


positive_int = int_range(1)
nonneg_int = int_range(0)
threads = int_range(1, MAX_THREADS)
scale = int_range(1, 32, what="an integer upscale factor")
seconds = float_range(0.0, MAX_SECONDS, what="a number of seconds")
positive_seconds = float_range(0.0, MAX_SECONDS, lo_open=True, what="a number of seconds")
finite = float_range()
nonneg_finite = float_range(0.0)


def print_error(message: object) -> None:
    """The one line a failing command prints (names escaped whatever the message holds)."""
    print(f"edgesr: error: {one_line(message)}", file=sys.stderr)


def add_runtime_backend(p: argparse.ArgumentParser) -> None:
    """`--backend` of the commands that run one MODEL (eval, upscale): every runtime
    edgesr.resolve opens, default from the MODEL's file type."""
    from ..resolve import BACKENDS

    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="default: the runtime MODEL's file type implies (.onnx/.ort -> ort, .xml -> openvino, "
                        ".tflite -> litert, .param -> ncnn), torch for a checkpoint or OUTDIR. "
                        "torch, ort (ONNX Runtime CPU), openvino (needs pip install 'edgesr[openvino]'); "
                        "ort-int8 / openvino-int8 run the INT8 graph a convert OUTDIR holds for that runtime; from "
                        "an OUTDIR also its mobile artifacts (litert, ncnn and their -int8; coreml: no runtime "
                        "here). A .tflite / .param MODEL runs on its own runtime")
