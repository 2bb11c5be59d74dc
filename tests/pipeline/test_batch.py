"""Batch mode: `edgesr convert DIR -o OUTROOT` converts each checkpoint, continues past bad ones."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgesr.batch import BatchItem, exit_code, find_checkpoints, plan_outdirs
from edgesr.bundle import read_manifest
from edgesr.cli import main
from edgesr.errors import DatasetError
from edgesr.registry import build_variant

FAST = ["--no-bench", "--no-ort-format"]


def _save_variant(path: Path, form: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    m = build_variant("etds-t-x2", form).module
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("edgesr: error:")]


def test_batch_continues_past_bad_files(tmp_path, capsys):
    src = tmp_path / "ckpts"
    src.mkdir()
    _save_variant(src / "a_deploy.safetensors", "deploy")
    # seeded: some random prefixes look like a truncated zip/safetensors and get the "not readable" wording
    (src / "b_random.pth").write_bytes(random.Random(0).randbytes(3000))
    (src / "c_evil.pth").write_bytes(pickle.dumps(_Evil(tmp_path / "PWNED"), protocol=2))
    _save_variant(src / "d_training.safetensors", "training", seed=1)
    (src / "notes.txt").write_text("not a checkpoint suffix: ignored")
    (src / ".hidden.pth").write_bytes(b"ignored")
    out = tmp_path / "outroot"

    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(out), *FAST)

    assert rc == 2
    errors = _error_lines(err)
    assert len(errors) == 2, err
    assert errors[0].startswith("edgesr: error: 'b_random.pth': ") and "not a PyTorch checkpoint" in errors[0]
    assert errors[1].startswith("edgesr: error: 'c_evil.pth': ") and "would run code" in errors[1]
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "PWNED").exists()
    # stderr holds exactly one line per checkpoint (progress or error)
    assert len([ln for ln in err.splitlines() if ln.startswith("edgesr:")]) == 4
    # summary table lists every checkpoint with its status
    rows = {ln.split()[0]: ln for ln in stdout.splitlines() if ln.split() and "." in ln.split()[0]}
    assert set(rows) == {"a_deploy.safetensors", "b_random.pth", "c_evil.pth", "d_training.safetensors"}
    assert " ok " in rows["a_deploy.safetensors"] and " ok " in rows["d_training.safetensors"]
    assert "FAILED" in rows["b_random.pth"] and "UnsafeCheckpoint" in rows["c_evil.pth"]
    assert "2 of 4 converted, 2 failed" in stdout
    # good ones are complete bundles in OUTROOT/<stem>/, bad ones left nothing behind
    assert sorted(p.name for p in out.iterdir()) == ["a_deploy", "d_training"]
    for name, form in (("a_deploy", "deploy"), ("d_training", "training")):
        m = read_manifest(out / name)
        assert m.data["source"]["checkpoint"] == f"{name}.safetensors" and m.data["source"]["form"] == form


def test_batch_json_and_existing_outputs(tmp_path, capsys):
    src = tmp_path / "ckpts"
    src.mkdir()
    _save_variant(src / "good.safetensors", "deploy")
    (src / "empty.pth").write_bytes(b"")
    out = tmp_path / "outroot"
    (out / "good").mkdir(parents=True)
    (out / "good" / "keep.txt").write_text("precious")

    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(out), "--json", *FAST)
    assert rc == 2
    doc = json.loads(stdout)
    assert doc["ok"] is False and doc["converted"] == 0 and doc["failed"] == 2
    by = {Path(r["checkpoint"]).name: r for r in doc["results"]}
    assert by["empty.pth"]["error_type"] == "CheckpointError" and "0 bytes" in by["empty.pth"]["error"]
    assert by["good.safetensors"]["error_type"] == "OutputExists" and "--force" in by["good.safetensors"]["error"]
    assert (out / "good" / "keep.txt").read_text() == "precious"
    assert len(_error_lines(err)) == 2

    # --force replaces only bundles edgesr wrote: a folder holding the user's file is refused
    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(out), "--json", "--force", *FAST)
    doc = json.loads(stdout)
    by = {Path(r["checkpoint"]).name: r for r in doc["results"]}
    assert rc == 2 and doc["converted"] == 0 and by["good.safetensors"]["error_type"] == "OutputError"
    assert "did not write" in by["good.safetensors"]["error"] and "keep.txt" in by["good.safetensors"]["error"]
    assert (out / "good" / "keep.txt").read_text() == "precious"

    (out / "good" / "keep.txt").unlink()  # an empty folder holds nothing to lose
    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(out), "--json", "--force", *FAST)
    doc = json.loads(stdout)
    assert rc == 2 and doc["converted"] == 1 and doc["failed"] == 1
    good = next(r for r in doc["results"] if r["ok"])
    assert good["arch"] == "etds" and good["scale"] == 2 and good["variant"] == "etds-t-x2"
    read_manifest(out / "good")
    # and a bundle edgesr wrote is replaced with --force
    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(out), "--json", "--force", *FAST)
    assert json.loads(stdout)["converted"] == 1
    read_manifest(out / "good")
    assert not [p for p in out.iterdir() if p.name.startswith(".edgesr-partial-")]


def test_batch_all_good_exits_zero(tmp_path, capsys):
    src = tmp_path / "ckpts"
    src.mkdir()
    _save_variant(src / "only.safetensors", "deploy")
    rc, stdout, err = _run(capsys, "convert", str(src), "-o", str(tmp_path / "o"), *FAST)
    assert rc == 0, err
    assert not _error_lines(err) and "1 of 1 converted" in stdout


def test_batch_empty_folder_and_bad_outroot(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, "convert", str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert rc == 2 and _error_lines(err) == [ln for ln in err.splitlines() if ln.strip()]
    assert "no checkpoints" in err
    src = tmp_path / "ckpts"
    src.mkdir()
    (src / "x.pth").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, "convert", str(src), "-o", str(tmp_path / "file"))
    assert rc != 0 and len(_error_lines(err)) == 1 and "not a folder" in err


def test_plan_outdirs_disambiguates_stems(tmp_path):
    files = [tmp_path / n for n in ("m.pth", "m.safetensors", "n.pt")]
    plan = plan_outdirs(files, tmp_path / "out")
    assert [o.name for _, o in plan] == ["m_pth", "m_safetensors", "n"]


def test_find_checkpoints(tmp_path):
    with pytest.raises(DatasetError, match="no checkpoints"):
        find_checkpoints(tmp_path)
    for n in ("b.PTH", "a.safetensors", "c.txt", ".d.pth"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.pth").mkdir()
    assert [p.name for p in find_checkpoints(tmp_path)] == ["a.safetensors", "b.PTH"]


def test_exit_code():
    ok = BatchItem(Path("a"), Path("o"), ok=True, converted=True)
    parity = BatchItem(Path("b"), Path("o"), converted=True, exit_code=1)
    broken = BatchItem(Path("c"), Path("o"), exit_code=2)
    assert exit_code([ok]) == 0 and exit_code([ok, parity]) == 1 and exit_code([parity, broken, ok]) == 2
