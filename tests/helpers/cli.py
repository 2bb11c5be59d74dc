"""The CLI as a test sees it: in-process runs, one-line errors, child-process environments."""

from __future__ import annotations

import os

from .paths import REPO


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``edgesr.cli.main(argv)`` in this process: (exit code, stdout, stderr). Arguments may be paths."""
    from edgesr.cli import main

    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    """The failure contract: non-zero exit, exactly one non-empty stderr line starting with
    ``edgesr: error:``, no traceback, no internal error, and each needle in that line."""
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgesr: error:"), err
    assert "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def child_env() -> dict[str, str]:
    """The environment for a ``python -m edgesr`` child: one OpenMP thread, this checkout first
    on PYTHONPATH (whatever the parent's PYTHONPATH held stays after it)."""
    pp = os.environ.get("PYTHONPATH")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + (os.pathsep + pp if pp else ""))
