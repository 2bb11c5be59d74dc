"""The one HxW parser (edgesr.sizes) and the options that use it."""

from __future__ import annotations

import pytest

from edgesr.cli import main
from edgesr.errors import EdgesrError
from edgesr.sizes import MAX_SIDE, SizeError, parse_hw, parse_hw_list


@pytest.mark.parametrize("text, hw", [
    ("180x320", (180, 320)), ("180X320", (180, 320)), ("180×320", (180, 320)),
    (" 17x23 ", (17, 23)), ("17 x 23", (17, 23)), ("12", (12, 12)), ("007x08", (7, 8)),
    ("1x1", (1, 1)), (f"{MAX_SIDE}x1", (MAX_SIDE, 1)),
])
def test_parses(text, hw):
    assert parse_hw(text) == hw


@pytest.mark.parametrize("text", ["x", "12x", "x12", "", " ", "12x34x5", "-3x4", "3x-4", "+3x4", "1_0x4", "12by4",
                                  "1.5x2", "0x0y", "１２x３", "12x\n34"])
def test_refuses_what_is_not_hxw(text):
    with pytest.raises(SizeError) as e:
        parse_hw(text, "--size")
    msg = str(e.value)
    assert msg.startswith("--size: ") and "is not HxW" in msg and "\n" not in msg


@pytest.mark.parametrize("text", ["0", "0x5", "5x0", "000x3", f"{MAX_SIDE + 1}x1", "99999999999999999999x1",
                                  "9" * 5000])
def test_refuses_sides_out_of_range(text):
    with pytest.raises(SizeError, match=rf"must be two positive integers up to {MAX_SIDE} ") as e:
        parse_hw(text, "--size")
    assert len(str(e.value)) < 200  # a long input is clipped in the message


def test_error_is_an_edgesr_error_and_a_value_error():
    with pytest.raises(EdgesrError):
        parse_hw("q")
    with pytest.raises(ValueError):
        parse_hw("q")


def test_list():
    assert parse_hw_list("17x23, 32x32,,31x100") == [(17, 23), (32, 32), (31, 100)]
    assert parse_hw_list("") == [] and parse_hw_list(" , ") == []
    with pytest.raises(SizeError, match="^--sizes: '12by4' is not HxW"):
        parse_hw_list("17x23,12by4", "--sizes")


@pytest.mark.parametrize("argv, option", [
    (["convert", "{ckpt}", "-o", "{out}", "--mobile-size", "12x"], "--mobile-size"),
    (["convert", "{ckpt}", "-o", "{out}", "--trt-rtx", "--trt-min", "0x16"], "--trt-min"),
    (["bench", "{ckpt}", "--size=-4x4"], "--size"),
    (["parity", "{ckpt}", "{ckpt}", "--sizes", "17x23,x"], "--sizes"),
])
def test_every_size_option_refuses_in_one_line(argv, option, tmp_path, capsys):
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    out = tmp_path / "out"
    rc = main([a.format(ckpt=BUNDLED_CHECKPOINT, out=out) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"edgesr: error: {option}: ") and err.count("\n") == 1
    assert not out.exists()
