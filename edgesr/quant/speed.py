"""Is an INT8 candidate faster than fp32 where it runs? Measured, not assumed.

A float layer in an ONNX Runtime ``cpu`` graph costs more than its float conv: a DequantizeLinear
before it, a QuantizeLinear after it, and the change between ORT's int8 (NHWC) and fp32 (NCHWc)
layouts around it. Measured on ETDS_M4C32_x2 (one thread, 360x640 -> 720p): all-int8 1.92x fp32,
one backbone conv float 1.34-1.45x, while keeping the picture-reading ``conv_first`` float made it
FASTER (2.09x). So the mixed-precision search times each candidate it would take against fp32
(:class:`SpeedProbe`) and passes over a layer that would make the graph too slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# The LR input candidates are timed on: big enough for the layouts and caches of a real frame to
# matter, small enough that one comparison takes about a second on one core.
PROBE_HW = (128, 224)


class SpeedProbe:
    """Times candidate graphs against the fp32 graph, interleaved, in ONNX Runtime.

    ``probe(path) -> (speed-up, fast enough)``: the median of the per-round fp32 / candidate time
    ratios (edgesr.timing.time_interleaved, spinning off) and whether it is >= `min_speedup`."""

    def __init__(self, fp32_path: str | os.PathLike, in_channels: int, min_speedup: float,
                 threads: int | None = None, hw: tuple[int, int] | None = None, runs: int = 9):
        from ..backends.ort_session import ort_session

        self.min_speedup, self.threads, self.runs = min_speedup, threads, runs
        h, w = hw or PROBE_HW
        self.x = np.random.default_rng(0).random((1, in_channels, h, w), dtype=np.float32)
        self._fp32 = ort_session(str(fp32_path), threads=threads or 1, spinning=False)
        self._name = self._fp32.get_inputs()[0].name
        self.timings = 0

    def __call__(self, path: str | os.PathLike) -> tuple[float, bool]:
        from ..backends.ort_session import ort_session
        from ..timing import TimingPolicy, ratio_summary, time_interleaved

        sess = ort_session(str(Path(path)), threads=self.threads or 1, spinning=False)
        feed = {self._name: self.x}
        st = time_interleaved({"fp32": lambda: self._fp32.run(None, feed), "int8": lambda: sess.run(None, feed)},
                              TimingPolicy(warmup_seconds=0.2, warmup_runs=2, min_runs=self.runs, min_seconds=0.5))
        self.timings += 1
        r = ratio_summary(st["fp32"], st["int8"])
        ratio = float(r.get("paired_median", r["ratio"]))
        return ratio, ratio >= self.min_speedup
