"""`edgesr upscale` options and limits: validated numbers, memory budget refusals, temp files.

Every bad value is one `edgesr: error:` line; a budget that an image cannot fit is refused
before decoding (decompression bombs) or before any model call; temp files of a killed
run are removed by the next one, never anything edgesr did not write.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.cli import main
from edgesr.imaging import clean_stale_temps, read_image, write_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    lm = build_variant("ecbsr-m4c16-x2", "deploy")  # receptive field 6
    p = tmp_path_factory.mktemp("ckpt") / "ecbsr_x2.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(p))
    return p


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgesr: error:") and "Traceback" not in err and "internal error" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("extra,needles", [
    (["--tile", "abc"], ["--tile must be 'auto' or a whole number"]),
    (["--tile", "-1"], ["--tile must be >= 0"]),
    (["--tile", "1e9999"], ["--tile"]),
    (["--tile", "3"], ["--tile 3 is below the useful minimum 7", "overlap 6"]),
    (["--overlap", "-2"], ["--overlap must be >= 0"]),
    (["--overlap", "nan"], ["--overlap must be a whole number"]),
    (["--max-memory", "0"], ["--max-memory", "too small"]),
    (["--max-memory", "lots"], ["--max-memory 'lots' is not a size"]),
    (["--max-memory", "inf"], ["--max-memory"]),
    (["--threads", "0"], ["--threads", "must be an integer in [1, "]),  # a usage error (argparse type, exit 2)
])
def test_bad_options_are_one_line(ckpt, tmp_path, capsys, extra, needles):
    write_image(tmp_path / "in.png", np.full((20, 20, 3), 0.5))
    try:
        rc = main(["upscale", str(ckpt), str(tmp_path / "in.png"), str(tmp_path / "out.png"), *extra])
    except SystemExit as e:  # options typed in the parser end as one-line usage errors
        rc = e.code
    _, err = capsys.readouterr()
    _one_line_error(rc, err, *needles)
    assert not (tmp_path / "out.png").exists()


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header declares w x h (a decompression bomb's first bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding(ckpt, tmp_path, capsys):
    _png_header_only(tmp_path / "bomb.png", 60000, 60000)
    rc = main(["upscale", str(ckpt), str(tmp_path / "bomb.png"), str(tmp_path / "o.png"), "--max-memory", "1G"])
    _, err = capsys.readouterr()
    _one_line_error(rc, err, "bomb.png", "decoding 60000x60000", "--max-memory", "decompression bomb")


def _cli_child(*args) -> tuple[int, str]:
    """The CLI in a fresh process: what a budget allows depends on the process's own size."""
    r = subprocess.run([sys.executable, "-m", "edgesr", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    return r.returncode, r.stderr


def test_whole_output_formats_and_untiled_refused_over_budget(ckpt, tmp_path):
    ramp = np.linspace(0, 1, 4000, dtype=np.float32)
    write_image(tmp_path / "in.png", np.broadcast_to(ramp[None, :, None], (4000, 4000, 3)))
    # JPEG is encoded whole: 8000x8000 x 3 bytes plus Pillow's 4-byte copy does not fit 1G
    rc, err = _cli_child("upscale", ckpt, tmp_path / "in.png", tmp_path / "o.jpg", "--max-memory", "1G")
    _one_line_error(rc, err, ".jpg is encoded whole", "--max-memory")
    # untiled on request: the model's activations for 4000x4000 do not fit either
    rc, err = _cli_child("upscale", ckpt, tmp_path / "in.png", tmp_path / "o.png", "--max-memory", "1G",
                         "--tile", "0")
    _one_line_error(rc, err, "untiled needs about", "--tile auto")
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


def test_stale_temp_files_cleaned_and_nothing_else(tmp_path):
    final = tmp_path / "a.png"
    stale = tmp_path / ".a.png.edgesr-abcd1234.tmp"
    live = tmp_path / ".a.png.edgesr-live5678.tmp"
    legacy = tmp_path / ".a.png.q1w2e3r4.tmp"  # what earlier versions left (fsutil.atomic_path)
    foreign = [tmp_path / ".a.png.backup.tmp", tmp_path / "a.png.tmp", tmp_path / ".b.png.edgesr-abcd1234.tmp",
               tmp_path / ".a.png.edgesr-notmine!.tmp", tmp_path / "notes.txt"]
    for p in [stale, live, legacy, *foreign]:
        p.write_bytes(b"x")
    import fcntl

    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running edgesr holds its temp file locked
    try:
        assert clean_stale_temps(final) == [stale]
        assert live.exists() and legacy.exists()
        assert clean_stale_temps(final, legacy=True) == [legacy]  # --force: the old names too
        assert live.exists()
    finally:
        os.close(fd)
    assert all(p.exists() for p in foreign)


@pytest.mark.slow
def test_sigkilled_folder_upscale_leaves_nothing_after_a_forced_rerun(ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    rng = np.random.default_rng(1)
    write_image(src / "big.png", rng.random((1200, 1200, 3)))
    write_image(src / "small.png", rng.random((30, 40, 3)))
    (out / "keep.me").write_bytes(b"user file")
    cmd = [sys.executable, "-m", "edgesr", "upscale", str(ckpt), str(src), str(out), "--tile", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list(out.glob(".big.png.edgesr-*.tmp")):
            assert proc.poll() is None, "finished before it could be killed"
            time.sleep(0.05)
        assert list(out.glob(".big.png.edgesr-*.tmp")), "no temp file appeared"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(out.glob(".big.png.edgesr-*.tmp")) and not (out / "big.png").exists()
    r = subprocess.run(cmd + ["--force"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["big.png", "keep.me", "small.png"], names
    assert read_image(out / "big.png").rgb.shape == (2400, 2400, 3)
    assert (out / "keep.me").read_bytes() == b"user file"


def test_default_memory_budget_leaves_room_above_what_the_process_holds():
    """The default --max-memory is a quarter of RAM (at most 1.5 GiB), but never less than 512 MiB
    above the process's current RSS: edgesr inside a process that already holds 1.5 GiB (many
    libraries loaded, e.g. a test run) must still upscale a tiny image."""
    import numpy as np

    from edgesr.upscale import MEMORY_CAP, MEMORY_HEADROOM, current_rss, default_max_memory

    assert default_max_memory() >= current_rss() + MEMORY_HEADROOM - (64 << 20)  # RSS moves a little
    held = np.ones(int(MEMORY_CAP) // 8 + (1 << 20), dtype=np.float64)  # hold more than the cap itself
    try:
        assert current_rss() > MEMORY_CAP
        assert default_max_memory() >= current_rss() + MEMORY_HEADROOM - (64 << 20)
    finally:
        del held
