"""Bounded memory of `edgesr upscale` (streamed output): peak RSS of a child process.

A 2000x2000 PNG at x4 (8000x8000 output, 183 MiB as 8-bit codes) peaked at ~7 GB before
output streaming; here it must stay under a generous 1.2 GB with --max-memory 1G, and the
auto-chosen tiles must give the same file as a run with small explicit tiles (the tiny
plain net tiles exactly). benchmarks/upscale_memory.py measures the 8000x8000 x4 case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = r"""
import json, sys
import torch
from torch import nn
from edgesr.backends.torch_runner import TorchRunner
from edgesr.spec import Spec
from edgesr.upscale import upscale_file
torch.manual_seed(0)
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(3, 3 * 16, 3, padding=1), nn.PixelShuffle(4))
src, dst, tile, mem = sys.argv[1:5]
r = upscale_file(TorchRunner(net), Spec(arch="tiny", scale=4), src, dst, tile=tile, max_memory=int(mem),
                 force=True)
# VmHWM is this process's own high-water mark; ru_maxrss would also count the pytest worker
# this child was forked from (Linux keeps the pre-exec maximum)
peak = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"peak": peak, "exact": r.exact, "tiles": r.tiles, "tile": r.tile, "tiling": r.tiling,
                  "estimated": r.memory["estimated_peak"]}))
"""


def _child(src: Path, dst: Path, tile: str, mem: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), tile, str(mem)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")
def test_upscale_2000px_x4_streams_in_bounded_memory(tmp_path):
    from edgesr.imaging import write_image
    from edgesr.tiling import sample_photo

    img, _ = sample_photo(2000, 2000, index=6)  # hubble photo, mirrored to 2000x2000
    src = tmp_path / "in.png"
    write_image(src, img)
    del img
    budget = 1 << 30
    auto = _child(src, tmp_path / "auto.png", "auto", budget)
    small = _child(src, tmp_path / "small.png", "200", budget)
    assert auto["peak"] < 1.2e9, auto  # the float32 output alone would be 768 MiB, the old path ~7 GB
    assert auto["estimated"] <= budget
    assert small["tiles"] > auto["tiles"] >= 1 and small["exact"] and auto["exact"], (auto, small)
    # same pixels, and, with a deterministic encoder, the same bytes
    assert (tmp_path / "auto.png").read_bytes() == (tmp_path / "small.png").read_bytes()
    from PIL import Image

    with Image.open(tmp_path / "auto.png") as im:
        assert im.size == (8000, 8000) and im.mode == "RGB"
        a = np.asarray(im.crop((3000, 3000, 3100, 3100)))
    assert a.std() > 1.0  # real content, not a constant image
