"""Keep native libraries' own log lines off the terminal while edgesr calls them."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block: native runtimes (OpenVINO's frontends, ncnn's
    loaders) log failures straight to the process's stderr, where they would print before, and
    look like part of, edgesr's answer (which names the failure itself)."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
