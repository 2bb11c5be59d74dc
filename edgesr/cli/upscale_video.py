"""`edgesr upscale MODEL in.mp4 out.mkv`: the video form of the upscale subcommand."""

from __future__ import annotations


def run_video(args, tile, overlap, max_memory: int) -> int:
    import sys
    import time

    from ..video import av_module, check_video_paths, upscale_video
    from .executor_args import on_ray
    from .output import emit_json

    av_module()  # missing extra: one line before the model loads
    from pathlib import Path

    check_video_paths(Path(args.input), Path(args.output), args.force)
    from ..resolve import resolve_model, resolve_user_model
    from .model_args import user_options

    user = user_options(args)
    if on_ray(args):
        return _run_video_ray(args, user, tile, overlap, max_memory)
    if user is not None:
        resolved = resolve_user_model(args.model, backend=args.backend, threads=args.threads, scale=args.scale, **user)
    else:
        resolved = resolve_model(args.model, backend=args.backend, scale=args.scale, arch=args.arch,
                                 threads=args.threads)
    from ..upscale import ModelTiling

    mt = ModelTiling(resolved.runner, resolved.spec, onnx=getattr(resolved, "onnx", None),
                     manifest_tiling=getattr(resolved, "tiling", None), threads=args.threads)
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=None, unit="frame", file=sys.stderr, desc="upscale") if tty else None
    last = [time.monotonic()]

    def on_frame(i: int, total: int | None) -> None:
        if bar is not None:
            if total and bar.total != total:
                bar.total = total
            bar.update(1)
        elif time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            print(f"edgesr: upscale: {i}{f'/{total}' if total else ''} frames", file=sys.stderr, flush=True)

    try:
        r = upscale_video(resolved.runner, resolved.spec, args.input, args.output, tile=tile, overlap=overlap,
                          max_memory=max_memory, force=args.force, codec=args.video_codec, model_tiling=mt,
                          on_frame=on_frame)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        emit_json({"model": str(args.model), "backend": args.backend, "ok": True, "video": r.to_dict()})
    else:
        print(f"{r.input} -> {r.output}: {r.frames} frames at {r.rate} fps, {r.input_size[1]}x{r.input_size[0]} -> "
              f"{r.output_size[1]}x{r.output_size[0]}, {r.codec} ({r.pix_fmt}), audio copied: "
              f"{', '.join(r.audio) or 'none'}; {r.seconds} s ({r.frames_per_s:.2f} frames/s)")
        print(f"edgesr: note: tiling: {r.tiling}", file=sys.stderr)
    return 0


def _run_video_ray(args, user, tile, overlap, max_memory: int) -> int:
    """The frames split over Ray workers (edgesr.distributed.frames)."""
    import sys

    from ..distributed.bulk import how_to_resolve
    from ..distributed.frames import upscale_video_ray
    from .output import emit_json

    how = how_to_resolve(backend=args.backend, scale=args.scale, arch=args.arch, threads=args.threads, user=user)

    def on_segment(i: int, n: int) -> None:
        print(f"edgesr: upscale: segment {i}/{n} done", file=sys.stderr, flush=True)

    r = upscale_video_ray(args.model, args.input, args.output, how=how, tile=tile, overlap=overlap,
                          max_memory=max_memory, force=args.force, codec=args.video_codec, address=args.ray_address,
                          workers=args.ray_workers, on_segment=on_segment)
    if args.json:
        emit_json({"model": str(args.model), "backend": args.backend, "ok": True, "video": r})
    else:
        print(f"{args.input} -> {args.output}: {r['frames']} frames at {r['rate']} fps in {r['segments']} segments on "
              f"{r['workers']} Ray workers, {r['codec']}, audio copied: {', '.join(r['audio']) or 'none'}; "
              f"{r['seconds']} s")
    return 0
