"""Bulk upscaling on Ray Data: `edgesr upscale MODEL DIR OUT --executor ray`.

The pipeline is a Ray Data dataset of (input, output) paths, mapped by a pool of actors that each
hold one model session (torch, ONNX Runtime, ...; resolved once per actor, one intra-op thread per
actor unless --threads says otherwise). An actor upscales each image with the same streaming code
as the local executor (:func:`edgesr.upscale.upscale_file`: read codes, pad, tile to the memory
budget, infer, stitch a row of tiles at a time, encode, publish atomically), so a result is the
same bytes as the local one and each worker's peak memory is bounded by ``--max-memory``, not by
the images. Rows stream back in finishing order (progress and a summary: images/s, failures with
reasons). Inputs and outputs must be on a file system every node sees at the same path.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, EdgesrError, ImageError
from .cluster import ray_session


class UpscaleActor:
    """One model session; upscales the images of each batch it is given (Ray Data actor)."""

    def __init__(self, model: str, how: dict[str, Any], settings: dict[str, Any]):
        import torch

        from ..upscale import ModelTiling

        torch.set_num_threads(how.get("threads") or 1)
        self.settings = settings
        self.error: str | None = None  # a model that cannot be loaded fails every image with its reason
        try:
            self.resolved = resolve(model, how)
        except EdgesrError as e:
            self.error = str(e)
            return
        r = self.resolved
        self.tiling = ModelTiling(r.runner, r.spec, onnx=getattr(r, "onnx", None),
                                  manifest_tiling=getattr(r, "tiling", None), threads=how.get("threads"))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from ..upscale import UpscaleFailure, UpscaleResult, upscale_file

        out = []
        for src, dst in zip(batch["src"], batch["dst"]):
            s = self.settings
            r: UpscaleResult | UpscaleFailure
            try:
                if self.error is not None:
                    raise EdgesrError(self.error)
                r = upscale_file(self.resolved.runner, self.resolved.spec, str(src), str(dst), tile=s["tile"],
                                 overlap=s["overlap"], force=s["force"], max_memory=s["max_memory"],
                                 model_tiling=self.tiling)
            except EdgesrError as e:
                r = UpscaleFailure(str(src), str(dst), str(e))
            out.append(json.dumps(r.to_dict() | {"rss_peak": _peak_rss()}))
        return {"i": batch["i"], "result": np.array(out, dtype=object)}


def resolve(model: str, how: dict[str, Any]):
    """The model as the local `edgesr upscale` resolves it (user code or checkpoint/ONNX/bundle)."""
    from ..resolve import resolve_model, resolve_user_model

    if how.get("user") is not None:
        return resolve_user_model(model, backend=how["backend"], threads=how.get("threads"), scale=how.get("scale"),
                                  **how["user"])
    return resolve_model(model, backend=how["backend"], scale=how.get("scale"), arch=how.get("arch"),
                         threads=how.get("threads"))


def how_to_resolve(*, backend: str, scale: int | None, arch: str | None, threads: int | None,
                   user: dict | None) -> dict[str, Any]:
    """The model options a worker resolves the model with (paths absolute: workers do not share
    this process's working folder)."""
    if user is not None:
        user = dict(user)
        user["ref"] = str(user["ref"])
        user["extra_paths"] = tuple(str(Path(p).resolve()) for p in user.get("extra_paths") or ())
        ref_file, sep, name = user["ref"].rpartition(":")
        if sep:
            user["ref"] = f"{Path(ref_file).resolve()}:{name}"
    return {"backend": backend, "scale": scale, "arch": arch, "threads": threads, "user": user}


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def upscale_ray(model: str | Path, input: str | Path, output: str | Path, *, tile: int | str = "auto",
                overlap: int | None = None, backend: str = "torch", scale: int | None = None, arch: str | None = None,
                threads: int | None = None, force: bool = False, max_memory: int | None = None,
                user: dict | None = None, address: str | None = None, workers: int | None = None,
                on_image: Callable[[Any], None] | None = None) -> tuple[list, dict[str, Any]]:
    """(results in input order, summary) for INPUT -> OUTPUT on Ray Data with `workers` actors
    (default: one per CPU of the cluster). A failing image is an UpscaleFailure, never a stop."""
    from ..upscale import UpscaleFailure, UpscaleResult, default_max_memory, plan_jobs

    jobs, folder = plan_jobs(input, output, force=force)
    if folder:
        jobs[0].dst.parent.mkdir(parents=True, exist_ok=True)
    if not Path(model).exists():
        raise CheckpointError(f"model not found: {model}")
    model_path = str(Path(model).resolve())
    how = how_to_resolve(backend=backend, scale=scale, arch=arch, threads=threads, user=user)
    settings = {"tile": tile, "overlap": overlap, "force": force,
                "max_memory": int(max_memory or default_max_memory())}
    results: list[Any] = [None] * len(jobs)
    t0 = time.perf_counter()
    with ray_session(address):
        import ray.data  # binds `ray` too: the package ray_session connected

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # edgesr shows its own bar (counts of images)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan/progress lines are not edgesr's answer
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_workers = min(n_workers, len(jobs))
        items = ray.data.from_items([{"i": i, "src": str(j.src.resolve()), "dst": str(j.dst.resolve())}
                                     for i, j in enumerate(jobs)],
                                    override_num_blocks=min(len(jobs), 32 * n_workers))
        ds = items.map_batches(UpscaleActor, fn_constructor_args=(model_path, how, settings), batch_size=1,
                               compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1)
        for row in ds.iter_rows():
            d = json.loads(row["result"])
            d.pop("ok")
            rss = d.pop("rss_peak", None)
            r = UpscaleFailure(**d) if "error" in d else UpscaleResult(**d)
            if rss is not None and isinstance(r, UpscaleResult):
                r.memory["worker_peak_rss"] = rss
            i = int(row["i"])
            r.input, r.output = str(jobs[i].src), str(jobs[i].dst)  # as given (workers had them absolute)
            results[i] = r
            if on_image:
                on_image(r)
    seconds = time.perf_counter() - t0
    failed = [r for r in results if isinstance(r, UpscaleFailure)]
    summary = {"executor": "ray", "workers": n_workers, "images": len(results), "failed": len(failed),
               "seconds": round(seconds, 2), "images_per_s": round(len(results) / seconds, 3) if seconds else None,
               "failures": [{"input": f.input, "error": f.error} for f in failed]}
    if not folder and failed:
        raise ImageError(failed[0].error)
    return results, summary
