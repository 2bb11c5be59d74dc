"""edgesr.checkpoint: safe loading, wrapper unwrapping, format sniffing, tensor validation."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from edgesr.checkpoint import PREFIXES, WRAPPER_KEYS, load_state_dict, sniff_format, unwrap_state_dict, validate_tensors
from edgesr.errors import CheckpointError, EdgesrError, InvalidWeights, UnsafeCheckpoint
from edgesr.registry import build_variant, load_model


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = build_variant("etds-t-x2", "deploy").module
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_pickle_roundtrip_any_suffix(tmp_path, sd, suffix):
    p = tmp_path / f"m{suffix}"
    torch.save(sd, p)
    _same(load_state_dict(p), sd)


def test_legacy_format(tmp_path, sd):
    p = tmp_path / "legacy.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    _same(load_state_dict(p), sd)


def test_safetensors_native_and_sniffed(tmp_path, sd):
    p = tmp_path / "m.safetensors"
    save_file(sd, str(p))
    _same(load_state_dict(p), sd)
    disguised = tmp_path / "really_safetensors.pth"  # content decides, not the suffix
    disguised.write_bytes(p.read_bytes())
    _same(load_state_dict(disguised), sd)
    zip_named_st = tmp_path / "really_zip.safetensors"
    torch.save(sd, zip_named_st)
    _same(load_state_dict(zip_named_st), sd)


@pytest.mark.parametrize("wrap", [
    lambda s: {"params": s},
    lambda s: {"params_ema": s, "params": {k: torch.zeros_like(v) for k, v in s.items()}},
    lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 7, "optimizer_states": [{}]},
    lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "iteration": 10},
    lambda s: {"state_dict": {f"module._orig_mod.{k}": v for k, v in s.items()}},
    lambda s: {"net_g": s, "net_d": {"x": torch.zeros(1)}},
    lambda s: {"model_ema": s, "model": {k: torch.zeros_like(v) for k, v in s.items()}},
    lambda s: {f"module.{k}": v for k, v in s.items()},
], ids=["params", "params_ema-preferred", "lightning", "model+DataParallel", "DP+compile", "net_g", "ema-preferred",
        "bare-DataParallel"])
def test_wrappers_unwrapped(tmp_path, sd, wrap):
    p = tmp_path / "wrapped.pth"
    torch.save(wrap(sd), p)
    got = load_state_dict(p)
    _same(got, sd)  # EMA weights win over raw ones; zeros never chosen
    loaded = load_model(p)  # and the result is a loadable model
    assert loaded.spec.variant == "etds-t-x2"


def test_prefix_only_stripped_when_shared(sd):
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert sorted(unwrap_state_dict(mixed)) == ["b", "module.a"]
    assert set(PREFIXES) >= {"module.", "_orig_mod."} and {"params_ema", "params", "state_dict"} <= set(WRAPPER_KEYS)


def test_half_precision_and_bn_counter_accepted(tmp_path, sd):
    half = {k: v.half() for k, v in sd.items()}
    half["bn.num_batches_tracked"] = torch.tensor(5)
    p = tmp_path / "half.safetensors"
    save_file(half, str(p))
    got = load_state_dict(p)
    assert got["conv_first.weight"].dtype == torch.float16 and got["bn.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64, torch.float8_e5m2])
def test_non_float_weights_refused(sd, dtype):
    bad = dict(sd)
    bad["conv_last.weight"] = sd["conv_last.weight"].to(dtype)
    with pytest.raises(InvalidWeights, match=r"conv_last\.weight"):
        validate_tensors(bad)


def test_sparse_refused(sd):
    bad = dict(sd)
    bad["conv_last.bias"] = sd["conv_last.bias"].to_sparse()
    with pytest.raises(InvalidWeights, match="sparse"):
        validate_tensors(bad)


def test_nan_refused_unless_disabled(tmp_path, sd):
    bad = {k: v.clone() for k, v in sd.items()}
    bad["conv_first.bias"][3] = float("-inf")
    p = tmp_path / "inf.pth"
    torch.save(bad, p)
    with pytest.raises(InvalidWeights, match=r"NaN/Inf values in conv_first\.bias"):
        load_state_dict(p)
    assert torch.isinf(load_state_dict(p, check_finite=False)["conv_first.bias"][3])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("how", ["torch-zip", "torch-legacy", "pickle-2", "pickle-0", "nested-in-state-dict"])
def test_code_running_pickle_refused_and_not_run(tmp_path, sd, how):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pth"
    payload = _Payload(marker)
    if how == "torch-zip":
        torch.save(payload, p)
    elif how == "torch-legacy":
        torch.save(payload, p, _use_new_zipfile_serialization=False)
    elif how == "nested-in-state-dict":
        torch.save({"state_dict": {**sd, "extra": payload}}, p)
    else:
        p.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    with pytest.raises(UnsafeCheckpoint) as e:
        load_state_dict(p)
    msg = str(e.value)
    assert "would run code" in msg and "system" in msg and "safetensors" in msg and "\n" not in msg
    assert not marker.exists(), "the pickle's payload was executed"
    # the same pickle really does run code when loaded unsafely: the test payload is genuine
    with open(p, "rb") as f:
        if how.startswith("pickle"):
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()


def test_pickled_module_refused(tmp_path):
    p = tmp_path / "module.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), p)
    with pytest.raises(UnsafeCheckpoint, match=r"torch\.nn\.modules.*not a plain state_dict"):
        load_state_dict(p)


@pytest.mark.parametrize("data,needle", [
    (b"", "empty (0 bytes)"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1\n", "git lfs pull"),
    (b"  <!DOCTYPE html><html></html>", "HTML"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 40, "gzip"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "PNG image"),
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 40, "HDF5"),
    (b'{"weights": [1, 2, 3]}', "JSON"),
    (b"\x80\x02}q\x00(X\x01", "truncated"),
    (bytes(range(256)) * 8, "not a PyTorch checkpoint"),
])
def test_wrong_files_one_line_errors(tmp_path, data, needle):
    p = tmp_path / "x.pth"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(p)
    assert needle.lower() in str(e.value).lower() and "\n" not in str(e.value)


def test_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="folder"):
        load_state_dict(tmp_path)
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):  # must not block reading a pipe
        load_state_dict(fifo)


def test_sniff_format():
    assert sniff_format(b"PK\x03\x04rest", 100) == "zip"
    assert sniff_format(b"\x80\x04\x95", 100) == "pickle"
    assert sniff_format((10).to_bytes(8, "little") + b'{"a":1}   ', 18) == "safetensors"
    assert sniff_format((1000).to_bytes(8, "little") + b'{"a":1}', 18, ".safetensors").startswith("not a safetensors")


def test_truncations_never_escape(tmp_path, sd):
    """Every prefix length of a real checkpoint fails with an EdgesrError (or loads, for the full file)."""
    src = tmp_path / "full.pth"
    torch.save(sd, src)
    data = src.read_bytes()
    st = tmp_path / "full.safetensors"
    save_file(sd, str(st))
    sdata = st.read_bytes()
    for blob, name in ((data, "cut.pth"), (sdata, "cut.safetensors")):
        for n in sorted({1, 2, 8, 9, 30, 64, 100, 500} | set(range(0, len(blob), max(1, len(blob) // 40)))):
            if n == 0 or n >= len(blob):
                continue
            p = tmp_path / name
            p.write_bytes(blob[:n])
            with pytest.raises(EdgesrError):
                load_state_dict(p)


def test_real_checkpoints_load(ckpt_dir):
    for rel in ("ETDS/ETDS_M5C16_x2.pth", "ECBSR/ECBSR_M4C16_x4.pth", "ETDS/ablations/ETDS_M6C32_x4_normal_loss.pth"):
        got = load_state_dict(ckpt_dir / rel)
        assert got and all(v.is_floating_point() for v in got.values())
        load_model(ckpt_dir / rel)
