"""ONNX Runtime runner (CPU by default), and inference that Ctrl-C, SIGTERM or a time limit can stop.

``InferenceSession.run`` is C++ that holds no Python frame: a signal handler only runs after
it returns, so a model that loops forever (a ``Loop`` with 2^63 iterations) ignored Ctrl-C.
:func:`run_session` keeps it stoppable at no cost to the normal path: while a run is in
progress, Python's C-level signal handler also writes the signal number to a socket
(``signal.set_wakeup_fd``) watched by one sleeping daemon thread, which sets
``RunOptions.terminate``; ORT checks that flag between operators and returns, and the
signal's own handler then raises ``KeyboardInterrupt`` as usual. The same thread enforces an
optional wall-clock limit (``--time-limit``), which ends the run with a
:class:`~edgesr.errors.BackendRunError`. The main thread never waits on a queue or starts a
thread per call; ``benchmarks/ort_interrupt.py`` measures what the wrapper costs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BackendRunError, EdgesrError, ExportError, one_line, quoted
from .base import PRECISIONS, BaseRunner, TensorMeta, onnx_precision
from .ort_session import GRAPH_OPT_LEVELS, ORT_LOG_FATAL_ONLY, ort_session, session_options  # noqa: F401

_ORT_LOG_FATAL_ONLY = ORT_LOG_FATAL_ONLY
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)")


class _SessionRunner(BaseRunner):
    """What OrtRunner and SessionRunner share: NCHW float in/out over one ORT session."""

    session: Any
    path: Path | None = None
    _model_bytes: bytes | None = None

    def _bind(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_type = session.get_inputs()[0].type

    def _what(self) -> str:
        return self.name

    def run(self, x: np.ndarray) -> np.ndarray:
        dtype = np.float16 if "float16" in self.input_type else np.float32
        y = run_session(self.session, [self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=dtype)},
                        what=self._what())[0]
        return y.astype(np.float32, copy=False)

    def _detect_precision(self) -> str:
        graph = onnx_precision(self._model_bytes if self._model_bytes is not None else self.path)
        if graph is not None:
            return graph
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("precision") in PRECISIONS:
            return meta["precision"]
        if "float16" in self.input_type:
            return "fp16"
        return super()._detect_precision()

    def input_metadata(self) -> tuple[TensorMeta, ...]:
        return tuple(_meta(i) for i in self.session.get_inputs())

    def output_metadata(self) -> tuple[TensorMeta, ...]:
        return tuple(_meta(o) for o in self.session.get_outputs())


def _meta(arg: Any) -> TensorMeta:
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(arg.type, arg.type)
    return TensorMeta(arg.name, tuple(arg.shape) if isinstance(arg.shape, (list, tuple)) else (), dtype)


class OrtRunner(_SessionRunner):
    """Runs a single-input, single-output float image model (NCHW in, NCHW out)."""

    def __init__(self, model: str | os.PathLike | bytes, name: str | None = None, threads: int | None = None,
                 graph_opt: str = "all", providers: list[str] | None = None, spec: Any = None):
        self.path = None if isinstance(model, bytes) else Path(model)
        self._model_bytes = model if isinstance(model, bytes) else None
        self.name = name or f"ort:{self.path.name if self.path else 'model'}"
        self.spec = spec
        what = quoted(self.path) if self.path else "model"
        try:
            session = ort_session(model, threads=threads, graph_opt=graph_opt, providers=providers)
        except EdgesrError:
            raise
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ExportError(f"ONNX Runtime cannot load {what}: {_ort_reason(e)}") from None
        check_image_io(session, what)
        self._bind(session)

    def _what(self) -> str:
        return quoted(self.path) if self.path else self.name


class SessionRunner(_SessionRunner):
    """Runner over a ready ort.InferenceSession (made by `ort_session`: the benchmarks' knobs)."""

    def __init__(self, session: Any, name: str, path: str | os.PathLike | None = None):
        self.name = name
        self.path = Path(path) if path is not None else None
        self._bind(session)


def check_image_io(session: Any, what: str) -> None:
    """Refuse, with one line, a model edgesr cannot feed an image to: anything but exactly one
    required float/float16 input of rank 4 (or unknown rank) and a float/float16 first output."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = ", ".join(f"{quoted(i.name)} ({i.type})" for i in inputs[:4])
        raise ExportError(f"{what} has {len(inputs)} required inputs ({names}); edgesr runs image models "
                          "with exactly one (an NCHW float image)")
    if not outputs:
        raise ExportError(f"{what} has no outputs")
    inp, out = inputs[0], outputs[0]
    if inp.type not in _FLOAT_TYPES:
        raise ExportError(f"{what}: input {quoted(inp.name)} is {inp.type}; edgesr feeds float32/float16 NCHW "
                          "images (a model taking uint8 pixels needs a float wrapper)")
    if out.type not in _FLOAT_TYPES:
        raise ExportError(f"{what}: output {quoted(out.name)} is {out.type}; edgesr reads float32/float16 images")
    shape = inp.shape
    if isinstance(shape, (list, tuple)) and shape and len(shape) != 4:
        raise ExportError(f"{what}: input {quoted(inp.name)} has rank {len(shape)} ({shape}); edgesr feeds "
                          "NCHW images (rank 4)")


def _ort_reason(e: BaseException) -> str:
    """ORT's message without its '[ONNXRuntimeError] : N : KIND :' banner, one line, bounded."""
    text = " ".join(str(e).split())
    if text.startswith("[ONNXRuntimeError]"):
        parts = text.split(" : ", 3)
        text = parts[-1] if len(parts) == 4 else text
    return one_line(text[:300]) or type(e).__name__


# ---------------------------------------------------------------------------- interruptible runs

_TIME_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar("edgesr_ort_time_limit", default=None)


@contextlib.contextmanager
def run_time_limit(seconds: float | None) -> Iterator[None]:
    """Within the block, every :func:`run_session` without its own limit stops after `seconds`."""
    token = _TIME_LIMIT.set(seconds)
    try:
        yield
    finally:
        _TIME_LIMIT.reset(token)


def run_session(session: Any, output_names: list[str] | None, feed: dict[str, np.ndarray], *,
                what: str = "model", time_limit: float | None = None) -> list[np.ndarray]:
    """``session.run`` that a signal (Ctrl-C, SIGTERM with a Python handler) or a wall-clock
    limit can stop. A signal stops the run and its handler raises as usual (KeyboardInterrupt);
    the limit raises BackendRunError; an ORT failure becomes one BackendRunError line."""
    import onnxruntime as ort

    limit = time_limit if time_limit is not None else _TIME_LIMIT.get()
    ro = ort.RunOptions()
    ro.log_severity_level = _ORT_LOG_FATAL_ONLY
    watch = _watchdog()
    with watch.watching(ro, limit) as state:
        try:
            return session.run(output_names, feed, ro)
        except Exception as e:  # noqa: BLE001 - ORT's own exception types
            fired = state.fired
            err = e
    if fired == "signal":
        _let_signal_handlers_run()
        raise BackendRunError(f"ONNX Runtime run of {what} was stopped by a signal")
    if fired == "timeout":
        raise BackendRunError(f"ONNX Runtime run of {what} took longer than the time limit of {limit:g} s "
                              "(--time-limit); stopped") from None
    raise BackendRunError(f"ONNX Runtime failed running {what}: {_ort_reason(err)}") from None


def _let_signal_handlers_run() -> None:
    """Give a pending Python signal handler (KeyboardInterrupt) the chance to raise here."""
    for _ in range(3):
        time.sleep(0)


class _RunState:
    __slots__ = ("run_options", "deadline", "fired")

    def __init__(self, run_options: Any, deadline: float | None):
        self.run_options, self.deadline = run_options, deadline
        self.fired: str | None = None


class _Watchdog:
    """One daemon thread that stops the active ORT runs on a signal or at their deadline.

    While runs with a deadline come and go it polls every TICK seconds (so a run of a few
    milliseconds never has to wake it: a wake-up per call would cost the caller a GIL
    hand-off); otherwise it sleeps until a signal arrives or a run with a deadline starts.
    """

    TICK = 0.1  # seconds: how late a time limit may fire
    LINGER = 2.0  # seconds it keeps polling after the last run with a deadline

    def __init__(self) -> None:
        self._sig_r, self._sig_w = socket.socketpair()
        self._ctl_r, self._ctl_w = socket.socketpair()
        for s in (self._sig_r, self._sig_w, self._ctl_r, self._ctl_w):
            s.setblocking(False)
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(self._sig_r, select.POLLIN)
        self._lock = threading.Lock()
        self._active: list[_RunState] = []
        self._ticking = False
        self._last_deadline = 0.0
        self.pid = os.getpid()
        threading.Thread(target=self._loop, name="edgesr-ort-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def watching(self, run_options: Any, limit: float | None) -> Iterator[_RunState]:
        state = _RunState(run_options, time.monotonic() + limit if limit else None)
        with self._lock:
            if self._poll is None or self._poll.poll(0):
                _drain(self._sig_r)  # a signal from before this run must not stop it
            self._active.append(state)
            wake = state.deadline is not None and not self._ticking
        if wake:
            _send(self._ctl_w)
        previous = -1  # (restored only when set_wakeup_fd below succeeded)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            try:
                previous = signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
            except (ValueError, OSError):
                in_main = False
        try:
            yield state
        finally:
            if in_main:
                try:
                    signal.set_wakeup_fd(previous)
                except (ValueError, OSError):
                    pass
            with self._lock:
                self._active.remove(state)
                if state.deadline is not None:
                    self._last_deadline = time.monotonic()

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                deadlines = [s.deadline for s in self._active if s.deadline is not None]
                self._ticking = bool(deadlines) or now - self._last_deadline < self.LINGER
                timeout = (min(self.TICK, max(0.0, min(deadlines) - now)) if deadlines
                           else (self.TICK if self._ticking else None))
            try:
                ready, _, _ = select.select([self._sig_r, self._ctl_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self._ctl_r in ready:
                _drain(self._ctl_r)
            now = time.monotonic()
            with self._lock:  # drained under the lock: a byte is never matched to a later run
                got_signal = self._sig_r in ready and _drain(self._sig_r)
                for s in self._active:
                    if s.fired is None and (got_signal or (s.deadline is not None and now >= s.deadline)):
                        s.fired = "signal" if got_signal else "timeout"
                        s.run_options.terminate = True


def _send(sock: socket.socket) -> None:
    try:
        sock.send(b"\0")
    except (BlockingIOError, OSError):
        pass  # the buffer already holds a wake-up


def _drain(sock: socket.socket) -> bool:
    got = False
    try:
        while sock.recv(4096):
            got = True
    except (BlockingIOError, OSError):
        pass
    return got


_WATCHDOG: _Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG.pid != os.getpid():  # (a forked child has no watchdog thread)
        with _WATCHDOG_LOCK:
            if _WATCHDOG is None or _WATCHDOG.pid != os.getpid():
                _WATCHDOG = _Watchdog()
    return _WATCHDOG
