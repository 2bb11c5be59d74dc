"""--model FILE.py:NAME: user code + weights, conventions found by behaviour, errors that name
what broke. Runs without ../shared: the weights are edgesr's bundled (trained) ECBSR x4, renamed
to the layout of tests/data/user_repo/models/tinysr.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.cli import main
from edgesr.errors import ExportError, ImplausibleOutput, MissingDependency, UserCodeError

REPO = Path(__file__).resolve().parents[1] / "data" / "user_repo"
TINY = f"{REPO / 'models' / 'tinysr.py'}:TinySR"


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    from edgesr.pipeline import BUNDLED_CHECKPOINT
    from edgesr.registry import load_model
    from edgesr.reparam import reparameterize

    deploy = reparameterize(load_model(BUNDLED_CHECKPOINT).module).state_dict()
    out = {}
    for k, v in deploy.items():  # backbone.N.0.* -> body.N.conv.*, backbone.N.1.weight -> body.N.act.weight
        _, n, i, name = k.split(".")
        out[f"body.{n}.{'conv' if i == '0' else 'act'}.{name}"] = v.contiguous()
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(_tiny_state_dict(), str(p))
    return p


@pytest.fixture(scope="module")
def wrapped_weights(tmp_path_factory) -> Path:
    """A BasicSR-style file: good weights under 'params', untrained ones under 'params_ema'."""
    sd = _tiny_state_dict()
    g = torch.Generator().manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "wrapped.pth"
    torch.save({"params": sd, "params_ema": {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in sd.items()}}, p)
    return p


def _load(weights, **kw):
    from edgesr.usermodel import load_user_model

    return load_user_model(weights, TINY, kw.pop("kwargs", {}), extra_paths=(REPO,), **kw)


@pytest.mark.parametrize("kwargs,expected", [({}, (1.0, "RGB")), ({"data_range": 255}, (255.0, "RGB"))])
def test_conventions_are_measured(weights, kwargs, expected):
    um = _load(weights, kwargs=kwargs)
    conv = um.conventions
    assert (conv.chosen.input_range, conv.chosen.color_order) == expected, conv.describe_trials()
    assert not conv.chosen.mean_shift
    assert {t.convention.label for t in conv.trials} >= {"range 1, RGB", "range 255, RGB",
                                                         f"range {expected[0]:g}, BGR"}
    assert conv.plausible and conv.best.gain_db > 0.5
    assert um.spec.scale == 4 and um.geometry.size_multiple == 1
    # The adapter makes every variant the same [0, 1] RGB model.
    x = torch.rand(1, 3, 20, 24)
    ref = _load(weights).module(x) if kwargs else None
    if ref is not None:
        assert float((um.module(x) - ref).abs().max()) < 1e-4


def test_given_range_is_checked_for_plausibility(weights):
    with pytest.raises(ImplausibleOutput) as e:
        _load(weights, kwargs={"data_range": 255}, input_range=1.0)
    msg = str(e.value)
    assert "range 1" in msg and "bicubic" in msg and "\n" not in msg


def test_factory_function_and_weights_key(weights, wrapped_weights):
    from edgesr.usermodel import load_user_model

    um = load_user_model(wrapped_weights, f"{REPO / 'models' / 'tinysr.py'}:make_tinysr", extra_paths=(REPO,),
                         key="params")
    assert um.conventions.plausible
    # Without the key, edgesr prefers params_ema (untrained here): refused, naming what was tried.
    with pytest.raises(ImplausibleOutput, match="range 255"):
        load_user_model(wrapped_weights, TINY, extra_paths=(REPO,))


def test_errors_name_what_broke(weights, tmp_path):
    from edgesr.usermodel import ModelRef, build_user_module

    before = {n: m for n, m in sys.modules.items() if n == "models" or n.startswith("models.")}
    with pytest.raises(MissingDependency) as e:
        build_user_module(ModelRef.parse(f"{REPO / 'models' / 'needs_pkg.py'}:Net"), extra_paths=(REPO,))
    assert "not_a_real_package_edgesr" in str(e.value) and "needs_pkg.py:2" in str(e.value)
    assert "pip install" in str(e.value)
    with pytest.raises(UserCodeError, match="has no 'Nope'.*TinySR"):
        build_user_module(ModelRef.parse(f"{REPO / 'models' / 'tinysr.py'}:Nope"), extra_paths=(REPO,))
    with pytest.raises(UserCodeError, match="width"):
        build_user_module(ModelRef.parse(f"{REPO / 'models' / 'broken.py'}:NeedsArgs"))
    # Without the repository root on the import path, `from models.block import ...` fails by name.
    with pytest.raises(UserCodeError, match="import path"):
        build_user_module(ModelRef.parse(TINY))
    with pytest.raises(UserCodeError, match="FILE.py:NAME"):
        ModelRef.parse("just_a_file.py")
    # The user's modules do not leak into sys.modules (teams ship clashing `models` packages).
    after = {n: m for n, m in sys.modules.items() if n == "models" or n.startswith("models.")}
    assert after == before


def test_export_names_operator_and_line():
    from edgesr.export.diagnose import export_user_model
    from edgesr.spec import Spec
    from edgesr.usermodel import ModelRef, build_user_module

    net = build_user_module(ModelRef.parse(f"{REPO / 'models' / 'broken.py'}:FFTNet"))
    with pytest.raises(ExportError) as e:
        export_user_model(net, Spec(arch="user:FFTNet", scale=4), Path("/nonexistent/x.onnx"))
    msg = str(e.value)
    assert "aten::fft_fft2" in msg and "broken.py:17" in msg, msg


def test_fixed_size_fallback_is_stated(tmp_path):
    import onnx

    from edgesr.export.diagnose import export_user_model
    from edgesr.spec import Spec
    from edgesr.usermodel import ModelRef, build_user_module

    net = build_user_module(ModelRef.parse(f"{REPO / 'models' / 'broken.py'}:SizeBakedNet"))
    res = export_user_model(net, Spec(arch="user:SizeBakedNet", scale=4), tmp_path / "m.onnx")
    d = res.to_dict()
    assert d["fixed_input_hw"] == [64, 64] and d["dynamic"] is False
    assert "broken.py:30" in d["fixed_reason"], d["fixed_reason"]
    dims = [x.dim_value for x in onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]


def test_deploy_hooks_are_verified():
    from torch import nn

    from edgesr.reparam.author_hooks import deploy_form

    class Good(nn.Module):  # conv + BN with a correct fuse()
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            return self.bn(self.conv(x)) if hasattr(self, "bn") else self.conv(x)

        def fuse(self):
            s = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
            self.conv.weight.data *= s.view(-1, 1, 1, 1)
            self.conv.bias.data = (self.conv.bias.data - self.bn.running_mean) * s + self.bn.bias
            del self.bn

    class Wrong(Good):  # a hook that changes the output (like NTIRE 2022 team 08's) is not kept
        def switch_to_deploy(self):
            self.conv.weight.data += 1.0

    inputs = [np.random.default_rng(0).random((1, 3, 9, 11), dtype=np.float32)]
    good = Good().eval()
    dep, rep = deploy_form(good, inputs)
    assert rep["hooks"][0]["applied"] and not hasattr(dep, "bn") and hasattr(good, "bn")
    assert rep["max_abs"] < 1e-5
    dep, rep = deploy_form(Wrong().eval(), inputs)
    assert not rep["hooks"][0]["applied"] and "changed the output" in rep["hooks"][0]["reason"]


def test_generic_pass_is_reported_applied_only_when_it_collapsed_something():
    """deploy_form's generic step: a training-form block (parallel 3x3 + 1x1 + identity, summed) is
    collapsed and named; a model with nothing affine to merge is reported unchanged, not 'applied'."""
    from torch import nn

    from edgesr.reparam.author_hooks import deploy_form

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 8, 3, padding=1)
            self.k3, self.k1 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
            self.tail = nn.Conv2d(8, 3, 3, padding=1)

            self.gain = self.tail.bias * 0.0 + 1.0  # a non-leaf tensor attribute: deepcopy refuses it

        def forward(self, x):
            y = torch.relu(self.head(x))
            y = torch.relu(self.k3(y) + self.k1(y) + y)
            return self.tail(y) * self.gain.view(1, -1, 1, 1)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    inputs = [np.random.default_rng(0).random((1, 3, 13, 9), dtype=np.float32)]
    dep, rep = deploy_form(Branches().eval(), inputs)
    g = rep["generic"]
    assert g["applied"] and g["regions_collapsed"] >= 1 and g["multi_branch_scopes"], g
    assert rep["changed"] and rep["max_abs"] < 1e-4 and rep["params_after"] < rep["params_before"]
    dep, rep = deploy_form(Plain().eval(), inputs)
    g = rep["generic"]
    assert not g["applied"] and g["regions_collapsed"] == 0 and "nothing to collapse" in g["reason"], g
    assert not rep["changed"]


def test_cli_convert_and_eval_with_model(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGESR_ALLOW_IMPLAUSIBLE", raising=False)
    out = tmp_path / "out"
    rc = main(["convert", str(weights), "--model", TINY, "--model-path", str(REPO), "--model-kwargs",
               '{"data_range": 255}', "-o", str(out), "--no-bench", "--no-ort-format", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    rep = res["report"]
    assert rep["conventions"]["chosen"]["input_range"] == 255.0
    assert rep["source"]["model"].endswith("tinysr.py:TinySR")
    comps = {c["test"]: c for c in rep["parity"]["comparisons"]}
    assert comps["ort:fp32"]["ok"] and comps["ort:fp32"]["max_abs"] <= 1e-4
    man = json.loads((out / "manifest.json").read_text())
    assert man["spec"]["hyperparams"]["native_input_range"] == 255.0 and man["io"]["input"]["value_range"] == [0, 1]
    # --model-kwargs without --model is an error, not silently ignored.
    assert main(["convert", str(weights), "-o", str(tmp_path / "x"), "--model-kwargs", "{}"]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_cli_parity_upscale_bench_quantize_take_model(weights, tmp_path, capsys):
    from edgesr.sample_images import sample_images

    user = ["--model", TINY, "--model-path", str(REPO), "--model-kwargs", '{"data_range": 255}']
    assert main(["parity", f"{weights}:training", str(weights), "--sizes", "17x23", "--limit", "1",
                 "--no-localize", "--json", *user]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["comparisons"][0]["ok"]
    src = sample_images()[0]
    assert main(["upscale", str(weights), str(src), str(tmp_path / "up.png"), "--tile", "64", *user]) == 0
    from edgesr.imaging import read_image

    assert read_image(tmp_path / "up.png").rgb.shape[0] == 4 * read_image(src).rgb.shape[0]
    capsys.readouterr()
    assert main(["bench", str(weights), "--backend", "torch", "--size", "16x16", "--min-runs", "2",
                 "--min-seconds", "0", "--warmup", "0", "--json", *user]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "user:TinySR"
    assert main(["quantize", str(weights), "-o", str(tmp_path / "q.onnx"), "--num-patches", "4",
                 "--psnr-budget", "-1", "--json", *user]) == 0
    assert (tmp_path / "q.onnx").is_file()


def test_registry_models_are_checked_too(tmp_path, capsys, monkeypatch):
    """An untrained registry checkpoint is refused by convert (naming what was tried) unless allowed."""
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    monkeypatch.delenv("EDGESR_ALLOW_IMPLAUSIBLE", raising=False)
    torch.manual_seed(0)
    p = tmp_path / "untrained.safetensors"
    save_file({k: v.contiguous() for k, v in build_variant("etds-t-x2", "deploy").module.state_dict().items()}, str(p))
    args = ["convert", str(p), "-o", str(tmp_path / "o"), "--no-bench", "--no-ort-format"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no input convention gives a plausible super-resolution" in err and "range 255" in err
    assert not (tmp_path / "o").exists()
    assert main(args + ["--allow-implausible"]) == 0


def test_real_registry_checkpoints_pass_the_checks(ckpt_dir, set5_dir, tmp_path, capsys, monkeypatch):
    """The behaviour checks accept real, correctly-conventioned checkpoints (ETDS repo, Set5)."""
    monkeypatch.delenv("EDGESR_ALLOW_IMPLAUSIBLE", raising=False)
    ckpt = ckpt_dir / "ECBSR" / "ECBSR_M4C16_x4.pth"
    assert main(["eval", str(ckpt), "--testset", str(set5_dir), "--scale", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["psnr_y"] > res["bicubic_psnr_y"] + 1.5
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "o"), "--no-bench", "--no-ort-format", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["report"]
    assert rep["conventions"]["plausible"] and rep["conventions"]["given"]


def test_cuda_calls_while_building_run_on_cpu():
    from edgesr.usermodel import ModelRef, build_user_module

    if torch.cuda.is_available():
        pytest.skip("the redirect applies only without CUDA")
    net = build_user_module(ModelRef.parse(f"{REPO / 'models' / 'broken.py'}:WarmsUpOnGPU"))
    assert net.edgesr_cuda_calls_on_cpu == 2 and next(net.parameters()).device.type == "cpu"
    assert "cuda" not in torch.Tensor.__dict__  # restored: outside the build .cuda() behaves as usual
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).cuda()


def test_eval_input_range_on_a_registry_checkpoint_with_ort(set5_dir, capsys, tmp_path):
    """--input-range on a registry checkpoint: the convention wraps the module before export, so
    --backend ort scores what --backend torch scores (it raised an internal error before)."""
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    scores = {}
    for backend in ("torch", "ort"):
        rc = main(["eval", str(BUNDLED_CHECKPOINT), "--testset", str(set5_dir), "--scale", "4", "--backend", backend,
                   "--input-range", "1", "--json"])
        out = capsys.readouterr()
        assert rc == 0, out.err
        scores[backend] = json.loads(out.out)["psnr_y"]
    assert abs(scores["torch"] - scores["ort"]) < 0.01 and scores["torch"] > 29.0, scores
    # Where --input-range would be ignored it is refused instead, with one line saying what to do.
    assert main(["bench", str(BUNDLED_CHECKPOINT), "--input-range", "255", "--size", "16x16"]) == 2
    assert "honoured by convert and eval only" in capsys.readouterr().err
    onnx = tmp_path / "m.onnx"
    assert main(["quantize", str(BUNDLED_CHECKPOINT), "-o", str(onnx), "--input-range", "1"]) == 2
    assert "--input-range" in capsys.readouterr().err


def test_integer_buffers_of_the_users_module_load_with_the_weights(tmp_path):
    """Swin-style code saves an int64 `relative_position_index` buffer with the weights (2022 team
    09): it loads when the user's module has an integer buffer of that name (prefixed too); an
    integer tensor the module has no integer buffer for is still refused."""
    from torch import nn

    from edgesr.checkpoint import load_state_dict
    from edgesr.errors import InvalidWeights
    from edgesr.usermodel import load_weights

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 3, 1)
            self.register_buffer("relative_position_index", torch.arange(16).view(4, 4))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Attn()

    src = Net()
    src.block.relative_position_index += 1  # the saved value is what loads (as the author's loader)
    torch.save({"params": src.state_dict()}, tmp_path / "w.pth")
    with pytest.raises(InvalidWeights, match="relative_position_index"):
        load_state_dict(tmp_path / "w.pth")  # registry checkpoints: weights are floats
    net = Net()
    load_weights(net, tmp_path / "w.pth")
    assert torch.equal(net.block.relative_position_index, src.block.relative_position_index)
    torch.save({"params": src.state_dict() | {"block.step": torch.tensor(3)}}, tmp_path / "x.pth")
    with pytest.raises(InvalidWeights, match="block.step"):
        load_weights(Net(), tmp_path / "x.pth", strict=False)


def test_convert_of_a_fixed_size_export_states_tiling_was_not_measured(tmp_path, capsys):
    """A fixed-size export runs on one input size only: convert completes (it failed in the tiling
    measurement, which fed the graph other sizes) and says tiling was not measured."""
    from edgesr.usermodel import ModelRef, build_user_module

    code = f"{REPO / 'models' / 'broken.py'}:SizeBakedNet"
    torch.save(build_user_module(ModelRef.parse(code)).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    rc = main(["convert", str(tmp_path / "w.pth"), "--model", code, "--model-path", str(REPO), "-o", str(out),
               "--no-bench", "--no-ort-format", "--input-range", "1"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["fixed_input_hw"] == [64, 64] and report["parity"]["ok"]
    assert report["tiling"]["method"] == "not measured (fixed-size graph)" and not report["tiling"]["exact"]
    assert json.loads((out / "manifest.json").read_text())["io"]["fixed_input_hw"] == [64, 64]


def test_convert_int8_of_a_fixed_size_export(tmp_path, capsys):
    """INT8 of a fixed-shape graph (batch and H/W fixed): calibration, refinement, ranking and the
    verdict all run on inputs of exactly that shape (they fed 8-sample batches and 48-px crops)."""
    from edgesr.usermodel import ModelRef, build_user_module

    code = f"{REPO / 'models' / 'broken.py'}:SizeBakedNet"
    torch.save(build_user_module(ModelRef.parse(code)).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    rc = main(["convert", str(tmp_path / "w.pth"), "--model", code, "--model-path", str(REPO), "-o", str(out),
               "--no-bench", "--no-ort-format", "--input-range", "1", "--int8", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["io"]["fixed_input_hw"] == [64, 64]
    assert any(a["role"].startswith("onnx_int8") for a in manifest["artifacts"])
