"""Video in, video out (PyAV): a short generated clip keeps its frame count, frame rate and audio;
its frames equal `edgesr upscale` of each frame saved as PNG - exactly with a lossless codec
(FFV1 in .mkv), and before encoding with a lossy one (.mp4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgesr.cli import main
from edgesr.pipeline import BUNDLED_CHECKPOINT

from helpers.video import CLIP_FRAMES, CLIP_HW, CLIP_RATE, audio_summary, write_clip

av = pytest.importorskip("av", reason="needs pip install 'edgesr[video]'")


def _per_image(frames: list[np.ndarray], tmp: Path) -> list[np.ndarray]:
    """`edgesr upscale` of the frames saved as PNG (one folder run)."""
    from PIL import Image

    (tmp / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp / "frames" / f"{i:03d}.png")
    assert main(["upscale", str(BUNDLED_CHECKPOINT), str(tmp / "frames"), str(tmp / "up"), "--threads", "1"]) == 0
    return [np.asarray(Image.open(tmp / "up" / f"{i:03d}.png").convert("RGB")) for i in range(len(frames))]


def test_lossless_video_round_trip_equals_per_image_upscaling(tmp_path, capsys):
    from edgesr.video import probe

    src = tmp_path / "in.mkv"
    frames = write_clip(src, "ffv1", "bgr0")
    dst = tmp_path / "out.mkv"
    assert main(["upscale", str(BUNDLED_CHECKPOINT), str(src), str(dst), "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["video"]
    assert res["frames"] == CLIP_FRAMES and res["codec"] == "ffv1" and res["audio"] == ["aac"]
    info = probe(dst)
    assert info["frames"] == CLIP_FRAMES and info["rate"] == CLIP_RATE
    assert (info["height"], info["width"]) == tuple(4 * s for s in CLIP_HW)
    assert audio_summary(dst) == audio_summary(src)  # audio copied packet for packet
    with av.open(str(dst)) as c:
        out = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    expected = _per_image(frames, tmp_path)
    assert len(out) == len(expected) == CLIP_FRAMES
    for i, (a, b) in enumerate(zip(out, expected)):
        assert np.array_equal(a, b), f"frame {i}: max diff {np.abs(a.astype(int) - b).max()}"
    # an existing output is kept without --force; nothing half-written is left beside it
    assert main(["upscale", str(BUNDLED_CHECKPOINT), str(src), str(dst)]) != 0
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_mp4_keeps_rate_frames_audio_and_frames_equal_before_encoding(tmp_path):
    from edgesr.resolve import resolve_model
    from edgesr.video import probe, upscale_video

    src = tmp_path / "in.mp4"
    frames = write_clip(src, "mpeg4", "yuv420p")
    r = resolve_model(BUNDLED_CHECKPOINT, threads=1)
    seen: list[np.ndarray] = []
    res = upscale_video(r.runner, r.spec, src, tmp_path / "out.mp4", before_encode=lambda i, f: seen.append(f.copy()))
    info = probe(tmp_path / "out.mp4")
    assert res.frames == info["frames"] == CLIP_FRAMES and info["rate"] == CLIP_RATE
    assert [a[0] for a in info["audio"]] == ["aac"] and audio_summary(tmp_path / "out.mp4") == audio_summary(src)
    expected = _per_image(frames, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected)) and len(seen) == CLIP_FRAMES
