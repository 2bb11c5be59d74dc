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


# Bounds for a Spec read from a file (ONNX metadata, a bundle manifest): a value outside them
# is a corrupt or hostile file, not a model (the largest SR factor in use is x16).
MAX_SCALE = 32
MAX_CHANNELS = 64
MAX_SIZE_RULE = 4096  # size_multiple, min_size and receptive_field, in LR pixels
LAYOUTS = ("NCHW", "NHWC")
COLOR_ORDERS = ("RGB", "BGR", "Y", "GRAY")


def spec_from_untrusted(d: object, source: str) -> Spec:
    """A Spec from a dict read out of a file, every known field type- and range-checked
    (unknown keys, e.g. from a newer edgesr, are ignored). Raises ValueError with one line
    naming `source` and the field."""
    import math
    from dataclasses import fields

    if not isinstance(d, dict):
        raise ValueError(f"{source}: the spec is {type(d).__name__}, expected a JSON object")

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def bad(field: str, want: str) -> ValueError:
        shown = repr(d[field])
        return ValueError(f"{source}: spec field '{field}' must be {want}, got {shown[:60]}")

    checks = {
        "arch": (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a non-empty string"),
        "scale": (lambda v: is_int(v) and 1 <= v <= MAX_SCALE, f"an integer in [1, {MAX_SCALE}]"),
        "in_channels": (lambda v: is_int(v) and 1 <= v <= MAX_CHANNELS, f"an integer in [1, {MAX_CHANNELS}]"),
        "out_channels": (lambda v: is_int(v) and 1 <= v <= MAX_CHANNELS, f"an integer in [1, {MAX_CHANNELS}]"),
        "variant": (lambda v: v is None or (isinstance(v, str) and len(v) <= 200), "a string or null"),
        "form": (lambda v: v in ("training", "deploy"), "'training' or 'deploy'"),
        "value_range": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                for x in v) and v[0] < v[1], "[low, high] with finite low < high"),
        "color_order": (lambda v: v in COLOR_ORDERS, " or ".join(COLOR_ORDERS)),
        "layout": (lambda v: v in LAYOUTS, " or ".join(LAYOUTS)),
        "size_multiple": (lambda v: is_int(v) and 1 <= v <= MAX_SIZE_RULE, f"an integer in [1, {MAX_SIZE_RULE}]"),
        "min_size": (lambda v: is_int(v) and 1 <= v <= MAX_SIZE_RULE, f"an integer in [1, {MAX_SIZE_RULE}]"),
        "receptive_field": (lambda v: v is None or (is_int(v) and 0 <= v <= MAX_SIZE_RULE),
                            f"null or an integer in [0, {MAX_SIZE_RULE}]"),
        "fp16_safe": (lambda v: isinstance(v, bool), "true or false"),
        "hyperparams": (lambda v: isinstance(v, dict), "an object"),
    }
    if "arch" not in d or "scale" not in d:
        raise ValueError(f"{source}: the spec lacks {'arch' if 'arch' not in d else 'scale'}")
    for name, (ok, want) in checks.items():
        if name in d and not ok(d[name]):
            raise bad(name, want)
    names = {f.name for f in fields(Spec)}
    return Spec.from_dict({k: v for k, v in d.items() if k in names})
