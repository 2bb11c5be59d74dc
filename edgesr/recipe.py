"""Declarative export recipes: a TOML file holding the options of one `edgesr` command.

Keys are the command's long option names (``int8-profile = "both"``, ``fp16 = true``);
``checkpoint`` is the positional argument. Relative paths are relative to the recipe file.
``edgesr convert --recipe FILE [more options]`` expands the file in place, so options on
the command line after it win.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import EdgesrError

PATH_KEYS = {"checkpoint", "outdir", "calib", "testset", "trt-cache"}
POSITIONAL = {"convert": "checkpoint"}


class RecipeError(EdgesrError):
    """A recipe file is missing or malformed."""


def load_recipe(path: str | Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: not valid TOML ({e})") from None
    for key, value in data.items():
        if isinstance(value, (dict, list)) and key != "description":
            raise RecipeError(f"{p}: option {key!r} must be a single value, not a {type(value).__name__}")
    return data


def recipe_argv(path: str | Path, command: str) -> list[str]:
    """The recipe as command-line tokens for `command`."""
    p = Path(path)
    data = load_recipe(p)
    wanted = data.pop("command", command)
    if wanted != command:
        raise RecipeError(f"{p} is a recipe for `edgesr {wanted}`, not `edgesr {command}`")
    data.pop("description", None)
    argv: list[str] = []
    positional = POSITIONAL.get(command)
    for key, value in data.items():
        if key in PATH_KEYS and isinstance(value, str):
            value = str((p.parent / value).resolve()) if not Path(value).is_absolute() else value
        if key == positional:
            argv.insert(0, str(value))
        elif value is True:
            argv.append(f"--{key}")
        elif value is False:
            continue
        else:
            argv += [f"--{key}", str(value)]
    return argv


def expand_recipes(argv: list[str]) -> list[str]:
    """Replace ``--recipe FILE`` (after the subcommand) with the recipe's tokens."""
    if "--recipe" not in argv:
        return argv
    cmd = next((a for a in argv if not a.startswith("-")), None)
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--recipe":
            if i + 1 >= len(argv):
                raise RecipeError("--recipe needs a file name")
            out += recipe_argv(argv[i + 1], cmd or "convert")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
