"""Bulk-upscale throughput on Ray Data: 1 vs 2 workers on this machine (ratio measured in one run),
the local executor beside them, per-worker peak memory against the stated bound, and what Ray's
scheduling costs (what a cluster adds, and what it cannot).

One private local Ray instance (``--cpus`` CPUs) serves every run; the runs are interleaved
(local, ray x1, ray x2, repeated ``--repeats`` times) so load changes on a shared machine hit all
three alike. Each run upscales the same folder of ``--images`` crops of the bundled sample photos
(``--size`` px square, 8-bit PNG) with the bundled ECBSR-M4C16 x4 checkpoint, one intra-op thread
per model session, into a fresh folder; every Ray result is checked byte for byte against the
local one. Memory: each Ray worker's peak RSS (ru_maxrss of the actor process, Ray's own worker
overhead included) is compared with ``--max-memory``, the budget each image is planned to.

    python benchmarks/ray_throughput.py [--images 16] [--size 256] [--repeats 3] [--cpus 2] [--max-memory 1G]

Prints a table and writes benchmarks/results/ray_throughput.json (machine, load average sampled
during the run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "ray_throughput.json"
BUNDLED = REPO / "edgesr" / "assets" / "ecbsr_m4c16_x4_bundled.safetensors"


def make_images(folder: Path, n: int, size: int) -> None:
    """n crops (size x size) of the bundled sample photos, 8-bit RGB PNG."""
    import numpy as np
    from PIL import Image

    from edgesr.imaging import read_codes
    from edgesr.sample_images import sample_images

    photos = [read_codes(p).samples for p in sample_images()]
    photos = [p for p in photos if p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= size]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - size + 1), rng.integers(0, p.shape[1] - size + 1)
        Image.fromarray(np.ascontiguousarray(p[y:y + size, x:x + size])).save(folder / f"img{i:03d}.png")


class LoadSampler(threading.Thread):
    def __init__(self, every: float = 2.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop.wait(self.every)


def spread(xs: list[float], runs: bool = True) -> dict:
    d = {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}
    return d | ({"runs": [round(x, 3) for x in xs]} if runs else {"samples": len(xs)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray instance")
    ap.add_argument("--max-memory", default="1G", help="per-image budget (each worker is planned to it)")
    ap.add_argument("--backend", default="ort")
    a = ap.parse_args()

    import ray

    from edgesr.bench import machine_info
    from edgesr.distributed.bulk import upscale_ray
    from edgesr.distributed.cluster import ray_session
    from edgesr.upscale import parse_memory, upscale

    budget = parse_memory(a.max_memory)
    tmp = Path(tempfile.mkdtemp(prefix="edgesr-ray-bench-"))
    src = tmp / "in"
    make_images(src, a.images, a.size)
    load = LoadSampler()
    load.start()
    t_all = time.perf_counter()
    rows: dict[str, list[float]] = {"local": [], "ray x1": [], "ray x2": []}
    steady: dict[str, list[float]] = {k: [] for k in rows}  # after the first result: no start-up
    startup: dict[str, list[float]] = {k: [] for k in rows}
    peaks: dict[str, list[int]] = {"ray x1": [], "ray x2": []}
    mismatches = 0
    with ray_session(None, num_cpus=a.cpus):
        # Ray's own cost: a no-op task round trip (scheduling + (de)serialisation), warm workers
        noop = ray.remote(lambda: None)
        ray.get([noop.remote() for _ in range(4)])
        trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            ray.get(noop.remote())
            trips.append((time.perf_counter() - t0) * 1e3)
        for rep in range(a.repeats):
            for name in rows:
                out = tmp / f"{name.replace(' ', '')}-{rep}"
                stamps: list[float] = []
                t0 = time.perf_counter()
                if name == "local":
                    res = upscale(str(BUNDLED), src, out, backend=a.backend, threads=1, max_memory=budget,
                                  on_image=lambda r: stamps.append(time.perf_counter()))
                    ref = out
                else:
                    res, _ = upscale_ray(BUNDLED, src, out, backend=a.backend, threads=1, max_memory=budget,
                                         workers=int(name[-1]), on_image=lambda r: stamps.append(time.perf_counter()))
                    peaks[name] += [r.memory.get("worker_peak_rss", 0) for r in res]
                dt = time.perf_counter() - t0
                startup[name].append(stamps[0] - t0)
                steady[name].append((len(stamps) - 1) / (stamps[-1] - stamps[0]) if stamps[-1] > stamps[0] else 0.0)
                assert all(getattr(r, "error", None) is None for r in res), res
                rows[name].append(len(res) / dt)
                if name != "local":
                    mismatches += sum((out / p.name).read_bytes() != p.read_bytes() for p in ref.iterdir())
                print(f"run {rep + 1}/{a.repeats} {name}: {len(res) / dt:.2f} images/s, {steady[name][-1]:.2f} "
                      f"after the first result ({startup[name][-1]:.1f} s to it)", file=sys.stderr, flush=True)
    load.stop.set()
    ratios = [b / a_ for a_, b in zip(rows["ray x1"], rows["ray x2"])]
    steady_ratios = [b / a_ for a_, b in zip(steady["ray x1"], steady["ray x2"]) if a_ > 0]
    per_image_s = 1 / statistics.median(steady["local"])  # one session, after start-up, under this load
    trip = statistics.median(trips)
    result = {
        "benchmark": "ray_throughput", "machine": machine_info(), "cpu_model": _cpu_model(),
        "cores": os.cpu_count(), "load_avg_during_run": spread(load.samples, runs=False) if load.samples else None,
        "settings": {"images": a.images, "size": a.size, "repeats": a.repeats, "ray_cpus": a.cpus,
                     "backend": a.backend, "threads_per_session": 1, "max_memory": budget,
                     "model": BUNDLED.name},
        "images_per_s": {k: spread(v) for k, v in rows.items()},
        "ratio_2_vs_1_workers": spread(ratios),
        "images_per_s_after_first_result": {k: spread(v) for k, v in steady.items()},
        "ratio_2_vs_1_workers_after_first_result": spread(steady_ratios) if steady_ratios else None,
        "seconds_to_first_result": {k: spread(v) for k, v in startup.items()},
        "ray_vs_local_1_worker": round(statistics.median(rows["ray x1"]) / statistics.median(rows["local"]), 3),
        "worker_peak_rss_mib": {k: round(max(v) / 2**20, 1) for k, v in peaks.items() if v},
        "memory_bound_mib": round(budget / 2**20, 1),
        "memory_bound_holds": all(max(v) <= budget for v in peaks.values() if v),
        "bytes_differing_from_local": mismatches,
        "noop_task_round_trip_ms": spread(trips),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    result["cluster"] = (
        f"Each image costs about {per_image_s * 1e3:.0f} ms with one session here (under the load shown) and a Ray "
        f"task round trip "
        f"{trip:.1f} ms, so scheduling is {100 * trip / 1e3 / per_image_s:.2f}% of the work; starting a worker (actor "
        f"with its model) took {statistics.median(startup['ray x1']):.0f} s. Images spread over "
        "N nodes x C cores should scale close to N x C workers until the shared file system (every node reads "
        "and writes the same paths) or the driver's result stream limits it. A cluster adds cores and memory "
        "per worker (the --max-memory budget applies per actor), not speed per image; on this machine 2 workers "
        "share 2 cores with everything else running, so the ratio above is bounded by the load shown.")
    result["load_note"] = ("2 workers can only beat 1 when a second core is free; with the load average above the "
                           "core count the CPUs were already oversubscribed by other processes")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'executor':10} {'images/s (wall)':>16} {'min-max':>14} {'after 1st result':>17} {'min-max':>14} "
          f"{'s to 1st':>9}")
    for k, v in result["images_per_s"].items():
        st, su = result["images_per_s_after_first_result"][k], result["seconds_to_first_result"][k]
        print(f"{k:10} {v['median']:16.2f} {v['min']:6.2f}-{v['max']:<6.2f} {st['median']:17.2f} "
              f"{st['min']:6.2f}-{st['max']:<6.2f} {su['median']:9.1f}")
    r = result["ratio_2_vs_1_workers"]
    sr = result["ratio_2_vs_1_workers_after_first_result"] or {"median": float("nan"), "min": 0, "max": 0}
    print(f"\n2 vs 1 Ray workers: x{r['median']:.2f} wall (min-max {r['min']:.2f}-{r['max']:.2f}), "
          f"x{sr['median']:.2f} after the first result ({sr['min']:.2f}-{sr['max']:.2f}); ray x1 / local: "
          f"x{result['ray_vs_local_1_worker']:.2f}; worker peak RSS {result['worker_peak_rss_mib']} MiB "
          f"(bound {result['memory_bound_mib']} MiB: {'holds' if result['memory_bound_holds'] else 'EXCEEDED'}); "
          f"outputs differing from local: {mismatches}")
    la = result["load_avg_during_run"] or {}
    print(f"load average during the run: median {la.get('median')} (min-max {la.get('min')}-{la.get('max')}); "
          f"cores: {os.cpu_count()} "
          f"({result['cpu_model']})")
    print(f"\n{result['cluster']}")
    print(f"wrote {RESULTS}")
    return 0 if mismatches == 0 else 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
