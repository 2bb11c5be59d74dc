"""The one parser of image sizes written as text: ``HxW`` (``180x320``, ``180X320``, ``180×320``,
spaces (not other whitespace) around the numbers allowed) or one number for a square (``256`` -> 256x256).

Every option that takes a size (`bench --size`, `parity --sizes`, `convert --mobile-size`,
`convert --trt-min/--trt-opt/--trt-max`) goes through :func:`parse_hw`, so they accept the same
spellings and refuse bad ones with the same one-line message.
"""

from __future__ import annotations

import re

from .errors import EdgesrError, quoted

# Far above any real input side (a 16K frame is 15360 wide), small enough that a typo with extra
# digits is refused here rather than reaching an allocation; memory for a plausible size is
# checked by the consumer (edgesr.limits.check_inference_size), which knows the scale and batch.
MAX_SIDE = 1 << 20

_HW = re.compile(r" *([0-9]+) *(?:[xX×] *([0-9]+) *)?")


class SizeError(EdgesrError, ValueError):
    """A size string that is not HxW with positive integers (a ValueError too: library callers
    that validate with ``except ValueError`` keep working)."""


def parse_hw(text: str, what: str = "size") -> tuple[int, int]:
    """'180x320' -> (180, 320); '256' -> (256, 256). `what` names the option in the error
    (e.g. ``--trt-min``): ``--trt-min: '16xq' is not HxW (e.g. 180x320, or 256 for 256x256)``."""
    m = _HW.fullmatch(text) if isinstance(text, str) else None
    shown = quoted(text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "...")
    if m is None:
        raise SizeError(f"{what}: {shown} is not HxW (e.g. 180x320, or 256 for 256x256)")
    sides = [g for g in m.groups() if g is not None]
    # Length first: int() of thousands of digits is slow (and refused past 4300 digits).
    if any(len(g.lstrip("0")) > len(str(MAX_SIDE)) or not 1 <= int(g) <= MAX_SIDE for g in sides):
        raise SizeError(f"{what}: {shown} must be two positive integers up to {MAX_SIDE} (HxW, e.g. 180x320)")
    h = int(sides[0])
    return h, int(sides[-1])


def parse_hw_list(text: str, what: str = "sizes") -> list[tuple[int, int]]:
    """'17x23, 32x32' -> [(17, 23), (32, 32)]; empty entries (and an empty string) give nothing."""
    return [parse_hw(part, what) for part in text.split(",") if part.strip()]
