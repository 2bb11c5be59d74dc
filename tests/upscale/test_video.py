"""Video in, video out (PyAV): a short generated clip keeps its frame count, frame rate and audio;
its frames equal `edgesr upscale` of each frame saved as PNG - exactly with a lossless codec
(FFV1 in .mkv), and before encoding with a lossy one (.mp4)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from edgesr.cli import main

av = pytest.importorskip("av", reason="needs pip install 'edgesr[video]'")

BUNDLED = Path(__file__).resolve().parents[2] / "edgesr" / "assets" / "ecbsr_m4c16_x4_bundled.safetensors"
RATE = Fraction(24000, 1001)
FRAMES = 6
H, W = 20, 28


def _clip(path: Path, codec: str, pix_fmt: str) -> list[np.ndarray]:
    """FRAMES moving-gradient frames at RATE plus 0.3 s of stereo AAC; returns the frames as decoded."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=RATE)
        v.width, v.height, v.pix_fmt = W, H, pix_fmt
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 3 * i, axis=1), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / RATE
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        t = np.arange(int(0.3 * 48000)) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        samples = np.stack([tone, tone])
        for i0 in range(0, samples.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i0:i0 + 1024]), format="fltp",
                                            layout="stereo")
            af.sample_rate = 48000
            af.pts = i0
            c.mux(a.encode(af))
        c.mux(a.encode(None))
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _per_image(frames: list[np.ndarray], tmp: Path) -> list[np.ndarray]:
    """`edgesr upscale` of the frames saved as PNG (one folder run)."""
    from PIL import Image

    (tmp / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp / "frames" / f"{i:03d}.png")
    assert main(["upscale", str(BUNDLED), str(tmp / "frames"), str(tmp / "up"), "--threads", "1"]) == 0
    return [np.asarray(Image.open(tmp / "up" / f"{i:03d}.png").convert("RGB")) for i in range(len(frames))]


def _audio(path: Path) -> list[tuple]:
    with av.open(str(path)) as c:
        streams = [(s.codec_context.name, s.rate, s.channels) for s in c.streams.audio]
        packets = sum(1 for p in c.demux(audio=0) if p.size)
    return streams + [("packets", packets)]


def test_lossless_video_round_trip_equals_per_image_upscaling(tmp_path, capsys):
    from edgesr.video import probe

    src = tmp_path / "in.mkv"
    frames = _clip(src, "ffv1", "bgr0")
    dst = tmp_path / "out.mkv"
    assert main(["upscale", str(BUNDLED), str(src), str(dst), "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["video"]
    assert res["frames"] == FRAMES and res["codec"] == "ffv1" and res["audio"] == ["aac"]
    info = probe(dst)
    assert info["frames"] == FRAMES and info["rate"] == RATE and (info["height"], info["width"]) == (4 * H, 4 * W)
    assert _audio(dst) == _audio(src)  # audio copied packet for packet
    with av.open(str(dst)) as c:
        out = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    expected = _per_image(frames, tmp_path)
    assert len(out) == len(expected) == FRAMES
    for i, (a, b) in enumerate(zip(out, expected)):
        assert np.array_equal(a, b), f"frame {i}: max diff {np.abs(a.astype(int) - b).max()}"
    # an existing output is kept without --force; nothing half-written is left beside it
    assert main(["upscale", str(BUNDLED), str(src), str(dst)]) != 0
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_mp4_keeps_rate_frames_audio_and_frames_equal_before_encoding(tmp_path):
    from edgesr.resolve import resolve_model
    from edgesr.video import probe, upscale_video

    src = tmp_path / "in.mp4"
    frames = _clip(src, "mpeg4", "yuv420p")
    r = resolve_model(BUNDLED, threads=1)
    seen: list[np.ndarray] = []
    res = upscale_video(r.runner, r.spec, src, tmp_path / "out.mp4", before_encode=lambda i, f: seen.append(f.copy()))
    info = probe(tmp_path / "out.mp4")
    assert res.frames == info["frames"] == FRAMES and info["rate"] == RATE
    assert [a[0] for a in info["audio"]] == ["aac"] and _audio(tmp_path / "out.mp4") == _audio(src)
    expected = _per_image(frames, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected)) and len(seen) == FRAMES
