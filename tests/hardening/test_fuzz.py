"""Property-based fuzzing of the parsers that see untrusted data.

* ``edgesr.registry.detect`` / ``load_model`` on state_dicts derived from every registered
  family (keys dropped, renamed, added from other families, shapes changed, huge layer
  indices) and on random key soups: the result is a loaded model or an ``EdgesrError``,
  never any other exception.
* ``edgesr.checkpoint.load_state_dict`` on byte-level mutations of real checkpoint files.
* ``edgesr.bundle.read_manifest`` (and ``edgesr info``) on JSON mutations of a real
  manifest written by ``edgesr convert``: valid, or a ``BundleError``; ``info`` prints a
  table or one error line, never an internal error.

Example counts are bounded and derandomized (same examples every run) so the suite stays
fast and stable; EDGESR_FUZZ_EXAMPLES raises them and EDGESR_FUZZ_RANDOM=1 explores anew.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from edgesr.errors import BundleError, EdgesrError

N = int(os.environ.get("EDGESR_FUZZ_EXAMPLES", "0"))
FUZZ = settings(deadline=None, print_blob=True, derandomize=os.environ.get("EDGESR_FUZZ_RANDOM") != "1", database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def fuzz(default_examples: int) -> settings:
    return settings(FUZZ, max_examples=N or default_examples)


# --------------------------------------------------------------------------- state_dict detector


@lru_cache(maxsize=1)
def base_shapes() -> tuple[tuple[str, str, int, tuple[tuple[str, tuple[int, ...]], ...]], ...]:
    """(arch, form, scale, ((key, shape), ...)) of the smallest variant of every registered family and form."""
    from edgesr.registry import architectures, build_variant

    out = []
    for a in architectures():
        if not a.variants:
            continue
        v = min(a.variants, key=lambda v: sum(x for x in v.hyperparams.values() if isinstance(x, int)))
        for form in a.forms:
            with torch.device("meta"):
                sd = build_variant(v.name, form).module.state_dict()
            out.append((a.name, form, int(v.hyperparams.get("scale", 0)) or None,
                        tuple((k, tuple(t.shape)) for k, t in sd.items())))
    return tuple(out)


def vocabulary() -> list[str]:
    return sorted({k for *_, items in base_shapes() for k, _ in items})


small_dim = st.integers(min_value=0, max_value=6)
shapes = st.lists(small_dim, min_size=0, max_size=4).map(tuple)
key_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=24)


@st.composite
def mutated_state_dict(draw):
    """A real family's keys and shapes, then up to 6 mutations."""
    bases = base_shapes()
    arch, form, _, items = bases[draw(st.integers(0, len(bases) - 1))]
    sd = dict(items)
    vocab = vocabulary()
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["drop", "reshape", "rank", "add_foreign", "add_random", "rename", "huge_index",
                                   "scalar"]))
        keys = sorted(sd)
        if op == "drop" and keys:
            sd.pop(draw(st.sampled_from(keys)))
        elif op == "reshape" and keys:
            k = draw(st.sampled_from(keys))
            shp = list(sd[k])
            if shp:
                shp[draw(st.integers(0, len(shp) - 1))] = draw(st.integers(0, 70))
            sd[k] = tuple(shp)
        elif op == "rank" and keys:
            sd[draw(st.sampled_from(keys))] = draw(shapes)
        elif op == "add_foreign":
            sd[draw(st.sampled_from(vocab))] = draw(shapes)
        elif op == "add_random":
            sd[draw(key_text)] = draw(shapes)
        elif op == "rename" and keys:
            k = draw(st.sampled_from(keys))
            sd[draw(key_text)] = sd.pop(k)
        elif op == "huge_index" and keys:
            k = draw(st.sampled_from(keys))
            head = k.split(".")[0]
            sd[f"{head}.{draw(st.integers(10, 10**9))}.weight"] = draw(shapes)
        elif op == "scalar" and keys:
            sd[draw(st.sampled_from(keys))] = ()
    return arch, form, sd


def _materialize(shape_dict: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.full(shp, 0.01) for k, shp in shape_dict.items()}


def _load_or_edgesr_error(sd: dict[str, torch.Tensor], arch: str | None = None) -> str:
    from edgesr.registry import detect, load_model

    try:
        detect(sd, arch)
    except EdgesrError:
        pass
    try:
        m = load_model(sd, arch=arch)
    except EdgesrError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))
        return type(e).__name__
    assert isinstance(m.module, torch.nn.Module) and m.spec.scale >= 1
    return "loaded"


@fuzz(150)
@given(mutated_state_dict())
def test_detector_mutated_families(case):
    arch, form, shape_dict = case
    assume(sum(torch.Size(s).numel() for s in shape_dict.values()) < 3_000_000)
    sd = _materialize(shape_dict)
    event(f"auto: {_load_or_edgesr_error(sd)}")
    event(f"forced: {_load_or_edgesr_error(sd, arch=arch)}")  # forced family: its own infer/build must not crash either


@fuzz(100)
@given(st.dictionaries(st.one_of(st.sampled_from(vocabulary()), key_text), shapes, min_size=0, max_size=12))
def test_detector_random_key_soup(shape_dict):
    event(_load_or_edgesr_error(_materialize(shape_dict)))


def test_unmutated_families_load():
    """The fuzzer's starting points are genuine: (nearly) every family's own freshly initialised
    state_dict loads as that family. Families detected by behaviour (e.g. ETDS's only-ET
    ablation) may not recognise untrained weights; those must refuse with a KeyMismatch."""
    from edgesr.errors import KeyMismatch
    from edgesr.registry import build_variant, get_architecture, load_model

    loaded, refused = [], []
    for arch, form, scale, _ in base_shapes():
        a = get_architecture(arch)
        v = min(a.variants, key=lambda v: sum(x for x in v.hyperparams.values() if isinstance(x, int)))
        torch.manual_seed(0)
        sd = build_variant(v.name, form).module.state_dict()
        try:
            m = load_model(sd, arch=arch, scale=scale)
        except KeyMismatch:
            refused.append((arch, form))
            continue
        assert (m.arch.name, m.spec.form) == (arch, form)
        loaded.append((arch, form))
    assert len(loaded) >= 0.8 * (len(loaded) + len(refused)), refused


# --------------------------------------------------------------------------- checkpoint bytes


@lru_cache(maxsize=1)
def checkpoint_blobs() -> dict[str, bytes]:
    from safetensors.torch import save

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in build_variant("etds-t-x2", "deploy").module.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"params_ema": sd}, buf)
    legacy = io.BytesIO()  # torch's pre-zip format: five pickles, then raw storages (".pt" here)
    torch.save({"params_ema": sd}, legacy, _use_new_zipfile_serialization=False)
    return {".pth": buf.getvalue(), ".safetensors": save(sd), ".pt": legacy.getvalue()}


@fuzz(150)
@given(suffix=st.sampled_from([".pth", ".safetensors", ".pt"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_checkpoint_byte_mutations(tmp_path_factory, suffix, edits, cut):
    from edgesr.checkpoint import load_state_dict

    data = bytearray(checkpoint_blobs()[suffix])
    for pos, val in edits:
        data[int(pos * len(data))] = val
    if cut is not None:
        data = data[: int(cut * len(data))]
    p = tmp_path_factory.mktemp("ck") / f"m{suffix}"
    p.write_bytes(bytes(data))
    try:
        sd = load_state_dict(p)
    except EdgesrError as e:
        assert "\n" not in str(e).strip()
        event(type(e).__name__)
        return
    event("loaded")
    assert all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in sd.values())


# --------------------------------------------------------------------------- manifest reader


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from edgesr.pipeline import ConvertOptions, convert
    from edgesr.registry import build_variant

    root = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in build_variant("etds-t-x2", "deploy").module.state_dict().items()}
    save_file(sd, str(root / "tiny.safetensors"))
    convert(ConvertOptions(outdir=root / "b", checkpoint=root / "tiny.safetensors", bench=False, ort_format=False),
            log=lambda m: None)
    return root / "b"


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def manifest_mutation(draw, manifest: dict):
    m = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(m) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "add", "type_swap"]))
        if op == "replace":
            parent[path[-1]] = draw(json_value)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_value)
        elif op == "type_swap":
            v = parent[path[-1]]
            parent[path[-1]] = (str(v) if not isinstance(v, str) else
                                draw(st.one_of(st.integers(), st.none(), st.lists(json_leaf, max_size=2))))
    return m


def _check_manifest(folder: Path) -> str:
    from edgesr.bundle import read_manifest
    from edgesr.cli import main

    try:
        read_manifest(folder)
        outcome = "valid"
    except BundleError as e:
        assert "\n" not in str(e).strip()
        outcome = "BundleError"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["info", str(folder)])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if outcome == "valid":
        assert rc == 0 and not lines, err.getvalue()
    else:
        assert rc == BundleError.exit_code and len(lines) == 1 and lines[0].startswith("edgesr: error: "), err.getvalue()
    return outcome


def test_manifest_untouched_is_valid(bundle_dir):
    assert _check_manifest(bundle_dir) == "valid"


@fuzz(150)
@given(data=st.data())
def test_manifest_json_mutations(bundle_dir, tmp_path_factory, data):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    mutated = data.draw(manifest_mutation(manifest))
    folder = tmp_path_factory.mktemp("m")
    for f in bundle_dir.iterdir():
        if f.is_file() and f.name != "manifest.json":
            os.link(f, folder / f.name) if hasattr(os, "link") else shutil.copy2(f, folder / f.name)
    (folder / "manifest.json").write_text(json.dumps(mutated, allow_nan=True))
    event(_check_manifest(folder))


@fuzz(60)
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_manifest_byte_mutations(bundle_dir, tmp_path_factory, edits):
    text = bytearray((bundle_dir / "manifest.json").read_bytes())
    for pos, val in edits:
        text[int(pos * len(text))] = val
    folder = tmp_path_factory.mktemp("mb")
    for f in bundle_dir.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copy2(f, folder / f.name)
    (folder / "manifest.json").write_bytes(bytes(text))
    event(_check_manifest(folder))
