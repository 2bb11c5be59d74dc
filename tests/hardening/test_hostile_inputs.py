"""Hostile and broken inputs through the real CLI: one-line error, non-zero exit, no traceback.

Every input is generated here under a temporary folder (nothing is downloaded): truncated,
empty and random checkpoints, pickles whose unpickling would run code, NaN/Inf and
wrong-dtype weights, broken ONNX files, truncated / decompression-bomb / odd-mode images,
empty calibration folders, tampered bundles. Each case runs in-process through
``edgesr.cli.main`` (a handful also through ``python -m edgesr`` in a subprocess) and must
end with exactly one ``edgesr: error: ...`` line on stderr (progress lines of ``convert``
before it are allowed) and a non-zero exit status. A few unusual-but-valid images must be
*accepted* (exit 0).

``python tests/hardening/hostile_table.py`` runs the same cases and writes docs/hostile_inputs.md.
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

REPO = Path(__file__).resolve().parents[2]
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

    def mobile_bundle_source(self) -> str:
        """A real `edgesr convert --tflite --ncnn` output (converted once per corpus; cases copy it)."""
        if "mobile" not in self._cache:
            from edgesr.pipeline import ConvertOptions, convert

            out = self.abs("base/mobile_bundle")
            convert(ConvertOptions(outdir=out, checkpoint=self.abs(self.ckpt()), bench=False, ort_format=False,
                                   tflite=True, ncnn=True, mobile_size=(16, 16), check_conventions=False),
                    log=lambda m: None)
            self._cache["mobile"] = "base/mobile_bundle"
        return self._cache["mobile"]

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
    check: Callable[["Outcome"], list[str]] | None = None  # extra problems with the output itself
    memory: bool = False  # a memory case: its peak RSS is measured in a child process


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


# --------------------------------------------------------------------------- round two (issue 14)
#
# One group per class of failure; each class is probed with several generated variants, so a
# fix must cover the class, not one example: data loss through --force / -o, memory that grows
# with what a file declares, runs that ignore Ctrl-C or never end, bundle files that are not
# what was hashed, internal errors, forged output lines, valid input refused.

EVIL_NAMES = {  # what a file name may hold to forge or garble edgesr's output
    "newline": "x\nedgesr: wrote out (OK)",
    "cr-ansi": "y\r\x1b[2K\x1b[32medgesr: ok\x1b[0m",
    "bidi": "z\u202egnp.pth",
    "control": "w\x07\x08\x7f",
}


def _ls(c: Corpus, rel: str) -> list[str]:
    return sorted(p.name for p in c.abs(rel).iterdir())


def _keeps(rel: str, *names: str) -> Callable[[Corpus], None]:
    """After the case: `rel` still holds `names`, byte for byte as written."""
    def check(c: Corpus) -> None:
        for n in names:
            p = c.abs(f"{rel}/{n}")
            assert p.exists(), f"{p} was deleted"
            assert p.read_bytes() == c._cache[f"content:{rel}/{n}"], f"{p} was modified"
    return check


def _user_folder(c: Corpus, rel: str, with_ckpt: bool = True) -> str:
    """A folder of the user's: their only copy of a checkpoint and a notes file."""
    d = c.mkdir(rel)
    files = {"notes.txt": b"my notes\n"}
    if with_ckpt:
        files["only_copy.safetensors"] = c.abs(c.ckpt()).read_bytes()
    for n, data in files.items():
        c.write(f"{d}/{n}", data)
        c._cache[f"content:{d}/{n}"] = data
    return d


def _bundle_with_foreign(c: Corpus) -> str:
    b = c.bundle("out_foreign/b")
    c.write(f"{b}/notes.txt", b"mine\n")
    c._cache[f"content:{b}/notes.txt"] = b"mine\n"
    return b


def _symlink_to_bundle(c: Corpus) -> str:
    c.bundle("out_link/real")
    os.symlink("real", c.abs("out_link/link"))
    return "out_link/link"


def _file_as_outdir(c: Corpus) -> str:
    c.write("out_file/precious.bin", b"\x01\x02")
    c._cache["content:out_file/precious.bin"] = b"\x01\x02"
    return "out_file/precious.bin"


def _batch_into_input(c: Corpus) -> list[str]:
    """`convert bdir -o .` where bdir holds bdir.safetensors: its OUTDIR would be bdir itself."""
    d = c.mkdir("bdir")
    data = c.abs(c.ckpt()).read_bytes()
    c.write("bdir/bdir.safetensors", data)
    c._cache["content:bdir/bdir.safetensors"] = data
    return ["convert", d, "-o", ".", "--force", "--no-bench", "--no-ort-format"]


# ---- memory: what a checkpoint declares, checked before allocating


def _zip_records(data: bytes) -> list[tuple[str, bytes]]:
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(data))
    return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def _write_zip(path: Path, entries: list[tuple[str, int, bytes, int, int]]) -> None:
    """A zip of (name, method, payload, crc32, uncompressed size) records, written by hand so a
    record can carry a deflate stream that was built without inflating it in memory."""
    with open(path, "wb") as f:
        central = []
        for name, method, payload, crc, usize in entries:
            off = f.tell()
            nb = name.encode()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), usize,
                                len(nb), 0) + nb)
            f.write(payload)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                                       len(payload), usize, len(nb), 0, 0, 0, 0, 0, off) + nb)
        cd_off = f.tell()
        for c_ in central:
            f.write(c_)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), f.tell() - cd_off, cd_off, 0))


def _zip_bomb(c: Corpus, gib: int = 1) -> str:
    """A real torch.save zip whose tensor record is replaced by a deflate stream of `gib` GiB of
    zeros (~5 MB on disk): torch would inflate it into memory before noticing the mismatch."""
    co = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = co.compress(b"\0" * (1 << 24)) + co.flush(zlib.Z_FULL_FLUSH)  # 16 MiB, byte-aligned
    n = 64 * gib
    stream = block * n + co.flush()
    crc, zeros = 0, b"\0" * (1 << 24)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    entries = []
    for name, data in _zip_records(c.torch_bytes({"w": torch.zeros(4)})):
        if name.endswith("/data/0"):
            entries.append((name, 8, stream, crc, n << 24))
        else:
            entries.append((name, 0, data, zlib.crc32(data), len(data)))
    c.abs("mem").mkdir(exist_ok=True)
    _write_zip(c.abs("mem/zipbomb.pth"), entries)
    return "mem/zipbomb.pth"


def _zip_many_records(c: Corpus, n: int = 60_000) -> str:
    entries = [(name, 0, data, zlib.crc32(data), len(data))
               for name, data in _zip_records(c.torch_bytes({"w": torch.zeros(4)}))]
    entries += [(f"archive/data/x{i}", 0, b"", 0, 0) for i in range(n)]
    c.abs("mem").mkdir(exist_ok=True)
    _write_zip(c.abs("mem/many_records.pth"), entries)
    return "mem/many_records.pth"


def _safetensors_raw(header: dict | bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h


def _safetensors_sparse_huge(c: Corpus) -> str:
    """Header declaring one 2^31-element float32 tensor (8 GiB) backed by a sparse file of that
    size: every declaration is consistent, only the size is hostile."""
    n = 1 << 31
    head = _safetensors_raw({"conv_first.weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    c.abs("mem").mkdir(exist_ok=True)
    with open(c.abs("mem/huge_sparse.safetensors"), "wb") as f:
        f.write(head)
        f.truncate(len(head) + 4 * n)
    return "mem/huge_sparse.safetensors"


def _safetensors_declares_huge(c: Corpus) -> str:
    n = 1 << 31
    return c.write("mem/huge_short.safetensors", _safetensors_raw(
        {"conv_first.weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}) + b"\0" * 64)


def _safetensors_million_keys(c: Corpus, n: int = 1_000_000) -> str:
    entries = ",".join(f'"k{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}' for i in range(n))
    return c.write("mem/million_keys.safetensors", _safetensors_raw(("{" + entries + "}").encode()) + b"\0" * (4 * n))


# ---- hangs and numbers


def _onnx_model(c: Corpus, rel: str, nodes, inputs, outputs, inits=(), meta: dict | None = None) -> str:
    import onnx
    from onnx import helper

    m = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in (meta or {}).items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    c.abs(rel).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(c.abs(rel)))
    return rel


def _io(name: str = "input", elem: int | None = None, shape=("N", 3, "H", "W")):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT if elem is None else elem, list(shape))


def _scales():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")


def _onnx_x2(c: Corpus, rel: str, meta: dict | None = None) -> str:
    """A valid x2 nearest-neighbour 'SR model' carrying `meta` as metadata."""
    from onnx import helper

    return _onnx_model(c, rel, [helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")],
                       [_io()], [_io("output", shape=("N", 3, "H2", "W2"))], [_scales()], meta)


def _onnx_endless_loop(c: Corpus) -> str:
    """A Loop of 2^63 - 1 iterations (an identity body) in front of a x2 resize."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _io("x_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _io("x_out")])
    inits = [numpy_helper.from_array(np.array(2**63 - 1, dtype=np.int64), "M"),
             numpy_helper.from_array(np.array(True), "C"), _scales()]
    return _onnx_model(c, "onnx2/loop.onnx", [helper.make_node("Loop", ["M", "C", "input"], ["y"], body=body),
                                               helper.make_node("Resize", ["y", "", "scales"], ["output"],
                                                                mode="nearest")],
                       [_io()], [_io("output", shape=("N", 3, "H2", "W2"))], inits)


def _onnx_tile_fails_at_run(c: Corpus) -> str:
    """Tile whose repeats (computed from the input's shape, so no load-time check sees them)
    have the wrong length; the node's name tries to forge an output line."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([0], np.int64), "st"), numpy_helper.from_array(np.array([3], np.int64), "en")]
    nodes = [helper.make_node("Shape", ["input"], ["s"]), helper.make_node("Slice", ["s", "st", "en"], ["r3"]),
             helper.make_node("Div", ["r3", "r3"], ["ones"]),
             helper.make_node("Tile", ["input", "ones"], ["output"], name="tile\n\x1b[2Kedgesr: wrote out (OK)")]
    from onnx import TensorProto

    return _onnx_model(c, "onnx2/tile_run.onnx", nodes, [_io()],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)


def _onnx_two_inputs(c: Corpus) -> str:
    from onnx import helper

    return _onnx_model(c, "onnx2/two_inputs.onnx", [helper.make_node("Add", ["input", "extra"], ["t"]),
                                                     helper.make_node("Resize", ["t", "", "scales"], ["output"],
                                                                      mode="nearest")],
                       [_io(), _io("extra", shape=(1,))], [_io("output", shape=("N", 3, "H2", "W2"))], [_scales()])


def _onnx_uint8(c: Corpus, where: str) -> str:
    from onnx import TensorProto, helper

    if where == "input":
        nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("Resize", ["f", "", "scales"], ["output"], mode="nearest")]
        ios = [_io(elem=TensorProto.UINT8)], [_io("output", shape=("N", 3, "H2", "W2"))]
    else:
        nodes = [helper.make_node("Resize", ["input", "", "scales"], ["r"], mode="nearest"),
                 helper.make_node("Cast", ["r"], ["output"], to=TensorProto.UINT8)]
        ios = [_io()], [_io("output", elem=TensorProto.UINT8, shape=("N", 3, "H2", "W2"))]
    return _onnx_model(c, f"onnx2/uint8_{where}.onnx", nodes, *ios, [_scales()])


def _ort_case(id: str, what: str, build: Callable[[Corpus], str], *needles: str, extra: tuple = (),
              **kw) -> Case:
    return Case(id, "model", what, lambda c: ["upscale", build(c), c.write(f"img2/{id}.png", c.png_rgb(8, 8)),
                                              f"img2_out/{id}.png", "--backend", "ort", "--scale", "2", *extra],
                needles, **kw)


# ---- bundle integrity


def _manifest_entry_for(c: Corpus, bundle: str, role: str, data: bytes, file: str | None = None) -> None:
    import hashlib

    def fn(m: dict) -> None:
        a = next(a for a in m["artifacts"] if a["role"] == role)
        a["sha256"], a["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        if file is not None:
            a["file"] = file
    _edit_manifest(c, bundle, fn)


def _bundle_symlink_outside(c: Corpus) -> str:
    """deploy.safetensors replaced by a symlink to a file outside the bundle whose sha256 and
    size the manifest was edited to list (the check passes on the target's bytes)."""
    b = c.bundle("bundles2/symlink")
    outside = c.write("secret/outside.safetensors", c.abs(c.ckpt()).read_bytes())
    target = c.abs(_artifact_file(c, b, "torch_deploy"))
    target.unlink()
    os.symlink(c.abs(outside), target)
    _manifest_entry_for(c, b, "torch_deploy", c.abs(outside).read_bytes())
    return b


def _bundle_symlinked_folder(c: Corpus) -> str:
    b = c.bundle("bundles2/symdir")
    c.write("secret2/model.onnx", c.abs(_artifact_file(c, b, "onnx_fp32")).read_bytes())
    os.symlink(c.abs("secret2"), c.abs(f"{b}/sub"))
    _manifest_entry_for(c, b, "onnx_fp32", c.abs("secret2/model.onnx").read_bytes(), file="sub/model.onnx")
    return b


def _bundle_manifest_symlink(c: Corpus) -> str:
    b = c.bundle("bundles2/mlink")
    os.replace(c.abs(f"{b}/manifest.json"), c.abs("secret_manifest.json"))
    os.symlink(c.abs("secret_manifest.json"), c.abs(f"{b}/manifest.json"))
    return b


def _bundle_fifo(c: Corpus) -> str:
    b = c.bundle("bundles2/fifo")
    p = c.abs(_artifact_file(c, b, "onnx_fp32"))
    p.unlink()
    os.mkfifo(p)  # opening a FIFO for reading would wait for a writer forever
    return b


def _bundle_manifest_text(c: Corpus, name: str, text: str) -> str:
    b = c.bundle(f"bundles2/{name}")
    c.abs(f"{b}/manifest.json").write_text(text)
    return b


def _bundle_scale(c: Corpus) -> str:
    def fn(m: dict) -> None:
        m["spec"]["scale"] = m["io"]["scale"] = 10**9
    return _edit_manifest(c, c.bundle("bundles2/scale"), fn)


# ---- names and pickles


def _no_forged_line(o: "Outcome") -> list[str]:
    """No output line may start like one of edgesr's own that the inputs tried to forge, and
    no terminal escape (ESC) or carriage return may reach the terminal raw."""
    lines = (o.out + "\n" + o.err).split("\n")
    bad = [ln for ln in lines if ln.startswith(("edgesr: wrote", "edgesr: ok", "\x1b"))]
    raw = [c for c in ("\x1b", "\r", "\u202e", "\x07") if c in o.out or c in o.err]
    return ([f"forged line printed: {bad[0]!r}"] if bad else []) + ([f"raw control character {raw[0]!r} printed"]
                                                                    if raw else [])


def _evil_ckpt(c: Corpus, kind: str) -> str:
    c.abs("names").mkdir(exist_ok=True)
    if kind == "non-utf8":
        name = os.fsdecode(b"names/bad\xff\xfe.pth")
    else:
        name = f"names/{EVIL_NAMES[kind]}.pth"
    c.abs(name).write_bytes(_random(2048, 9))  # not a checkpoint: the error line must name it safely
    return name


class RunsViaStackGlobal:
    """Protocol 4/5 pickle reaching os.system through STACK_GLOBAL (weights_only fails on the
    opcode before it ever sees the global, so only a static scan can name it)."""

    def __init__(self, marker: Path):
        self.cmd = f"touch '{marker}'"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _inst_pickle(marker: Path) -> bytes:
    """Protocol 0 INST opcode: 'i' module name, the oldest way a pickle calls a function."""
    return b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."


# ---- valid PNGs with large metadata


def _png_with_chunk(c: Corpus, rel: str, kind: bytes, data: bytes, repeat: int = 1) -> str:
    def chunk(k: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xFFFFFFFF)

    png = c.png_rgb(12, 10)
    i = 8 + 25  # after the signature and IHDR
    return c.write(rel, png[:i] + b"".join(chunk(kind, data if repeat == 1 else b"k%d\0" % n + data)
                                           for n in range(repeat)) + png[i:])


_BIG_TEXT = b"A" * (8 << 20)  # inflates past Pillow's 1 MiB text / ICC chunk limit


CASES += [
    # ---- data loss: --force / -o replace only what edgesr wrote
    Case("out-force-onto-input-folder", "output", "convert F/only_copy.safetensors -o F --force (F also holds notes)",
         lambda c: ["convert", f"{_user_folder(c, 'mine1')}/only_copy.safetensors", "-o", "mine1", "--force",
                    "--no-bench", "--no-ort-format"], ("holds the input", "mine1"),
         after=_keeps("mine1", "only_copy.safetensors", "notes.txt"), subprocess=True),
    Case("out-force-dot", "output", "convert CKPT -o . --force (the working folder holds the corpus)",
         lambda c: ["convert", f"{_user_folder(c, 'mine2')}/only_copy.safetensors", "-o", ".", "--force",
                    "--no-bench", "--no-ort-format"], ("current folder",),
         after=_keeps("mine2", "only_copy.safetensors", "notes.txt")),
    Case("out-force-parent-of-input", "output", "convert P/sub/only_copy.safetensors -o P --force",
         lambda c: ["convert", f"{_user_folder(c, 'mine3/sub')}/only_copy.safetensors", "-o", "mine3", "--force",
                    "--no-bench", "--no-ort-format"], ("holds the input",),
         after=_keeps("mine3/sub", "only_copy.safetensors", "notes.txt")),
    Case("out-force-dot-spelled-otherwise", "output", "convert F/x -o F/.. --force (the working folder, spelled "
         "another way)",
         lambda c: ["convert", f"{_user_folder(c, 'mine4')}/only_copy.safetensors", "-o", "mine4/..", "--force",
                    "--no-bench", "--no-ort-format"], ("current folder",),
         after=_keeps("mine4", "only_copy.safetensors", "notes.txt")),
    Case("out-force-foreign-folder", "output", "--force onto a folder of the user's (no manifest)",
         lambda c: convert_argv(c.ckpt(), "--force", out=_user_folder(c, "mine5", with_ckpt=False)),
         ("did not write", "notes.txt"), after=_keeps("mine5", "notes.txt")),
    Case("out-force-bundle-plus-foreign", "output", "--force onto a real bundle the user added notes.txt to",
         lambda c: convert_argv(c.ckpt(), "--force", out=_bundle_with_foreign(c)), ("did not write", "notes.txt"),
         after=_keeps("out_foreign/b", "notes.txt")),
    Case("out-force-symlink", "output", "--force onto a symlink to a bundle",
         lambda c: convert_argv(c.ckpt(), "--force", out=_symlink_to_bundle(c)), ("symbolic link",),
         after=lambda c: read_manifest_ok(c, "out_link/real")),
    Case("out-force-file", "output", "--force onto a regular file",
         lambda c: convert_argv(c.ckpt(), "--force", out=_file_as_outdir(c)), ("not a folder",),
         after=_keeps("out_file", "precious.bin")),
    Case("out-batch-into-input", "output", "batch: convert DIR -o . --force where DIR/DIR.safetensors maps to DIR",
         _batch_into_input, ("holds the input",), after=_keeps("bdir", "bdir.safetensors")),
    Case("out-parent-is-file", "output", "-o FILE/out (a parent of OUTDIR is a file)",
         lambda c: convert_argv(c.ckpt(), out=f"{c.write('plainfile', b'x')}/out"), ("is a file",)),
    Case("out-name-250-chars", "output (valid)", "a legal 250-character OUTDIR name (its staging name is longer)",
         lambda c: convert_argv(c.ckpt(), out="n" * 250), expect_ok=True),
    Case("out-upscale-name-250-chars", "output (valid)", "upscale into a legal 250-character file name",
         lambda c: ["upscale", c.ckpt(), c.write("img3/a.png", c.png_rgb(8, 8)), "img3_out/" + "u" * 246 + ".png"],
         expect_ok=True),
    # ---- memory: declared sizes checked before allocating (peak RSS measured in a child process)
    Case("mem-zip-bomb", "memory", "5 MB torch zip whose tensor record inflates to 1 GiB",
         lambda c: convert_argv(_zip_bomb(c)), ("zip bomb", "1073741824"), memory=True, subprocess=True),
    Case("mem-zip-many-records", "memory", "torch zip declaring 60,000 records",
         lambda c: convert_argv(_zip_many_records(c)), ("records", "EDGESR_MAX_TENSORS"), memory=True),
    Case("mem-safetensors-8gib-sparse", "memory", "safetensors declaring one 2^31-element float32 tensor, backed by "
         "an 8 GiB sparse file", lambda c: convert_argv(_safetensors_sparse_huge(c)),
         ("8192 MiB", "EDGESR_MAX_CHECKPOINT_MB"), memory=True),
    Case("mem-safetensors-8gib-declared", "memory", "safetensors declaring a 2^31-element tensor in a 200-byte file",
         lambda c: convert_argv(_safetensors_declares_huge(c)), ("outside",), memory=True),
    Case("mem-safetensors-million-keys", "memory", "safetensors with 1,000,000 tensors (70 MB header)",
         lambda c: convert_argv(_safetensors_million_keys(c)), ("EDGESR_MAX_TENSORS",), memory=True),
    Case("mem-bench-size", "memory", "bench --size 100000x100000 (a 120 GB input before the model runs)",
         lambda c: ["bench", c.ckpt(), "--size", "100000x100000"], ("GiB",), memory=True),
    # ---- hangs: every run interruptible, numeric options bounded
    Case("hang-onnx-endless-loop", "hang", "ONNX Loop of 2^63 iterations, --time-limit 2",
         lambda c: ["upscale", _onnx_endless_loop(c), c.write("img2/loop.png", c.png_rgb(8, 8)), "img2_out/loop.png",
                    "--backend", "ort", "--scale", "2", "--time-limit", "2"], ("time limit",)),
    Case("hang-bench-warmup-inf", "hang", "bench --warmup inf", lambda c: ["bench", c.ckpt(), "--warmup", "inf"],
         ("--warmup",)),
    Case("hang-bench-min-seconds-nan", "hang", "bench --min-seconds nan",
         lambda c: ["bench", c.ckpt(), "--min-seconds", "nan"], ("--min-seconds",)),
    Case("hang-bench-min-runs-huge", "hang", "bench --min-runs 10^12",
         lambda c: ["bench", c.ckpt(), "--min-runs", "1000000000000"], ("--min-runs",)),
    Case("num-threads-negative", "numbers", "eval --threads -1",
         lambda c: ["eval", c.ckpt(), "--testset", c.testset(), "--scale", "2", "--threads", "-1"], ("--threads",)),
    Case("num-threads-zero", "numbers", "convert --threads 0", lambda c: convert_argv(c.ckpt(), "--threads", "0"),
         ("--threads",)),
    Case("num-upscale-threads-huge", "numbers", "upscale --threads 10^9",
         lambda c: ["upscale", c.ckpt(), "x.png", "y.png", "--threads", "1000000000"], ("--threads",)),
    Case("num-bench-size-zero", "numbers", "bench --size 0x4", lambda c: ["bench", c.ckpt(), "--size", "0x4"],
         ("positive",)),
    Case("num-bench-batch-zero", "numbers", "bench --batch 0", lambda c: ["bench", c.ckpt(), "--batch", "0"],
         ("--batch",)),
    Case("num-parity-tol-nan", "numbers", "parity --tol-max-abs nan",
         lambda c: ["parity", c.ckpt(), c.ckpt(), "--tol-max-abs", "nan"], ("--tol-max-abs",)),
    Case("num-scale-negative", "numbers", "convert --scale -2", lambda c: convert_argv(c.ckpt(), "--scale", "-2"),
         ("--scale",)),
    Case("num-psnr-budget-inf", "numbers", "convert --psnr-budget inf",
         lambda c: convert_argv(c.ckpt(), "--int8", "--psnr-budget", "inf"), ("--psnr-budget",)),
    # ---- bundle integrity: the bytes used are the bytes hashed, inside the bundle
    Case("bundle-artifact-symlink-outside", "bundle", "artifact is a symlink to an outside file whose hash the "
         "manifest lists", lambda c: ["info", _bundle_symlink_outside(c)], ("symbolic link",), subprocess=True),
    Case("bundle-artifact-under-symlinked-folder", "bundle", "artifact listed under a folder that is a symlink "
         "leading outside", lambda c: ["eval", _bundle_symlinked_folder(c), "--testset", c.testset(), "--scale", "2"],
         ("symbolic link",)),
    Case("bundle-manifest-symlink", "bundle", "manifest.json is a symlink",
         lambda c: ["info", _bundle_manifest_symlink(c)], ("symbolic link",)),
    Case("bundle-artifact-fifo", "bundle", "model.onnx is a FIFO (a reader would block forever)",
         lambda c: ["info", _bundle_fifo(c)], ("not a regular file",)),
    Case("bundle-manifest-deep", "bundle", "manifest.json nested 100,000 levels deep",
         lambda c: ["info", _bundle_manifest_text(c, "deep", "[" * 100_000 + "]" * 100_000)], ("nested",)),
    Case("bundle-manifest-huge", "bundle", "manifest.json of 20 MB",
         lambda c: ["info", _bundle_manifest_text(c, "huge", " " * (20 << 20) + "{}")], ("larger than",)),
    Case("bundle-spec-scale-huge", "bundle", "manifest spec.scale 10^9",
         lambda c: ["info", _bundle_scale(c)], ("scale",)),
    # ---- internal errors -> one clear line (ONNX models from elsewhere)
    _ort_case("model-meta-not-json", "ONNX metadata 'spec' that is not JSON",
              lambda c: _onnx_x2(c, "onnx2/meta_notjson.onnx", {"spec": "{not json"}), "not valid JSON"),
    _ort_case("model-meta-negative-scale", "ONNX metadata spec with scale -2",
              lambda c: _onnx_x2(c, "onnx2/meta_neg.onnx", {"spec": json.dumps({"arch": "x", "scale": -2})}), "scale"),
    _ort_case("model-meta-deep", "ONNX metadata spec nested 5000 levels",
              lambda c: _onnx_x2(c, "onnx2/meta_deep.onnx", {"spec": "[" * 5000 + "]" * 5000}), "nested"),
    _ort_case("model-meta-wrong-types", "ONNX metadata spec with value_range [1, 0] and a string min_size",
              lambda c: _onnx_x2(c, "onnx2/meta_types.onnx", {"spec": json.dumps(
                  {"arch": "x", "scale": 2, "value_range": [1, 0], "min_size": "big"})}), "value_range"),
    _ort_case("model-meta-unknown-keys", "ONNX metadata spec with keys this edgesr does not know (accepted)",
              lambda c: _onnx_x2(c, "onnx2/meta_unknown.onnx",
                                 {"spec": json.dumps({"arch": "x", "scale": 2, "from_the_future": 1})}), expect_ok=True),
    _ort_case("model-second-input", "ONNX model with a second required input", _onnx_two_inputs, "2 required inputs"),
    _ort_case("model-uint8-input", "ONNX model taking uint8", lambda c: _onnx_uint8(c, "input"), "uint8"),
    _ort_case("model-uint8-output", "ONNX model returning uint8", lambda c: _onnx_uint8(c, "output"), "uint8"),
    _ort_case("model-tile-fails-at-run", "Tile that ORT refuses while running (node name holds a newline and an "
              "escape sequence)", _onnx_tile_fails_at_run, "failed running", "Tile", check=_no_forged_line),
    # ---- forged lines: every name escaped, no library warning before edgesr's line
    *[Case(f"names-{k}-checkpoint", "names", f"bad checkpoint whose file name holds {k} characters",
           lambda c, k=k: convert_argv(_evil_ckpt(c, k), out=f"names_out/{k}"), ("not a PyTorch checkpoint",),
           check=_no_forged_line) for k in (*EVIL_NAMES, "non-utf8")],
    Case("names-newline-outdir", "names (valid)", "convert into an OUTDIR whose name holds a newline and a fake "
         "'edgesr: wrote' line", lambda c: convert_argv(c.ckpt(), out="names_out/o\nedgesr: wrote out (OK)"),
         expect_ok=True, check=_no_forged_line),
    Case("names-newline-upscale-output", "names (valid)", "upscale into a file whose name holds a newline and ANSI "
         "escapes", lambda c: ["upscale", c.ckpt(), c.write("img3/b.png", c.png_rgb(8, 8)),
                               "img3_out/p\n\x1b[2Kedgesr: wrote out (OK).png"], expect_ok=True, check=_no_forged_line),
    ckpt_case("pickle-stack-global", "protocol-4 pickle reaching os.system via STACK_GLOBAL (torch warns about the "
              "protocol, then fails on the opcode)",
              lambda c: c.write("ckpt2/sg.pth", pickle.dumps(RunsViaStackGlobal(c.marker("sg")), protocol=4)),
              "would run code", "system", after=_marker_absent("sg")),
    ckpt_case("pickle-protocol5-in-dict", "protocol-5 pickle: a state_dict with one entry calling os.system",
              lambda c: c.write("ckpt2/p5.pth", pickle.dumps({"w": RunsViaStackGlobal(c.marker("p5"))}, protocol=5)),
              "would run code", after=_marker_absent("p5")),
    ckpt_case("pickle-inst-opcode", "protocol-0 pickle calling os.system through the INST opcode",
              lambda c: c.write("ckpt2/inst.pth", _inst_pickle(c.marker("inst"))), "would run code",
              after=_marker_absent("inst")),
    ckpt_case("pickle-protocol5-valid-torch", "a genuine torch.save(..., pickle_protocol=5) state_dict (torch's "
              "safe loader cannot read it: refused with the reason)",
              lambda c: c.write("ckpt2/z5.pth", _torch_bytes_protocol(c.state_dict(), 5)), "protocol 5",
              "safetensors"),
    # ---- valid input accepted: PNG metadata Pillow refuses but viewers show
    Case("image-png-large-ztxt", "image (valid)", "PNG with a zTXt comment inflating to 8 MiB",
         lambda c: ["upscale", c.ckpt(), _png_with_chunk(c, "img4/ztxt.png", b"zTXt", b"Comment\0\0"
                                                         + zlib.compress(_BIG_TEXT)), "img4_out/ztxt.png"],
         expect_ok=True),
    Case("image-png-large-iccp", "image (valid)", "PNG with an 8 MiB ICC profile (iCCP)",
         lambda c: ["upscale", c.ckpt(), _png_with_chunk(c, "img4/iccp.png", b"iCCP", b"profile\0\0"
                                                         + zlib.compress(_BIG_TEXT)), "img4_out/iccp.png"],
         expect_ok=True),
    Case("image-png-large-itxt", "image (valid)", "PNG with a compressed iTXt inflating to 8 MiB",
         lambda c: ["upscale", c.ckpt(), _png_with_chunk(c, "img4/itxt.png", b"iTXt", b"Comment\0\1\0en\0\0"
                                                         + zlib.compress(_BIG_TEXT)), "img4_out/itxt.png"],
         expect_ok=True),
    Case("image-png-many-text", "image (valid)", "PNG with 70,000 tEXt chunks (70 MB of text in all)",
         lambda c: ["upscale", c.ckpt(), _png_with_chunk(c, "img4/many.png", b"tEXt", b"v" * 1000, repeat=70_000),
                    "img4_out/many.png"], expect_ok=True),
]


def _torch_bytes_protocol(obj, protocol: int) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def read_manifest_ok(c: Corpus, rel: str) -> None:
    from edgesr.bundle import read_manifest

    read_manifest(c.abs(rel))


# --------------------------------------------------------------------------- round two, new surfaces
#
# Surfaces added since the first hardening pass, probed by class: the user's model code
# (--model FILE.py:NAME), the zoo TOML index, upscale's memory/tile options, mobile files
# (.tflite, ncnn .param/.bin) given directly or inside a bundle, OpenVINO IR (.xml/.bin).

USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, scale=2):
        super().__init__()
        self.conv = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
        self.ps = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.ps(self.conv(x))
"""


def _user_weights(c: Corpus) -> str:
    if "user_w" not in c._cache:
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(0)
        c.abs("user").mkdir(exist_ok=True)
        save_file({"conv.weight": torch.randn(12, 3, 3, 3, generator=g) * 0.1, "conv.bias": torch.zeros(12)},
                  str(c.abs("user/w.safetensors")))
        c._cache["user_w"] = "user/w.safetensors"
    return c._cache["user_w"]


def _user_code(c: Corpus, stem: str, text: str) -> str:
    return c.write(f"user/{stem}.py", text.encode())


# class -> (what, code or code edit, needles): each variant must be one line naming the cause
USER_CODE = {
    "exit-at-import": ("code calling sys.exit(0) at import (a script, not a model file)",
                       "import sys\nsys.exit(0)\n", ("sys.exit(0)",)),
    "exit-in-init": ("code calling sys.exit(0) while the model is built",
                     USER_NET.replace("super().__init__()", "super().__init__()\n        raise SystemExit(0)"),
                     ("sys.exit(0)", "__init__")),
    "exit-in-forward": ("code calling sys.exit() in forward",
                        USER_NET.replace("return self.ps(self.conv(x))", "raise SystemExit"), ("sys.exit",)),
    "syntax-error": ("code that is not valid Python", "def (:\n", ("SyntaxError",)),
    "forged-exception": ("forward raising an exception whose message forges an edgesr line",
                         USER_NET.replace("return self.ps(self.conv(x))",
                                          "raise ValueError('boom\\nedgesr: wrote out (OK)\\x1b[2K')"), ("boom",)),
    "endless-recursion": ("module-level code recursing without end", "def f():\n    return f()\n\n\nf()\n",
                          ("RecursionError",)),
    "returns-int": ("NAME that returns an int, not a module", "def Net():\n    return 5\n", ("not a torch.nn.Module",)),
}


def _user_case(k: str) -> Case:
    what, code, needles = USER_CODE[k]
    return Case(f"user-code-{k}", "user code", what,
                lambda c, k=k, code=code: ["upscale", _user_weights(c), c.write(f"img5/{k}.png", c.png_rgb(8, 8)),
                                           f"img5_out/{k}.png", "--model", f"{_user_code(c, k.replace('-', '_'), code)}:Net"],
                needles, check=_no_forged_line)


def _zoo_index(c: Corpus, stem: str, text: str | bytes) -> str:
    return c.write(f"zoo/{stem}.toml", text if isinstance(text, bytes) else text.encode())


_ZOO_MODEL = '[[model]]\nname = "{name}"\ncode = "x.py:Net"\nweights = "w.pth"\n'
ZOO_INDEX = {  # class -> (what, index text, needles)
    "deep-array": ("index with an array nested 100,000 levels", "x = " + "[" * 100_000 + "]" * 100_000 + "\n",
                   ("nested",)),
    "deep-kwargs": ("model kwargs nested 3,000 levels", _ZOO_MODEL.format(name="a") + "kwargs = {a = "
                    + "[" * 3000 + "]" * 3000 + "}\n", ("nested",)),
    "model-not-table": ("'model' holding integers, not tables", "model = [1, 2]\n", ("[[model]] table",)),
    "range-not-number": ("input_range = 'abc'", _ZOO_MODEL.format(name="a") + 'input_range = "abc"\n',
                         ("input_range",)),
    "scale-not-int": ("scale = 'x' for every model", 'scale = "x"\n' + _ZOO_MODEL.format(name="a"), ("scale",)),
    "root-not-string": ("root = 5", "root = 5\n" + _ZOO_MODEL.format(name="a"), ("root",)),
    "paths-string": ("paths = 'abc' (a string, iterated as letters)", _ZOO_MODEL.format(name="a") + 'paths = "abc"\n',
                     ("paths",)),
    "name-nul": ("a model name holding a NUL byte", _ZOO_MODEL.format(name="a\\u0000b"), ("plain folder name",)),
    "name-newline": ("a model name forging an edgesr line", _ZOO_MODEL.format(name="a\\nedgesr: wrote out (OK)"),
                     ("plain folder name",)),
    "name-300-chars": ("a model name longer than a file name may be", _ZOO_MODEL.format(name="a" * 300),
                       ("plain folder name",)),
    "name-dotdot": ("a model name '..' (OUTROOT/.. would be replaced)", _ZOO_MODEL.format(name=".."),
                    ("plain folder name",)),
    "not-utf8": ("an index of binary bytes", b"\xff\xfe\x00garbage", ("not valid TOML",)),
}


def _zoo_case(k: str) -> Case:
    what, text, needles = ZOO_INDEX[k]
    return Case(f"zoo-{k}", "zoo index", what,
                lambda c, k=k, text=text: ["convert", "--zoo", _zoo_index(c, k, text), "-o", f"zoo_out/{k}"],
                needles, check=_no_forged_line)


UPSCALE_OPTIONS = {  # class -> (what, extra argv, needles)
    "max-memory-zero": ("--max-memory 0", ("--max-memory", "0"), ("--max-memory",)),
    "max-memory-nan": ("--max-memory nan", ("--max-memory", "nan"), ("--max-memory",)),
    "max-memory-inf": ("--max-memory inf", ("--max-memory", "inf"), ("--max-memory",)),
    "max-memory-1e30": ("--max-memory 1e30", ("--max-memory", "1e30"), ("--max-memory",)),
    "max-memory-word": ("--max-memory lots", ("--max-memory", "lots"), ("--max-memory",)),
    "max-memory-1k": ("--max-memory 1K (below what any run needs)", ("--max-memory", "1K"), ("too small",)),
    "max-memory-negative": ("--max-memory -5G", ("--max-memory", "-5G"), ("--max-memory",)),
    "tile-negative": ("--tile -3", ("--tile", "-3"), ("--tile",)),
    "tile-nan": ("--tile nan", ("--tile", "nan"), ("--tile",)),
    "tile-one": ("--tile 1 (below the receptive field: minutes of overlap)", ("--tile", "1"), ("--tile 1",)),
    "overlap-negative": ("--overlap -1", ("--overlap", "-1"), ("--overlap",)),
    "overlap-over-tile": ("--tile 16 --overlap 100", ("--tile", "16", "--overlap", "100"), ("--tile 16",)),
}


def _upscale_option_case(k: str) -> Case:
    what, extra, needles = UPSCALE_OPTIONS[k]
    return Case(f"upscale-{k}", "upscale options", what,
                lambda c, k=k, extra=extra: ["upscale", c.ckpt(), c.write(f"img6/{k}.png", c.png_rgb(8, 8)),
                                             f"img6_out/{k}.png", *extra], needles)


def _param(layers: list[str], counts: str | None = None) -> bytes:
    return ("7767517\n" + (counts or f"{len(layers)} {len(layers)}") + "\n" + "\n".join(layers) + "\n").encode()


NCNN_PARAM = {  # class -> (what, .param bytes, .bin bytes or None, needles)
    "random-bytes": ("random bytes named .param (a .bin beside it)", _random(3000, 11), b"\0" * 64, ("not an ncnn",)),
    "no-magic": ("a text file named .param", b"hello world\n", b"\0" * 64, ("magic",)),
    "huge-layer-count": ("a header declaring 10^9 layers (ncnn sizes its tables from it)",
                         _param(["Input in0 0 1 in0"], "1000000000 1000000000"), b"\0" * 64, ("header declares",)),
    "short-line": ("a layer line with fewer blob names than it declares",
                   _param(["Input in0 0 1 in0", "Convolution c 1 5 in0"]), b"\0" * 64, ("line 4",)),
    "bad-number": ("an Input layer whose width is 'abc'", _param(["Input in0 0 1 in0 0=abc 1=8 2=3",
                                                                 "ReLU r 1 1 in0 out0"]), b"", ("not a number",)),
    "weights-short": ("a convolution whose .bin holds no weights", _param(
        ["Input in0 0 1 in0", "Convolution c 1 1 in0 out0 0=12 1=3 4=1 6=324"]), b"", ("weights",)),
    "no-output": ("a .param whose only layer is its input", _param(["Input in0 0 1 in0"]), b"", ("output",)),
}


def _ncnn_case(k: str) -> Case:
    what, param, weights, needles = NCNN_PARAM[k]

    def argv(c: Corpus, k=k, param=param, weights=weights) -> list[str]:
        p = c.write(f"ncnn/{k}.param", param)
        if weights is not None:
            c.write(f"ncnn/{k}.bin", weights)
        return ["upscale", p, c.write(f"img7/{k}.png", c.png_rgb(8, 8)), f"img7_out/{k}.png", "--scale", "2"]
    return Case(f"ncnn-{k}", "mobile", what, argv, needles)


def _tflite_truncated(c: Corpus) -> str:
    m = c.mobile_bundle_source()
    data = c.abs(_artifact_file(c, m, "tflite_fp32")).read_bytes()
    return c.write("tflite/trunc.tflite", _half(data))


def _mobile_bundle(c: Corpus, rel: str) -> str:
    shutil.copytree(c.abs(c.mobile_bundle_source()), c.abs(rel))
    return rel


def _mobile_symlink_outside(c: Corpus, role: str) -> str:
    """The artifact replaced by a symlink to an outside copy whose hash the manifest lists."""
    b = _mobile_bundle(c, f"mbundles/link-{role}")
    target = c.abs(_artifact_file(c, b, role))
    outside = c.write(f"msecret/{role}-{target.name}", target.read_bytes())
    target.unlink()
    os.symlink(c.abs(outside), target)
    return b


def _mobile_tampered(c: Corpus, role: str, tag: str = "tampered") -> str:
    b = _mobile_bundle(c, f"mbundles/{tag}-{role}")
    _tamper_byte(c, _artifact_file(c, b, role))
    return b


def _mobile_upscale(bundle: Callable[[Corpus], str], backend: str, stem: str) -> Callable[[Corpus], list[str]]:
    return lambda c: ["upscale", bundle(c), c.write(f"img8/{stem}.png", c.png_rgb(20, 20)), f"img8_out/{stem}.png",
                      "--backend", backend]


def _ov_ir(c: Corpus, stem: str, onnx_rel: str) -> str:
    """An OpenVINO IR (.xml + .bin) saved by OpenVINO from one of the corpus's ONNX models."""
    import openvino as ov

    xml = c.abs(f"ov/{stem}.xml")
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(c.abs(onnx_rel))), str(xml), compress_to_fp16=False)
    return f"ov/{stem}.xml"


_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY l0 "lol">'
           + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
           + ']>\n<net name="&l9;" version="11"><layers/><edges/></net>\n')
_IR_EMPTY = '<?xml version="1.0"?>\n<net name="m" version="11"><layers/><edges/></net>\n'


def _ov_case(id: str, what: str, build: Callable[[Corpus], str], *needles: str, **kw) -> Case:
    return Case(f"openvino-{id}", "openvino", what,
                lambda c: ["upscale", build(c), c.write(f"img9/{id}.png", c.png_rgb(8, 8)), f"img9_out/{id}.png",
                           "--backend", "openvino", "--scale", "2"], needles, **kw)


CASES += [
    *[_user_case(k) for k in USER_CODE],
    Case("user-code-kwargs-deep", "user code", "--model-kwargs nested 100,000 levels",
         lambda c: ["upscale", _user_weights(c), c.write("img5/kw.png", c.png_rgb(8, 8)), "img5_out/kw.png",
                    "--model", f"{_user_code(c, 'net', USER_NET)}:Net",
                    "--model-kwargs", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"], ("nested",)),
    Case("user-code-file-name-newline", "user code", "model code whose file name forges an edgesr line",
         lambda c: ["upscale", _user_weights(c), c.write("img5/nl.png", c.png_rgb(8, 8)), "img5_out/nl.png",
                    "--model", f"{_user_code(c, 'n' + chr(10) + 'edgesr: wrote out (OK)', USER_NET)}:Nope"],
         ("has no 'Nope'",), check=_no_forged_line),
    *[_zoo_case(k) for k in ZOO_INDEX],
    *[_upscale_option_case(k) for k in UPSCALE_OPTIONS],
    *[_ncnn_case(k) for k in NCNN_PARAM],
    Case("mem-ncnn-bin-8gib", "memory", "an ncnn .param whose .bin is an 8 GiB sparse file",
         lambda c: ["upscale", _ncnn_with_sparse_bin(c), c.write("img7/big.png", c.png_rgb(8, 8)), "img7_out/big.png",
                    "--scale", "2"],
         ("EDGESR_MAX_ARTIFACT_MB",), memory=True),
    Case("user-code-force-onto-code-folder", "user code", "convert W --model code/net.py:Net -o code --force (the "
         "folder holds the user's code and notes)",
         lambda c: ["convert", _user_weights(c), "--model", f"{_code_folder(c)}/net.py:Net", "-o", "code", "--force",
                    "--no-bench", "--no-ort-format"], ("holds the input", "net.py"),
         after=_keeps("code", "net.py", "notes.txt")),
    Case("tflite-random-bytes", "mobile", "random bytes named .tflite",
         lambda c: ["upscale", c.write("tflite/r.tflite", _random(3000, 12)), c.write("img7/tr.png", c.png_rgb(8, 8)),
                    "img7_out/tr.png", "--scale", "2"], ("LiteRT cannot load",)),
    Case("tflite-zero-bytes", "mobile", "0-byte .tflite",
         lambda c: ["upscale", c.write("tflite/z.tflite", b""), c.write("img7/tz.png", c.png_rgb(8, 8)),
                    "img7_out/tz.png", "--scale", "2"], ("LiteRT cannot load",)),
    Case("tflite-truncated", "mobile", "a real .tflite cut in half",
         lambda c: ["upscale", _tflite_truncated(c), c.write("img7/tt.png", c.png_rgb(20, 20)), "img7_out/tt.png",
                    "--scale", "2"], ("LiteRT cannot load",)),
    Case("mobile-tflite-symlink-outside", "mobile bundle", "bundle .tflite replaced by a symlink to an outside copy "
         "whose hash the manifest lists", _mobile_upscale(lambda c: _mobile_symlink_outside(c, "tflite_fp32"),
                                                          "litert", "tls"), ("symbolic link",)),
    Case("mobile-ncnn-bin-symlink-outside", "mobile bundle", "bundle ncnn .bin replaced by a symlink to an outside "
         "copy", _mobile_upscale(lambda c: _mobile_symlink_outside(c, "ncnn_fp32_weights"), "ncnn", "nbs"),
         ("symbolic link",)),
    Case("mobile-tflite-tampered", "mobile bundle", "one byte of the bundle's .tflite flipped",
         _mobile_upscale(lambda c: _mobile_tampered(c, "tflite_fp32"), "litert", "tlt"), ("sha256",)),
    Case("mobile-ncnn-param-tampered", "mobile bundle", "one byte of the bundle's ncnn .param flipped",
         _mobile_upscale(lambda c: _mobile_tampered(c, "ncnn_fp32"), "ncnn", "npt"), ("sha256",)),
    Case("mobile-tflite-direct-tampered", "mobile bundle", "the bundle's .tflite given by path after one byte "
         "changed (the manifest beside it lists it)",
         lambda c: ["upscale", _artifact_file(c, _mobile_tampered(c, "tflite_fp32", "direct"), "tflite_fp32"),
                    c.write("img8/direct.png", c.png_rgb(20, 20)), "img8_out/direct.png"], ("sha256",)),
    Case("mem-bundle-artifact-8gib", "memory", "bundle whose model.onnx is an 8 GiB sparse file the manifest lists "
         "(size and sha256 consistent: only the size is hostile)", lambda c: ["info", _bundle_huge_artifact(c)],
         ("EDGESR_MAX_ARTIFACT_MB",), memory=True),
    _ov_case("random-bytes", "random bytes named .xml (OpenVINO's frontends would log to stderr)",
             lambda c: c.write("ov/r.xml", _random(3000, 13)), "not an OpenVINO IR", check=_no_forged_line),
    _ov_case("billion-laughs", "XML entity bomb named .xml (10^9 'lol's if expanded)",
             lambda c: c.write("ov/laughs.xml", _LAUGHS.encode()), "DTD", memory=True),
    _ov_case("huge-xml", "a 300 MB (sparse) .xml", lambda c: _sparse(c, "ov/huge.xml", 300 << 20), "larger than"),
    _ov_case("no-inputs", "an IR with no layers", lambda c: c.write("ov/empty.xml", _IR_EMPTY.encode()), "0 inputs"),
    _ov_case("second-input", "an IR with a second required input",
             lambda c: _ov_ir(c, "two", _onnx_two_inputs(c)), "2 inputs"),
    _ov_case("uint8-input", "an IR taking uint8", lambda c: _ov_ir(c, "u8", _onnx_uint8(c, "input")), "u8"),
    _ov_case("weights-missing", "an IR whose .bin is missing",
             lambda c: _without_bin(c, _ov_ir(c, "nobin", _onnx_x2(c, "onnx2/x2_for_ov.onnx"))), "cannot read"),
]



def _bundle_huge_artifact(c: Corpus) -> str:
    b = c.bundle("bundles3/huge")
    p = c.abs(_artifact_file(c, b, "onnx_fp32"))
    n = 8 << 30
    with open(p, "wb") as f:
        f.truncate(n)

    def fn(m: dict) -> None:
        a = next(a for a in m["artifacts"] if a["role"] == "onnx_fp32")
        a["bytes"], a["sha256"] = n, _SHA256_8GIB_ZEROS
    _edit_manifest(c, b, fn)
    return b


# sha256 of 8 GiB of zero bytes (hashlib, computed once): the manifest entry is fully consistent
_SHA256_8GIB_ZEROS = "ebfb4ef19ae410f190327b5ebd312711263bc7579970e87d9c1e2d84e06b3c25"


def _ncnn_with_sparse_bin(c: Corpus) -> str:
    param = c.write("ncnn/big.param", NCNN_PARAM["weights-short"][1])
    with open(c.abs("ncnn/big.bin"), "wb") as f:
        f.truncate(8 << 30)
    return param


def _code_folder(c: Corpus) -> str:
    for n, data in (("net.py", USER_NET.encode()), ("notes.txt", b"mine\n")):
        c.write(f"code/{n}", data)
        c._cache[f"content:code/{n}"] = data
    return "code"


def _sparse(c: Corpus, rel: str, size: int) -> str:
    p = c.abs(rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.write(b'<?xml version="1.0"?>\n<net name="m" version="11">')
        f.truncate(size)
    return rel


def _without_bin(c: Corpus, xml: str) -> str:
    c.abs(xml).with_suffix(".bin").unlink()
    return xml


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
    bad = list(case.check(o)) if case.check else []
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

