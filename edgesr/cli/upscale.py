"""edgesr upscale: super-resolve an image or a folder, tile by tile, seam-free."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "upscale", help="upscale an image or a folder of images (seam-free tiling)",
        description="Upscale INPUT (an image, or a folder of images) with MODEL (checkpoint, .onnx/.ort, or a "
                    "`convert` OUTDIR) into OUTPUT (a file, or a folder for a folder INPUT). Large images are "
                    "processed in tiles extended by the model's receptive field, so the result equals an "
                    "untiled run. PNG keeps 8/16-bit depth; grey stays grey; alpha is upscaled with bicubic.")
    p.add_argument("model", help="checkpoint, .onnx/.ort file, or convert OUTDIR")
    p.add_argument("input", help="image (.png/.jpg/.webp/...) or folder of images")
    p.add_argument("output", help="output image (.png/.jpg/.webp), or folder")
    p.add_argument("--tile", type=int, default=None,
                   help="tile core size in input pixels (default: from the model's receptive field; 0 = untiled)")
    p.add_argument("--overlap", type=int, default=None,
                   help="input pixels added on each side of a tile (default: the receptive field, which makes "
                        "tiled == untiled; smaller values may show seams)")
    p.add_argument("--backend", choices=["torch", "ort", "litert", "litert-int8", "ncnn", "ncnn-int8", "coreml"],
                   default="torch", help="torch / ort; from a convert OUTDIR also its mobile artifacts (litert, "
                                         "ncnn and their -int8; coreml: no runtime here). A .tflite / .param "
                                         "MODEL runs on its own runtime")
    p.add_argument("--scale", type=int, help="expected upscaling factor (checked against the model)")
    p.add_argument("--arch", help="architecture name, when detection from the checkpoint is not enough")
    p.add_argument("--threads", type=int, help="intra-op threads (torch and ONNX Runtime)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def run(args) -> int:
    import sys

    from ..errors import ImageError, ScaleMismatch
    from ..upscale import UpscaleFailure, plan_jobs, upscale
    from .output import emit_json, print_table

    if args.scale is not None and args.scale < 1:
        raise ScaleMismatch(f"--scale must be a positive integer, got {args.scale}")
    if args.tile is not None and args.tile < 0:
        raise ImageError(f"--tile must be >= 0 (0 = untiled), got {args.tile}")
    if args.overlap is not None and args.overlap < 0:
        raise ImageError(f"--overlap must be >= 0, got {args.overlap}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    jobs, folder = plan_jobs(args.input, args.output, force=args.force)  # fail fast, before loading the model

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", disable=None if folder else True, file=sys.stderr,
               desc="upscale")

    def step(r):
        bar.update(1)
        if isinstance(r, UpscaleFailure):
            bar.write(f"edgesr: error: {r.error}", file=sys.stderr)

    try:
        results = upscale(args.model, args.input, args.output, tile=args.tile, overlap=args.overlap,
                          backend=args.backend, scale=args.scale, arch=args.arch, threads=args.threads,
                          force=args.force, on_image=step)
    finally:
        bar.close()
    failed = [r for r in results if isinstance(r, UpscaleFailure)]
    done = [r for r in results if not isinstance(r, UpscaleFailure)]
    if args.json:
        emit_json({"model": str(args.model), "backend": args.backend, "ok": not failed,
                   "images": [r.to_dict() for r in results]})
    else:
        if done:
            print_table(["input", "output", "size", "tiles", "tile+overlap", "exact", "s"],
                        [[r.input, r.output, f"{r.input_size[1]}x{r.input_size[0]} -> "
                          f"{r.output_size[1]}x{r.output_size[0]}", r.tiles,
                          f"{r.tile}+{r.overlap}" if r.tiles > 1 else "untiled", "yes" if r.exact else "NO",
                          r.seconds] for r in done])
        inexact = [r for r in done if not r.exact]
        if inexact:
            print(f"edgesr: note: --overlap {inexact[0].overlap} is below the model's receptive field: "
                  "tiles may show seams", file=sys.stderr)
    if failed:
        first = failed[0].error
        raise ImageError(f"{len(failed)} of {len(results)} images failed; first: {first}")
    return 0
