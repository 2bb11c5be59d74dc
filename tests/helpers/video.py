"""A short generated video clip with audio (PyAV, the `video` extra; imported when called)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CLIP_RATE = Fraction(24000, 1001)
CLIP_FRAMES = 6
CLIP_HW = (20, 28)


def write_clip(path: Path, codec: str, pix_fmt: str) -> list[np.ndarray]:
    """CLIP_FRAMES moving-gradient frames at CLIP_RATE plus 0.3 s of stereo AAC; returns the frames as decoded."""
    import av

    h, w = CLIP_HW
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=CLIP_RATE)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for i in range(CLIP_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 3 * i, axis=1), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / CLIP_RATE
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


def audio_summary(path: Path) -> list[tuple]:
    """(codec, rate, channels) of each audio stream, then ("packets", count of non-empty audio packets)."""
    import av

    with av.open(str(path)) as c:
        streams = [(s.codec_context.name, s.rate, s.channels) for s in c.streams.audio]
        packets = sum(1 for p in c.demux(audio=0) if p.size)
    return streams + [("packets", packets)]
