"""Bundle manifests: schema, validation, hashing, `edgesr info`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr import bundle
from edgesr.bundle import json_safe, manifest_extras, read_manifest, recommended_tiling, validate, write_manifest
from edgesr.cli import main
from edgesr.errors import BundleError
from edgesr.registry import build_variant
from edgesr.spec import Spec


@pytest.fixture(scope="module")
def made_bundle(tmp_path_factory) -> Path:
    """A real bundle built the way `edgesr convert` builds one: deploy weights, checked ONNX
    export, manifest from pipeline.build_manifest + bundle.manifest_extras, written by
    bundle.write_manifest (which validates it)."""
    from safetensors.torch import save_file

    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.export.onnx import export_onnx
    from edgesr.manifest import artifact_entry, build_manifest, source_info

    folder = tmp_path_factory.mktemp("bundle") / "out"
    folder.mkdir()
    torch.manual_seed(0)
    lm = build_variant("ecbsr-m4c16-x2", "deploy")
    ckpt = folder / "deploy.safetensors"
    save_file({k: v.contiguous() for k, v in lm.module.state_dict().items()}, str(ckpt))
    exported = export_onnx(lm.module, lm.spec, folder / "model.onnx")
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    with torch.inference_mode():
        ref = lm.module(torch.from_numpy(x)).numpy()
    err = float(np.abs(OrtRunner(folder / "model.onnx").run(x) - ref).max())
    report = {"source": source_info(ckpt, lm.spec, False), "export": exported.to_dict(),
              "parity": {"ok": err < 1e-5, "comparisons": [
                  {"reference": "torch:deploy", "candidate": "ort:fp32", "test": "ort:fp32", "max_abs": err,
                   "psnr": float("inf"),
                   "ok": err < 1e-5}]},
              "latency": {"machine": {"cpu_model": "test cpu", "logical_cpus": 2}, "threads": 1,
                          "results": [{"backend": "ort:fp32", "size": "20x24", "output": "40x48",
                                       "median_ms": 1.5, "p90_ms": 1.7, "cv": 0.05, "mpix_per_s": 1.2}]}}
    from edgesr.tiling import measure_tiling

    report["tiling"] = measure_tiling(OrtRunner(folder / "model.onnx"), lm.spec, folder / "model.onnx").to_dict()
    arts = [artifact_entry(ckpt, "torch_deploy", "safetensors", "fp32", "torch"),
            artifact_entry(folder / "model.onnx", "onnx_fp32", "onnx", "fp32", "onnxruntime")]
    manifest = build_manifest(lm.spec, arts, folder, report) | manifest_extras(lm.spec, report)
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def bundle_copy(made_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(made_bundle, dst)
    return dst


def _edit(folder: Path, fn) -> None:
    p = folder / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgesr: error:") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# --------------------------------------------------------------------------- valid bundle


def test_schema_is_valid_draft_2020_12():
    jsonschema = pytest.importorskip("jsonschema")
    s = bundle.schema()
    assert s["$schema"].endswith("/draft/2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(s)


def test_read_valid_bundle(made_bundle):
    m = read_manifest(made_bundle)
    assert m.hashes_verified and m.scale == 2 and m.spec.arch == "ecbsr" and m.parity_ok
    assert (m.input_name, m.output_name) == ("input", "output")
    assert {a.role for a in m.artifacts} == {"torch_deploy", "onnx_fp32"}
    assert m.artifact("onnx_fp32").path == made_bundle / "model.onnx"
    assert m.select(format="onnx")[0].backend == "onnxruntime"
    assert (m.tile, m.overlap) == recommended_tiling(m.spec) == (256, 6)
    d = m.data
    assert d["tiling"]["exact"] and d["io"]["receptive_field"] == 6
    assert d["tiling"]["measured"]["locality"] == "local" and d["tiling"]["measured"]["receptive_field"] == 6
    assert d["shape_range"]["height"]["min"] == 1 and d["shape_range"]["height"]["max"] is None
    from importlib.metadata import version

    assert d["versions"]["torch"] == version("torch") and d["versions"]["edgesr"] == d["edgesr_version"]
    assert d["versions"]["onnx_opset"] == 17
    assert d["latency"]["results"][0]["median_ms"] == 1.5
    # NaN/Infinity never reach the file: inf PSNR is written as the string "inf"
    text = (made_bundle / "manifest.json").read_text()
    assert "Infinity" not in text and d["parity"]["comparisons"][0]["psnr"] == "inf"
    with pytest.raises(BundleError, match="no artifact with role 'trt'"):
        m.artifact("trt")


def test_manifest_names_match_the_onnx_graph(made_bundle):
    import onnx

    m = read_manifest(made_bundle)
    g = onnx.load(str(m.artifact("onnx_fp32").path)).graph
    assert [i.name for i in g.input] == [m.input_name] and [o.name for o in g.output] == [m.output_name]


def test_recommended_tiling_rules():
    assert recommended_tiling(Spec(arch="a", scale=4, receptive_field=8)) == (256, 8)
    assert recommended_tiling(Spec(arch="a", scale=4, receptive_field=40)) == (320, 40)
    assert recommended_tiling(Spec(arch="a", scale=4, receptive_field=None)) == (256, bundle.UNKNOWN_RF_OVERLAP)
    tile, ov = recommended_tiling(Spec(arch="a", scale=2, receptive_field=5, size_multiple=4))
    assert tile % 4 == 0 and ov == 8
    ex = manifest_extras(Spec(arch="a", scale=2, receptive_field=None))
    assert ex["tiling"]["exact"] is False and ex["latency"] is None


def test_cli_info(made_bundle, capsys):
    rc, out, err = _cli(["info", made_bundle], capsys)
    assert rc == 0, err
    assert "valid edgesr bundle" in out and "model.onnx" in out and "tile 256 + overlap 6" in out
    rc, out, err = _cli(["info", made_bundle, "--json"], capsys)
    assert rc == 0 and json.loads(out)["valid"] is True


# --------------------------------------------------------------------------- invalid bundles


def test_hash_mismatch_is_named(bundle_copy, capsys):
    p = bundle_copy / "model.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'model\.onnx' .*sha256"):
        read_manifest(bundle_copy)
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, "model.onnx", "sha256")
    assert read_manifest(bundle_copy, verify_hashes=False).hashes_verified is False


def test_truncated_file_is_named(bundle_copy, capsys):
    p = bundle_copy / "deploy.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, "deploy.safetensors", "bytes")


def test_missing_file_is_named(bundle_copy, capsys):
    (bundle_copy / "model.onnx").unlink()
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, "model.onnx", "missing")


@pytest.mark.parametrize("field_path", [("tiling",), ("io", "input", "name"), ("artifacts", 1, "sha256"),
                                        ("spec", "scale"), ("versions", "onnxruntime"), ("format_version",)])
def test_missing_field_is_named(bundle_copy, capsys, field_path):
    def drop(d):
        node = d
        for k in field_path[:-1]:
            node = node[k]
        del node[field_path[-1]]

    _edit(bundle_copy, drop)
    dotted = bundle.format_path(field_path)
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, f"missing field '{dotted}'")


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["io"].__setitem__("scale", "four"), "field 'io.scale' must be integer"),
    (lambda d: d.__setitem__("format", "other"), "field 'format' must be \"edgesr-bundle\""),
    (lambda d: d.__setitem__("format_version", 2), "field 'format_version'"),
    (lambda d: d["artifacts"][0].__setitem__("sha256", "abc"), "field 'artifacts[0].sha256'"),
    (lambda d: d["io"]["input"].__setitem__("layout", "CHWN"), "field 'io.input.layout'"),
    (lambda d: d["tiling"].__setitem__("overlap", -1), "field 'tiling.overlap' must be >= 0"),
    (lambda d: d.__setitem__("artifacts", []), "field 'artifacts' has 0 items"),
    (lambda d: d["io"].__setitem__("scale", 3), "'io.scale' (3) differs from 'spec.scale' (2)"),
    (lambda d: d["tiling"].__setitem__("overlap", 2), "field 'tiling.exact' is true"),
    (lambda d: d["artifacts"][1].__setitem__("role", "torch_deploy"), "role 'torch_deploy' more than once"),
    (lambda d: d["artifacts"][1].__setitem__("file", "../escape.onnx"), "inside the bundle"),
    (lambda d: d["artifacts"][1].__setitem__("file", "/etc/passwd"), "artifacts[1].file"),
])
def test_invalid_values_are_named(bundle_copy, capsys, mutate, needle):
    _edit(bundle_copy, mutate)
    with pytest.raises(BundleError) as e:
        read_manifest(bundle_copy)
    assert needle in str(e.value) and "\n" not in str(e.value)
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, needle)


@pytest.mark.parametrize("content,needle", [(b"{not json", "invalid JSON"), (b"", "invalid JSON"),
                                            (b"\xff\xfe\x00", "not UTF-8"), (b"[1, 2]", "must be object"),
                                            (b'{"a": Infinity}', "Infinity")])
def test_invalid_json(bundle_copy, capsys, content, needle):
    (bundle_copy / "manifest.json").write_bytes(content)
    rc, out, err = _cli(["info", bundle_copy], capsys)
    _one_line_error(rc, err, "manifest.json", needle)


def test_missing_manifest_and_folder(tmp_path, capsys):
    rc, out, err = _cli(["info", tmp_path], capsys)
    _one_line_error(rc, err, "missing manifest.json")
    rc, out, err = _cli(["info", tmp_path / "nope"], capsys)
    _one_line_error(rc, err, "no such bundle folder")


# --------------------------------------------------------------------------- validators agree


def _corruptions(d):
    yield "ok", d
    for path in [("tiling", "tile"), ("io", "output"), ("parity", "ok"), ("source", "sha256"), ("spec", "layout")]:
        c = copy.deepcopy(d)
        node = c
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        yield f"missing {path}", c
    for path, value in [(("spec", "scale"), 0), (("io", "input", "dtype"), "float64"), (("tiling", "exact"), "yes"),
                        (("artifacts",), {}), (("versions", "torch"), 2.5), (("io", "input", "shape"), [1, 3, "H"]),
                        (("shape_range", "height", "max"), 0), (("io", "scale"), 2.0)]:
        c = copy.deepcopy(d)
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        yield f"{path}={value!r}", c


def test_builtin_validator_matches_jsonschema(made_bundle):
    pytest.importorskip("jsonschema")
    d = json.loads((made_bundle / "manifest.json").read_text())
    for label, c in _corruptions(d):
        a = validate(c, use_jsonschema=True)
        b = validate(c, use_jsonschema=False)
        assert a == b, label
        assert (label == "ok" or label.endswith("=2.0")) == (a == []), (label, a)


def test_write_manifest_refuses_invalid(made_bundle, tmp_path):
    d = json.loads((made_bundle / "manifest.json").read_text())
    del d["tiling"]
    with pytest.raises(BundleError, match="missing field 'tiling'"):
        write_manifest(made_bundle, d)
    d = json.loads((made_bundle / "manifest.json").read_text())
    with pytest.raises(BundleError, match="missing"):
        write_manifest(tmp_path, d)  # files not there
    assert not (tmp_path / "manifest.json").exists()


def test_json_safe():
    assert json_safe({"a": [float("inf"), float("-inf"), float("nan"), 1.5], 2: "x"}) == \
        {"a": ["inf", "-inf", "nan", 1.5], "2": "x"}
