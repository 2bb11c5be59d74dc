"""A small, deterministic SR trainer (L1 loss, Adam, cosine LR) for the bundled model.

HR photos -> MATLAB-bicubic LR (the degradation of the benchmark sets) -> random
aligned patches with flips/rotations. Not a research trainer: enough to produce a
real training-form checkpoint whose reparameterization is meaningful.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .imaging import quantize, read_image
from .resize import imresize


@dataclass(frozen=True)
class TrainConfig:
    scale: int = 4
    steps: int = 3000
    batch_size: int = 16
    lr_patch: int = 48
    learning_rate: float = 5e-4
    min_learning_rate: float = 1e-6
    seed: int = 0
    threads: int = 2


@dataclass
class TrainPair:
    name: str
    lr: np.ndarray  # HxWx3 float32 in [0,1], quantized to 8 bits like a saved LR png
    hr: np.ndarray


def make_pairs(paths: list[Path], scale: int) -> list[TrainPair]:
    """HR crop to a multiple of scale, LR = MATLAB bicubic downscale of the 8-bit HR."""
    pairs = []
    for p in paths:
        hr: np.ndarray = read_image(p).rgb.astype(np.float32)
        h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
        hr = hr[:h, :w]
        # uint8 in -> uint8 out reproduces the benchmark sets' MATLAB LR images bit-exactly.
        lr = imresize(quantize(hr), 1.0 / scale).astype(np.float32) / 255.0
        pairs.append(TrainPair(p.name, lr, hr))
    return pairs


def sample_batch(pairs: list[TrainPair], cfg: TrainConfig, rng: np.random.Generator):
    lrs, hrs = [], []
    p, s = cfg.lr_patch, cfg.scale
    eligible = [q for q in pairs if q.lr.shape[0] >= p and q.lr.shape[1] >= p]
    # Weight images by area so large photos are not under-sampled.
    weights = np.array([q.lr.shape[0] * q.lr.shape[1] for q in eligible], dtype=np.float64)
    weights /= weights.sum()
    for _ in range(cfg.batch_size):
        q = eligible[rng.choice(len(eligible), p=weights)]
        y = int(rng.integers(0, q.lr.shape[0] - p + 1))
        x = int(rng.integers(0, q.lr.shape[1] - p + 1))
        lr = q.lr[y:y + p, x:x + p]
        hr = q.hr[y * s:(y + p) * s, x * s:(x + p) * s]
        k = int(rng.integers(0, 4))
        flip = bool(rng.integers(0, 2))
        lr, hr = np.rot90(lr, k), np.rot90(hr, k)
        if flip:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        lrs.append(np.ascontiguousarray(lr.transpose(2, 0, 1)))
        hrs.append(np.ascontiguousarray(hr.transpose(2, 0, 1)))
    return torch.from_numpy(np.stack(lrs)), torch.from_numpy(np.stack(hrs))


def train(model: nn.Module, pairs: list[TrainPair], cfg: TrainConfig,
          progress: Callable[[int, float], None] | None = None) -> dict:
    """Train in place; returns a summary (loss curve, wall time)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)

    def lr_at(step: int) -> float:
        t = step / max(1, cfg.steps)
        return cfg.min_learning_rate + 0.5 * (cfg.learning_rate - cfg.min_learning_rate) * (1 + math.cos(math.pi * t))

    losses = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        lr, hr = sample_batch(pairs, cfg, rng)
        loss = F.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, float(loss))
    model.eval()
    window = max(1, cfg.steps // 20)
    curve = [float(np.mean(losses[i:i + window])) for i in range(0, len(losses), window)]
    return {"config": asdict(cfg), "seconds": round(time.perf_counter() - start, 1),
            "final_l1": float(np.mean(losses[-window:])), "l1_curve": curve,
            "train_images": [q.name for q in pairs]}
