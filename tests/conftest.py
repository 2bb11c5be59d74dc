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
