"""What a newcomer meets first: live progress on long stages, backends implied by file types,
messages that say what to do, --json failures a script can parse, readable report figures and
a model list that fits a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgesr.cli import build_parser, main
from edgesr.pipeline import BUNDLED_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory) -> Path:
    """The bundled ECBSR x4 model exported to ONNX (edgesr metadata included)."""
    from edgesr.export.onnx import export_onnx
    from edgesr.registry import load_model

    lm = load_model(BUNDLED_CHECKPOINT)
    path = tmp_path_factory.mktemp("onnx") / "ecbsr_x4.onnx"
    export_onnx(lm.module, lm.spec, path)
    return path


@pytest.fixture(scope="module")
def tiny_testset(tmp_path_factory) -> Path:
    """Two 96x96 crops of the sample photos laid out as a test set (HR/ + LR_bicubic/X4/)."""
    from PIL import Image

    from edgesr.resize import imresize
    from edgesr.sample_images import sample_images

    root = tmp_path_factory.mktemp("testset")
    (root / "HR").mkdir()
    (root / "LR_bicubic" / "X4").mkdir(parents=True)
    for i, f in enumerate(sample_images()[:2]):
        hr = np.asarray(Image.open(f).convert("RGB"))[:96, :96]
        lr = imresize(hr, 0.25)
        Image.fromarray(hr).save(root / "HR" / f"img{i}.png")
        Image.fromarray(lr).save(root / "LR_bicubic" / "X4" / f"img{i}x4.png")
    return root


# ============================================================================ progress

def test_plain_progress_prints_periodic_lines_when_not_a_tty(monkeypatch):
    """Not a terminal: a plain line every EDGESR_PROGRESS_S seconds while the stage runs, with
    counts and elapsed time; nothing after it ends."""
    from edgesr.progress import Progress

    monkeypatch.setenv("EDGESR_PROGRESS_S", "0.05")
    monkeypatch.delenv("EDGESR_PROGRESS", raising=False)
    out = io.StringIO()  # isatty() is False
    p = Progress("INT8 sensitivity", 40, "layers", stream=out)
    p.update(12)
    time.sleep(0.4)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert all(re.fullmatch(r"edgesr: INT8 sensitivity: 12/40 layers \(30%\), \d+ s", ln) for ln in lines), lines
    n = len(lines)
    time.sleep(0.2)
    assert len(out.getvalue().splitlines()) == n  # closed: no more lines


def test_spinner_line_without_total(monkeypatch):
    from edgesr.progress import Progress

    monkeypatch.setenv("EDGESR_PROGRESS_S", "0.05")
    out = io.StringIO()
    p = Progress("INT8 calibration", None, stream=out)
    time.sleep(0.2)
    p.close()
    assert "edgesr: INT8 calibration: running, " in out.getvalue()


def test_progress_off(monkeypatch):
    from edgesr.progress import Progress

    monkeypatch.setenv("EDGESR_PROGRESS_S", "0.02")
    monkeypatch.setenv("EDGESR_PROGRESS", "0")
    out = io.StringIO()
    p = Progress("parity", 3, stream=out)
    time.sleep(0.1)
    p.close()
    assert out.getvalue() == ""


@pytest.fixture(scope="module")
def quantized(bundled_onnx, tmp_path_factory):
    """`edgesr quantize --json` run as a script runs it: stderr is not a terminal."""
    out = tmp_path_factory.mktemp("int8") / "q.onnx"
    env = dict(os.environ, EDGESR_PROGRESS_S="0.2", EDGESR_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-m", "edgesr", "quantize", str(bundled_onnx), "-o", str(out),
                           "--profile", "cpu", "--num-patches", "8", "--psnr-budget", "-1", "--threads", "1",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    return proc, out


def test_quantize_shows_progress_on_stderr_and_keeps_stdout_json(quantized):
    """A real non-TTY run: the long INT8 stages print periodic lines on stderr while they run;
    stdout is one JSON object (--json)."""
    proc, _ = quantized
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # one JSON object, no progress mixed in
    stages = re.findall(r"^edgesr: (INT8 [a-z0-9 -]+?)(?: on [^:]+)?: .*, \d+ s$", proc.stderr, re.M)
    assert stages, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr  # plain lines, no bar redraws


def test_parity_counts_model_runs(bundled_onnx, monkeypatch, capsys):
    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.parity import check_parity, random_samples

    class Slow(OrtRunner):
        def run(self, x):
            time.sleep(0.03)
            return super().run(x)

    monkeypatch.setenv("EDGESR_PROGRESS_S", "0.05")
    a, b = Slow(bundled_onnx, name="a"), Slow(bundled_onnx, name="b")
    rep = check_parity([a, b], random_samples([(16, 16)] * 1), scale=4)
    assert rep.ok
    err = capsys.readouterr().err
    assert re.search(r"edgesr: parity: \d/2 model runs \(\d+%\), \d+ s", err), err


# ============================================================================ defaults

@pytest.mark.parametrize("name,backend", [("m.onnx", "ort"), ("m.ORT", "ort"), ("m.xml", "openvino"),
                                          ("m.ckpt.pth", "torch"), ("m.safetensors", "torch")])
def test_implied_backend_from_file_type(tmp_path, name, backend):
    from edgesr.file_types import implied_backend

    assert implied_backend(tmp_path / name, "torch") == backend
    assert implied_backend(tmp_path, "torch") == "torch"  # an OUTDIR keeps the command's default


def test_eval_on_onnx_needs_no_backend_flag(bundled_onnx, tiny_testset, capsys):
    rc, out, err = run_cli(capsys, "eval", bundled_onnx, "--testset", tiny_testset, "--scale", "4", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["backend"] == "ort" and res["psnr_y"] > 20


def test_upscale_on_onnx_needs_no_backend_flag(bundled_onnx, tiny_testset, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "upscale", bundled_onnx, tiny_testset / "LR_bicubic" / "X4" / "img0x4.png",
                           tmp_path / "sr.png", "--json")
    assert rc == 0, err
    assert json.loads(out)["backend"] == "ort" and (tmp_path / "sr.png").is_file()


def test_folder_upscale_shows_progress_when_not_a_tty(bundled_onnx, tmp_path):
    """A folder upscale run as a script (stderr not a terminal) prints periodic image counts on
    stderr; stdout stays one JSON object under --json."""
    from edgesr.imaging import write_image

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        write_image(src / f"{i}.png", rng.random((48, 48, 3)))
    env = dict(os.environ, EDGESR_PROGRESS_S="0.05", EDGESR_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-m", "edgesr", "upscale", str(bundled_onnx), str(src),
                           str(tmp_path / "out"), "--threads", "1", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["images"]) == 6
    counts = re.findall(r"^edgesr: upscale: (\d+)/6 images \(\d+%\), \d+ s$", proc.stderr, re.M)
    assert counts, proc.stderr


def test_bench_names_the_artifact_it_timed(bundled_onnx, capsys):
    rc, out, err = run_cli(capsys, "bench", bundled_onnx, "--size", "16x16", "--min-runs", "2", "--min-seconds",
                           "0", "--warmup", "0")
    assert rc == 0, err
    assert f"timed ort: {bundled_onnx}" in out or f"timed ort: {os.path.relpath(bundled_onnx)}" in out, out


def test_bench_bundle_names_the_bundle_file_not_a_temp_copy(tmp_path, capsys):
    from edgesr.pipeline import ConvertOptions, convert

    out_dir = tmp_path / "b"
    convert(ConvertOptions(outdir=out_dir, threads=1, ort_format=False, bench=False), log=lambda m: None)
    rc, out, err = run_cli(capsys, "bench", out_dir, "-b", "ort", "torch", "--size", "16x16", "--min-runs", "2",
                           "--min-seconds", "0", "--warmup", "0", "--json")
    assert rc == 0, err
    arts = {r["backend"]: r["artifact"] for r in json.loads(out)["results"]}
    assert arts["ort"] == f"{out_dir / 'model.onnx'} (bundle artifact onnx_fp32)"
    assert arts["torch"] == f"{out_dir / 'deploy.safetensors'} (bundle artifact torch_deploy)"


# ============================================================================ messages

def test_unknown_layout_points_to_user_code_and_spandrel(tmp_path, capsys):
    import torch

    p = tmp_path / "pan_like.pth"
    torch.save({"conv_first.weight": torch.zeros(40, 3, 3, 3),
                "SCPA_trunk.0.conv1_a.weight": torch.zeros(20, 40, 1, 1)}, p)
    rc, _, err = run_cli(capsys, "convert", p, "-o", tmp_path / "out")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert "--model FILE.py:NAME" in err and "pip install 'edgesr[spandrel]'" in err and "--arch NAME" in err


def test_truncated_checkpoint_message_is_whole(tmp_path, capsys):
    import torch

    from edgesr.registry import build_variant

    full = tmp_path / "full.pth"
    torch.save(build_variant("ecbsr-m4c16-x4").module.state_dict(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    rc, _, err = run_cli(capsys, "convert", cut, "-o", tmp_path / "out")
    line = err.strip()
    assert rc != 0 and len(line.splitlines()) == 1
    assert "cut.pth" in line and "truncated" in line
    assert line.endswith((")", ".", "?")), line  # ends where a sentence ends, not mid-word


def test_quantize_refuses_an_int8_model(quantized, tmp_path, capsys):
    proc, q = quantized
    assert proc.returncode == 0, proc.stderr
    rc, _, err = run_cli(capsys, "quantize", q, "-o", tmp_path / "qq.onnx", "--threads", "1")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert "already INT8" in err and "QuantizeLinear" in err and "fp32 source" in err
    assert not (tmp_path / "qq.onnx").exists()


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_help_has_no_literal_percent_signs(capsys):
    for name, p in _subparsers().items():
        text = p.format_help()
        assert "%%" not in text, name


def test_every_option_has_help_text():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in _subparsers().items()
               for a in p._actions if a.help in (None, "") and a.dest != "help"]
    assert not missing, missing


def test_backend_help_states_the_file_type_default():
    for name in ("eval", "upscale", "bench"):
        p = _subparsers()[name]
        backend = next(a for a in p._actions if "--backend" in a.option_strings)
        assert ".onnx/.ort -> ort" in backend.help and ".xml -> openvino" in backend.help, name


# ============================================================================ --json errors

def test_json_error_is_one_object_on_stdout_and_one_line_on_stderr(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "eval", tmp_path / "nope.pth", "--testset", tmp_path, "--scale", "4", "--json")
    assert rc == 2
    obj = json.loads(out)
    assert obj["ok"] is False and obj["error"]["type"] == "CheckpointError" and obj["error"]["exit_code"] == 2
    lines = err.strip().splitlines()
    assert lines == [f"edgesr: error: {obj['error']['message']}"]


def test_json_usage_error_is_json_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "m.onnx", "--warmup", "nan", "--json"])
    cap = capsys.readouterr()
    assert e.value.code == 2
    obj = json.loads(cap.out)
    assert obj["error"]["type"] == "UsageError" and "--warmup" in obj["error"]["message"]
    assert cap.err.strip() == f"edgesr: error: {obj['error']['message']}"


def test_no_json_on_stdout_without_json_flag(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "eval", tmp_path / "nope.pth", "--testset", tmp_path, "--scale", "4")
    assert rc == 2 and out == "" and err.startswith("edgesr: error:")


# ============================================================================ list

def test_list_fits_100_columns(capsys):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    assert max(len(line) for line in out.splitlines()) <= 100, max(out.splitlines(), key=len)
    from edgesr.registry import architectures

    for a in architectures():
        assert re.search(rf"^{re.escape(a.name)}\s", out, re.M), a.name


def test_list_name_shows_variants_and_json_keeps_everything(capsys):
    rc, out, _ = run_cli(capsys, "list", "ecbsr")
    assert rc == 0 and "ecbsr-m4c16-x4" in out and "source:" in out
    rc, out, _ = run_cli(capsys, "list", "ecbsr-m4c16-x4", "--json")
    assert json.loads(out)["name"] == "ecbsr"
    rc, out, _ = run_cli(capsys, "list", "--json")
    from edgesr.registry import architectures

    assert [a["description"] for a in json.loads(out)["architectures"]] == [a.description for a in architectures()]
    rc, _, err = run_cli(capsys, "list", "nosuch")
    assert rc != 0 and "unknown architecture" in err


# ============================================================================ report figures

@pytest.mark.parametrize("node,label", [("/backbone/backbone.0/backbone.0.0/Conv", "backbone.0.0"),
                                        ("/backbone/backbone.0/Conv", "backbone.0"),
                                        ("/body/body.3/conv/Conv_1", "body.3.conv"),
                                        ("/conv_last/Conv", "conv_last"), ("Add_7", "Add_7")])
def test_sensitivity_labels_do_not_repeat(node, label):
    from edgesr.quant.sensitivity import layer_label

    assert layer_label(node) == label


def test_sensitivity_chart_legend_is_clear_of_the_bars(tmp_path):
    """The legend sits between the title and the plotting area (never on top of the longest bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgesr.quant.sensitivity import SensitivityRow, plot_sensitivity

    rows = [SensitivityRow(f"/backbone/backbone.{i}/Conv", "Conv", only_cost=0.5 * i, except_gain=0.3 * i)
            for i in range(6)]
    captured = {}
    orig = plt.Figure.savefig

    def spy(fig, *a, **k):
        fig.canvas.draw()
        ax = fig.axes[0]
        captured["axes"] = ax.get_window_extent()
        captured["legend"] = ax.get_legend().get_window_extent()
        return orig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot_sensitivity(rows, tmp_path / "s.png", title="ecbsr-m4c16-x4 x4: INT8 sensitivity")
    finally:
        plt.Figure.savefig = orig
    assert captured["legend"].y0 >= captured["axes"].y1  # entirely above the plotting area
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_report_md_lists_figures():
    from edgesr.report_figures import figures_md

    report = {"int8": {"cpu": {"sensitivity_png": "sensitivity_cpu.png"}},
              "parity": {"comparisons": [{"test": "ort:fp16", "reference": "torch:deploy",
                                          "heatmap": "heatmaps/00_ort_fp16_vs_torch_deploy.png"}]}}
    md = "\n".join(figures_md(report))
    assert "`sensitivity_cpu.png`" in md and "`heatmaps/00_ort_fp16_vs_torch_deploy.png`" in md
    assert figures_md({"parity": {"comparisons": []}}) == []


def _readme_output_patterns() -> list[re.Pattern]:
    text = (REPO / "README.md").read_text()
    section = text.split("## What the main job writes", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    pats = []
    for row in section.splitlines()[2:]:
        first_cell = row.split(" | ")[0]
        for name in re.findall(r"`([^`]+)`", first_cell):
            rx = re.escape(name)
            rx = re.sub(r"\\\{([^}]*)\\\}", lambda m: "(" + m.group(1).replace(",", "|").replace("profile", r"\w+")
                        + ")", rx)
            rx = rx.replace(r"\*", "[^/]+")
            pats.append(re.compile(rx + "$"))
            if name.startswith("."):  # "(+ `.ort`)" / "`.bin`": a companion with another suffix
                pats.append(re.compile(r"[^/]+" + re.escape(name) + "$"))
        if "engines/" in first_cell:
            pats.append(re.compile(r"engines/.+$"))
    return pats


def test_readme_output_table_lists_every_file_convert_writes(tmp_path):
    """Every file of a convert with INT8 (sensitivity chart), .ort and fp16 matches a row of
    README's output table; so do the names of the optional outputs tested elsewhere."""
    from edgesr.pipeline import ConvertOptions, convert

    out = tmp_path / "b"
    convert(ConvertOptions(outdir=out, int8=True, fp16=True, threads=1, bench=False), log=lambda m: None)
    pats = _readme_output_patterns()
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert "sensitivity_cpu.png" in files or not (out / "model_int8.onnx").exists()
    unlisted = [f for f in files if not any(p.match(f) for p in pats)]
    assert not unlisted, unlisted
    for name in ("heatmaps/00_ort_fp16_vs_torch_deploy.png", "model_int8_trt.onnx", "model_int8_trt.ort",
                 "model_fp32.pte", "model_int8.pte", "model_int8_openvino.bin", "model_fp16.ncnn.bin",
                 "model_int8.tflite", "model_int8w.mlpackage.zip", "sensitivity_trt.png"):
        assert any(p.match(name) for p in pats), name


# ============================================================================ test-skip summary

def test_skip_summary_says_what_shared_is_and_what_was_skipped():
    from types import SimpleNamespace

    from conftest import shared_skip_summary

    reps = [SimpleNamespace(nodeid=f"tests/eval/test_eval_published.py::t{i}",
                            longrepr=("x", 1, "Skipped: ../shared not present at /x/shared")) for i in range(3)]
    reps.append(SimpleNamespace(nodeid="tests/zoo/test_zoo.py::z", longrepr=("x", 1, "Skipped: no ../shared/ntire-esr")))
    reps.append(SimpleNamespace(nodeid="tests/test_trt.py::g", longrepr=("x", 1, "Skipped: no CUDA GPU")))
    line = shared_skip_summary(reps)
    assert line.startswith("4 tests skipped: ../shared is the real data")
    assert "test_eval_published" in line and "(3)" in line and "test_zoo" in line and "test_trt" not in line
    assert "\n" not in line
    assert shared_skip_summary(reps[-1:]) is None
