"""`edgesr` command line: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; modules import heavy libraries inside ``run`` only.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import EdgesrError

# Explicit, ordered list of subcommand modules (edgesr/cli/<name>.py).
COMMANDS = ["list", "convert", "eval", "parity", "bench", "quantize", "build_engine", "info", "upscale", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesr",
        description="Take efficient super-resolution models to the edge: reparameterize, export ONNX, "
                    "quantize INT8, build TensorRT engines, check parity, measure latency, bundle.")
    parser.add_argument("--version", action="version", version=f"edgesr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # subcommand not part of this build
            raise
        p = mod.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        if name == "convert":
            p.add_argument("--recipe", metavar="FILE", help="TOML file of options (export/recipes/); options "
                           "given after it on the command line win")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # (not `list(...)`: importing the `list` subcommand binds that name in this module)
    argv = [*(sys.argv[1:] if argv is None else argv)]
    try:
        from ..recipe import expand_recipes

        argv = expand_recipes(argv)
    except EdgesrError as e:
        print(f"edgesr: error: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_args(argv)
    _sigterm_as_interrupt()
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    try:
        return int(args._run(args) or 0)
    except EdgesrError as e:
        if debug:
            raise
        print(f"edgesr: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgesr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error worth a message.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI promises no traceback without --debug
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"edgesr: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


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
