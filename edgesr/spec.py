"""What a caller must know about a model without reading its code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Spec:
    arch: str  # registry name, e.g. "ecbsr"
    scale: int
    in_channels: int = 3
    out_channels: int = 3
    variant: str | None = None  # named variant, e.g. "ecbsr-m4c16-x4"
    form: str = "deploy"  # "training" | "deploy"
    value_range: tuple[float, float] = (0.0, 1.0)
    color_order: str = "RGB"
    layout: str = "NCHW"
    size_multiple: int = 1  # H and W must be multiples of this
    min_size: int = 1
    # LR-pixel radius that influences one output pixel; drives tile overlap.
    receptive_field: int | None = None
    fp16_safe: bool = True
    hyperparams: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        d = dict(d)
        d["value_range"] = tuple(d.get("value_range", (0.0, 1.0)))
        return cls(**d)
