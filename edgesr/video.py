"""`edgesr upscale MODEL in.mp4 out.mp4`: video in, video out, frame by frame (PyAV).

PyAV (FFmpeg's libraries in a wheel, ``pip install 'edgesr[video]'``) decodes the first video
stream one frame at a time; each frame, as 8-bit RGB, is upscaled with the plan and code of a PNG
of the same picture (:func:`edgesr.upscale.plan_codes` / :func:`edgesr.upscale.upscale_codes`: so
a frame equals ``edgesr upscale`` of that frame saved as PNG, byte for byte, before encoding) and
encoded at once. Frame timestamps, and therefore the frame rate, are the input's; every audio
stream is copied packet by packet (not re-encoded). Memory is bounded by the frame size and the
encoder's own fixed frame buffer, never by the length of the video.

The codec follows the output container unless ``--video-codec`` names one: .mkv/.avi -> FFV1
(lossless, RGB kept exactly), .mp4/.mov -> H.264 (libx264 when the wheel has it, else MPEG-4
part 2), .webm -> VP9. The output is written to a temporary file beside it and renamed when
complete: an interrupted run leaves no partial video under the output name.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BackendUnavailable, ImageError, OutputExists
from .spec import Spec

VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
VIDEO_EXTRA = "pip install 'edgesr[video]'"
# codecs tried in order per container (the first the installed FFmpeg can encode is used)
DEFAULT_CODECS = {"mp4": ("libx264", "h264", "mpeg4"), "mov": ("libx264", "h264", "mpeg4"),
                  "matroska": ("ffv1",), "avi": ("ffv1",), "webm": ("libvpx-vp9", "libvpx")}
LOSSLESS_PIX_FMT = {"ffv1": "bgr0", "png": "rgb24", "libx264rgb": "rgb24"}


def av_module():
    """The `av` package (PyAV), or one actionable line naming the extra."""
    try:
        import av
    except ImportError:
        raise BackendUnavailable(f"video input/output needs PyAV: {VIDEO_EXTRA}") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoResult:
    input: str
    output: str
    frames: int
    rate: str  # average frame rate, as a fraction ("30000/1001")
    input_size: list[int]  # [H, W]
    output_size: list[int]
    codec: str
    pix_fmt: str
    audio: list[str]  # codecs of the audio streams copied
    seconds: float
    tiling: str = ""
    memory: dict = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": True, "frames_per_s": round(self.frames_per_s, 3)}


def choose_codec(av, fmt: str, codec: str | None) -> tuple[str, str]:
    """(codec, pixel format) for the output container `fmt` (or the one asked for)."""
    candidates = (codec,) if codec else DEFAULT_CODECS[fmt]
    for name in candidates:
        try:
            c = av.Codec(name, "w")
        except Exception:  # noqa: BLE001 - unknown or decode-only codec: try the next
            continue
        fmts = [f.name for f in (c.video_formats or [])]
        lossless = LOSSLESS_PIX_FMT.get(name)
        pix = lossless if lossless is not None and lossless in fmts else (
            "yuv420p" if "yuv420p" in fmts or not fmts else fmts[0])
        return name, pix
    if codec:
        raise ImageError(f"--video-codec {codec}: this FFmpeg build (PyAV {av.__version__}) cannot encode it")
    raise ImageError(f"no encoder for {fmt} in this FFmpeg build (tried {', '.join(candidates)}); pass --video-codec")


def check_video_paths(src: Path, dst: Path, force: bool) -> str:
    """The output container format; refuses what cannot be written (before any decoding)."""
    if not src.is_file():
        raise ImageError(f"{src}: no such video file")
    if dst.suffix.lower() not in VIDEO_SUFFIXES:
        raise ImageError(f"{dst}: a video input needs a video output ({', '.join(VIDEO_SUFFIXES)})")
    if dst.exists():
        if dst.resolve() == src.resolve():
            raise OutputExists(f"{dst} is the input video; choose another output")
        if not force:
            raise OutputExists(f"{dst} exists; pass --force to replace")
    return VIDEO_SUFFIXES[dst.suffix.lower()]


def upscale_video(runner, spec: Spec, src: str | Path, dst: str | Path, *, tile: int | str | None = "auto",
                  overlap: int | None = None, max_memory: int | None = None, force: bool = False,
                  codec: str | None = None, model_tiling=None,
                  on_frame: Callable[[int, int | None], None] | None = None,
                  before_encode: Callable[[int, np.ndarray], None] | None = None,
                  frame_range: tuple[int, int] | None = None, copy_audio: bool = True) -> VideoResult:
    """Upscale every frame of SRC's first video stream into DST, copying its audio streams.
    `before_encode(i, rgb)` sees each upscaled frame before the encoder does. `frame_range` (a, b):
    only decoded frames a..b-1, without audio (a segment of a video split over Ray workers)."""
    from .fsutil import atomic_path
    from .upscale import ModelTiling, plan_codes, upscale_codes

    av = av_module()
    src, dst = Path(src), Path(dst)
    fmt = check_video_paths(src, dst, force)
    if spec.in_channels != 3:
        raise ImageError(f"edgesr upscale needs an RGB model; this one takes {spec.in_channels} channels")
    name, pix_fmt = choose_codec(av, fmt, codec)
    mt = model_tiling or ModelTiling(runner, spec)
    s = spec.scale
    t0 = time.perf_counter()
    try:
        inp = av.open(str(src))
    except av.error.FFmpegError as e:
        raise ImageError(f"{src}: cannot read this video ({e.strerror or e})") from None
    try:
        if not inp.streams.video:
            raise ImageError(f"{src}: no video stream")
        vin = inp.streams.video[0]
        audio = list(inp.streams.audio) if copy_audio and frame_range is None else []
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        h, w = vin.codec_context.height, vin.codec_context.width
        total = (frame_range[1] - frame_range[0]) if frame_range else (vin.frames or None)
        first, stop = frame_range or (0, None)
        n = k = 0  # frames encoded, frames decoded
        cp = None
        with atomic_path(dst) as tmp:
            out = av.open(str(tmp), mode="w", format=fmt)
            try:
                vout = out.add_stream(name, rate=rate)
                vout.width, vout.height, vout.pix_fmt = w * s, h * s, pix_fmt
                aout = {a.index: out.add_stream_from_template(a) for a in audio}
                for packet in inp.demux(vin, *audio):
                    if packet.stream.type == "audio":
                        if packet.dts is None:
                            continue
                        packet.stream = aout[packet.stream.index]
                        out.mux(packet)
                        continue
                    if stop is not None and k >= stop:
                        break
                    for frame in packet.decode():
                        k += 1
                        if k <= first or (stop is not None and k > stop):
                            continue
                        rgb = frame.to_ndarray(format="rgb24")
                        if cp is None:
                            h, w = rgb.shape[:2]
                            cp = plan_codes(mt, spec, h, w, tile=tile, overlap=overlap, max_memory=max_memory)
                        up = upscale_codes(runner, spec, rgb, cp)
                        if before_encode is not None:
                            before_encode(first + n, up)
                        of = av.VideoFrame.from_ndarray(up, format="rgb24")
                        of.pts, of.time_base = frame.pts, frame.time_base
                        out.mux(vout.encode(of))
                        n += 1
                        if on_frame:
                            on_frame(n, total)
                out.mux(vout.encode(None))
            finally:
                out.close()
            if n == 0:
                raise ImageError(f"{src}: the video stream has no frames")
    except av.error.FFmpegError as e:
        raise ImageError(f"{src} -> {dst}: {e.strerror or e}") from None
    finally:
        inp.close()
    return VideoResult(input=str(src), output=str(dst), frames=n, rate=str(rate), input_size=[h, w],
                       output_size=[h * s, w * s], codec=name, pix_fmt=pix_fmt,
                       audio=[a.codec_context.name for a in audio], seconds=round(time.perf_counter() - t0, 3),
                       tiling=cp.tiling if cp else "", memory=cp.memory if cp else {})


def probe(path: str | Path) -> dict:
    """Frame count (decoded), average rate and audio streams of a video (for checks and tests)."""
    av = av_module()
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": v.average_rate, "width": v.codec_context.width, "height": v.codec_context.height,
                "codec": v.codec_context.name, "audio": [(a.codec_context.name, a.rate, a.channels)
                                                         for a in c.streams.audio]}
        info["frames"] = sum(1 for _ in c.decode(v))
    return info


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream, from its packets (no decoding)."""
    av = av_module()
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def join_segments(segments: list[Path], src: str | Path, dst: str | Path) -> None:
    """DST from encoded video segments (in order; each holds its frames' original timestamps) and
    SRC's audio streams, packets copied in time order; written to a temporary file and renamed."""
    import heapq

    from .fsutil import atomic_path

    av = av_module()
    fmt = VIDEO_SUFFIXES[Path(dst).suffix.lower()]
    opened = [av.open(str(p)) for p in segments]
    inp = av.open(str(src))
    try:
        with atomic_path(dst) as tmp:
            out = av.open(str(tmp), mode="w", format=fmt)
            try:
                vout = out.add_stream_from_template(opened[0].streams.video[0])
                vin = inp.streams.video[0]
                rate = vin.average_rate or vin.guessed_rate
                if rate:  # the container's frame rate is the input's, as in the local run
                    vout.codec_context.framerate = rate
                aout = {a.index: out.add_stream_from_template(a) for a in inp.streams.audio}

                def video():
                    for c in opened:
                        for pkt in c.demux(c.streams.video[0]):
                            if pkt.dts is not None:
                                yield float(pkt.dts * pkt.time_base), 0, pkt, vout

                def audio():
                    if not aout:
                        return
                    for pkt in inp.demux(*inp.streams.audio):
                        if pkt.dts is not None:
                            yield float(pkt.dts * pkt.time_base), 1, pkt, aout[pkt.stream.index]

                for _, _, pkt, stream in heapq.merge(video(), audio(), key=lambda t: (t[0], t[1])):
                    pkt.stream = stream
                    out.mux(pkt)
            finally:
                out.close()
    finally:
        inp.close()
        for c in opened:
            c.close()
