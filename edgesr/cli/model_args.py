"""--model FILE.py:NAME and its options, shared by convert/eval/parity/bench/upscale/quantize.

Thin on purpose: the flags, and one call turning (weights, flags) into a model
(:func:`edgesr.resolve.resolve_user_model`)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own model code (README: 'Bring your own model')")
    g.add_argument("--model", dest="user_model", metavar="FILE.py:NAME",
                   help="build the network with your code: NAME (class or factory) from FILE.py; the checkpoint "
                        "argument is then its weights. Code is imported only when named here")
    g.add_argument("--model-kwargs", metavar="JSON", help="arguments for NAME, e.g. '{\"scale\": 4, \"nf\": 48}'")
    g.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="load_state_dict strictly, as the author's loader did (default: strict)")
    g.add_argument("--weights-key", metavar="KEY",
                   help="state_dict entry to take from the weights file (e.g. params where it also holds "
                        "params_ema); default: params_ema, params, state_dict, ... in that order")
    g.add_argument("--model-path", action="append", default=[], metavar="DIR",
                   help="extra import folder for the code (e.g. its repository root for 'from models.x import Y'); "
                        "repeatable. FILE's own folder is always importable")
    g.add_argument("--input-range", metavar="R",
                   help="input range the weights expect (1 or 255); default: found by running the model on "
                        "natural images (the output must still beat bicubic)")


def user_options(args, registry_range_ok: bool = False) -> dict | None:
    """The --model options as keyword arguments of resolve_user_model, or None without --model.
    registry_range_ok: the command applies --input-range to registry checkpoints too (convert, eval);
    elsewhere --input-range without --model is refused rather than ignored."""
    from ..conventions import parse_input_range
    from ..errors import UserCodeError
    from ..usermodel import ModelRef, parse_kwargs

    ref = getattr(args, "user_model", None)
    if not ref:
        for flag, v in (("--model-kwargs", getattr(args, "model_kwargs", None)),
                        ("--weights-key", getattr(args, "weights_key", None)),
                        ("--model-path", getattr(args, "model_path", None))):
            if v:
                raise UserCodeError(f"{flag} needs --model FILE.py:NAME")
        if not registry_range_ok and getattr(args, "input_range", None) is not None:
            raise UserCodeError("--input-range without --model is honoured by convert and eval only: convert the "
                                "checkpoint with --input-range and use its OUTDIR here, or pass --model FILE.py:NAME")
        return None
    return {"ref": ModelRef.parse(ref), "kwargs": parse_kwargs(args.model_kwargs), "strict": args.strict,
            "key": args.weights_key, "extra_paths": tuple(args.model_path or ()),
            "input_range": parse_input_range(getattr(args, "input_range", None))}


def registry_input_range(args) -> float | None:
    from ..conventions import parse_input_range

    return parse_input_range(getattr(args, "input_range", None))
