"""edgesr.bench / edgesr.costmodel / `edgesr bench`: statistics, timers' logic, MAC counting,
CLI JSON shape. No timing assertions: fake clocks make the timers deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgesr.bench import (
    TimingPolicy,
    interleaved_order,
    megapixels_per_second,
    ratio_summary,
    stats_from_samples,
    summarize_ort_profile,
    time_callable,
    time_cuda_events,
    time_interleaved,
    workload_lr_size,
)
from edgesr.costmodel import count_macs


class FakeClock:
    """A clock that only moves when a fake workload says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1e3


# ---------------------------------------------------------------- statistics

def test_stats_known_samples():
    s = stats_from_samples([float(v) for v in range(10, 0, -1)])  # order must not matter
    assert s.runs == 10
    assert s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.median_ms == 5.5 and s.mean_ms == 5.5
    # numpy linear interpolation: rank = p/100 * (n - 1)
    assert s.p90_ms == pytest.approx(9.1)
    assert s.p95_ms == pytest.approx(9.55)
    assert s.p99_ms == pytest.approx(9.91)
    std = math.sqrt(82.5 / 9)  # sample standard deviation (n - 1)
    assert s.std_ms == pytest.approx(std)
    assert s.cv == pytest.approx(std / 5.5)
    assert s.noisy and "CV" in s.warning
    assert s.samples_ms[0] == 10.0


def test_stats_percentiles_between_ranks_and_odd_count():
    s = stats_from_samples([2.0, 4.0, 8.0])
    assert s.median_ms == 4.0
    assert s.p90_ms == pytest.approx(4.0 + 0.8 * 4.0)  # rank 1.8 between 4 and 8
    assert s.p99_ms == pytest.approx(4.0 + 0.98 * 4.0)
    assert s.mean_ms == pytest.approx(14 / 3)


def test_stats_single_and_constant_samples():
    one = stats_from_samples([3.0])
    assert (one.median_ms, one.p99_ms, one.std_ms, one.cv, one.noisy) == (3.0, 3.0, 0.0, 0.0, False)
    const = stats_from_samples([5.0] * 7)
    assert const.cv == 0.0 and const.warning is None


def test_stats_noise_threshold():
    quiet = stats_from_samples([10.0, 10.5, 9.5, 10.0])  # std 0.408 -> CV 4 %
    assert not quiet.noisy
    loud = stats_from_samples([10.0, 14.0, 6.0, 10.0])  # std 3.27 -> CV 33 %
    assert loud.noisy


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -2.0], [float("inf")]])
def test_stats_reject_bad_samples(bad):
    with pytest.raises(ValueError):
        stats_from_samples(bad)


def test_to_dict_rounds_and_samples_optional():
    s = stats_from_samples([1.23456789, 2.0])
    d = s.to_dict()
    assert "samples_ms" not in d and d["min_ms"] == 1.2346 and d["noisy"] is True
    assert s.to_dict(samples=True)["samples_ms"] == [1.2346, 2.0]


def test_megapixels_per_second():
    assert megapixels_per_second((720, 1280), 100.0) == pytest.approx(9.216)
    assert megapixels_per_second((1000, 1000), 500.0, batch=2) == pytest.approx(4.0)


@pytest.mark.parametrize("kw", [dict(min_runs=0), dict(max_runs=3, min_runs=5), dict(warmup_seconds=-1),
                                dict(min_seconds=float("nan"))])
def test_policy_validation(kw):
    with pytest.raises(ValueError):
        TimingPolicy(**kw)


# ---------------------------------------------------------------- timers (fake clock)

def test_time_callable_runs_warmup_then_min_runs():
    clock = FakeClock()
    durations = iter([100.0, 7.0, 1.0, 2.0, 3.0, 4.0])  # first call = warm-up
    calls = []

    def fn():
        d = next(durations)
        calls.append(d)
        clock.advance_ms(d)

    st = time_callable(fn, TimingPolicy(warmup_seconds=0.0, warmup_runs=2, min_runs=4, min_seconds=0.0), clock=clock)
    assert calls == [100.0, 7.0, 1.0, 2.0, 3.0, 4.0]
    assert st.runs == 4 and st.samples_ms == pytest.approx((1.0, 2.0, 3.0, 4.0))
    assert st.median_ms == pytest.approx(2.5)


def test_time_callable_min_seconds_extends_and_max_runs_caps():
    clock = FakeClock()

    def fn():
        clock.advance_ms(10.0)

    st = time_callable(fn, TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=2, min_seconds=0.095,
                                        max_runs=1000), clock=clock)
    assert st.runs == 10  # 10 x 10 ms passes 0.095 s
    st = time_callable(fn, TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=2, min_seconds=10.0,
                                        max_runs=5), clock=clock)
    assert st.runs == 5


def test_time_callable_warmup_by_time():
    clock = FakeClock()
    n = {"calls": 0}

    def fn():
        n["calls"] += 1
        clock.advance_ms(10.0)

    time_callable(fn, TimingPolicy(warmup_seconds=0.05, warmup_runs=1, min_runs=1, min_seconds=0.0), clock=clock)
    assert n["calls"] == 5 + 1  # 50 ms of 10 ms warm-up calls, then one timed run


def test_interleaved_order_rotates():
    names = ["a", "b", "c"]
    assert [interleaved_order(names, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_time_interleaved_call_sequence_and_pairing():
    clock = FakeClock()
    seq = []
    cost = {"A": 1.0, "B": 2.0, "C": 3.0}

    def make(name):
        def fn():
            seq.append(name)
            clock.advance_ms(cost[name])
        return fn

    stats = time_interleaved({k: make(k) for k in "ABC"},
                             TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=3, min_seconds=0.0),
                             clock=clock)
    assert "".join(seq) == "ABC" + "ABC" + "BCA" + "CAB"  # warm-up round, then rotated rounds
    assert {k: v.samples_ms for k, v in stats.items()} == {"A": pytest.approx((1.0,) * 3),
                                                          "B": pytest.approx((2.0,) * 3),
                                                          "C": pytest.approx((3.0,) * 3)}


def test_time_interleaved_min_seconds_counts_all_candidates():
    clock = FakeClock()

    def fn():
        clock.advance_ms(10.0)

    stats = time_interleaved({"x": fn, "y": fn}, TimingPolicy(warmup_seconds=0.0, warmup_runs=0, min_runs=1,
                                                               min_seconds=0.045), clock=clock)
    # each candidate gets ~min_seconds: 2 candidates x 45 ms = 90 ms in rounds of 20 ms -> 5 rounds
    assert stats["x"].runs == stats["y"].runs == 5


def test_ratio_summary_paired():
    slow = stats_from_samples([10.0, 20.0, 30.0, 40.0, 50.0])
    fast = stats_from_samples([5.0, 10.0, 10.0, 10.0, 25.0])
    r = ratio_summary(slow, fast)
    assert r["ratio"] == pytest.approx(30.0 / 10.0)
    # per-round ratios 2, 2, 3, 4, 2 -> median 2, p10 2, p90 3.6
    assert r["paired_median"] == 2.0 and r["paired_p10"] == 2.0 and r["paired_p90"] == pytest.approx(3.6)
    assert r["rounds"] == 5 and r["paired_min"] == 2.0 and r["paired_max"] == 4.0
    unpaired = ratio_summary(slow, stats_from_samples([15.0, 15.0]))
    assert set(unpaired) == {"ratio"} and unpaired["ratio"] == 2.0


class FakeEvent:
    def __init__(self, clock):
        self.clock, self.t = clock, None

    def record(self, stream=None):
        self.t = self.clock()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_time_cuda_events_chunks_with_injected_events():
    clock = FakeClock()
    syncs, launches = [], []

    def launch():
        launches.append(1)
        clock.advance_ms(2.0)

    st = time_cuda_events(launch, TimingPolicy(warmup_seconds=0.0, warmup_runs=3, min_runs=25, min_seconds=0.0),
                          event_factory=lambda: FakeEvent(clock), synchronize=lambda: syncs.append(1),
                          clock=clock, chunk=10)
    assert st.runs == 30  # whole chunks of 10 until >= 25 launches
    assert len(launches) == 3 + 30
    assert len(syncs) == 3 + 3  # one per warm-up launch, one per chunk
    assert st.median_ms == pytest.approx(2.0)


# ---------------------------------------------------------------- torch-cuda runner on HostCalls (the GPU
# check's dry run): everything but the CUDA calls themselves runs on the CPU

def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.PixelShuffle(2)).eval()


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("fp16", 1e-2), ("bf16", 6e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_cuda_runner_on_host_calls_computes_the_model(graph, precision, tol, channels_last):
    from edgesr.bench import TORCH_PRECISIONS, HostCalls, TorchCudaRunner

    net = _tiny_net()
    rng = np.random.default_rng(0)
    x, x2 = (rng.random((1, 3, 9, 11), dtype=np.float32) for _ in range(2))
    with torch.no_grad():
        ref, ref2 = (net(torch.from_numpy(v)).numpy() for v in (x, x2))
    r = TorchCudaRunner(net, cuda_graph=graph, precision=precision, channels_last=channels_last, calls=HostCalls())
    y = r.run(x)
    assert y.dtype == np.float32 and y.shape == ref.shape and np.abs(y - ref).max() <= tol
    assert next(r.module.parameters()).dtype == getattr(torch, TORCH_PRECISIONS[precision])
    assert next(net.parameters()).dtype == torch.float32  # the caller's module is left alone
    assert np.abs(r.run(x2) - ref2).max() <= tol  # a captured graph replays on new input data
    assert len(r._graphs) == (1 if graph else 0)
    st = time_cuda_events(r.device_launch(x), TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=2,
                                                           min_seconds=0.0, max_runs=2),
                          event_factory=r.calls.event, synchronize=r.calls.synchronize)
    assert st.runs == 2 and st.min_ms >= 0


def test_torch_cuda_runner_names_are_distinct_and_precision_is_known():
    from edgesr.bench import HostCalls, TorchCudaRunner
    from edgesr.parity import runner_precision

    net = _tiny_net()
    runners = [TorchCudaRunner(net, cuda_graph=g, precision=p, tf32=t, channels_last=c, calls=HostCalls())
               for g in (False, True) for p in ("fp32", "fp16", "bf16") for t in (None, False, True)
               for c in (False, True) if p == "fp32" or t is None]
    assert len({r.name for r in runners}) == len(runners) == 2 * 2 * (3 + 2)
    assert {runner_precision(r) for r in runners} == {"fp32", "fp16", "bf16"}
    with pytest.raises(ValueError):
        TorchCudaRunner(net, precision="int8", calls=HostCalls())


def test_fp32_math_sets_and_restores_the_tf32_settings():
    from edgesr.bench import fp32_math

    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, mm.fp32_precision)
    with fp32_math(False):
        assert (conv.fp32_precision, mm.fp32_precision) == ("ieee", "ieee")
    with fp32_math(True):
        assert (conv.fp32_precision, mm.fp32_precision) == ("tf32", "tf32")
    with fp32_math(None):
        assert (conv.fp32_precision, mm.fp32_precision) == before
    with pytest.raises(KeyError), fp32_math(False):
        raise KeyError("x")
    assert (conv.fp32_precision, mm.fp32_precision) == before
    assert isinstance(torch.backends.cudnn.allow_tf32, bool)  # the legacy flag still reads (no API mix-up)


def test_bench_prepared_gpu_rows_on_host_calls():
    from edgesr.bench import HostCalls, Prepared, TorchCudaRunner, bench_prepared
    from edgesr.spec import Spec

    p = Prepared("torch-cuda", TorchCudaRunner(_tiny_net(), cuda_graph=True, calls=HostCalls()), "net", "fp32",
                 gpu=True)
    res = bench_prepared([p], [(8, 10)], Spec(arch="tiny", scale=2),
                         TimingPolicy(warmup_seconds=0.0, warmup_runs=1, min_runs=3, min_seconds=0.0, max_runs=3))
    d = res[0].to_dict()
    assert d["output"] == "16x20" and d["runs"] == 3 and d["gpu"]["mode"] == "cuda-graph"
    for k in ("compute", "h2d", "d2h"):
        assert d["gpu"][k]["runs"] == 3 and d["gpu"][k]["min_ms"] >= 0


def test_trt_backend_reports_a_missing_package_before_exporting(monkeypatch, tmp_path):
    import importlib.util

    import edgesr.bench as bench
    from edgesr.errors import BackendUnavailable

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")

    class Source:
        kind, workdir = "checkpoint", tmp_path

        def fp32_onnx(self, static_hw=None):
            raise AssertionError("exported an ONNX model for a backend that cannot run")

    monkeypatch.setattr(bench, "cuda_status", lambda: (True, "a GPU"))  # past the CUDA check, to the package check
    with pytest.raises(BackendUnavailable, match="TensorRT is not available"):
        bench.prepare_backend(Source(), "trt")


# ---------------------------------------------------------------- workloads, profile summary

@pytest.mark.parametrize("wl,scale,mult,expected", [("720p", 4, 1, (180, 320)), ("1080p", 4, 1, (270, 480)),
                                                     ("720p", 2, 1, (360, 640)), ("1080p", 2, 1, (540, 960)),
                                                     ("720p", 3, 1, (240, 426)), ("720p", 4, 8, (176, 320))])
def test_workload_lr_size(wl, scale, mult, expected):
    assert workload_lr_size(wl, scale, mult) == expected


def test_summarize_ort_profile_drops_warmup_run():
    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 900},
          {"cat": "Node", "name": "conv1_kernel_time", "ts": 10, "dur": 800, "args": {"op_name": "Conv"}},
          {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 500},
          {"cat": "Node", "name": "conv1_kernel_time", "ts": 1010, "dur": 300, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "d2s_kernel_time", "ts": 1400, "dur": 100, "args": {"op_name": "DepthToSpace"}},
          {"cat": "Node", "name": "conv1_fence_before", "ts": 1400, "dur": 5, "args": {"op_name": "Conv"}}]
    s = summarize_ort_profile(ev, runs=1)
    assert s["model_run_ms"] == [0.5]
    assert s["ops"] == [{"op": "Conv", "ms_per_run": 0.3, "share": 0.75},
                        {"op": "DepthToSpace", "ms_per_run": 0.1, "share": 0.25}]
    assert s["top_nodes"][0] == {"node": "conv1", "op": "Conv", "ms_per_run": 0.3}


# ---------------------------------------------------------------- MAC counting

class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.d = nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1)
        self.e = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.e(self.d(torch.relu(self.c(self.b(self.a(x))))))


def test_count_macs_known_conv_stack():
    r = count_macs(_Stack(), (1, 3, 10, 12))
    by = {l.name: l.macs for l in r.layers}
    assert by == {"a": 8 * 10 * 12 * 3 * 9,          # 25920
                  "b": 8 * 10 * 12 * 8,              # 7680
                  "c": 16 * 10 * 12 * 2 * 9,         # 34560: groups=4 -> 2 input channels per output
                  "d": 16 * 10 * 12 * 4 * 16,        # 122880: every input element feeds out*kh*kw outputs
                  "e": 4 * 10 * 12 * 4 * 9}          # 17280: stride 2 on 20x24 -> 10x12
    assert r.macs == 25920 + 7680 + 34560 + 122880 + 17280
    assert r.output_shape == (1, 4, 10, 12)
    assert r.macs_per_output_pixel == pytest.approx(r.macs / 120)
    assert r.params == sum(p.numel() for p in _Stack().parameters())
    assert r.functional_macs == r.macs and r.hook_coverage == 1.0
    la = r.layers[0]
    assert (la.in_elems, la.out_elems, la.weight_elems) == (3 * 120, 8 * 120, 8 * 3 * 9)
    assert r.traffic_bytes(4) == 4 * sum(l.in_elems + l.out_elems + l.weight_elems for l in r.layers)
    big = r.scaled_to((20, 24))
    assert big.macs == 4 * r.macs and big.output_shape == (1, 4, 20, 24)


def test_count_macs_linear_and_batch():
    m = nn.Sequential(nn.Linear(20, 5), nn.ReLU(), nn.Linear(5, 3))
    r = count_macs(m, (2, 7, 20))
    assert [l.macs for l in r.layers] == [2 * 7 * 5 * 20, 2 * 7 * 3 * 5]


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("mask", torch.ones(4, 1, 3, 3))

    def forward(self, x):
        return F.conv2d(self.conv(x), self.mask, padding=1, groups=4)


def test_count_macs_reports_functional_convs_hooks_miss():
    r = count_macs(_Functional(), (1, 3, 8, 8))
    assert r.macs == 4 * 64 * 27
    assert r.functional_macs == 4 * 64 * 27 + 4 * 64 * 9
    assert r.hook_coverage == pytest.approx(27 / 36)


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    lm = build_variant("ecbsr-m4c16-x4", "training")
    p = tmp_path_factory.mktemp("bench") / "tiny_ecbsr_x4.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(p))
    return p


def test_cli_bench_json_shape(tiny_checkpoint, tmp_path, capsys):
    from edgesr.cli import main

    rc = main(["bench", str(tiny_checkpoint), "-b", "ort", "-b", "torch", "-b", "trt", "--size", "8x8",
               "--size", "6x10", "--warmup", "0", "--min-runs", "2", "--min-seconds", "0", "--threads", "1",
               "--work", str(tmp_path / "work"), "--cost", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    out = json.loads(cap.out)
    assert set(out) >= {"machine", "results", "speedups", "skipped", "policy", "warnings"}
    assert out["machine"]["cpu_model"] and out["machine"]["logical_cpus"] >= 1
    assert out["ort_spinning"] == "ORT default (on)"  # one ORT backend: nothing to compete with
    assert [(r["backend"], r["size"], r["output"]) for r in out["results"]] == [
        ("ort", "8x8", "32x32"), ("torch", "8x8", "32x32"), ("ort", "6x10", "24x40"), ("torch", "6x10", "24x40")]
    for r in out["results"]:
        assert r["runs"] == 2
        for k in ("min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "cv", "mpix_per_s"):
            assert isinstance(r[k], (int, float)) and r[k] >= 0
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["interleaved_with"] == ["torch" if r["backend"] == "ort" else "ort"]
    assert [(s["baseline"], s["backend"], s["interleaved"], s["rounds"]) for s in out["speedups"]] == [
        ("ort", "torch", True, 2), ("ort", "torch", True, 2)]
    if not torch.cuda.is_available():
        assert [s["backend"] for s in out["skipped"]] == ["trt"]
        assert "CUDA" in out["skipped"][0]["reason"]
    assert out["cost"]["macs_per_output_pixel"] == 1035.0  # 4 blocks of 16 ch + 3->16 and 16->48 3x3 convs / 16
    assert (tmp_path / "work").is_dir() and list((tmp_path / "work").glob("*.onnx"))


def test_cli_bench_parses_lists_and_repeats():
    from edgesr.cli import build_parser

    a = build_parser().parse_args(["bench", "m.pth", "--backend", "ort", "torch", "-b", "ort-int8", "--size", "8x8",
                                   "6x10", "--workload", "720p", "1080p"])
    assert a.backend == ["ort", "torch", "ort-int8"]
    assert a.size == ["8x8", "6x10"] and a.workload == ["720p", "1080p"]


def test_cli_bench_onnx_torch_unavailable_and_bad_size(tiny_checkpoint, tmp_path, capsys):
    from edgesr.cli import main

    work = tmp_path / "w"
    rc = main(["bench", str(tiny_checkpoint), "-b", "ort", "--size", "8x8", "--warmup", "0", "--min-runs", "1",
               "--min-seconds", "0", "--work", str(work), "--json"])
    assert rc == 0
    capsys.readouterr()
    onnx_file = next(work.glob("*.onnx"))
    rc = main(["bench", str(onnx_file), "-b", "torch", "--size", "8x8", "--json"])
    err = capsys.readouterr().err
    assert rc != 0 and "holds no PyTorch weights" in err
    rc = main(["bench", str(onnx_file), "--size", "8by8"])
    assert rc != 0 and "HxW" in capsys.readouterr().err


def test_mac_count_matches_ecbsr_formula():
    from edgesr.registry import build_variant

    lm = build_variant("ecbsr-m4c16-x4", "deploy")
    r = count_macs(lm.module, (1, 3, 4, 4))
    # ECBSR-M4C16 deploy form: conv 3->16, num_block=4 convs 16->16, conv 16->48 (= 3 * 4^2), all 3x3
    per_lr_px = 3 * 16 * 9 + 4 * 16 * 16 * 9 + 16 * 48 * 9
    assert r.macs == 16 * per_lr_px
    assert r.macs_per_output_pixel == pytest.approx(per_lr_px / 16)
    assert np.isclose(r.macs_per_output_pixel, 1035.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("graph", [False, True])
def test_cli_bench_torch_cuda_reports_gpu_compute_and_copies(tiny_checkpoint, tmp_path, capsys, graph):
    from edgesr.cli import main

    argv = ["bench", str(tiny_checkpoint), "-b", "torch", "-b", "torch-cuda", "--size", "16x16", "--warmup", "0",
            "--min-runs", "3", "--min-seconds", "0", "--work", str(tmp_path), "--json"] + (["--cuda-graph"] if graph
                                                                                           else [])
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    gpu_rows = [r for r in out["results"] if r["backend"] == "torch-cuda"]
    assert len(gpu_rows) == 1
    g = gpu_rows[0]["gpu"]
    assert g["mode"] == ("cuda-graph" if graph else "eager")
    for k in ("compute", "h2d", "d2h"):
        assert g[k]["runs"] >= 3 and g[k]["median_ms"] > 0
    assert out["machine"]["gpu"]
