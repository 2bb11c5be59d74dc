"""Community checkpoints through spandrel (optional extra: ``pip install 'edgesr[spandrel]'``).

    bm = load_with_spandrel("4x-Compact.safetensors")   # or a state_dict
    bm.module, bm.spec, bm.arch_id, bm.via               # via: "edgesr:<family>" or "spandrel"
    res = export_spandrel("4x-SPAN.pth", "span.onnx")    # edgesr.export.ExportResult

The checkpoint is read with edgesr's safe loader (no pickle code execution) and handed to
spandrel's ``ModelLoader().load_from_state_dict``, which recognises the architecture and
canonicalises the keys. Where edgesr has the family with a deploy form (SPAN: Conv3XC branches
fused into one 3x3 conv by edgesr's reparameterization), the canonical state_dict is loaded into
edgesr's registry and reparameterized; otherwise spandrel's module itself is exported. Either
way the result is checked against spandrel's own module on an odd, non-square input
(``parity_vs_spandrel``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailable, ExportError, KeyMismatch, UnknownArchitecture
from .spec import Spec

# spandrel architecture id -> edgesr registry family (same key layout) whose deploy form is used;
# configurations edgesr's family does not cover (e.g. SwinIR with another upsampler) fall back to
# spandrel's module.
EDGESR_FAMILIES = {"SPAN": "span", "OmniSR": "omnisr", "SwinIR": "swinir", "SAFMN": "safmn"}
PARITY_TOL = 1e-5


@dataclass
class BridgedModel:
    module: Any  # torch.nn.Module in eval mode (edgesr deploy form, or spandrel's module)
    spec: Spec
    arch_id: str  # spandrel's architecture id, e.g. "SPAN", "Compact", "PLKSR"
    via: str  # "edgesr:<family>" or "spandrel"
    spandrel_model: Any = field(repr=False, default=None)
    parity_vs_spandrel: float | None = None
    notes: list[str] = field(default_factory=list)


def _spandrel():
    try:
        import spandrel  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"spandrel is not installed ({e}); install it with: pip install 'edgesr[spandrel]' "
                                 "(it needs torchvision matching your torch)") from None
    return spandrel


def load_with_spandrel(source, *, check: bool = True, check_size: tuple[int, int] = (17, 23)) -> BridgedModel:
    """Checkpoint path or state_dict -> `BridgedModel` (deploy form where edgesr has one)."""
    import torch

    spandrel = _spandrel()
    from .checkpoint import load_state_dict

    sd = load_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise UnknownArchitecture("spandrel does not recognise this checkpoint (its architecture list: "
                                  "https://github.com/chaiNNer-org/spandrel#model-architecture-support)") from None
    except Exception as e:  # noqa: BLE001 - spandrel raises plain errors on malformed dicts
        raise KeyMismatch(f"spandrel could not load the checkpoint: {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise UnknownArchitecture(f"{desc.architecture.id} is not an image-to-image model")
    ref = desc.model.eval()
    arch_id = desc.architecture.id
    req = desc.size_requirements
    notes: list[str] = []
    family = EDGESR_FAMILIES.get(arch_id)
    lm = None
    if family is not None:
        from . import registry
        from .errors import EdgesrError

        try:
            lm = registry.load_model(dict(ref.state_dict()), arch=family, scale=desc.scale)
        except EdgesrError as e:
            notes.append(f"edgesr's {family} does not cover this configuration ({e}); using spandrel's module")
    if lm is not None:
        from dataclasses import replace

        from .reparam import reparameterize

        module = reparameterize(lm.module).eval()
        spec = replace(lm.spec, form="deploy")
        via = f"edgesr:{family}"
        notes.append(f"loaded into edgesr's {family} ({lm.spec.form} form)"
                     + (" and reparameterized" if lm.spec.form == "training" else ""))
    else:
        module = ref
        spec = Spec(arch=f"spandrel:{arch_id.lower()}", scale=int(desc.scale), in_channels=desc.input_channels,
                    out_channels=desc.output_channels, form="deploy", size_multiple=max(1, req.multiple_of),
                    min_size=max(1, req.minimum), hyperparams={"spandrel_arch": arch_id})
        via = "spandrel"
    bm = BridgedModel(module, spec, arch_id, via, ref, None, notes)
    if check:
        h, w = (max(spec.min_size, -(-d // spec.size_multiple) * spec.size_multiple) for d in check_size)
        x = torch.from_numpy(np.random.default_rng(0).random((1, spec.in_channels, h, w), dtype=np.float32))
        with torch.inference_mode():
            a, b = module(x), ref(x)
        if a.shape != b.shape:
            raise ExportError(f"{arch_id}: edgesr form gives {tuple(a.shape)}, spandrel {tuple(b.shape)}")
        bm.parity_vs_spandrel = float((a - b).abs().max())
        if not bm.parity_vs_spandrel <= PARITY_TOL:
            raise ExportError(f"{arch_id}: {via} differs from spandrel's module by {bm.parity_vs_spandrel:.3g}")
    return bm


def export_spandrel(source, path: str | Path, **export_kwargs):
    """Load with `load_with_spandrel` and export ONNX (edgesr.export.export_onnx, dynamic H/W)."""
    from .export import export_onnx

    bm = load_with_spandrel(source)
    meta = {"spandrel_arch": bm.arch_id, "loaded_via": bm.via, **export_kwargs.pop("metadata", {})}
    return export_onnx(bm.module, bm.spec, path, metadata=meta, **export_kwargs)
