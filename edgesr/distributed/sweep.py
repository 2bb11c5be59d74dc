"""Sweeps on Ray: `convert --zoo INDEX --executor ray` and `convert DIR --executor ray`.

Each model is one Ray task (retried when its worker dies: ``max_retries``); the task does exactly
what the local executor does for that model - a zoo model converts in its own subprocess
(edgesr.zoo), a checkpoint of a folder through :func:`edgesr.batch.convert_one` - so the results are
the same. Outputs are published by the task that made them: convert publishes OUTDIR atomically
(staging folder + rename), a zoo result file is written atomically after that; a killed task
leaves a staging folder at most, which the retry (or any later run) removes.

Latency: a zoo model's conversion runs without its latency row; a second task holding the node's
bench slot (:data:`edgesr.distributed.cluster.BENCH_SLOT`, one per node) times the bundle and
records the node it ran on, so a node times one model at a time while other models convert. A
folder conversion with latency takes the bench slot for the whole conversion (its report's INT8
default depends on the timing). OUTROOT must be on a file system every node sees at the same path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .cluster import BENCH_SLOT, die_with_parent, failure_line, gather, node_info, ray_session

DEFAULT_RETRIES = 3
ZOO_BENCH_OUTPUT = (256, 256)  # as the local zoo (edgesr.zoo.convert_entry)


def run_zoo_ray(index: str | Path, outroot: str | Path, *, force: bool = False, only: list[str] | None = None,
                timeout: float = 1200, int8: bool = True, bench: bool = True, address: str | None = None,
                retries: int = DEFAULT_RETRIES, on_submit: Callable[[int], None] | None = None,
                on_done: Callable[[int, int, dict], None] | None = None) -> list[dict[str, Any]]:
    """`edgesr.zoo.run_zoo` with one Ray task per model; results in the index's order."""
    from ..zoo import select_entries
    from ..zoo_summary import write_summary

    entries = select_entries(index, only)
    outroot = Path(outroot).resolve()  # workers do not share this process's working folder
    (outroot / "results").mkdir(parents=True, exist_ok=True)
    (outroot / "logs").mkdir(exist_ok=True)
    done = [0]

    def finished(i: int, res: dict) -> None:
        if on_done:
            on_done(done[0], len(entries), res)
        done[0] += 1

    with ray_session(address, need_bench_slot=bench) as ray:
        task = ray.remote(zoo_task).options(num_cpus=1, max_retries=retries, retry_exceptions=False)
        refs = [task.remote(e.to_json(), str(outroot), {"force": force, "timeout": timeout, "int8": int8,
                                                          "bench": bench}) for e in entries]
        if on_submit:
            on_submit(len(refs))
        results = gather(ray, refs, finished, on_failure=lambda i, e: _crashed(entries[i], e))
    write_summary(results, outroot)
    return results


def _crashed(entry, e: BaseException) -> dict:
    """The result of a model whose task failed for good on Ray (not stored: a rerun tries again)."""
    return {"name": entry.name, "model": entry.code, "weights": str(entry.weights),
            "declared_input_range": entry.input_range, "ok": False, "category": "crash",
            "reason": f"the Ray task failed after its retries: {failure_line(e)}", "seconds": 0.0}


def zoo_task(entry_json: str, outroot: str, flags: dict) -> dict:
    """One zoo model, in a Ray worker: reuse its keyed result or convert it (subprocess that dies with
    this worker), time it in a bench slot, publish results/<name>.json."""
    from ..zoo import reuse_or_run
    from ..zoo_index import ZooEntry

    entry = ZooEntry.from_json(entry_json)
    root = Path(outroot)
    res = reuse_or_run(entry, root, force=flags["force"], timeout=flags["timeout"], int8=flags["int8"],
                       bench=flags["bench"], preexec_fn=die_with_parent(),
                       measure=lambda r: _timed_in_bench_slot(r, root / entry.name))
    return res | {"executor": {"kind": "ray", "converted_on": node_info()}} if not res.get("reused") else res


def _timed_in_bench_slot(res: dict, outdir: Path) -> dict:
    """Latency of a converted model, measured by a task holding a bench slot (the calling task
    blocks in ray.get, which frees its CPU meanwhile)."""
    import ray

    if not (outdir / "manifest.json").is_file():
        return res  # nothing converted: nothing to time (as the local executor)
    bench = ray.remote(bench_task).options(num_cpus=1, resources={BENCH_SLOT: 1}, max_retries=DEFAULT_RETRIES)
    try:
        timed = ray.get(bench.remote(str(outdir), ZOO_BENCH_OUTPUT))
    except ray.exceptions.RayError as e:
        return res | {"latency_ms": {}, "bench": {"error": str(e).strip().splitlines()[0][:300]}}
    return res | {"latency_ms": timed["latency_ms"], "bench": timed["bench"]}


def bench_task(outdir: str, bench_output: tuple[int, int]) -> dict:
    """In a bench slot: the latency rows the zoo's conversion would have measured (ORT fp32 at
    `bench_output`, interleaved, spinning off), with the node and machine they were measured on."""
    from ..bundle import read_manifest
    from ..pipeline import ConvertOptions, measure_latency

    m = read_manifest(outdir)
    opts = ConvertOptions(outdir=Path(outdir), light_checks=True, check_conventions=False,
                          bench_output=(int(bench_output[0]), int(bench_output[1])))
    lat = measure_latency(Path(outdir), None, m.spec, {}, opts)
    return {"latency_ms": {r["backend"]: r["median_ms"] for r in lat["results"]},
            "bench": {"node": node_info(), "slot": BENCH_SLOT, "machine": lat["machine"], "rows": lat["results"]}}


# ---- convert DIR ------------------------------------------------------------------------------------

def convert_many_ray(folder: str | Path, outroot: str | Path, base, *, address: str | None = None,
                     retries: int = DEFAULT_RETRIES, on_item: Callable[[int, int, Any], None] | None = None) -> list:
    """`edgesr.batch.convert_many` with one Ray task per checkpoint; items in the folder's order."""
    from ..batch import find_checkpoints, plan_outdirs
    from ..errors import OutputExists

    outroot = Path(outroot).resolve()
    if outroot.exists() and not outroot.is_dir():
        raise OutputExists(f"{outroot} exists and is not a folder; batch mode writes OUTROOT/<name>/ folders")
    plan = plan_outdirs(find_checkpoints(folder), outroot)
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": False}
    if base.bench:
        opts["resources"] = {BENCH_SLOT: 1}
    done = [0]

    def finished(i: int, item) -> None:
        if on_item:
            on_item(done[0], len(plan), item)
        done[0] += 1

    # workers do not share this process's working folder: every path absolute
    base = replace(base, checkpoint=None, outdir=outroot, calib=Path(base.calib).resolve() if base.calib else None,
                   testset=Path(base.testset).resolve() if base.testset else None)
    with ray_session(address, need_bench_slot=base.bench) as ray:
        task = ray.remote(convert_task).options(**opts)
        refs = [task.remote(str(Path(ckpt).resolve()), str(outdir), base) for ckpt, outdir in plan]
        return gather(ray, refs, finished, on_failure=lambda i, e: _crashed_item(plan[i], e))


def _crashed_item(planned, e: BaseException):
    from ..batch import BatchItem

    ckpt, outdir = planned
    return BatchItem(Path(ckpt), Path(outdir), error=f"the Ray task failed after its retries: {failure_line(e)}",
                     error_type=type(e).__name__, exit_code=1)


def convert_task(ckpt: str, outdir: str, base):
    from ..batch import convert_one

    item = convert_one(Path(ckpt), Path(outdir), base)
    if item.result is not None:
        item.result.report.setdefault("executor", {"kind": "ray", "node": node_info()})
    return item
