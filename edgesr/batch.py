"""Batch conversion: every checkpoint in a folder -> OUTROOT/<stem>/ (`edgesr convert DIR -o OUTROOT`).

One bad file never stops the batch: each checkpoint is converted on its own (its own
staging folder, published atomically), its failure is recorded with the one-line message
of the error, and the caller decides the exit status from the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .errors import DatasetError, EdgesrError, OutputExists
from .pipeline import ConvertOptions, ConvertResult, convert

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")


@dataclass
class BatchItem:
    checkpoint: Path
    outdir: Path
    ok: bool = False  # converted and parity passed
    converted: bool = False  # OUTDIR written (parity may still have failed)
    error: str | None = None  # one-line message when not converted
    error_type: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    result: ConvertResult | None = None

    def to_dict(self) -> dict:
        d = {"checkpoint": str(self.checkpoint), "outdir": str(self.outdir), "ok": self.ok,
             "converted": self.converted, "error": self.error, "error_type": self.error_type,
             "exit_code": self.exit_code, "seconds": self.seconds}
        if self.result is not None:
            spec = self.result.manifest.get("spec", {})
            d.update(arch=spec.get("arch"), variant=spec.get("variant"), scale=spec.get("scale"),
                     parity_ok=self.result.ok)
        return d


def find_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files directly in `folder` (sorted by name; hidden files skipped)."""
    d = Path(folder)
    if not d.is_dir():
        raise DatasetError(f"{d}: not a folder of checkpoints")
    try:
        files = sorted((f for f in d.iterdir()
                        if f.suffix.lower() in CHECKPOINT_SUFFIXES and not f.name.startswith(".")
                        and not f.is_dir()), key=lambda f: f.name)
    except OSError as e:
        raise DatasetError(f"{d}: cannot list the folder ({e.strerror or e})") from None
    if not files:
        raise DatasetError(f"{d}: no checkpoints in this folder (looked for {', '.join(CHECKPOINT_SUFFIXES)})")
    return files


def plan_outdirs(checkpoints: list[Path], outroot: Path) -> list[tuple[Path, Path]]:
    """(checkpoint, OUTROOT/<stem>) pairs; stems shared by several files get their suffix
    appended (``m.pth`` and ``m.safetensors`` -> ``m_pth``, ``m_safetensors``)."""
    stems = [c.stem for c in checkpoints]
    names = [c.stem if stems.count(c.stem) == 1 else f"{c.stem}_{c.suffix.lstrip('.').lower()}"
             for c in checkpoints]
    # Still equal (``m.pth`` + ``m.safetensors`` next to ``m_pth.pt``; names differing in case
    # on a case-insensitive disk): number them, so no conversion replaces another's OUTDIR.
    seen: set[str] = set()
    out = []
    for c, name in zip(checkpoints, names):
        unique, i = name, 2
        while unique.casefold() in seen:
            unique, i = f"{name}-{i}", i + 1
        seen.add(unique.casefold())
        out.append((c, outroot / unique))
    return out


def convert_many(folder: str | Path, outroot: str | Path, base: ConvertOptions,
                 on_item: Callable[[int, int, BatchItem], None] | None = None,
                 log: Callable[[str], None] | None = None) -> list[BatchItem]:
    """Convert every checkpoint in `folder` with the options of `base` (its `outdir` and
    `checkpoint` are replaced per file). Returns one BatchItem per checkpoint, in order;
    `on_item(i, n, item)` is called after each one. Only KeyboardInterrupt stops the batch."""
    outroot = Path(outroot)
    if outroot.exists() and not outroot.is_dir():
        raise OutputExists(f"{outroot} exists and is not a folder; batch mode writes OUTROOT/<name>/ folders")
    plan = plan_outdirs(find_checkpoints(folder), outroot)
    items: list[BatchItem] = []
    for i, (ckpt, outdir) in enumerate(plan):
        item = convert_one(ckpt, outdir, base, log=log)
        items.append(item)
        if on_item:
            on_item(i, len(plan), item)
    return items


def convert_one(ckpt: Path, outdir: Path, base: ConvertOptions,
                log: Callable[[str], None] | None = None) -> BatchItem:
    """One checkpoint of a batch: its failure becomes the item's one-line error (only
    KeyboardInterrupt and SystemExit propagate)."""
    item = BatchItem(ckpt, outdir)
    t0 = time.perf_counter()
    try:
        res = convert(replace(base, checkpoint=ckpt, outdir=outdir), log=log or (lambda m: None))
    except EdgesrError as e:
        item.error, item.error_type, item.exit_code = _one_line(e), type(e).__name__, e.exit_code
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a bug on one file must not lose the rest of the batch
        item.error = f"internal error: {type(e).__name__}: {_one_line(e)}"
        item.error_type, item.exit_code = type(e).__name__, 1
    else:
        item.result, item.converted, item.ok = res, True, res.ok
        if not res.ok:
            item.error, item.error_type, item.exit_code = "parity check failed (see report.md)", "ParityError", 1
    item.seconds = round(time.perf_counter() - t0, 2)
    return item


def exit_code(items: list[BatchItem]) -> int:
    """0 when every checkpoint converted with passing parity, else the largest failure code."""
    return max((it.exit_code for it in items if not it.ok), default=0)


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s or type(e).__name__
