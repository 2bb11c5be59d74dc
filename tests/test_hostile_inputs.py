"""Hostile and broken inputs through the real CLI: one-line error, non-zero exit, no traceback.

Every input is generated here under a temporary folder (nothing is downloaded): truncated,
empty and random checkpoints, pickles whose unpickling would run code, NaN/Inf and
wrong-dtype weights, broken ONNX files, truncated / decompression-bomb / odd-mode images,
empty calibration folders, tampered bundles. Each case runs in-process through
``edgesr.cli.main`` (a handful also through ``python -m edgesr`` in a subprocess) and must
end with exactly one ``edgesr: error: ...`` line on stderr (progress lines of ``convert``
before it are allowed) and a non-zero exit status. A few unusual-but-valid images must be
*accepted* (exit 0).

``python tests/hostile_table.py`` runs the same cases and writes docs/hostile_inputs.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_VARIANT = "etds-t-x2"  # 14k parameters, x2: converts in seconds

# stderr lines a failing command may print before its error line (convert's progress log)
PROGRESS_LINE = re.compile(r"^(\[\d+\] \S.*|edgesr: note: .*)$")


# --------------------------------------------------------------------------- payloads


class RunsCode:
    """Unpickling this calls ``exec(code)``: it would create the marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return (exec, (self.code,))


class RunsShell:
    """Unpickling this calls ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.cmd = f"touch '{marker}'"

    def __reduce__(self):
        return (os.system, (self.cmd,))


class TinyNet(torch.nn.Module):
    """A whole pickled module (``torch.save(model)``), not a state_dict."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)


# --------------------------------------------------------------------------- corpus


class Corpus:
    """Builds inputs under `root`; every method returns a path relative to `root`, and cases
    run with `root` as the working directory so messages show short, stable paths."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, object] = {}

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, data: bytes) -> str:
        p = self.abs(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return rel

    def mkdir(self, rel: str) -> str:
        self.abs(rel).mkdir(parents=True, exist_ok=True)
        return rel

    def marker(self, name: str) -> Path:
        return self.abs(f"MARKER-{name}")

    # ---- base resources (built once per corpus)
    def state_dict(self) -> dict[str, torch.Tensor]:
        if "sd" not in self._cache:
            from edgesr.registry import build_variant

            torch.manual_seed(0)
            m = build_variant(TINY_VARIANT, "deploy").module
            self._cache["sd"] = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
        return {k: v.clone() for k, v in self._cache["sd"].items()}

    def ckpt(self) -> str:
        if "ckpt" not in self._cache:
            from safetensors.torch import save_file

            self.abs("base").mkdir(parents=True, exist_ok=True)
            save_file(self.state_dict(), str(self.abs("base/tiny.safetensors")))
            self._cache["ckpt"] = "base/tiny.safetensors"
        return self._cache["ckpt"]

    def onnx(self) -> str:
        if "onnx" not in self._cache:
            from edgesr.export.onnx import export_onnx
            from edgesr.registry import load_model

            m = load_model(self.abs(self.ckpt()))
            export_onnx(m.module, m.spec, self.abs("base/tiny.onnx"))
            self._cache["onnx"] = "base/tiny.onnx"
        return self._cache["onnx"]

    def testset(self, name: str = "base/ts", lr_size: int = 16, lr_bytes: bytes | None = None) -> str:
        from PIL import Image

        rng = np.random.default_rng(1)
        hr, lr = self.abs(f"{name}/HR"), self.abs(f"{name}/LR_bicubic/X2")
        hr.mkdir(parents=True, exist_ok=True)
        lr.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((2 * lr_size, 2 * lr_size, 3)) * 255).astype(np.uint8)).save(hr / "a.png")
        if lr_bytes is None:
            Image.fromarray((rng.random((lr_size, lr_size, 3)) * 255).astype(np.uint8)).save(lr / "ax2.png")
        else:
            (lr / "ax2.png").write_bytes(lr_bytes)
        return name

    def bundle(self, rel: str) -> str:
        """A copy of a real `edgesr convert` output (converted once per corpus)."""
        if "bundle" not in self._cache:
            from edgesr.pipeline import ConvertOptions, convert

            out = self.abs("base/bundle")
            convert(ConvertOptions(outdir=out, checkpoint=self.abs(self.ckpt()), bench=False, ort_format=False),
                    log=lambda m: None)
            self._cache["bundle"] = "base/bundle"
        shutil.copytree(self.abs(self._cache["bundle"]), self.abs(rel))
        return rel

    # ---- byte builders
    @staticmethod
    def torch_bytes(obj, legacy: bool = False) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
        return buf.getvalue()

    @staticmethod
    def safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in sd.items()})

    @staticmethod
    def png_rgb(h: int = 24, w: int = 20, mode: str = "RGB", fmt: str = "PNG", **save) -> bytes:
        from PIL import Image

        a = (np.random.default_rng(2).random((h, w, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(a)
        if mode != "RGB":
            img = img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **save)
        return buf.getvalue()

    @staticmethod
    def png16_gray(h: int = 24, w: int = 20) -> bytes:
        from PIL import Image

        a = (np.random.default_rng(3).random((h, w)) * 65535).astype(np.uint16)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    @staticmethod
    def png_header_only(w: int, h: int) -> bytes:
        """A valid PNG signature + IHDR declaring w x h, with a tiny IDAT: a decompression bomb's header."""
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _random(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str
    argv: Callable[[Corpus], list[str]]
    needles: tuple[str, ...] = ()
    expect_ok: bool = False
    after: Callable[[Corpus], None] | None = None
    subprocess: bool = False  # also run through `python -m edgesr`
    marks: tuple = field(default_factory=tuple)


def convert_argv(ckpt: str, *extra: str, out: str | None = None) -> list[str]:
    return ["convert", ckpt, "-o", out or f"out/{Path(ckpt).stem}", "--no-bench", "--no-ort-format", *extra]


def ckpt_case(id: str, what: str, build: Callable[[Corpus], str], *needles: str, **kw) -> Case:
    return Case(id, "checkpoint", what, lambda c: convert_argv(build(c)), needles, **kw)


def _nan_sd(c: Corpus) -> dict:
    sd = c.state_dict()
    sd["conv_first.weight"][0, 0, 0, 0] = float("nan")
    return sd


def _inf_sd(c: Corpus) -> dict:
    sd = c.state_dict()
    sd["conv_last.bias"][0] = float("inf")
    return sd


def _retyped(c: Corpus, dtype) -> dict:
    sd = c.state_dict()
    sd["conv_first.weight"] = sd["conv_first.weight"].to(dtype)
    return sd


def _reshaped(c: Corpus) -> dict:
    sd = c.state_dict()
    sd["backbone_convs.0.weight"] = torch.zeros(16, 16, 5, 5)
    return sd


def _without(c: Corpus, key: str) -> dict:
    sd = c.state_dict()
    del sd[key]
    return sd


def _with_huge_index(c: Corpus) -> dict:
    sd = c.state_dict()
    sd["backbone_convs.99999999.weight"] = torch.zeros(16, 16, 3, 3)
    return sd


def _widened(c: Corpus) -> dict:
    sd = c.state_dict()
    sd["conv_first.weight"] = torch.zeros(20000, 3, 3, 3)
    sd["conv_first.bias"] = torch.zeros(20000)
    return sd


def _marker_absent(name: str) -> Callable[[Corpus], None]:
    def check(c: Corpus) -> None:
        assert not c.marker(name).exists(), f"the pickle's code RAN: {c.marker(name)} was created"
    return check


def _tamper_byte(c: Corpus, rel: str, offset: int | None = None) -> None:
    p = c.abs(rel)
    data = bytearray(p.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit_manifest(c: Corpus, bundle: str, fn: Callable[[dict], None]) -> str:
    p = c.abs(f"{bundle}/manifest.json")
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m, indent=2))
    return bundle


def _artifact_file(c: Corpus, bundle: str, role: str) -> str:
    m = json.loads(c.abs(f"{bundle}/manifest.json").read_text())
    return next(f"{bundle}/{a['file']}" for a in m["artifacts"] if a["role"] == role)


def _bundle_tampered(c: Corpus, role: str) -> str:
    b = c.bundle(f"bundles/tampered-{role}")
    _tamper_byte(c, _artifact_file(c, b, role))
    return b


def _bundle_truncated(c: Corpus) -> str:
    b = c.bundle("bundles/truncated")
    p = c.abs(_artifact_file(c, b, "onnx_fp32"))
    p.write_bytes(_half(p.read_bytes()))
    return b


def _bundle_deleted(c: Corpus) -> str:
    b = c.bundle("bundles/deleted")
    c.abs(_artifact_file(c, b, "onnx_fp32")).unlink()
    return b


def _bundle_bad_json(c: Corpus) -> str:
    b = c.bundle("bundles/badjson")
    p = c.abs(f"{b}/manifest.json")
    p.write_text(p.read_text()[:-40])
    return b


def _bundle_nan(c: Corpus) -> str:
    b = c.bundle("bundles/nan")
    p = c.abs(f"{b}/manifest.json")
    m = json.loads(p.read_text())
    m["io"]["scale"] = float("nan")
    p.write_text(json.dumps(m))  # json.dumps writes NaN, which is not JSON
    return b


def _set_first_artifact(key: str, value) -> Callable[[dict], None]:
    def fn(m: dict) -> None:
        m["artifacts"][0][key] = value
    return fn


def _interrupted(c: Corpus) -> str:
    b = c.bundle("bundles/interrupted")
    c.abs(f"{b}/manifest.json").unlink()
    return b


def _calib_with(c: Corpus, name: str, files: dict[str, bytes]) -> str:
    d = c.mkdir(f"calib/{name}")
    for fname, data in files.items():
        c.write(f"{d}/{fname}", data)
    return d


CASES: list[Case] = [
    # ---- checkpoints: `edgesr convert CKPT`
    ckpt_case("ckpt-zero-bytes", "0-byte .pth", lambda c: c.write("ckpt/zero.pth", b""), "empty (0 bytes)",
              subprocess=True),
    ckpt_case("ckpt-truncated-zip", "torch.save zip cut in half",
              lambda c: c.write("ckpt/trunc.pth", _half(c.torch_bytes(c.state_dict()))), "truncated",
              subprocess=True),
    ckpt_case("ckpt-truncated-legacy", "legacy (non-zip) torch.save cut in half",
              lambda c: c.write("ckpt/trunc_legacy.pth", _half(c.torch_bytes(c.state_dict(), legacy=True))),
              "trunc_legacy.pth"),
    ckpt_case("ckpt-truncated-safetensors", "safetensors cut in half",
              lambda c: c.write("ckpt/trunc.safetensors", _half(c.safetensors_bytes(c.state_dict()))), "truncated"),
    ckpt_case("ckpt-random-pth", "4 KiB of random bytes named .pth",
              lambda c: c.write("ckpt/random.pth", _random(4096)), "not a PyTorch checkpoint"),
    ckpt_case("ckpt-random-safetensors", "4 KiB of random bytes named .safetensors",
              lambda c: c.write("ckpt/random.safetensors", _random(4096, 1)), "not a safetensors file"),
    ckpt_case("ckpt-safetensors-huge-header", "safetensors header length 2^40 (past end of file)",
              lambda c: c.write("ckpt/hdr.safetensors", struct.pack("<Q", 1 << 40) + b'{"a":1}'),
              "not a safetensors file"),
    ckpt_case("ckpt-pickle-exec", "pickle whose __reduce__ calls exec() to create a file",
              lambda c: c.write("ckpt/evil_exec.pth", c.torch_bytes({"w": torch.zeros(1),
                                                                     "x": RunsCode(c.marker("exec"))})),
              "would run code", "exec", "safetensors", after=_marker_absent("exec"), subprocess=True),
    ckpt_case("ckpt-pickle-os-system", "raw pickle (protocol 2) whose __reduce__ calls os.system('touch ...')",
              lambda c: c.write("ckpt/evil_system.pt", pickle.dumps(RunsShell(c.marker("system")), protocol=2)),
              "would run code", "system", "safetensors", after=_marker_absent("system")),
    ckpt_case("ckpt-pickle-protocol0", "protocol-0 (text) pickle calling os.system",
              lambda c: c.write("ckpt/evil_p0.ckpt", pickle.dumps(RunsShell(c.marker("p0")), protocol=0)),
              "would run code", after=_marker_absent("p0")),
    ckpt_case("ckpt-pickle-disguised", "code-running pickle named .safetensors",
              lambda c: c.write("ckpt/evil.safetensors", c.torch_bytes(RunsCode(c.marker("disguised")))),
              "would run code", after=_marker_absent("disguised")),
    ckpt_case("ckpt-pickled-module", "torch.save(model): a whole pickled nn.Module",
              lambda c: c.write("ckpt/module.pth", c.torch_bytes(TinyNet())), "would import and run code",
              "TinyNet", "safetensors"),
    ckpt_case("ckpt-nan", "a weight is NaN",
              lambda c: c.write("ckpt/nan.pth", c.torch_bytes(_nan_sd(c))), "NaN/Inf", "conv_first.weight",
              subprocess=True),
    ckpt_case("ckpt-inf", "a bias is +Inf (safetensors)",
              lambda c: c.write("ckpt/inf.safetensors", c.safetensors_bytes(_inf_sd(c))), "NaN/Inf",
              "conv_last.bias"),
    ckpt_case("ckpt-int32", "a weight stored as int32",
              lambda c: c.write("ckpt/int32.pth", c.torch_bytes(_retyped(c, torch.int32))), "int32"),
    ckpt_case("ckpt-float8", "a weight stored as float8_e4m3fn (safetensors)",
              lambda c: c.write("ckpt/f8.safetensors", c.safetensors_bytes(_retyped(c, torch.float8_e4m3fn))),
              "float8_e4m3fn"),
    ckpt_case("ckpt-bool", "a weight stored as bool",
              lambda c: c.write("ckpt/bool.pth", c.torch_bytes(_retyped(c, torch.bool))), "bool"),
    ckpt_case("ckpt-not-a-dict", "torch.save(tensor): no dict at all",
              lambda c: c.write("ckpt/tensor.pth", c.torch_bytes(torch.zeros(3))), "expected a state_dict",
              "Tensor"),
    ckpt_case("ckpt-empty-dict", "torch.save({})",
              lambda c: c.write("ckpt/empty.pth", c.torch_bytes({})), "empty"),
    ckpt_case("ckpt-empty-wrapper", "{'params_ema': {}, 'iter': 5}",
              lambda c: c.write("ckpt/empty_wrap.pth", c.torch_bytes({"params_ema": {}, "iter": 5})),
              "params_ema", "empty state_dict"),
    ckpt_case("ckpt-non-tensor-entries", "flat dict of tensors plus epoch/optimizer entries",
              lambda c: c.write("ckpt/mixed.pth", c.torch_bytes({**c.state_dict(), "epoch": 3,
                                                                 "optimizer": {"lr": 0.1}})),
              "not tensors", "epoch", "optimizer"),
    ckpt_case("ckpt-unknown-arch", "tensors of no registered architecture",
              lambda c: c.write("ckpt/mystery.pth", c.torch_bytes({"encoder.weight": torch.zeros(8, 3, 3, 3),
                                                                   "decoder.weight": torch.zeros(3, 8, 3, 3)})),
              "no registered architecture", "encoder"),
    ckpt_case("ckpt-wrong-shape", "one conv reshaped to 5x5",
              lambda c: c.write("ckpt/shape.pth", c.torch_bytes(_reshaped(c))), "backbone_convs.0.weight"),
    ckpt_case("ckpt-missing-key", "one tensor deleted",
              lambda c: c.write("ckpt/missing.pth", c.torch_bytes(_without(c, "backbone_convs.2.bias"))),
              "missing keys", "backbone_convs.2.bias"),
    ckpt_case("ckpt-huge-layer-index", "key backbone_convs.99999999.weight (would build 10^8 layers)",
              lambda c: c.write("ckpt/index.pth", c.torch_bytes(_with_huge_index(c))), "gaps"),
    ckpt_case("ckpt-inflated-width", "conv_first widened to 20000 channels (the network it implies needs ~70 GB)",
              lambda c: c.write("ckpt/wide.pth", c.torch_bytes(_widened(c))), "does not fit",
              "backbone_convs.0.weight"),
    ckpt_case("ckpt-git-lfs-pointer", "a Git LFS pointer file instead of the weights",
              lambda c: c.write("ckpt/lfs.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                                + b"0" * 64 + b"\nsize 123456\n"), "git lfs pull"),
    ckpt_case("ckpt-html-page", "an HTML page saved as .pth (bad download link)",
              lambda c: c.write("ckpt/page.pth", b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n"),
              "HTML"),
    Case("ckpt-onnx-to-convert", "checkpoint", "an ONNX model given to convert",
         lambda c: convert_argv(c.onnx()), ("ONNX model",)),
    Case("ckpt-folder-without-checkpoints", "checkpoint", "convert a folder holding no checkpoints (batch mode)",
         lambda c: convert_argv(c.mkdir("ckpt/no_checkpoints")), ("no checkpoints",)),
    # ---- ONNX files: `edgesr eval MODEL.onnx --backend ort`
    Case("onnx-truncated", "onnx", "ONNX file cut in half",
         lambda c: ["eval", c.write("onnx/trunc.onnx", _half(c.abs(c.onnx()).read_bytes())), "--backend", "ort",
                    "--testset", c.testset(), "--scale", "2"], ("trunc.onnx",), subprocess=True),
    Case("onnx-missing-initializer", "onnx", "ONNX graph with its first initializer deleted",
         lambda c: ["eval", _onnx_without_initializer(c), "--backend", "ort", "--testset", c.testset(),
                    "--scale", "2"], ("noinit.onnx", "initializer")),
    Case("onnx-random-bytes", "onnx", "random bytes named .onnx",
         lambda c: ["eval", c.write("onnx/random.onnx", _random(2000, 2)), "--backend", "ort",
                    "--testset", c.testset(), "--scale", "2"], ("random.onnx",)),
    Case("onnx-zero-bytes", "onnx", "0-byte .onnx",
         lambda c: ["eval", c.write("onnx/zero.onnx", b""), "--backend", "ort", "--testset", c.testset(),
                    "--scale", "2"], ("zero.onnx",)),
    Case("onnx-missing-external-data", "onnx", "ONNX whose weights live in an external file that is missing",
         lambda c: ["eval", _onnx_external_missing(c), "--backend", "ort", "--testset", c.testset(),
                    "--scale", "2"], ("ext.onnx",)),
    # ---- images: `edgesr upscale CKPT IMAGE OUT`
    Case("image-truncated-png", "image", "PNG cut in half",
         lambda c: ["upscale", c.ckpt(), c.write("img/trunc.png", _half(c.png_rgb())), "img_out/trunc.png"],
         ("trunc.png", "truncated")),
    Case("image-zero-bytes", "image", "0-byte .png",
         lambda c: ["upscale", c.ckpt(), c.write("img/zero.png", b""), "img_out/zero.png"], ("empty",)),
    Case("image-random-bytes", "image", "random bytes named .png",
         lambda c: ["upscale", c.ckpt(), c.write("img/random.png", _random(800, 3)), "img_out/random.png"],
         ("random.png",)),
    Case("image-decompression-bomb", "image", "PNG header declaring 100000 x 100000 pixels",
         lambda c: ["upscale", c.ckpt(), c.write("img/bomb.png", c.png_header_only(100_000, 100_000)),
                    "img_out/bomb.png"], ("decompression bomb",), subprocess=True),
    Case("image-truncated-16bit", "image", "16-bit grey PNG cut in half",
         lambda c: ["upscale", c.ckpt(), c.write("img/g16_trunc.png", _half(c.png16_gray())),
                    "img_out/g16_trunc.png"], ("g16_trunc.png",)),
    Case("image-truncated-palette", "image", "palette PNG missing its last 30 bytes",
         lambda c: ["upscale", c.ckpt(), c.write("img/pal_trunc.png", c.png_rgb(mode="P")[:-30]),
                    "img_out/pal_trunc.png"], ("pal_trunc.png",)),
    Case("image-truncated-cmyk-jpeg", "image", "CMYK JPEG cut to a third",
         lambda c: ["upscale", c.ckpt(),
                    c.write("img/cmyk_trunc.jpg", c.png_rgb(mode="CMYK", fmt="JPEG")[:400]),
                    "img_out/cmyk_trunc.png"], ("cmyk_trunc.jpg",)),
    Case("image-16bit-color-tiff", "image", "16-bit RGB TIFF (Pillow would silently read 8 bits)",
         lambda c: ["upscale", c.ckpt(), _tiff16(c), "img_out/rgb16.png"], ("16-bit colour TIFF",)),
    Case("image-folder-empty", "image", "upscale a folder holding no images",
         lambda c: ["upscale", c.ckpt(), c.mkdir("img/empty_dir"), "img_out/empty_dir"], ("no images",)),
    Case("image-1x1-eval", "image", "1x1 LR image in an eval test set (nothing left after the border crop)",
         lambda c: ["eval", c.ckpt(), "--testset", c.testset("ts_1x1", lr_size=1), "--scale", "2"],
         ("cannot score",)),
    Case("image-truncated-eval", "image", "truncated LR image in an eval test set",
         lambda c: ["eval", c.ckpt(), "--testset", c.testset("ts_trunc", lr_bytes=_half(c.png_rgb(16, 16))),
                    "--scale", "2"], ("ax2.png",)),
    # unusual but valid images: accepted
    Case("image-1x1-accepted", "image (valid)", "1x1 PNG", lambda c: ["upscale", c.ckpt(),
         c.write("img/one.png", c.png_rgb(1, 1)), "img_out/one.png"], expect_ok=True),
    Case("image-16bit-accepted", "image (valid)", "16-bit grey PNG", lambda c: ["upscale", c.ckpt(),
         c.write("img/g16.png", c.png16_gray()), "img_out/g16.png"], expect_ok=True),
    Case("image-palette-accepted", "image (valid)", "palette (P) PNG", lambda c: ["upscale", c.ckpt(),
         c.write("img/pal.png", c.png_rgb(mode="P")), "img_out/pal.png"], expect_ok=True),
    Case("image-cmyk-accepted", "image (valid)", "CMYK JPEG", lambda c: ["upscale", c.ckpt(),
         c.write("img/cmyk.jpg", c.png_rgb(mode="CMYK", fmt="JPEG")), "img_out/cmyk.png"], expect_ok=True),
    # ---- calibration folders: `edgesr convert --int8 --calib DIR`
    Case("calib-empty", "calibration", "--calib folder with no images",
         lambda c: convert_argv(c.ckpt(), "--int8", "--calib", c.mkdir("calib/empty"), out="out/calib_empty"),
         ("holds no images",)),
    Case("calib-missing", "calibration", "--calib folder that does not exist",
         lambda c: convert_argv(c.ckpt(), "--int8", "--calib", "calib/nope", out="out/calib_missing"),
         ("does not exist",)),
    Case("calib-only-corrupt-images", "calibration", "--calib folder whose only images are truncated/random",
         lambda c: convert_argv(c.ckpt(), "--int8", "--calib",
                                _calib_with(c, "corrupt", {"a.png": _half(c.png_rgb()), "b.jpg": _random(500, 4)}),
                                out="out/calib_corrupt"),
         ("no readable calibration image", "a.png", "b.jpg")),
    # ---- bundles: `edgesr info OUTDIR`, `edgesr eval OUTDIR`
    Case("bundle-tampered-onnx", "bundle", "one byte of model.onnx flipped",
         lambda c: ["info", _bundle_tampered(c, "onnx_fp32")], ("sha256", "does not match"), subprocess=True),
    Case("bundle-truncated-onnx", "bundle", "model.onnx cut in half",
         lambda c: ["info", _bundle_truncated(c)], ("bytes",)),
    Case("bundle-deleted-artifact", "bundle", "model.onnx deleted",
         lambda c: ["info", _bundle_deleted(c)], ("missing",)),
    Case("bundle-manifest-bad-json", "bundle", "manifest.json cut short",
         lambda c: ["info", _bundle_bad_json(c)], ("invalid JSON",)),
    Case("bundle-manifest-nan", "bundle", "manifest.json holding NaN (not JSON)",
         lambda c: ["info", _bundle_nan(c)], ("NaN",)),
    Case("bundle-manifest-missing-field", "bundle", "manifest.json without 'spec'",
         lambda c: ["info", _edit_manifest(c, c.bundle("bundles/nospec"), lambda m: m.pop("spec"))],
         ("spec",)),
    Case("bundle-manifest-path-escape", "bundle", "an artifact listed as ../../etc/passwd",
         lambda c: ["info", _edit_manifest(c, c.bundle("bundles/escape"),
                                           _set_first_artifact("file", "../../etc/passwd"))], ("..",)),
    Case("bundle-manifest-wrong-sha", "bundle", "manifest.json sha256 of an artifact edited",
         lambda c: ["info", _edit_manifest(c, c.bundle("bundles/wrongsha"), _set_first_artifact("sha256", "0" * 64))],
         ("sha256",)),
    Case("bundle-interrupted", "bundle", "bundle folder without manifest.json (interrupted copy)",
         lambda c: ["info", _interrupted(c)], ("manifest.json",)),
    Case("bundle-eval-tampered-weights", "bundle", "eval a bundle whose deploy.safetensors was modified",
         lambda c: ["eval", _bundle_tampered(c, "torch_deploy"), "--testset", c.testset(), "--scale", "2"],
         ("sha256", "does not match")),
]


def _onnx_without_initializer(c: Corpus) -> str:
    import onnx

    m = onnx.load(str(c.abs(c.onnx())))
    del m.graph.initializer[0]
    c.abs("onnx").mkdir(exist_ok=True)
    onnx.save(m, str(c.abs("onnx/noinit.onnx")))
    return "onnx/noinit.onnx"


def _onnx_external_missing(c: Corpus) -> str:
    import onnx

    m = onnx.load(str(c.abs(c.onnx())))
    d = c.abs("onnx/ext")
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(d / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (d / "ext.data").unlink()
    return "onnx/ext/ext.onnx"


def _tiff16(c: Corpus) -> str:
    """A minimal uncompressed 16-bit-per-sample RGB TIFF (little-endian), written by hand."""
    h, w = 8, 8
    pix = (np.random.default_rng(5).random((h, w, 3)) * 65535).astype("<u2").tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, 0), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(pix))]
    ifd_off = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bps_off = ifd_off + ifd_size
    data_off = bps_off + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off))
    out += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bps_off
        if tag == 273:
            value = data_off
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 16, 16, 16)
    out += pix
    return c.write("img/rgb16.tif", bytes(out))


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    argv: list[str]
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("edgesr:") and not ln.startswith("edgesr: note:")]


def run_in_process(case: Case, corpus: Corpus) -> Outcome:
    from edgesr.cli import main

    cwd = os.getcwd()
    os.chdir(corpus.root)
    try:
        argv = case.argv(corpus)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(cwd)
    return Outcome(argv, rc, out.getvalue(), err.getvalue())


def problems(case: Case, o: Outcome) -> list[str]:
    """What is wrong with an outcome ([] when the case behaved)."""
    bad = []
    if "Traceback" in o.err or "Traceback" in o.out:
        bad.append("traceback printed")
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    if case.expect_ok:
        if o.rc != 0:
            bad.append(f"exit {o.rc}, expected 0")
        if o.error_lines:
            bad.append(f"error printed: {o.error_lines[0]}")
        return bad
    if not o.rc:
        bad.append(f"exit {o.rc}, expected non-zero")
    errs = o.error_lines
    if len(errs) != 1:
        bad.append(f"{len(errs)} error lines on stderr, expected 1")
    elif not errs[0].startswith("edgesr: error: "):
        bad.append(f"not an 'edgesr: error:' line: {errs[0][:120]}")
    else:
        if lines[-1] != errs[0]:
            bad.append("the error is not the last stderr line")
        missing = [n for n in case.needles if n.lower() not in errs[0].lower()]
        if missing:
            bad.append(f"message lacks {missing}")
    noise = [ln for ln in lines if ln not in errs and not PROGRESS_LINE.match(ln)]
    if noise:
        bad.append(f"unexpected stderr line: {noise[0][:120]}")
    return bad


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, corpus: Corpus):
    o = run_in_process(case, corpus)
    assert not problems(case, o), (problems(case, o), o.argv, o.rc, o.err[-2000:])
    if case.after:
        case.after(corpus)


def test_enough_error_cases():
    assert sum(not c.expect_ok for c in CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


def test_hostile_inputs_subprocess(tmp_path):
    """The same checks through `python -m edgesr` (real process, real stderr, real exit code).
    The processes run concurrently; each pays the torch import once."""
    corpus = Corpus(tmp_path / "sub")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    cwd = os.getcwd()
    os.chdir(corpus.root)
    try:
        argvs = [c.argv(corpus) for c in SUBPROCESS_CASES]
    finally:
        os.chdir(cwd)
    procs = [subprocess.Popen([sys.executable, "-m", "edgesr", *argv], cwd=corpus.root, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    failures = []
    for case, argv, p in zip(SUBPROCESS_CASES, argvs, procs):
        out, err = p.communicate(timeout=300)
        o = Outcome(argv, p.returncode, out, err)
        if problems(case, o):
            failures.append((case.id, problems(case, o), err[-1500:]))
        if case.after:
            case.after(corpus)
    assert len(SUBPROCESS_CASES) >= 5
    assert not failures, failures
