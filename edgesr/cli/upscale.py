"""edgesr upscale: super-resolve an image or a folder, tile by tile, in bounded memory."""

from __future__ import annotations

from ..errors import one_line
from . import args as argtypes


def add_parser(sub):
    p = sub.add_parser(
        "upscale", help="upscale an image or a folder of images (tiled, bounded memory)",
        description="Upscale INPUT (an image, or a folder of images) with MODEL (checkpoint, .onnx/.ort, or a "
                    "`convert` OUTDIR) into OUTPUT (a file, or a folder for a folder INPUT). Images are processed "
                    "in tiles sized to --max-memory and streamed to the output file; each result says what was "
                    "verified about tiling (exact only when measured). PNG keeps 8/16-bit depth; grey stays "
                    "grey; alpha is upscaled with bicubic.")
    p.add_argument("model", help="checkpoint, .onnx/.ort file, or convert OUTDIR")
    p.add_argument("input", help="image (.png/.jpg/.webp/...) or folder of images")
    p.add_argument("output", help="output image (.png/.jpg/.webp), or folder")
    p.add_argument("--tile", default="auto", metavar="N|auto",
                   help="tile core size in input pixels: 'auto' (default: the largest that fits --max-memory, "
                        "untiled when the image fits), 0 = untiled, or a size above the overlap")
    p.add_argument("--overlap", default=None, metavar="N",
                   help="input pixels added on each side of a tile (default: the measured receptive field, "
                        "which makes tiled == untiled for local models)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="peak memory budget, e.g. 1.5G or 800M (default: a quarter of RAM, at most 1.5G, and at "
                        "least 512M above what edgesr already holds)")
    argtypes.add_runtime_backend(p)
    p.add_argument("--scale", type=argtypes.scale, help="expected upscaling factor (checked against the model)")
    p.add_argument("--arch", help="architecture name, when detection from the checkpoint is not enough")
    p.add_argument("--threads", type=argtypes.threads, help="intra-op threads (torch and ONNX Runtime)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from .model_args import add_model_args

    add_model_args(p)
    from .executor_args import add_executor_args

    add_executor_args(p, "the images of a folder are spread over Ray Data actors (one model session each); a "
                         "video's frames are split into ranges, one task each")
    p.add_argument("--video-codec", metavar="NAME",
                   help="video output codec (default by container: .mkv/.avi FFV1 lossless, .mp4/.mov H.264, "
                        ".webm VP9); a video INPUT needs pip install 'edgesr[video]'")
    return p


def _int_option(name: str, text, minimum: int) -> int | None:
    from ..errors import ImageError

    if text is None:
        return None
    try:
        v = int(str(text).strip())
    except ValueError:
        raise ImageError(f"{name} must be a whole number, got {text!r}") from None
    if v < minimum:
        raise ImageError(f"{name} must be >= {minimum}, got {v}")
    return v


def _tiling_cell(r) -> str:
    """'tile+overlap', 'untiled', or the boxes a fixed-size file cut itself."""
    cell = f"{r.tile}+{r.overlap}" if r.tiles > 1 else "untiled"
    if r.boxes:
        cell = f"{r.boxes[0]}x{r.boxes[1]} boxes+{r.boxes[2]}" + (f" in {cell}" if r.tiles > 1 else "")
    return cell


def run(args) -> int:
    import sys

    from ..errors import ImageError, ScaleMismatch
    from ..file_types import implied_backend

    args.backend = args.backend or implied_backend(args.model, "torch")
    from ..upscale import UpscaleFailure, default_max_memory, parse_memory, parse_tile, plan_jobs
    from .output import emit_json, print_table

    if args.scale is not None and args.scale < 1:
        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    tile = parse_tile(args.tile)
    overlap = _int_option("--overlap", args.overlap, 0)
    if args.threads is not None and args.threads < 1:
        raise ImageError(f"--threads must be >= 1, got {args.threads}")
    max_memory = parse_memory(args.max_memory) if args.max_memory is not None else default_max_memory()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..video import is_video

    if is_video(args.input):
        from .upscale_video import run_video

        return run_video(args, tile, overlap, max_memory)
    jobs, folder = plan_jobs(args.input, args.output, force=args.force)  # fail fast, before loading the model
    from .model_args import user_options

    user = user_options(args)
    model = args.model
    from .executor_args import on_ray

    if user is not None and not on_ray(args):  # on Ray each actor builds the user's model itself
        from ..resolve import resolve_user_model

        model = resolve_user_model(args.model, backend=args.backend, threads=args.threads, scale=args.scale, **user)

    from ..progress import Progress

    # folders: images counted; one big image: its tiles (a bar on a terminal, a plain line every
    # EDGESR_PROGRESS_S seconds in logs)
    bar = Progress("upscale", len(jobs), "images", show=folder)
    tiles: dict = {"bar": None}

    def on_tile(i, n):
        if folder or n < 4:
            return
        if tiles["bar"] is None:
            tiles["bar"] = Progress("upscale", n, "tiles")
        tiles["bar"].update(1)

    def step(r):
        bar.update(1)
        if isinstance(r, UpscaleFailure):
            bar.write(f"edgesr: error: {one_line(r.error)}")

    try:
        results = _upscale(args, model, user, tile, overlap, max_memory, step, on_tile)
    finally:
        bar.close()
        if tiles["bar"] is not None:
            tiles["bar"].close()
    failed = [r for r in results if isinstance(r, UpscaleFailure)]
    done = [r for r in results if not isinstance(r, UpscaleFailure)]
    if args.json:
        emit_json({"model": str(args.model), "backend": args.backend, "ok": not failed,
                   "max_memory": max_memory, "images": [r.to_dict() for r in results]})
    else:
        if done:
            print_table(["input", "output", "size", "tiles", "tile+overlap", "exact", "s"],
                        [[r.input, r.output, f"{r.input_size[1]}x{r.input_size[0]} -> "
                          f"{r.output_size[1]}x{r.output_size[0]}", r.tiles,
                          _tiling_cell(r), "yes" if r.exact else "no",
                          r.seconds] for r in done])
        notes: dict[str, list[str]] = {}
        for r in done:
            notes.setdefault(f"tiling: {r.tiling}", []).append(r.input)
            if r.padded:
                notes.setdefault(f"padded (reflect) to {r.padded[1]}x{r.padded[0]}, the model's minimum size; "
                                 "output cropped back", []).append(r.input)
        for text, inputs in notes.items():
            who = inputs[0] if len(inputs) == 1 else f"{len(inputs)} images"
            print(f"edgesr: note: {who}: {text}", file=sys.stderr)
    if failed:
        first = failed[0].error
        raise ImageError(f"{len(failed)} of {len(results)} images failed; first: {first}")
    return 0


def _upscale(args, model, user, tile, overlap, max_memory, step, on_tile) -> list:
    """Here, one image after another, or on Ray Data (--executor ray) with a summary line."""
    import sys

    from .executor_args import on_ray

    if not on_ray(args):
        from ..upscale import upscale

        return upscale(model, args.input, args.output, tile=tile, overlap=overlap, backend=args.backend,
                       scale=args.scale, arch=args.arch, threads=args.threads, force=args.force,
                       max_memory=max_memory, on_image=step, on_tile=on_tile)
    from ..distributed.bulk import upscale_ray

    results, summary = upscale_ray(args.model, args.input, args.output, tile=tile, overlap=overlap,
                                   backend=args.backend, scale=args.scale, arch=args.arch, threads=args.threads,
                                   force=args.force, max_memory=max_memory, user=user, address=args.ray_address,
                                   workers=args.ray_workers, on_image=step)
    print(f"edgesr: upscale on Ray: {summary['images']} images in {summary['seconds']} s "
          f"({summary['images_per_s']} images/s, {summary['workers']} worker{'s' * (summary['workers'] != 1)}), "
          f"{summary['failed']} failed",
          file=sys.stderr)
    return results
