"""Declarative export recipes (export/recipes/*.toml) expand into convert options."""

from __future__ import annotations

import pytest
from conftest import REPO

from edgesr.cli import main
from edgesr.recipe import RecipeError, expand_recipes, recipe_argv

RECIPES = sorted((REPO / "export" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_parses_into_convert_options(path):
    from edgesr.cli import build_parser

    argv = ["convert", *recipe_argv(path, "convert")]
    args = build_parser().parse_args(argv)
    assert args.outdir and args.command == "convert"


def test_command_line_overrides_recipe(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('command = "convert"\noutdir = "out"\nint8 = true\nint8-profile = "cpu"\nfp16 = false\n')
    argv = expand_recipes(["convert", "--recipe", str(r), "--int8-profile", "trt"])
    from edgesr.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.int8 and not args.fp16 and args.int8_profile == "trt"
    assert args.outdir == str(tmp_path / "out")  # relative to the recipe file


def test_recipe_runs_convert(tmp_path, capsys):
    r = tmp_path / "r.toml"
    r.write_text('command = "convert"\noutdir = "bundle"\nno-bench = true\n')
    assert main(["convert", "--recipe", str(r)]) == 0
    assert (tmp_path / "bundle" / "manifest.json").is_file()


@pytest.mark.parametrize("text,needle", [("int8 = [1, 2]", "single value"), ("= broken", "not valid TOML"),
                                         ('command = "eval"', "recipe for `edgesr eval`")])
def test_bad_recipes(tmp_path, capsys, text, needle):
    r = tmp_path / "r.toml"
    r.write_text(text)
    assert main(["convert", "--recipe", str(r)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    with pytest.raises(RecipeError):
        recipe_argv(r, "convert")


def test_missing_recipe(capsys, tmp_path):
    assert main(["convert", "--recipe", str(tmp_path / "nope.toml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
