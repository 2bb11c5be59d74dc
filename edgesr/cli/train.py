"""edgesr train: train a registry variant (training form) on the bundled sample photos or a folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import one_line
from . import args as argtypes


def add_parser(sub):
    p = sub.add_parser("train", help="train a named variant (training form) on HR images",
                       description="Train a named variant in its training form with L1 loss on HR photos "
                                   "(LR made by MATLAB-compatible bicubic downscaling). Writes a "
                                   ".safetensors checkpoint and a JSON record of how it was trained.")
    p.add_argument("variant", help="named variant, e.g. ecbsr-m4c16-x4 (see `edgesr list`)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--images", help="folder of HR images (default: the sample photos shipped with scikit-image)")
    p.add_argument("--steps", type=argtypes.int_range(1, 10_000_000), default=3000,
                   help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=argtypes.int_range(1, 4096), default=16,
                   help="LR patches per step (default %(default)s)")
    p.add_argument("--patch", type=argtypes.int_range(1, 1024), default=48,
                   help="LR patch side in pixels (default %(default)s)")
    p.add_argument("--lr", type=argtypes.float_range(0.0, 10.0, lo_open=True),
                   default=5e-4, help="peak learning rate of Adam, cosine-decayed over --steps (default %(default)s)")
    p.add_argument("--seed", type=argtypes.int_range(0, 2**63 - 1), default=0,
                   help="seed of weight init and patch sampling (default %(default)s)")
    p.add_argument("--threads", type=argtypes.threads, default=2, help="PyTorch CPU threads (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")
    return p


def run(args) -> int:
    import json
    import sys

    from safetensors.torch import save
    from tqdm import tqdm

    from ..errors import DatasetError, OutputExists
    from ..fsutil import atomic_write_bytes, atomic_write_json
    from ..imaging import list_images
    from ..registry import build_variant
    from ..sample_images import sample_images
    from ..train import TrainConfig, make_pairs, train

    out = Path(args.output)
    if out.exists() and not args.force:
        raise OutputExists(f"{out} exists; pass --force to overwrite")
    loaded = build_variant(args.variant, form="training")
    scale = loaded.spec.scale
    paths = list_images(args.images) if args.images else sample_images()
    if not paths:
        raise DatasetError(f"no images in {args.images}")
    cfg = TrainConfig(scale=scale, steps=args.steps, batch_size=args.batch_size, lr_patch=args.patch,
                      learning_rate=args.lr, seed=args.seed, threads=args.threads)
    pairs = make_pairs(paths, scale)
    bar = tqdm(total=cfg.steps, desc=f"train {args.variant}", unit="step", file=sys.stderr, disable=args.json)

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(l1=f"{loss:.4f}")

    record = train(loaded.module, pairs, cfg, progress)
    bar.close()
    state = {k: v.detach().contiguous() for k, v in loaded.module.state_dict().items()}
    meta = {"variant": args.variant, "form": "training", "scale": str(scale)}
    atomic_write_bytes(out, save(state, metadata=meta))
    record.update(variant=args.variant, output=out.name,
                  command="edgesr train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None,
                  images=args.images or "scikit-image sample photos: " + ", ".join(p.name for p in paths))
    atomic_write_json(out.with_suffix(".json"), record)
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        print()
    else:
        print(one_line(f"wrote {out} ({cfg.steps} steps, {record['seconds']} s, final L1 {record['final_l1']:.4f})"))
    return 0
