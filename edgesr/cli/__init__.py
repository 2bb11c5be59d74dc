"""`edgesr` command line: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; modules import heavy libraries inside ``run`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Iterator

from .. import __version__
from ..errors import EdgesrError, one_line, quoted
from .args import Parser, positive_seconds, request_json_errors

# Explicit, ordered list of subcommand modules (edgesr/cli/<name>.py).
COMMANDS = ["list", "convert", "eval", "parity", "bench", "quantize", "info", "upscale", "train"]
# Subcommands that run models (they take --time-limit).
RUNS_MODELS = ("convert", "eval", "parity", "bench", "quantize", "upscale")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edgesr",
        description="Take efficient super-resolution models to the edge: reparameterize, export ONNX, "
                    "quantize INT8, build TensorRT engines, check parity, measure latency, bundle.")
    parser.add_argument("--version", action="version", version=f"edgesr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f".{name}", __name__)
        p = mod.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        if name in RUNS_MODELS:
            p.add_argument("--time-limit", type=positive_seconds, metavar="S", default=argparse.SUPPRESS,
                           help="stop with an error when one ONNX Runtime inference runs longer than S seconds "
                                "(default: no limit; Ctrl-C and SIGTERM always stop it)")
        if name == "convert":
            p.add_argument("--recipe", metavar="FILE", help="TOML file of options (export/recipes/); options "
                           "given after it on the command line win")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    rc = _main(argv)
    if argv is None:  # the real command line (not a caller in this process)
        _exit_past_unstopped_runs(rc)
    return rc


def _exit_past_unstopped_runs(rc: int) -> None:
    """A backend run that could not be stopped (OpenVINO cannot cancel a running node) would keep
    the interpreter from exiting: end the process now, the answer already printed."""
    ov = sys.modules.get("edgesr.backends.openvino_runner")
    if ov is not None and getattr(ov, "UNSTOPPED", None):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # (not `list(...)`: importing the `list` subcommand binds that name in this module)
    argv = [*(sys.argv[1:] if argv is None else argv)]
    from .output import reset_json_state

    reset_json_state()
    request_json_errors("--json" in argv)
    try:
        from ..recipe import expand_recipes

        argv = expand_recipes(argv)
    except EdgesrError as e:
        _fail(e, type(e).__name__, e.exit_code)
        return e.exit_code
    request_json_errors("--json" in argv)
    args = parser.parse_args(argv)
    _sigterm_as_interrupt()
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    try:
        with _warnings_as_notes(debug), _run_limits(args):
            return int(args._run(args) or 0)
    except EdgesrError as e:
        if debug:
            raise
        _fail(e, type(e).__name__, e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        _fail("interrupted", "KeyboardInterrupt", 130, prefix="edgesr: ")
        return 130
    except SystemExit as e:  # edgesr's commands return their status; only code it ran (--model) exits
        if debug:
            raise
        _fail(f"code run by --model called sys.exit({e.code!r}) while edgesr was running it; nothing was finished",
              "SystemExit", 1)
        return 1
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error worth a message.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the file system said no (permissions, full disk, name too long, ...)
        if debug:
            raise
        where = f" {quoted(e.filename)}" if e.filename else ""
        _fail(f"{e.strerror or type(e).__name__}:{where}" if e.strerror else f"{type(e).__name__}: {e}",
              type(e).__name__, 1)
        return 1
    except MemoryError:
        if debug:
            raise
        _fail("out of memory (the input needs more memory than this machine has; try smaller sizes)",
              "MemoryError", 1)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI promises no traceback without --debug
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _fail(f"{type(e).__name__}: {one_line(msg)} (rerun with --debug for the traceback)", "InternalError", 1,
              prefix="edgesr: internal error: ")
        return 1


def _fail(message: object, error_type: str, exit_code: int, prefix: str = "edgesr: error: ") -> None:
    """The one line a failing run prints on stderr; under --json also one JSON object on stdout."""
    from .args import json_errors_requested

    line = one_line(message)
    if json_errors_requested():
        from .output import emit_json_error

        emit_json_error(line, error_type, exit_code)
    print(f"{prefix}{line}", file=sys.stderr)


@contextlib.contextmanager
def _warnings_as_notes(debug: bool) -> Iterator[None]:
    """edgesr's own warnings become one ``edgesr: note:`` line each; a library's warnings are
    not shown (they would print before, and look like part of, edgesr's answer) unless --debug."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith("edgesr"):
            print(f"edgesr: note: {one_line(text.split(' ', 1)[-1] if text.startswith('edgesr ') else text)}",
                  file=sys.stderr)
        elif debug:
            print(f"edgesr: note: {category.__name__} from {one_line(filename)}:{lineno}: {one_line(text)}",
                  file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _run_limits(args) -> Iterator[None]:
    limit = getattr(args, "time_limit", None)
    if limit is None:
        yield
        return
    from ..backends.ort_runner import run_time_limit

    with run_time_limit(limit):
        yield


def _sigterm_as_interrupt() -> None:
    """A build system's SIGTERM unwinds like Ctrl-C, so staging folders get cleaned up."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
