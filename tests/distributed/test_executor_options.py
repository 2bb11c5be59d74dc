"""--executor / --ray-address / video options without a cluster: a missing extra is one line naming
it, options that need another are refused before any work (runs with or without Ray and PyAV)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgesr.cli import main

BUNDLED = Path(__file__).resolve().parents[2] / "edgesr" / "assets" / "ecbsr_m4c16_x4_bundled.safetensors"


def _folder(tmp_path: Path) -> Path:
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(src / "a.png")
    return src


def test_missing_ray_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    src = _folder(tmp_path)
    rc = main(["upscale", str(BUNDLED), str(src), str(tmp_path / "o"), "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err == ["edgesr: error: --executor ray needs Ray: pip install 'edgesr[ray]'"]
    assert not (tmp_path / "o").exists()
    rc = main(["convert", "--zoo", str(tmp_path / "none.toml"), "-o", str(tmp_path / "z"), "--executor", "ray"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "zoo index" in err or "pip install 'edgesr[ray]'" in err
    assert not (tmp_path / "z").exists()


def test_ray_options_need_the_ray_executor(tmp_path, capsys):
    src = _folder(tmp_path)
    rc = main(["upscale", str(BUNDLED), str(src), str(tmp_path / "o"), "--ray-address", "127.0.0.1:1"])
    assert rc != 0 and "--ray-address needs --executor ray" in capsys.readouterr().err
    rc = main(["convert", str(BUNDLED), "-o", str(tmp_path / "c"), "--ray-workers", "2"])
    assert rc != 0 and "--ray-workers needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_missing_pyav_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "av", None)
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"\0" * 64)
    rc = main(["upscale", str(BUNDLED), str(clip), str(tmp_path / "out.mkv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err == ["edgesr: error: video input/output needs PyAV: pip install 'edgesr[video]'"]
    assert not (tmp_path / "out.mkv").exists()
