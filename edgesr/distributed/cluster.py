"""Connecting to Ray, the bench-slot resource, and stopping cluster work on Ctrl-C.

``--ray-address`` absent: a private local Ray instance is started with this machine's cores and
one bench slot, and shut down when the command ends. Given (``HOST:PORT`` of a ``ray start --head``,
or ``auto``): edgesr connects as a driver; each node must have been started with one bench slot,
``ray start ... --resources '{"edgesr_bench_slot": 1}'``, before latency is measured on it.

Tasks run in Ray's worker processes, which do not inherit this process's environment when they
were started by ``ray start``: the ``EDGESR_*`` variables are forwarded in the job's runtime
environment, so a task decides exactly as the local executor would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Callable, Iterator

from ..errors import BackendUnavailable, EdgesrError

BENCH_SLOT = "edgesr_bench_slot"
RAY_EXTRA = "pip install 'edgesr[ray]'"


def ray_module():
    """The `ray` package, or one actionable line naming the extra."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"--executor ray needs Ray: {RAY_EXTRA}") from None
    return ray


def forwarded_env() -> dict[str, str]:
    """The environment variables that change what edgesr decides (forwarded to Ray's workers)."""
    return {k: v for k, v in os.environ.items() if k.startswith("EDGESR_")}


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                need_bench_slot: bool = False) -> Iterator[Any]:
    """Yield the `ray` module connected to ADDRESS (None: a private local instance with `num_cpus`
    CPUs, default all of this machine's, and one bench slot). Disconnects (and stops a local
    instance) when the block ends, also on Ctrl-C."""
    ray = ray_module()
    if ray.is_initialized():  # embedded use: someone else owns the connection
        _check_bench_slot(ray, need_bench_slot, address)
        yield ray
        return
    runtime_env = {"env_vars": forwarded_env()}
    kwargs: dict[str, Any] = dict(runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False,
                                  configure_logging=True)
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, resources={BENCH_SLOT: 1},
                     include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"at {address}" if address else "locally"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgesrError(f"cannot start or reach Ray {where}: {first}") from None
    try:
        _check_bench_slot(ray, need_bench_slot, address)
        yield ray
    finally:
        ray.shutdown()


def _check_bench_slot(ray, needed: bool, address: str | None) -> None:
    if needed and not ray.cluster_resources().get(BENCH_SLOT):
        raise EdgesrError(f"the Ray cluster at {address} has no {BENCH_SLOT} resource, so latency could not be "
                          f"measured one model per node: start each node with ray start ... --resources "
                          f"'{{\"{BENCH_SLOT}\": 1}}', or pass --no-bench")


def node_info() -> dict[str, Any]:
    """Where the calling task runs (recorded with every latency measurement)."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        ctx = ray.get_runtime_context()
        info["node_id"] = ctx.get_node_id()
        info["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (local executor): host and pid say enough
        pass
    return info


def gather(ray, refs: list, on_result: Callable[[int, Any], None],
           on_failure: Callable[[int, BaseException], Any] | None = None) -> list[Any]:
    """Wait for every ref, calling ``on_result(i, value)`` as each finishes (in finishing order).
    A task that failed for good (its retries used up) becomes ``on_failure(i, error)`` when given.
    On Ctrl-C (or any other error) the refs not finished yet are cancelled with force, which kills
    the worker processes running them (and, through their parent-death signal, their children)."""
    index = {r: i for i, r in enumerate(refs)}
    values: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for r in ready:
                try:
                    values[index[r]] = ray.get(r)
                except ray.exceptions.RayError as e:
                    if on_failure is None:
                        raise
                    values[index[r]] = on_failure(index[r], e)
                on_result(index[r], values[index[r]])
    except BaseException:
        cancel(ray, pending)
        raise
    return values


def cancel(ray, refs: list) -> None:
    for r in refs:
        with contextlib.suppress(Exception):
            ray.cancel(r, force=True, recursive=True)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn for a task's child process: the child gets SIGKILL when the Ray worker that
    started it dies (a killed or cancelled task must not leave its conversion running). libc is
    looked up here, in the parent, so the child only makes one system call. None off Linux."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    PR_SET_PDEATHSIG = 1
    sig = int(signal.SIGKILL)
    return lambda: prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def failure_line(e: BaseException) -> str:
    """One line for a Ray task that failed for good (its own error, a worker that kept dying, a lost
    node)."""
    cause = getattr(e, "cause", None)  # RayTaskError: the exception the task raised
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
