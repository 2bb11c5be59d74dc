"""Run a TensorRT / TensorRT-RTX engine on a CUDA GPU.

    with TensorRTRunner("out/model.trt-rtx.engine") as r:
        y = r.run(lr_nchw_float32)                  # np.ndarray (float32), like edgesr's other runners
        out = r.run({"input": lr_nchw_float32})     # {"output": np.ndarray} for named I/O
        ms = r.time_gpu(lr_nchw_float32, warmup=10, iters=100)   # list of per-run GPU ms

Device memory is torch CUDA tensors (torch is a core dependency; no pycuda needed);
inference is `IExecutionContext.execute_async_v3` on a private CUDA stream, GPU time is
measured with CUDA events on that stream.

CUDA graphs (`cuda_graph=True`): TensorRT-RTX captures them itself
(`IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE`, dynamic shapes handled);
for TensorRT the runner captures one `torch.cuda.CUDAGraph` per input-shape set around
`execute_async_v3` (static input/output buffers, replayed after copying inputs in).

TensorRT-RTX JIT-compiles kernels for the GPU on first use; pass `runtime_cache=` (a file)
to keep them across processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgesr.backends import engine_cache
from edgesr.backends.base import PRECISIONS, BaseRunner
from edgesr.backends.trt_flavour import Flavour, dtype_name, get_logger, load_flavour
from edgesr.errors import BackendUnavailable, EngineBuildError
from edgesr.fsutil import atomic_write_bytes


class EngineShapeError(EngineBuildError):
    """An input shape lies outside the engine's optimization profile (or is malformed)."""


_TORCH_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "uint8": "uint8",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
}


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in _TORCH_DTYPES:
        raise EngineBuildError(f"engine tensor dtype {name} has no torch equivalent")
    return getattr(torch, _TORCH_DTYPES[name])


class TensorRTRunner(BaseRunner):
    """Execute a serialized engine; same surface as edgesr's other runners."""

    def __init__(
        self,
        engine_path: str | os.PathLike,
        *,
        flavour: str | None = None,
        device: int = 0,
        cuda_graph: bool = False,
        runtime_cache: str | os.PathLike | None = None,
        kernel_specialization: str | None = None,
    ) -> None:
        """runtime_cache, kernel_specialization: TensorRT-RTX only (ignored by TensorRT).

        kernel_specialization: "lazy" (library default: fallback kernels
        until shape-specialised ones are JIT-compiled in the background), "eager" (compile
        for each new shape before running it: steadier timings), or "none"."""
        self.engine_path = Path(engine_path)
        self.metadata = engine_cache.read_sidecar(self.engine_path) or {}
        name = flavour or (self.metadata.get("flavour") or {}).get("name")
        if name is None:
            raise EngineBuildError(
                f"cannot tell whether {self.engine_path} is a TensorRT or TensorRT-RTX engine "
                "(no sidecar); pass flavour='rtx' or flavour='trt'"
            )
        self.flavour: Flavour = load_flavour(name)
        prefix = "trt-rtx" if self.flavour.name == "rtx" else "trt"
        self.name = f"{prefix}:{self.metadata.get('precision', 'engine')}"  # e.g. "trt-rtx:int8"

        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch is a core dependency
            raise BackendUnavailable(f"TensorRTRunner needs torch for CUDA memory: {e}") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"TensorRTRunner needs a CUDA GPU and a CUDA build of torch "
                f"(torch {torch.__version__} sees no GPU); engines can still be built with build_engine"
            )
        self._torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.cuda_graph = bool(cuda_graph)
        self.runtime_cache_path = Path(runtime_cache) if runtime_cache is not None else None

        trt = self.flavour.trt
        self._logger = get_logger(self.flavour)
        data = self.engine_path.read_bytes()
        with self._logger.capture() as cap:
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise EngineBuildError(self._load_error(data, cap.errors()))
            self._runtime_config = None
            self._runtime_cache = None
            if self.flavour.supports_runtime_cache and hasattr(self.engine, "create_runtime_config"):
                rc = self.engine.create_runtime_config()
                if self.runtime_cache_path is not None:
                    cache = rc.create_runtime_cache()
                    if self.runtime_cache_path.is_file():
                        # Rejected (left empty) when recorded on another GPU / driver / version.
                        cache.deserialize(self.runtime_cache_path.read_bytes())
                    rc.set_runtime_cache(cache)
                    self._runtime_cache = cache
                if kernel_specialization is not None:
                    strategies = trt.DynamicShapesKernelSpecializationStrategy.__members__
                    key = str(kernel_specialization).upper()
                    if key not in strategies:
                        raise EngineBuildError(
                            f"kernel_specialization must be one of {[k.lower() for k in strategies]}, "
                            f"got {kernel_specialization!r}"
                        )
                    rc.dynamic_shapes_kernel_specialization_strategy = strategies[key]
                if self.cuda_graph and self.flavour.supports_builtin_cuda_graphs:
                    rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                self._runtime_config = rc
                self.context = self.engine.create_execution_context(rc)
            else:
                self.context = self.engine.create_execution_context()
            if self.context is None:
                raise EngineBuildError(
                    f"cannot create an execution context for {self.engine_path}: " + " | ".join(cap.errors())
                )
        self._manual_graphs = self.cuda_graph and not (
            self.flavour.supports_builtin_cuda_graphs and self._runtime_config is not None
        )

        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtypes: dict[str, str] = {}
        for i in range(self.engine.num_io_tensors):
            n = self.engine.get_tensor_name(i)
            self._dtypes[n] = dtype_name(self.engine.get_tensor_dtype(n))
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                self.input_names.append(n)
            else:
                self.output_names.append(n)
        self._outputs: dict[str, Any] = {}  # name -> torch tensor reused while shapes match
        self._static_inputs: dict[str, Any] = {}  # CUDA-graph mode (TensorRT): captured addresses
        self._graphs: dict[tuple, Any] = {}  # input-shape key -> torch.cuda.CUDAGraph
        self._closed = False

    # ------------------------------------------------------------------ info
    def input_dtype(self, name: str) -> str:
        return self._dtypes[name]

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        mn, opt, mx = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(mn), tuple(opt), tuple(mx)

    def _load_error(self, data: bytes, errors: list[str]) -> str:
        msg = f"cannot load engine {self.engine_path} with {self.flavour.label} {self.flavour.version}"
        built = (self.metadata.get("flavour") or {}).get("version")
        if built and built != self.flavour.version:
            msg += f" (it was built with {built}; rebuild it)"
        validity = getattr(self._runtime, "get_engine_validity", None)
        if validity is not None:
            try:
                state, diag = validity(data)
                names = [n for n, v in self.flavour.trt.EngineInvalidityDiagnostics.__members__.items() if int(diag) & int(v)]
                msg += f"; validity {getattr(state, 'name', state)}" + (f" ({', '.join(names)})" if names else "")
            except Exception:
                pass
        if errors:
            msg += ": " + " | ".join(dict.fromkeys(errors))
        return msg

    # ------------------------------------------------------------------ execution
    def _named(self, x: Any) -> Mapping[str, Any]:
        if isinstance(x, Mapping):
            return x
        if len(self.input_names) != 1:
            raise EngineShapeError(f"{self.engine_path.name} has inputs {self.input_names}; pass a dict")
        return {self.input_names[0]: x}

    def _to_device(self, inputs: Any) -> dict[str, Any]:
        torch = self._torch
        inputs = self._named(inputs)
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise EngineShapeError(
                f"engine inputs are {self.input_names}; missing {missing}, unexpected {extra}"
            )
        out = {}
        for n in self.input_names:
            want = _torch_dtype(self._dtypes[n])
            x = inputs[n]
            if isinstance(x, np.ndarray):
                if x.dtype.kind == "f" and want.is_floating_point and want != torch.bfloat16:
                    x = x.astype(np.dtype(self._dtypes[n]), copy=False)  # fp32 <-> fp16 engines
                x = torch.from_numpy(np.ascontiguousarray(x))
            if not isinstance(x, torch.Tensor):
                raise EngineShapeError(f"input '{n}' must be a numpy array or torch tensor, got {type(x).__name__}")
            if x.dtype != want:
                if x.is_floating_point() and want.is_floating_point:
                    x = x.to(want)
                else:
                    raise EngineShapeError(f"input '{n}' has dtype {x.dtype}, the engine wants {want}")
            out[n] = x.to(self.device, non_blocking=True).contiguous()
        return out

    def _bind(self, dev_inputs: Mapping[str, Any]) -> None:
        """Set input shapes and addresses; (re)allocate outputs for the resulting shapes."""
        torch = self._torch
        ctx = self.context
        for n, t in dev_inputs.items():
            shape = tuple(int(s) for s in t.shape)
            if not ctx.set_input_shape(n, shape):
                try:
                    mn, opt, mx = self.profile_shapes(n)
                    rng = f"; the engine's profile allows {mn} .. {mx} (opt {opt})"
                except Exception:
                    rng = ""
                raise EngineShapeError(f"input '{n}' shape {shape} is not accepted by {self.engine_path.name}{rng}")
            ctx.set_tensor_address(n, int(t.data_ptr()))
        unresolved = ctx.infer_shapes() if hasattr(ctx, "infer_shapes") else []
        if unresolved:
            raise EngineShapeError(f"cannot infer shapes of {list(unresolved)} from the inputs given")
        for n in self.output_names:
            shape = tuple(int(s) for s in ctx.get_tensor_shape(n))
            if any(s < 0 for s in shape):
                raise EngineShapeError(f"output '{n}' has unresolved shape {shape}")
            buf = self._outputs.get(n)
            if buf is None or tuple(buf.shape) != shape:
                buf = torch.empty(shape, dtype=_torch_dtype(self._dtypes[n]), device=self.device)
                self._outputs[n] = buf
            ctx.set_tensor_address(n, int(buf.data_ptr()))

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError(f"execute_async_v3 failed for {self.engine_path.name}")

    def _graph_key(self, dev_inputs: Mapping[str, Any]) -> tuple:
        return tuple((n, tuple(t.shape)) for n, t in sorted(dev_inputs.items()))

    def _launch(self, dev_inputs: Mapping[str, Any]) -> None:
        """Enqueue one inference on self.stream (inputs already on the device)."""
        torch = self._torch
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self._manual_graphs:
            with torch.cuda.stream(self.stream):
                self._bind(dev_inputs)
                self._enqueue()
            return
        key = self._graph_key(dev_inputs)
        graph = self._graphs.get(key)
        with torch.cuda.stream(self.stream):
            if graph is None:
                # Static buffers whose addresses the graph bakes in.
                self._static_inputs = {n: torch.empty_like(t) for n, t in dev_inputs.items()}
                for n, t in dev_inputs.items():
                    self._static_inputs[n].copy_(t)
                self._outputs = {}
                self._bind(self._static_inputs)
                self._enqueue()  # one plain run first: lets TensorRT finish shape-dependent setup
                self.stream.synchronize()
                capturable = getattr(self.context, "is_stream_capturable", None)
                if capturable is not None and not capturable(self.stream.cuda_stream):
                    raise EngineBuildError(f"{self.engine_path.name}: execution context is not stream-capturable")
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue()
                self._graphs = {key: graph}  # one shape set at a time: buffers are shared
                return  # the plain run above already produced this call's outputs
            for n, t in dev_inputs.items():
                self._static_inputs[n].copy_(t)
            graph.replay()

    def run_torch(self, inputs: Any) -> dict[str, Any]:
        """Inputs/outputs as CUDA tensors (outputs are the runner's buffers: clone to keep)."""
        self._check_open()
        dev = self._to_device(inputs)
        self._launch(dev)
        self._torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return dict(self._outputs)

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> Any:
        """`edgesr.backends.Runner` style: one NCHW array in, the float32 output array out.

        Given a dict of named inputs, returns the dict of named outputs (engine dtypes).
        """
        if isinstance(x, Mapping):
            return self.run_dict(x)
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise EngineShapeError(
                f"{self.engine_path.name} has inputs {self.input_names} and outputs {self.output_names}; "
                "pass a dict of named inputs"
            )
        y = self.run_dict({self.input_names[0]: x})[self.output_names[0]]
        return y.astype(np.float32, copy=False)

    def run_dict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named numpy inputs -> named numpy outputs (host copies)."""
        self._check_open()
        dev = self._to_device(inputs)
        self._launch(dev)
        with self._torch.cuda.stream(self.stream):
            host = {n: self._outputs[n].to("cpu", non_blocking=False) for n in self.output_names}
        self.stream.synchronize()
        return {n: t.numpy() if t.dtype != self._torch.bfloat16 else t.float().numpy() for n, t in host.items()}

    # ------------------------------------------------------------------ timing
    def time_gpu(self, inputs: Any, *, warmup: int = 10, iters: int = 100) -> list[float]:
        """Per-inference GPU time in ms (CUDA events around each enqueue; inputs stay on device)."""
        self._check_open()
        torch = self._torch
        dev = self._to_device(inputs)
        for _ in range(max(0, warmup)):
            self._launch(dev)
        self.stream.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record(self.stream)
            self._launch(dev)
            end.record(self.stream)
        self.stream.synchronize()
        return [float(s.elapsed_time(e)) for s, e in events]

    def time_host(self, inputs: Any, *, warmup: int = 5, iters: int = 50) -> list[float]:
        """Per-call wall time in ms of `run` (host->device copy, inference, device->host copy)."""
        for _ in range(max(0, warmup)):
            self.run_dict(self._named(inputs))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.run_dict(self._named(inputs))
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    # ------------------------------------------------------------------ lifetime
    def save_runtime_cache(self) -> Path | None:
        """Write the TensorRT-RTX runtime cache (JIT-compiled kernels) to its file."""
        if self._runtime_cache is None or self.runtime_cache_path is None:
            return None
        blob = self._runtime_cache.serialize()
        return atomic_write_bytes(self.runtime_cache_path, bytes(memoryview(blob)))

    def _check_open(self) -> None:
        if self._closed:
            raise EngineBuildError(f"runner for {self.engine_path.name} is closed")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stream.synchronize()
            self.save_runtime_cache()
        finally:
            self._graphs.clear()
            self._outputs.clear()
            self._static_inputs.clear()
            # Context before engine before runtime.
            self.context = None
            self._runtime_config = None
            self._runtime_cache = None
            self.engine = None
            self._runtime = None
            self._closed = True

    def _detect_precision(self) -> str:
        precision = str(self.metadata.get("precision") or "").split("+", 1)[0]  # "int8+fp16" is judged as int8
        return precision if precision in PRECISIONS else super()._detect_precision()

    def __del__(self) -> None:  # best effort; close() is the supported path
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass


def open_runner(
    engine_path: str | os.PathLike,
    *,
    name: str | None = None,
    flavour: str | None = None,
    device: int = 0,
    **kwargs: Any,
) -> TensorRTRunner:
    """A :class:`TensorRTRunner` for an engine file, for parity checks and benchmarks.

    Fails with one-line errors before touching CUDA: a missing file or sidecar is an
    EngineBuildError; a missing TensorRT package or no visible CUDA GPU is
    BackendUnavailable (engines can still be *built* on such a machine). The runner's
    ``precision`` ("fp32" / "fp16" / "int8") comes from the sidecar, its ``name`` is
    ``name`` or e.g. "trt-rtx:int8". Extra keyword arguments go to TensorRTRunner.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise EngineBuildError(f"engine not found: {path}")
    meta = engine_cache.read_sidecar(path)
    fl_name = flavour or ((meta or {}).get("flavour") or {}).get("name")
    if fl_name is None:
        raise EngineBuildError(
            f"{path.name} has no readable sidecar {engine_cache.sidecar_path(path).name}, so edgesr cannot tell "
            "whether it is a TensorRT or a TensorRT-RTX engine; pass flavour='rtx' or 'trt', or rebuild it"
        )
    flav = load_flavour(fl_name)  # BackendUnavailable when the package is missing
    try:
        import torch

        cuda = torch.cuda.is_available()
        why = f"torch {torch.__version__} sees no CUDA GPU"
    except ImportError:  # pragma: no cover - torch is a core dependency
        cuda, why = False, "torch is not installed"
    if not cuda:
        raise BackendUnavailable(
            f"cannot run {path.name}: {flav.label} engines run on an NVIDIA GPU only ({why}); "
            "it can still be built and inspected on this machine"
        )
    runner = TensorRTRunner(path, flavour=fl_name, device=device, **kwargs)
    if name is not None:
        runner.name = name
    return runner
