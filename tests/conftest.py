"""Shared fixtures. ../shared (real checkpoints + Set5) sits beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGESR_SHARED", REPO.parent / "shared"))
CKPTS = SHARED / "checkpoints" / "etds-repo"
SET5 = SHARED / "testsets" / "Set5"

# Two shared cores: keep intra-op threads small so xdist workers don't thrash.
torch.set_num_threads(1)
# Many tests convert / evaluate untrained variants to exercise other machinery; edgesr refuses
# those (no plausible SR) by default. Tests of that refusal unset it (monkeypatch.delenv).
os.environ.setdefault("EDGESR_ALLOW_IMPLAUSIBLE", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def ckpt_dir(shared_dir) -> Path:
    if not CKPTS.is_dir():
        pytest.skip(f"no checkpoints at {CKPTS}")
    return CKPTS


@pytest.fixture(scope="session")
def set5_dir(shared_dir) -> Path:
    if not SET5.is_dir():
        pytest.skip(f"no Set5 at {SET5}")
    return SET5


# ------------------------------------------------------------------ skip summary
# A fresh clone has no ../shared: its tests skip one by one with the same reason. One line at the
# end says what that folder is and what the skipped tests would have checked.
SHARED_WHAT = ("../shared is the real data beside the checkout (ETDS-repo checkpoints, Set5 with published "
               "PSNRs, NTIRE ESR team repos; see its README.md; EDGESR_SHARED=DIR points elsewhere)")


def _skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr or "")


def _needs_shared(reason: str) -> bool:
    return "../shared" in reason or str(SHARED) in reason or "ntire-esr" in reason


def shared_skip_summary(reports) -> str | None:
    """The one summary line for tests skipped because ../shared is absent (None: none were)."""
    by_module: dict[str, int] = {}
    for rep in reports:
        if _needs_shared(_skip_reason(rep)):
            module = rep.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
            by_module[module] = by_module.get(module, 0) + 1
    if not by_module:
        return None
    n = sum(by_module.values())
    checks = ", ".join(f"{_module_topic(m)} ({c})" for m, c in sorted(by_module.items(), key=lambda kv: -kv[1]))
    return f"{n} tests skipped: {SHARED_WHAT}. They would check: {checks}"


def _module_topic(module: str) -> str:
    """A test module's topic: the first sentence of its docstring, else its name."""
    import ast

    path = next(Path(__file__).parent.rglob(f"{module}.py"), Path(module))  # tests/<area>/<module>.py
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except (OSError, SyntaxError, ValueError):
        doc = None
    first = " ".join((doc or "").strip().split(". ")[0].split()).rstrip(".:")
    if len(first) > 70:
        first = first[:70].rsplit(" ", 1)[0].rstrip(",;:(") + " ..."
    return f"{module} - {first}" if first else module


def pytest_runtest_logreport(report):
    """Every ../shared skip is reported where it happens (the fixture above), so pytest's -ra
    summary folds them into one line instead of one line per test."""
    if report.skipped and isinstance(report.longrepr, tuple) and _needs_shared(_skip_reason(report)):
        reason = _skip_reason(report)
        report.longrepr = (str(Path(__file__).relative_to(REPO)), _SKIP_LINE, reason)


_SKIP_LINE = next(i for i, ln in enumerate(Path(__file__).read_text().splitlines(), 1) if "../shared not present" in ln)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    line = shared_skip_summary(terminalreporter.stats.get("skipped", []))
    if line:
        terminalreporter.write_line(line)
