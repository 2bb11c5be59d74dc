"""Bad input -> one-line actionable error on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from edgesr.cli import main


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgesr: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_checkpoint(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "convert", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "not found", "nope.pth")


def test_not_a_checkpoint(capsys, tmp_path):
    bad = tmp_path / "photo.pth"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    rc, _, err = run_cli(capsys, "convert", str(bad), "-o", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "photo.pth")


def test_unknown_architecture_lists_keys(capsys, tmp_path):
    p = tmp_path / "mystery.pth"
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3), "decoder.bias": torch.zeros(3)}, p)
    rc, _, err = run_cli(capsys, "convert", str(p), "-o", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "no registered architecture", "encoder", "decoder")


def test_wrong_scale(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "convert", "--scale", "3", "-o", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "--scale 3", "x4")


def test_outdir_exists_without_force(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    rc, _, err = run_cli(capsys, "convert", "-o", str(out))
    assert_one_line_error(rc, err, "exists", "--force")
    assert (out / "keep.txt").read_text() == "precious"


def test_testset_missing_lr(capsys, tmp_path):
    from PIL import Image

    root = tmp_path / "set"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X4").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "HR" / "a.png")
    Image.new("RGB", (32, 32)).save(root / "HR" / "b.png")
    Image.new("RGB", (8, 8)).save(root / "LR_bicubic" / "X4" / "ax4.png")
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    rc, _, err = run_cli(capsys, "eval", str(BUNDLED_CHECKPOINT), "--testset", str(root), "--scale", "4")
    assert_one_line_error(rc, err, "b")


def test_eval_wrong_scale(capsys, tmp_path):
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    rc, _, err = run_cli(capsys, "eval", str(BUNDLED_CHECKPOINT), "--testset", str(tmp_path), "--scale", "2")
    assert_one_line_error(rc, err, "--scale 2")


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgesr", "--debug", "convert", str(tmp_path / "nope.pth"),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_subprocess_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgesr", "convert", str(tmp_path / "nope.pth"),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("cmd", ["list", "convert", "eval", "train"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: edgesr " + cmd in capsys.readouterr().out
