"""The one place edgesr constructs ONNX Runtime sessions (CPU execution provider by default).

Every session gets the same base options (`session_options`): a named graph-optimization level,
an explicit thread count when one is given (inter-op 1: the models are sequential chains), and
ORT's own logging limited to fatal errors (edgesr reports failures itself, in one line). The
benchmarks vary spinning, profiling and disabled optimizers through the same keywords, so an
interleaved comparison never builds its sessions differently from the product.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import EdgesrError

GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
# ORT logs failures to stderr itself (ahead of edgesr's one line); its exceptions say the same.
ORT_LOG_FATAL_ONLY = 4


def session_options(threads: int | None = None, graph_opt: str = "all") -> Any:
    """``onnxruntime.SessionOptions`` with edgesr's base settings."""
    import onnxruntime as ort

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise EdgesrError(f"threads must be a positive integer, got {threads!r}")
    if graph_opt not in GRAPH_OPT_LEVELS:
        raise EdgesrError(f"unknown ONNX Runtime optimization level {graph_opt!r}; use one of "
                          f"{', '.join(GRAPH_OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[graph_opt])
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = ORT_LOG_FATAL_ONLY
    return so


def ort_session(model: str | os.PathLike | bytes | Any, *, threads: int | None = None, graph_opt: str = "all",
                spinning: bool | None = None, profile_prefix: str | os.PathLike | None = None,
                disabled_optimizers: Sequence[str] = (), optimized_model_path: str | os.PathLike | None = None,
                save_ort_format: bool = False, load_ort_format: bool = False,
                providers: Sequence[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` over a path, serialized bytes or an ``onnx.ModelProto``.

    spinning: None keeps ORT's default (idle intra-op threads busy-wait); False stops them, which
    matters when several sessions are interleaved in one process. profile_prefix: write ORT's
    per-node profile. optimized_model_path: write the graph ORT actually runs (ORT format with
    `save_ort_format`). load_ort_format: the file is an ORT-format model whatever its suffix.
    ORT's own exceptions propagate: each caller words the failure for what it was doing.
    """
    import onnxruntime as ort

    so = session_options(threads, graph_opt)
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    if save_ort_format:
        so.add_session_config_entry("session.save_model_format", "ORT")
    if load_ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    kw = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(source, sess_options=so, providers=list(providers or ["CPUExecutionProvider"]),
                                **kw)
