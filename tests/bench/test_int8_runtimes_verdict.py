"""benchmarks/int8_runtimes.py's per-model verdict (issue 21's target), on hand-made measurements."""
from __future__ import annotations

import importlib.util
import sys

from helpers.paths import REPO

SCRIPT = REPO / "benchmarks" / "int8_runtimes.py"


def _module():
    spec = importlib.util.spec_from_file_location("int8_runtimes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["int8_runtimes"] = mod
    spec.loader.exec_module(mod)
    return mod


ir = _module()


def _entry(cpu_ms, cpu_drop, ov_ms, ov_drop, nncf_ms=10.0):
    def q(drop):
        return {"set5_drop": drop, "float_layers": [], "layers": 8, "within_budget": True,
                "all_int8_heldout_drop": 0.05}

    return {"latency_ms": {"ort fp32": {"median_ms": 40.0}, "nncf default (openvino)": {"median_ms": nncf_ms},
                           "edgesr cpu (ort)": {"median_ms": cpu_ms},
                           "edgesr openvino (openvino)": {"median_ms": ov_ms}},
            "int8": {"cpu": q(cpu_drop), "openvino": q(ov_drop), "nncf_default": {"set5_drop": 0.8}}}


def test_no_graph_within_target_names_the_closest_graph_not_the_fastest():
    v = ir.verdict(_entry(cpu_ms=26.0, cpu_drop=0.114, ov_ms=13.0, ov_drop=0.137))
    assert not v["met"]
    quality = [m for m in v["misses"] if "keeps Set5" in m]
    assert len(quality) == 1 and "the closest, edgesr cpu (ort)" in quality[0] and "0.114 dB" in quality[0]
    assert v["best"]["artifact"] == "edgesr openvino (openvino)"  # speed lines still judge the fastest graph


def test_fastest_graph_within_target_meets_it():
    v = ir.verdict(_entry(cpu_ms=30.0, cpu_drop=0.05, ov_ms=15.0, ov_drop=0.06, nncf_ms=20.0))
    assert v["met"] and v["misses"] == [] and v["best"]["artifact"] == "edgesr openvino (openvino)"


def test_slower_than_nncf_is_a_miss_with_its_size():
    v = ir.verdict(_entry(cpu_ms=30.0, cpu_drop=0.05, ov_ms=16.0, ov_drop=0.06, nncf_ms=15.2))
    assert not v["met"] and any("0.95x NNCF" in m and "slower by 5%" in m for m in v["misses"])


def test_slower_than_nncf_says_how_far_apart_two_copies_of_nncf_time():
    e = _entry(cpu_ms=30.0, cpu_drop=0.05, ov_ms=16.0, ov_drop=0.06, nncf_ms=15.2)
    e["latency_ms"][ir.AA_CONTROL] = {"median_ms": 16.1}
    v = ir.verdict(e)
    assert not v["met"]
    line = next(m for m in v["misses"] if "NNCF default" in m)
    assert "two copies of NNCF's own graph differ by 6%" in line and "(within that)" in line
    e["latency_ms"][ir.AA_CONTROL] = {"median_ms": 15.3}
    line = next(m for m in ir.verdict(e)["misses"] if "NNCF default" in m)
    assert "differ by 1%" in line and "within" not in line


def test_slower_than_nncf_names_the_float_layers_the_picture_needs():
    e = _entry(cpu_ms=30.0, cpu_drop=0.05, ov_ms=16.0, ov_drop=0.06, nncf_ms=15.2)
    e["int8"]["openvino"] |= {"float_layers": ["a", "b"], "all_int8_heldout_drop": 0.442}
    line = next(m for m in ir.verdict(e)["misses"] if "NNCF default" in m)
    assert "keeps 2/8 layers float for the picture" in line and "loses 0.442 dB held-out" in line
