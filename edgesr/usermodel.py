"""A model from the user's own code: ``--model FILE.py:NAME`` plus a weights file.

Code is imported only because the user named it (never found or run automatically).
NAME is a class or a factory function in FILE; ``kwargs`` are passed to it. The file's
folder is importable (so its sibling helper modules load), and so is every folder in
``extra_paths`` (for code written as ``from models.block import X`` that expects its
repository root on ``sys.path``; a FILE inside one of them is imported under its dotted
name there, as the author's own scripts import it).

Weights load safely (``edgesr.checkpoint``: weights_only / safetensors, the usual
unwrapping and prefixes; ``key`` names the wrapper entry when the author's loader picked
one) and strictly unless ``strict=False`` (as the author's loader did).

What the model expects (input range, mean shift, colour order) and what it does (scale,
size rules) are measured by :mod:`edgesr.conventions`, not declared.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, EdgesrError, KeyMismatch, MissingDependency, UserCodeError
from .user_frames import is_under as _under
from .user_frames import user_frame

# Import names whose pip package is called differently (for the "pip install X" hint).
PIP_NAMES = {"cv2": "opencv-python", "PIL": "Pillow", "skimage": "scikit-image", "sklearn": "scikit-learn",
             "yaml": "PyYAML", "mamba_ssm": "mamba-ssm", "mmcv": "mmcv"}
# Packages that cannot work on a CPU-only machine whatever is installed.
CUDA_ONLY = {"mamba_ssm": "needs CUDA (its selective-scan kernels have no CPU implementation)",
             "causal_conv1d": "needs CUDA"}


@dataclass(frozen=True)
class ModelRef:
    file: Path
    name: str

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        """``path/to/file.py:Name`` (Name: a class or factory; dots reach nested attributes)."""
        path, sep, name = str(text).rpartition(":")
        if not sep or not path or not name:
            raise UserCodeError(f"--model {text!r}: expected FILE.py:NAME (e.g. models/net.py:MyNet)")
        file = Path(path)
        if file.suffix != ".py":
            raise UserCodeError(f"--model {text!r}: {file.name} is not a .py file")
        if not file.is_file():
            raise UserCodeError(f"--model {text!r}: {file} not found")
        if not all(p.isidentifier() for p in name.split(".")):
            raise UserCodeError(f"--model {text!r}: {name!r} is not a Python name")
        return cls(file.resolve(), name)

    def __str__(self) -> str:
        return f"{self.file}:{self.name}"


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """--model-kwargs JSON -> dict."""
    if not text:
        return {}
    from .errors import one_line, quoted
    from .limits import load_json_bounded

    try:
        obj = load_json_bounded(text, "--model-kwargs")
    except json.JSONDecodeError as e:
        raise UserCodeError(f"--model-kwargs is not valid JSON ({e.msg} at position {e.pos}): "
                            f"{quoted(text[:200])}") from None
    except ValueError as e:  # NaN/Infinity, or nested deeper than any argument list
        raise UserCodeError(one_line(e)) from None
    if not isinstance(obj, dict):
        raise UserCodeError(f"--model-kwargs must be a JSON object such as '{{\"scale\": 4}}', got {text!r}")
    return obj


@dataclass
class LoadReport:
    weights: str
    key: str | None
    strict: bool
    tensors: int
    missing: list[str] = field(default_factory=list)  # model keys the weights lack (strict=False only)
    unexpected: list[str] = field(default_factory=list)  # weights the model does not use (strict=False only)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "key": self.key, "strict": self.strict, "tensors": self.tensors,
                "missing": self.missing[:20], "n_missing": len(self.missing),
                "unexpected": self.unexpected[:20], "n_unexpected": len(self.unexpected)}


def build_user_module(ref: ModelRef, kwargs: dict[str, Any] | None = None,
                      extra_paths: tuple[Path, ...] = ()):
    """Import FILE, call NAME(**kwargs); the result must be a torch.nn.Module (eval mode)."""
    from torch import nn

    roots = _roots(ref, extra_paths)
    with _import_context(roots), cuda_calls_on_cpu() as redirected:
        module = _import_file(ref, roots)
        obj = module
        for part in ref.name.split("."):
            if not hasattr(obj, part):
                defined = sorted(n for n, v in vars(module).items()
                                 if isinstance(v, type) and getattr(v, "__module__", None) == module.__name__)
                raise UserCodeError(f"{ref.file.name} has no {ref.name!r}; classes defined there: "
                                    f"{', '.join(defined[:12]) or 'none'}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise UserCodeError(f"{ref.file.name}:{ref.name} is a {type(obj).__name__}, not a class or function")
        try:
            net = obj(**(kwargs or {}))
        except EdgesrError:
            raise
        except TypeError as e:
            raise UserCodeError(f"{ref.name}(**{kwargs or {}}) failed: {_first_line(e)}"
                                f"{_where(e, roots)}; check --model-kwargs") from None
        except SystemExit as e:
            raise _exit_error(f"building {ref.name}", e, roots) from None
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            raise _code_error(f"building {ref.name}", e, roots) from None
    if not isinstance(net, nn.Module):
        raise UserCodeError(f"{ref.file.name}:{ref.name}(...) returned a {type(net).__name__}, not a torch.nn.Module")
    net.edgesr_cuda_calls_on_cpu = redirected[0]  # reported by load_user_model
    return net.eval()


@contextlib.contextmanager
def cuda_calls_on_cpu() -> Iterator[list[int]]:
    """On a machine without CUDA, ``.cuda()`` on tensors and modules while the user's code is
    imported and built returns them on the CPU instead of failing: research code warms its model
    up on the GPU in ``__init__`` (NTIRE 2024 SPAN: ``self.cuda()(torch.randn(...).cuda())``) the
    way checkpoints carry CUDA storages that ``torch.load(map_location="cpu")`` maps. The count of
    redirected calls is yielded (and reported); nothing changes where CUDA exists."""
    import torch

    count = [0]
    if torch.cuda.is_available():
        yield count
        return
    saved = {cls: cls.__dict__.get("cuda") for cls in (torch.Tensor, torch.nn.Module)}

    def tensor_cuda(self, *args, **kwargs):
        count[0] += 1
        return self

    def module_cuda(self, *args, **kwargs):
        count[0] += 1
        return self

    torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda
    try:
        yield count
    finally:
        for cls, original in saved.items():
            if original is None:
                delattr(cls, "cuda")  # it was inherited (torch._C.TensorBase.cuda)
            else:
                cls.cuda = original


def load_weights(net, weights: str | Path, key: str | None = None, strict: bool = True) -> LoadReport:
    """Safe load + (non-)strict load_state_dict with every offending key named."""
    from .checkpoint import load_state_dict
    from .registry import _check_fit

    int_buffers = {n for n, b in net.named_buffers() if not (b.is_floating_point() or b.is_complex())}
    # keys may lose a shared wrapper prefix when unwrapped (restored below): match by suffix
    sd = load_state_dict(weights, key=key, integer_buffer=lambda k: any(
        b == k or b.endswith("." + k) for b in int_buffers))
    own = net.state_dict()
    sd = _restore_prefix(sd, set(own))
    if strict:
        _check_fit(own, sd, type(net).__name__)
    shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if shape:
        raise KeyMismatch(f"weights do not fit {type(net).__name__}: shape mismatches: {', '.join(shape[:6])}")
    cast = {k: v.to(own[k].dtype) if k in own else v for k, v in sd.items()}
    try:
        res = net.load_state_dict(cast, strict=strict)
    except RuntimeError as e:
        raise KeyMismatch(f"weights do not fit {type(net).__name__}: {_first_line(e)}") from None
    net.requires_grad_(False)
    return LoadReport(str(weights), key, strict, len(sd), sorted(res.missing_keys), sorted(res.unexpected_keys))


def _restore_prefix(sd: dict, own: set[str]) -> dict:
    """edgesr strips wrapper prefixes (``model.``, ``module.``, ...) that every key shares; when the
    author's module itself names its layers that way (IMDN's ``model.0``), put the prefix back."""
    from .checkpoint import PREFIXES

    best, hits = sd, len(own & set(sd))
    for prefix in PREFIXES:
        cand = {prefix + k: v for k, v in sd.items()}
        n = len(own & set(cand))
        if n > hits:
            best, hits = cand, n
    return best


# ---- importing ------------------------------------------------------------------------------------

def _roots(ref: ModelRef, extra_paths: tuple[Path, ...]) -> list[Path]:
    roots = [Path(p).resolve() for p in extra_paths]
    for p in roots:
        if not p.is_dir():
            raise UserCodeError(f"extra import path {p} is not a folder")
    return roots + [ref.file.parent]


@contextlib.contextmanager
def _import_context(roots: list[Path]) -> Iterator[None]:
    """sys.path gets `roots` in front for the import and the build; top-level modules the user
    code brings in that shadow already-imported ones (several teams ship a `models` package or a
    `block.py`) are swapped out and restored afterwards, so two users' codes do not mix."""
    saved_path = list(sys.path)
    before = set(sys.modules)
    sys.path[:0] = [str(r) for r in roots]
    shadowed = {name: sys.modules[name] for name in before if _top_is_local(name, roots)}
    for name in shadowed:
        del sys.modules[name]
        before.discard(name)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        new = [n for n in sys.modules if n not in before]
        namespaces = {n for n in new if "." not in n and _is_namespace(sys.modules[n])}
        for name in new:
            if (_top_is_local(name, roots) or _under(getattr(sys.modules[name], "__file__", None), roots)
                    or name.split(".")[0] in namespaces):
                del sys.modules[name]
        sys.modules.update(shadowed)


def _is_namespace(mod: object) -> bool:
    """A namespace package (a bare `models/` folder somewhere on sys.path) that the user's imports
    created, e.g. by a failed `from models.block import ...` without the repository root: left in
    sys.modules it would make the next user's `models` resolve to the wrong folder."""
    return getattr(mod, "__file__", None) is None and hasattr(mod, "__path__")


def _top_is_local(name: str, roots: list[Path]) -> bool:
    top = name.split(".")[0]
    return any((r / top).is_dir() or (r / f"{top}.py").is_file() for r in roots)


def _import_file(ref: ModelRef, roots: list[Path]):
    dotted = _dotted_name(ref.file, roots[:-1])
    try:
        if dotted:
            return importlib.import_module(dotted)
        name = f"edgesr_user_{ref.file.stem}"
        spec = importlib.util.spec_from_file_location(name, ref.file)
        if spec is None or spec.loader is None:
            raise UserCodeError(f"cannot import {ref.file}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    except EdgesrError:
        raise
    except ModuleNotFoundError as e:
        raise _missing(e, ref, roots) from None
    except ImportError as e:
        missing = getattr(e, "name", None)
        raise UserCodeError(f"importing {ref.file.name} failed: {_first_line(e)}{_where(e, roots)}"
                            + (f" (is {missing} installed and recent enough?)" if missing else "")) from None
    except SystemExit as e:
        raise _exit_error(f"importing {ref.file.name}", e, roots) from None
    except Exception as e:  # noqa: BLE001 - module-level user code may raise anything
        raise _code_error(f"importing {ref.file.name}", e, roots) from None


def _dotted_name(file: Path, roots: list[Path]) -> str | None:
    """``models.team15_afdn.AFDN`` for root/models/team15_afdn/AFDN.py, when file is under a root."""
    for r in roots:
        if r in file.parents:
            parts = file.relative_to(r).with_suffix("").parts
            if all(p.isidentifier() for p in parts):
                return ".".join(parts)
    return None


def _missing(e: ModuleNotFoundError, ref: ModelRef, roots: list[Path]) -> EdgesrError:
    name = (e.name or "?").split(".")[0]
    if any((r / name).exists() or (r / f"{name}.py").exists() for r in roots):
        # A local module of the user's that fails to import something deeper (e.g. a wrong root).
        return UserCodeError(f"importing {ref.file.name}: {_first_line(e)}{_where(e, roots)} (is the right "
                             f"folder on the import path?)")
    for anc in list(ref.file.parents)[1:5]:
        if (anc / name).is_dir() or (anc / f"{name}.py").is_file():
            return UserCodeError(f"{ref.file.name} imports {name}{_where(e, roots)}, which is {anc / name} in your "
                                 f"code: add its folder to the import path (--model-path {anc})")
    w = user_frame(e, roots)
    # "imports" where FILE's own line does; "needs" where one of its helper modules does (named by `at`)
    verb = "imports" if not w or str(w).startswith(f"{ref.file.name}:") else "needs"
    if name in CUDA_ONLY:
        return MissingDependency(f"{ref.file.name} {verb} {name}, which {CUDA_ONLY[name]}{_where(e, roots)}")
    pip = PIP_NAMES.get(name, name)
    return MissingDependency(f"{ref.file.name} {verb} {name}, which is not installed{_where(e, roots)} "
                             f"(pip install {pip})")


def _code_error(what: str, e: BaseException, roots: list[Path]) -> UserCodeError:
    return UserCodeError(f"{what} failed: {type(e).__name__}: {_first_line(e)}{_where(e, roots)}")


def _exit_error(what: str, e: SystemExit, roots: list[Path]) -> UserCodeError:
    """The user's code called sys.exit() (a script's `if args...: sys.exit()` run at import, an
    argparse error): that ends edgesr's work, not edgesr, which must not exit 0 having done nothing."""
    return UserCodeError(f"{what} failed: the code called sys.exit({e.code!r}){_where(e, roots)}; code run by "
                         "--model must define the model, not run a script (guard it with "
                         "`if __name__ == '__main__':`)")


def _where(e: BaseException, roots: list[Path]) -> str:
    w = user_frame(e, roots)
    return f" (at {w})" if w else ""


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:240] if s else type(e).__name__


__all__ = ["ModelRef", "parse_kwargs", "build_user_module", "load_weights", "LoadReport", "user_frame",
           "CheckpointError"]


# ---- one call: weights + code -> a model in edgesr's convention -------------------------------------

@dataclass
class LoadedUserModel:
    """Like registry.LoadedModel: `module` takes and returns [0, 1] RGB (a ConventionAdapter
    around `raw`, the author's module as loaded); `spec` holds what was measured."""

    module: Any
    raw: Any
    spec: Any
    ref: ModelRef
    load: LoadReport
    geometry: Any
    conventions: Any
    state_dict_keys: int = 0
    roots: list[Path] = field(default_factory=list)
    # The author's deploy hooks measured as part of the model (see _author_form_if_needed):
    # None when there are none or they preserve the output; "applied" says whether `raw` is that form.
    author_form: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        return {"model": str(self.ref), "load": self.load.to_dict(), "geometry": self.geometry.to_dict(),
                "conventions": self.conventions.to_dict(), "author_form": self.author_form,
                "cuda_calls_on_cpu": int(getattr(self.raw, "edgesr_cuda_calls_on_cpu", 0))}


def load_user_model(weights: str | Path, ref: ModelRef | str, kwargs: dict[str, Any] | None = None, *,
                    strict: bool = True, key: str | None = None, extra_paths: tuple[Path, ...] = (),
                    input_range: float | None = None, scale: int | None = None,
                    check_plausible: bool = True, quick: bool = False) -> LoadedUserModel:
    """Build NAME(**kwargs) from FILE, load `weights`, measure geometry and conventions."""
    from dataclasses import replace

    from .conventions import Convention, infer_convention, make_adapter, measure_geometry, require_plausible
    from .spec import Spec

    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    roots = _roots(ref, extra_paths)
    net = build_user_module(ref, kwargs, extra_paths)
    load = load_weights(net, weights, key=key, strict=strict)
    geo = measure_geometry(net, expected_scale=scale, error_roots=roots)
    given = Convention(input_range=input_range) if input_range is not None else None
    conv = infer_convention(net, geo.scale, multiple=geo.size_multiple, min_size=geo.min_size, given=given,
                            quick=quick)
    net, conv, author_form = _author_form_if_needed(net, conv, geo, given, quick)
    if check_plausible:
        require_plausible(conv, f"{ref.file.name}:{ref.name} with {Path(weights).name}",
                          hint="" if given else "; --input-range forces a range")
    chosen = conv.chosen or Convention()
    module = make_adapter(net, chosen)
    spec = Spec(arch=f"user:{ref.name}", scale=geo.scale, in_channels=3, out_channels=geo.out_channels,
                variant=None, form="training", size_multiple=geo.size_multiple, min_size=geo.min_size,
                receptive_field=None, fp16_safe=True, color_order="RGB",
                hyperparams={"model": f"{ref.file.name}:{ref.name}", "kwargs": dict(kwargs or {}),
                             "native_input_range": chosen.input_range, "native_mean_shift": chosen.mean_shift,
                             "native_color_order": chosen.color_order})
    spec = replace(spec, value_range=(0.0, 1.0))
    return LoadedUserModel(module, net, spec, ref, load, geo, conv, load.tensors, roots, author_form)


# An author's deploy hook that changes the output is part of the model when its form is a better
# super-resolution by at least this much (dB of gain over bicubic, the convention trials' measure):
# the weights were saved in the training form the hook converts (NTIRE 2022 team 08: +2.1 dB).
HOOK_FORM_MARGIN_DB = 0.5


def _author_form_if_needed(net, conv, geo, given, quick: bool) -> tuple[Any, Any, dict[str, Any] | None]:
    """The module after its author's deploy hooks, when the hooks change the output and that form
    is a clearly better SR than the module as built (both measured as conventions are); else `net`.
    A hook that preserves the output is left to the verified deploy step (reparam.author_hooks)."""
    import numpy as np
    import torch

    from .conventions import MIN_GAIN_DB, infer_convention
    from .probe_inputs import random_image
    from .reparam.author_hooks import find_hooks
    from .reparam.copying import clone_module

    hooks = find_hooks(net)
    if not hooks:
        return net, conv, None
    called = [f"{p or '<model>'}.{n}()" for p, n in hooks]
    try:
        cand = clone_module(net)
        mods = dict(cand.named_modules())
        with cuda_calls_on_cpu(), contextlib.redirect_stdout(None):  # hooks print ("Reparameter...")
            for p, n in hooks:
                getattr(mods[p], n)()
        cand.eval()
        x = torch.from_numpy(random_image((1, 3, 2 * geo.min_size + 15, 2 * geo.min_size + 9), seed=3))
        with torch.inference_mode():
            same = float((net(x) - cand(x)).abs().max()) <= 1e-4
    except Exception:  # noqa: BLE001 - author code; the deploy step reports why a hook failed
        return net, conv, None
    if same:
        return net, conv, None
    hooked = infer_convention(cand, geo.scale, multiple=geo.size_multiple, min_size=geo.min_size, given=given,
                              quick=quick)
    gain = conv.best.gain_db if conv.best is not None and np.isfinite(conv.best.gain_db) else float("-inf")
    record = {"hooks": called, "gain_db_as_built": round(gain, 3) if np.isfinite(gain) else None,
              "gain_db_with_hooks": round(hooked.best.gain_db, 3) if hooked.best is not None else None,
              "convention_with_hooks": hooked.chosen.label if hooked.chosen else None,
              "margin_db": HOOK_FORM_MARGIN_DB}
    better = (hooked.plausible and hooked.best is not None and hooked.best.gain_db > MIN_GAIN_DB
              and hooked.best.gain_db > gain + HOOK_FORM_MARGIN_DB)
    record["applied"] = bool(better)
    if not better:
        return net, conv, record
    cand.edgesr_author_form = called  # the deploy step must not call the hooks a second time
    cand.edgesr_cuda_calls_on_cpu = getattr(net, "edgesr_cuda_calls_on_cpu", 0)
    return cand, hooked, record
