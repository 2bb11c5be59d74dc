"""OpenVINO compiles a dynamic-size model once more per input shape it runs (the shape fixed).

benchmarks/int8_ov_profile.py --shapes (docs/int8.md, "OpenVINO findings"): with dynamic shapes
OpenVINO's CPU plugin runs SPAN's gate (Add, Sigmoid, Subtract, Multiply, the next conv's
FakeQuantize) as separate element-wise passes; with the shape fixed it tokenizes the chain into one
Snippets ``Subgraph``. Same function, a fraction of the time. These tests pin the form on a small
SPAN-like gate, in fp32 and in the `openvino` INT8 graph the verdict scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="needs pip install 'edgesr[openvino]'")

from edgesr.backends.openvino_runner import STATIC_SHAPES_KEPT, OpenVinoRunner  # noqa: E402
from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set  # noqa: E402

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1, psnr_budget=None)


class _SpanGate(torch.nn.Module):
    """SPAN's block: out3 = c3(SiLU(c2(SiLU(c1(x))))); out = (out3 + x) * (sigmoid(out3) - 0.5), twice
    (out3 read by the Add and the Sigmoid; the block output by the next block's conv and its Add)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.head = torch.nn.Conv2d(3, c, 3, padding=1)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleList(torch.nn.Conv2d(c, c, 3, padding=1) for _ in range(3)) for _ in range(2))
        self.up = torch.nn.Conv2d(c, 12, 3, padding=1)

    def forward(self, x):
        x = self.head(x)
        for c1, c2, c3 in self.blocks:
            out3 = c3(torch.nn.functional.silu(c2(torch.nn.functional.silu(c1(x)))))
            x = (out3 + x) * (torch.sigmoid(out3) - 0.5)
        return torch.nn.functional.pixel_shuffle(self.up(x), 2)


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    from edgesr.export.onnx import export_onnx
    from edgesr.spec import Spec

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("spangate")
    spec = Spec(arch="x", scale=2)
    fp32 = export_onnx(_SpanGate().eval(), spec, d / "gate.onnx", simplify=False).path
    with QuantSession(fp32, spec, QuantConfig(profile="openvino", **FAST),
                      eval_set=held_out_eval_set(2, max_side=64)) as qs:
        int8 = qs.build(d / "int8.onnx")
    return fp32, int8


def _ops(compiled) -> dict[str, set[str]]:
    """Compiled node type -> the original graph ops it runs (``originalLayersNames``)."""
    out: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        t = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        names = rt["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in rt else []
        out.setdefault(t, set()).update(n for n in names if n)
    return out


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_the_gate_runs_as_one_subgraph_with_the_shape_fixed(gate, which):
    path = gate[0] if which == "fp32" else gate[1]
    x = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    static = OpenVinoRunner(path, threads=1)
    dynamic = OpenVinoRunner(path, threads=1, static_shapes=False)
    y_static, y_dynamic = static.run(x), dynamic.run(x)
    fused = _ops(static.compiled_for(x.shape))
    sigmoids = lambda ops, t: [n for n in ops.get(t, ()) if "Sigmoid" in n]  # noqa: E731
    assert len(sigmoids(fused, "Subgraph")) == 2  # each block's gate is in a Snippets Subgraph ...
    assert not sigmoids(fused, "Eltwise")  # ... not a separate element-wise pass
    plain = _ops(dynamic.compiled_for(x.shape))  # what a plain (dynamic-shape) compile runs
    assert "Subgraph" not in plain and len(sigmoids(plain, "Eltwise")) == 2
    # the same function: the fp32 graphs agree to float rounding; the int8 graph may move a value
    # across a rounding step of a FakeQuantize, so it is held to its own quantization step
    tol = 1e-4 if which == "fp32" else 0.05
    assert np.abs(y_static - y_dynamic).max() < tol
    if which == "int8":
        assert np.abs(y_static - y_dynamic).mean() < 1e-4


def test_one_compile_per_shape_bounded(gate):
    fp32 = gate[0]
    r = OpenVinoRunner(fp32, threads=1)
    ref = OpenVinoRunner(fp32, threads=1, static_shapes=False)
    rng = np.random.default_rng(1)
    shapes = [(1, 3, 16 + 2 * i, 24 + 4 * i) for i in range(STATIC_SHAPES_KEPT + 2)]
    for s in shapes + shapes[-1:]:
        x = rng.random(s, dtype=np.float32)
        np.testing.assert_allclose(r.run(x), ref.run(x), atol=1e-4)
    assert len(r._by_shape) == STATIC_SHAPES_KEPT  # the oldest shapes were let go
    assert list(r._by_shape)[-1] == shapes[-1]
    assert r.compiled_for(shapes[-1]) is r._by_shape[shapes[-1]][0]  # a repeated shape is not compiled again
    assert not ref._by_shape and ref.compiled_for(shapes[0]) is ref.compiled


def test_a_fixed_size_model_is_compiled_once(tmp_path):
    import onnx

    from edgesr.export.onnx import export_onnx
    from edgesr.spec import Spec

    torch.manual_seed(0)
    p = export_onnx(_SpanGate().eval(), Spec(arch="x", scale=2), tmp_path / "g.onnx", simplify=False).path
    m = onnx.load(str(p))
    for dim, n in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, 3, 20, 28)):
        dim.Clear()
        dim.dim_value = n
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    r = OpenVinoRunner(tmp_path / "fixed.onnx", threads=1)
    r.run(np.zeros((1, 3, 20, 28), np.float32))
    assert r._model is None and not r._by_shape and r.compiled_for((1, 3, 20, 28)) is r.compiled


def test_a_shape_change_frees_the_last_shapes_buffers(gate, monkeypatch):
    """The kept compiles hold one shape's activations at a time (upscale's memory plan counts one):
    measured on SPAN fp32 with four alternating shapes, RSS 568 MiB kept vs 264 released (dynamic: 453)."""
    import edgesr.backends.openvino_runner as ovr

    released = []
    monkeypatch.setattr(ovr, "release_memory", lambda compiled: released.append(compiled))
    r = OpenVinoRunner(gate[0], threads=1)
    a, b = np.zeros((1, 3, 16, 24), np.float32), np.zeros((1, 3, 20, 28), np.float32)
    r.run(a)
    r.run(a)
    assert released == []  # the same shape again: nothing to free
    r.run(b)
    assert released == [r._by_shape[a.shape][0]]
    released.clear()
    r.run(a)
    assert released == [r._by_shape[b.shape][0]]
