"""OpenVINO runner (CPU) and ONNX -> OpenVINO IR conversion.

OpenVINO reads edgesr's ONNX files directly (QDQ INT8 graphs become FakeQuantize nodes that
its low-precision transformations turn into int8 kernels) and writes them as IR
(``model.xml`` + ``model.bin``), the form an OpenVINO application loads without the ONNX
frontend.

Settings, chosen so that numbers mean what they say:

* ``INFERENCE_PRECISION_HINT = f32``: on CPUs with bf16/AMX OpenVINO would otherwise run an
  "fp32" model in bf16, silently;
* ``NUM_STREAMS = 1``, ``PERFORMANCE_HINT = LATENCY``: one request at a time, as edgesr
  times and verifies;
* ``ENABLE_CPU_PINNING = False``: on a shared machine pinned threads of two processes land on
  the same cores;
* ``INFERENCE_NUM_THREADS = threads`` when given. OpenVINO has no spin-wait switch like ONNX
  Runtime's ``session.intra_op.allow_spinning``; with one thread it runs in the calling
  thread and nothing idles, which is how the benchmarks compare runtimes side by side.

A model whose input size is dynamic (edgesr's ONNX files: any height and width) is compiled once
more for each input shape it runs, with that shape fixed (``Model.reshape``; the last
``STATIC_SHAPES_KEPT`` shapes are kept compiled). Same function, faster kernels: in OpenVINO's CPU
plugin the element-wise nodes of a dynamic-shape graph run several times slower than the same nodes
compiled for a fixed shape, and chains of them are tokenized into one Snippets ``Subgraph`` only for
static shapes. SPAN's gate (Add, Sigmoid, Subtract, Multiply and the next conv's FakeQuantize) took
30 of 85 ms at 180x320 dynamic (its ``Sigmoid`` nodes alone 21 ms), 10 ms static with Snippets off
(``Sigmoid`` 2.8 ms) and 6 ms as one Subgraph per gate (docs/int8.md, "OpenVINO findings").
Everything edgesr runs in OpenVINO (the INT8 verdict, bench, parity, eval, upscale) compiles
this way, so a verdict and the times it is shipped with come from the same kernels.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendRunError, BackendUnavailable, ExportError, RunStopped, one_line, quoted
from .base import BaseRunner, onnx_precision
from .quiet import native_stderr_silenced

INSTALL_HINT = "pip install 'edgesr[openvino]'"
IR_SUFFIXES = (".xml",)
# Input shapes a runner keeps compiled at once (tiles, their edge remainders, a few image sizes);
# each holds its own intermediate buffers, so the bound is on memory too.
STATIC_SHAPES_KEPT = 4
# How edgesr compiles a dynamic-size model (the manifest's "compile" of an IR: the form its verdict and times are of)
COMPILE_FORM = "static-shape: Model.reshape to the input's N,C,H,W, then compile_model (once per input shape)"


def openvino_module():
    """The openvino package, or BackendUnavailable with the install line."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def openvino_version() -> str | None:
    try:
        return openvino_module().__version__
    except BackendUnavailable:
        return None


_CORE = None


def core():
    """One openvino.Core per process (creating one costs ~0.1 s and loads the plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = openvino_module().Core()
    return _CORE


def compile_config(threads: int | None = None) -> dict[str, object]:
    cfg: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                              "ENABLE_CPU_PINNING": False}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


MAX_IR_XML_BYTES = 256 << 20  # an IR's .xml is its layer list (weights live in the .bin): an SR model's is KiB


def read_model(model: str | os.PathLike | bytes):
    """An openvino.Model from an .onnx / .xml path (or ONNX bytes). An .xml is checked to be an
    IR before OpenVINO sees it (bounded size, XML, no DTD: no entity expansion); OpenVINO's own
    log lines (its frontends write to the process's stderr) are kept off the terminal."""
    ov = openvino_module()
    name = "model" if isinstance(model, bytes) else quoted(Path(model).name)
    if not isinstance(model, bytes) and Path(model).suffix.lower() in IR_SUFFIXES:
        check_ir_xml(Path(model))
    try:
        with native_stderr_silenced():
            if isinstance(model, bytes):
                import tempfile

                with tempfile.TemporaryDirectory(prefix="edgesr-ov-") as tmp:
                    p = Path(tmp) / "model.onnx"
                    p.write_bytes(model)
                    return ov.convert_model(str(p))
            return core().read_model(str(model))
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
        raise ExportError(f"OpenVINO cannot read {name}: {openvino_reason(e)}") from None


_DTD = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)


def check_ir_xml(path: Path) -> None:
    """Refuse, with one line, an .xml that is no OpenVINO IR before a parser reads it: larger than
    any IR's layer list, not XML, or carrying a DTD (entity declarations expand without bound)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IR_XML_BYTES:
                raise ExportError(f"{quoted(path.name)} is larger than {MAX_IR_XML_BYTES >> 20} MiB: not an OpenVINO "
                                  "IR (an IR's .xml lists layers; its weights are in the .bin)")
            head = f.read(1 << 20)
            dtd, block, tail = _DTD.search(head), head, b""
            while not dtd and block:  # a DTD anywhere (after a long comment, say) is refused too
                tail = block[-16:]
                block = f.read(1 << 20)
                dtd = _DTD.search(tail + block)
    except OSError as e:
        raise ExportError(f"cannot read {quoted(path)}: {e.strerror or e}") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        raise ExportError(f"{quoted(path.name)} is not an OpenVINO IR (not an XML file)")
    if dtd:
        raise ExportError(f"{quoted(path.name)}: refusing an XML file with a DTD (<!DOCTYPE / <!ENTITY>); an "
                          "OpenVINO IR has none, and its entities could expand without bound")
    if not re.search(rb"<net[\s>]", head):
        raise ExportError(f"{quoted(path.name)} is not an OpenVINO IR (no <net> element)")


def openvino_reason(e: BaseException) -> str:
    """OpenVINO's message without its 'Exception from src/...cpp:N:' location lines, one line, bounded."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not re.fullmatch(r"Exception from \S+:\d+:?", ln)]
    return one_line(" ".join(useful or lines)[:300]) or type(e).__name__




def convert_to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike) -> Path:
    """ONNX -> OpenVINO IR (xml + bin beside it), weights kept in fp32 (no fp16 compression:
    an fp32 artifact must compute what the ONNX computes). Written atomically."""
    from ..fsutil import atomic_path

    ov = openvino_module()
    model = read_model(onnx_path)
    xml = Path(xml_path)
    bin_path = xml.with_suffix(".bin")
    with atomic_path(bin_path) as tmp_bin, atomic_path(xml) as tmp_xml:
        # save_model names the .bin after the .xml: write both under temporary names, then
        # move the .bin onto its temporary path so atomic_path renames each into place.
        tmp_dir = Path(tmp_xml).parent
        staged = tmp_dir / f".{xml.stem}.ov-staging.xml"
        try:
            ov.save_model(model, str(staged), compress_to_fp16=False)
            os.replace(staged.with_suffix(".bin"), tmp_bin)
            text = staged.read_text()
            os.unlink(staged)
        except BaseException:
            for p in (staged, staged.with_suffix(".bin")):
                if p.exists():
                    p.unlink()
            raise
        Path(tmp_xml).write_text(text)
    return xml


class OpenVinoRunner(BaseRunner):
    """Runs an .onnx or .xml model with OpenVINO on the CPU; `run` is NCHW float32 in/out.
    static_shapes: compile a dynamic-size model for each input shape it runs (module docstring);
    False runs it as compiled for dynamic shapes (what an application gets from a plain compile)."""

    def __init__(self, model: str | os.PathLike | bytes, name: str | None = None, threads: int | None = None,
                 spec=None, static_shapes: bool = True):
        self.path = None if isinstance(model, bytes) else Path(model)
        self.spec = spec
        self.name = name or f"openvino:{self.path.name if self.path else 'model'}"
        what = quoted(self.path) if self.path else "model"
        m = read_model(model)
        check_image_io(m, what)
        try:
            with native_stderr_silenced():
                self.compiled = core().compile_model(m, "CPU", compile_config(threads))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"OpenVINO cannot compile {what}: {openvino_reason(e)}") from None
        self.request = self.compiled.create_infer_request()
        self.threads = threads
        # input shape -> (compiled model, request) for that shape fixed (see the module docstring)
        self._model = m if static_shapes and m.inputs[0].get_partial_shape().is_dynamic else None
        self._by_shape: OrderedDict[tuple[int, ...], tuple[Any, Any]] = OrderedDict()

    def _compiled_for(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """(compiled model, infer request) that run an input of `shape`: the model compiled with that
        shape fixed (on first use), or the dynamic-shape compile where the model's input is static,
        static_shapes is off, or the graph cannot be fixed to `shape`."""
        if self._model is None:
            return self.compiled, self.request
        if self._by_shape and next(reversed(self._by_shape)) != shape:
            # another shape now: the last one's intermediate buffers go, so that the kept compiles
            # hold at most one shape's activations at a time (upscale's memory plan counts one)
            release_memory(self._by_shape[next(reversed(self._by_shape))][0])
        hit = self._by_shape.get(shape)
        if hit is not None:
            self._by_shape.move_to_end(shape)
            return hit
        try:
            with native_stderr_silenced():
                m = self._model.clone()
                m.reshape({m.inputs[0]: list(shape)})
                compiled = core().compile_model(m, "CPU", compile_config(self.threads))
        except Exception:  # noqa: BLE001 - a shape the graph cannot be fixed to: run it dynamic as before
            return self.compiled, self.request
        self._by_shape[shape] = (compiled, compiled.create_infer_request())
        while len(self._by_shape) > STATIC_SHAPES_KEPT:
            self._by_shape.popitem(last=False)
        return self._by_shape[shape]

    def compiled_for(self, shape: tuple[int, ...]):
        """The openvino.CompiledModel that runs an input of `shape` (see :meth:`_compiled_for`)."""
        return self._compiled_for(tuple(int(d) for d in shape))[0]

    def _detect_precision(self) -> str:
        if self.path is not None and self.path.suffix.lower() == ".xml":  # an IR with FakeQuantize / int8 constants
            text = self.path.read_text(errors="replace")
            return "int8" if ('type="FakeQuantize"' in text or 'element_type="i8"' in text) else "fp32"
        if self.path is not None:
            return onnx_precision(self.path) or super()._detect_precision()
        return super()._detect_precision()

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference, started asynchronously and waited for in short steps so Ctrl-C,
        SIGTERM and --time-limit reach Python while it runs (see :func:`wait_interruptibly`)."""
        what = quoted(self.path) if self.path else self.name
        x = np.ascontiguousarray(x, dtype=np.float32)
        request = self._compiled_for(tuple(int(d) for d in x.shape))[1]
        try:
            request.start_async({0: x})
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise BackendRunError(f"OpenVINO failed running {what}: {openvino_reason(e)}") from None
        wait_interruptibly(request, what, owner=self)
        y = request.get_output_tensor(0).data
        return np.array(y, dtype=np.float32, copy=True)


def release_memory(compiled) -> None:
    """Free a compiled model's intermediate buffers (reallocated on its next run)."""
    try:
        compiled.release_memory()
    except Exception:  # noqa: BLE001 - older OpenVINO without it, or a request still running (UNSTOPPED)
        pass


def check_image_io(model, what: str) -> None:
    """Refuse, with one line, a model edgesr cannot feed an image to (as the ONNX Runtime check):
    exactly one float/float16 input of rank 4 (or dynamic rank), a float/float16 first output."""
    ins, outs = list(model.inputs), list(model.outputs)
    if len(ins) != 1:
        names = ", ".join(f"{quoted(i.get_any_name() if i.get_names() else '?')} ({i.get_element_type()})"
                          for i in ins[:4])
        raise ExportError(f"{what} has {len(ins)} inputs{f' ({names})' if names else ''}; edgesr runs image "
                          "models with exactly one (an NCHW float image)")
    if not outs:
        raise ExportError(f"{what} has no outputs")
    floats = ("f32", "f16")
    it, ot = ins[0].get_element_type().get_type_name(), outs[0].get_element_type().get_type_name()
    if it not in floats:
        raise ExportError(f"{what}: its input is {it}; edgesr feeds float32/float16 NCHW images")
    if ot not in floats:
        raise ExportError(f"{what}: its output is {ot}; edgesr reads float32/float16 images")
    rank = ins[0].get_partial_shape().rank
    if rank.is_static and rank.get_length() != 4:
        raise ExportError(f"{what}: its input has rank {rank.get_length()}; edgesr feeds NCHW images (rank 4)")


# Runs that could not be stopped (OpenVINO's CPU plugin cannot cancel a running node), with the
# objects that own them: kept referenced, since releasing a running request waits for it to end;
# the CLI ends the process without waiting for them (edgesr.cli.main).
UNSTOPPED: list[tuple[str, object]] = []
WAIT_STEP_MS = 100


def wait_interruptibly(request, what: str, owner: object = None) -> None:
    """Wait for a started request in steps of WAIT_STEP_MS: a pending signal handler
    (KeyboardInterrupt) runs between steps, and --time-limit (edgesr.backends.ort_runner's) is
    honoured. A request left running is cancelled and recorded in UNSTOPPED."""
    from .ort_runner import current_time_limit

    limit = current_time_limit()
    deadline = time.monotonic() + limit if limit else None
    try:
        while True:
            try:
                if request.wait_for(WAIT_STEP_MS):
                    return
            except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
                raise BackendRunError(f"OpenVINO failed running {what}: {openvino_reason(e)}") from None
            if deadline is not None and time.monotonic() > deadline:
                _abandon(request, what, owner)
                raise RunStopped(f"OpenVINO run of {what} took longer than the time limit of {limit:g} s "
                                      "(--time-limit); stopped")
    except KeyboardInterrupt:
        _abandon(request, what, owner)
        raise


def _abandon(request, what: str, owner: object) -> None:
    try:
        request.cancel()  # (the CPU plugin does not stop a node that is running)
    except Exception:  # noqa: BLE001
        pass
    UNSTOPPED.append((what, owner if owner is not None else request))


__all__ = ["OpenVinoRunner", "convert_to_ir", "read_model", "compile_config", "openvino_module",
           "openvino_version", "INSTALL_HINT", "IR_SUFFIXES"]
