"""A video over Ray: `edgesr upscale MODEL in.mkv out.mkv --executor ray`.

The frames are split into contiguous ranges (two per worker); each range is one Ray task (retried
when its worker dies) that upscales its frames exactly as the local path does
(:func:`edgesr.video.upscale_video` with ``frame_range``) and encodes them, with their original
timestamps, into a segment file in a hidden folder beside the output. The driver then copies the
segments' packets and the input's audio packets, in time order, into the output (a temporary file
renamed when complete) and removes the segments. With a lossless codec the result decodes to the
same frames as the local run; with an inter-frame codec each segment starts with a key frame.

Each task decodes its input from the first frame up to its range (no seeking), so decoding work
grows with the number of ranges; upscaling, the expensive part, is split evenly.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .cluster import failure_line, gather, ray_session

DEFAULT_RETRIES = 3


def segment_task(model: str, how: dict[str, Any], src: str, seg: str, first: int, stop: int, codec: str,
                 settings: dict[str, Any]) -> int:
    import torch

    from ..video import upscale_video
    from .bulk import resolve

    torch.set_num_threads(how.get("threads") or 1)
    r = resolve(model, how)
    res = upscale_video(r.runner, r.spec, src, seg, tile=settings["tile"], overlap=settings["overlap"],
                        max_memory=settings["max_memory"], force=True, codec=codec, frame_range=(first, stop),
                        copy_audio=False)
    return res.frames


def upscale_video_ray(model: str | Path, src: str | Path, dst: str | Path, *, how: dict[str, Any],
                      tile: int | str = "auto", overlap: int | None = None, max_memory: int | None = None,
                      force: bool = False, codec: str | None = None, address: str | None = None,
                      workers: int | None = None, on_segment: Callable[[int, int], None] | None = None) -> dict:
    """Upscale SRC into DST with the frames split over Ray workers; returns a summary."""
    from ..errors import CheckpointError, ImageError
    from ..upscale import default_max_memory
    from ..video import av_module, check_video_paths, choose_codec, count_frames, join_segments, probe

    src, dst = Path(src).resolve(), Path(dst).resolve()
    fmt = check_video_paths(src, dst, force)
    name, _ = choose_codec(av_module(), fmt, codec)
    if not Path(model).exists():
        raise CheckpointError(f"model not found: {model}")
    n = count_frames(src)
    if n == 0:
        raise ImageError(f"{src}: the video stream has no frames")
    settings = {"tile": tile, "overlap": overlap, "max_memory": int(max_memory or default_max_memory())}
    t0 = time.perf_counter()
    segdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.segments-", dir=dst.parent))
    try:
        with ray_session(address) as ray:
            w = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            k = max(1, min(n, 2 * w))
            bounds = [round(i * n / k) for i in range(k + 1)]
            segs = [segdir / f"seg{i:05d}{dst.suffix}" for i in range(k)]
            task = ray.remote(segment_task).options(num_cpus=1, max_retries=DEFAULT_RETRIES, retry_exceptions=False)
            refs = [task.remote(str(Path(model).resolve()), how, str(src), str(segs[i]), bounds[i], bounds[i + 1],
                                name, settings) for i in range(k)]
            done = [0]

            def finished(i: int, frames: int) -> None:
                done[0] += 1
                if on_segment:
                    on_segment(done[0], k)

            def failed(i: int, e: BaseException):
                raise ImageError(f"{src}: frames {bounds[i]}-{bounds[i + 1] - 1} failed on Ray: {failure_line(e)}")

            frames = gather(ray, refs, finished, on_failure=failed)
        join_segments(segs, src, dst)
    finally:
        shutil.rmtree(segdir, ignore_errors=True)
    info = probe(dst)
    return {"input": str(src), "output": str(dst), "frames": sum(frames), "segments": k, "workers": w,
            "rate": str(info["rate"]), "codec": name, "audio": [a[0] for a in info["audio"]],
            "seconds": round(time.perf_counter() - t0, 2)}
