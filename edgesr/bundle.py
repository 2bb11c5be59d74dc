"""Bundles: the folder `edgesr convert` writes, described by ``manifest.json``.

The manifest tells an application everything it needs without Python (see
``edgesr/schemas/manifest.schema.json``, JSON Schema draft 2020-12): each artifact (file,
sha256, format, precision, backend), I/O tensor names, dtype, layout, value range, colour
order, scale, allowed shape ranges, recommended tile size and overlap, receptive field,
parity and latency summaries, toolkit and library versions.

- :func:`read_manifest` validates a bundle (schema, consistency, every artifact's
  existence and sha256) and returns a :class:`Manifest`; every problem is a
  :class:`~edgesr.errors.BundleError` with a one-line message naming the field or file.
- :func:`manifest_extras` computes the fields ``build_manifest`` adds from the spec and
  the conversion report (tiling, shape ranges, versions, latency summary);
  :func:`write_manifest` validates and writes a manifest atomically.
- :func:`recommended_tiling` is the declared fallback when nothing was measured; bundles
  carry the measured tiling of :func:`edgesr.tiling.measure_tiling`.

Schema validation uses ``jsonschema`` when it is installed (an optional test dependency);
otherwise a small built-in validator walks the same schema file (the keywords it uses:
type, required, properties, additionalProperties, items, minItems, maxItems, const, enum,
minimum, minLength, pattern, $ref into $defs), so both give the same one-line messages.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from .errors import BundleError, one_line, quoted
from .limits import MAX_MANIFEST_BYTES, load_json_bounded
from .fsutil import json_safe  # noqa: F401  (re-exported: bundle.json_safe is public)
from .spec import Spec

MANIFEST_NAME = "manifest.json"
FORMAT = "edgesr-bundle"
FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"

# Tiling fallbacks when nothing was measured (input pixels); see edgesr.tiling.
DEFAULT_TILE = 256
TILE_PER_OVERLAP = 8
UNKNOWN_RF_OVERLAP = 16  # used when a model does not declare its receptive field
TILING_RULE = ("split the input into cores of at most tile x tile pixels, core starts on multiples of alignment; "
               "extend each core by overlap pixels on every side, clipped at the image border (never pad inside "
               "the image); run the model; keep only the core's region (x scale) of the output. exact: true only "
               "when measured (graph receptive field <= overlap and tiled == untiled up to float rounding); "
               "otherwise measured.error holds the measured difference at this tile.")


# --------------------------------------------------------------------------- tiling rule


def recommended_tiling(spec: Spec) -> tuple[int, int]:
    """(tile, overlap) in input pixels from what `spec` *declares* (no measurement):
    overlap = the declared receptive field, or UNKNOWN_RF_OVERLAP; tile = max(DEFAULT_TILE,
    TILE_PER_OVERLAP * overlap); both rounded up to the size multiple. Bundles carry measured
    values instead (:func:`edgesr.tiling.measure_tiling`)."""
    from .tiling import declared_tiling

    return declared_tiling(spec)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Artifact:
    role: str
    file: str  # as written in the manifest (relative, '/' separators)
    path: Path  # absolute location on this machine
    sha256: str
    bytes: int
    format: str
    precision: str
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)  # every other key of the entry

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "file": self.file, "sha256": self.sha256, "bytes": self.bytes,
                "format": self.format, "precision": self.precision, "backend": self.backend, **self.extra}


@dataclass(frozen=True)
class Manifest:
    folder: Path
    data: dict[str, Any]  # the manifest as read (validated)
    spec: Spec
    artifacts: tuple[Artifact, ...]
    hashes_verified: bool = True
    _copies: dict = field(default_factory=dict, compare=False, repr=False)  # role -> verified private copy

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def scale(self) -> int:
        return int(self.data["io"]["scale"])

    @property
    def input_name(self) -> str:
        return self.data["io"]["input"]["name"]

    @property
    def output_name(self) -> str:
        return self.data["io"]["output"]["name"]

    @property
    def tile(self) -> int:
        return int(self.data["tiling"]["tile"])

    @property
    def overlap(self) -> int:
        return int(self.data["tiling"]["overlap"])

    @property
    def parity_ok(self) -> bool:
        return bool(self.data["parity"]["ok"])

    def artifact(self, role: str) -> Artifact:
        for a in self.artifacts:
            if a.role == role:
                return a
        roles = ", ".join(a.role for a in self.artifacts)
        raise BundleError(f"{quoted(self.path)}: no artifact with role {quoted(role)} (roles: {one_line(roles)})")

    def verified_bytes(self, artifact: Artifact | str) -> bytes:
        """The artifact's bytes (by Artifact or role), read once and checked against the manifest's
        size and sha256; load these bytes, never the file again (no check-then-use window)."""
        a = self.artifact(artifact) if isinstance(artifact, str) else artifact
        return read_verified(a, self.path)

    def verified_path(self, artifact: Artifact | str) -> Path:
        """A private copy of the artifact holding exactly the bytes that were verified, for
        consumers that insist on a path (ORT sessions by file, TensorRT engines). The copies live
        in a temporary folder only this process writes, removed when the Manifest is collected."""
        import tempfile
        import weakref

        a = self.artifact(artifact) if isinstance(artifact, str) else artifact
        if a.role not in self._copies:
            tmp = self._copies.get("")
            if tmp is None:
                tmp = self._copies[""] = tempfile.mkdtemp(prefix="edgesr-bundle-")
                weakref.finalize(self, _remove_tree, tmp)
            dest = Path(tmp).joinpath(*PurePosixPath(a.file).parts)  # same layout: companions stay beside
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.verified_bytes(a))
            self._copies[a.role] = dest
            companion = a.extra.get("weights")  # e.g. an OpenVINO .xml's .bin, read by the runtime from beside it
            if isinstance(companion, str):
                rel = (PurePosixPath(a.file).parent / companion).as_posix()
                for b in self.artifacts:
                    if b.file == rel and b.role != a.role:
                        self.verified_path(b)
        return self._copies[a.role]

    def select(self, *, format: str | None = None, precision: str | None = None,
               backend: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts
                if (format is None or a.format == format) and (precision is None or a.precision == precision)
                and (backend is None or a.backend == backend)]


def _remove_tree(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_manifest(folder: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """Read and validate ``folder/manifest.json``; verify every artifact exists and matches its sha256.

    Raises BundleError (one line, naming the field or file) for: a missing folder or
    manifest, invalid JSON (including NaN/Infinity, which C++/JS parsers reject, and nesting
    deeper than any manifest needs), a schema violation (e.g. a missing field), inconsistent
    values, a listed file that is missing, escapes the folder, is (or lies under) a symbolic
    link, is not a regular file, or whose size or sha256 does not match.

    Verification proves the files were right when read; to *use* an artifact, take its bytes
    from :meth:`Manifest.verified_bytes` (or a private copy from :meth:`Manifest.verified_path`),
    which hash exactly the bytes they hand over: a file swapped after this check is caught.
    """
    folder = Path(folder)
    if not folder.exists():
        raise BundleError(f"{quoted(folder)}: no such bundle folder")
    if not folder.is_dir():
        raise BundleError(f"{quoted(folder)}: not a folder (a bundle is the OUTDIR of `edgesr convert`)")
    mpath = folder / MANIFEST_NAME
    if not os.path.lexists(mpath):
        raise BundleError(f"{quoted(folder)}: missing {MANIFEST_NAME} (not an `edgesr convert` output, or an "
                          "interrupted one)")
    data = _load_json(mpath, _read_inside(folder, MANIFEST_NAME, quoted(mpath), max_bytes=MAX_MANIFEST_BYTES))
    problems = validate(data)
    if problems:
        more = f" (+{len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BundleError(f"{quoted(mpath)}: {one_line(problems[0])}{more}")
    artifacts = tuple(_artifact(folder, mpath, a) for a in data["artifacts"])
    if verify_hashes:
        for a in artifacts:
            verify_artifact(a, mpath)
    return Manifest(folder=folder, data=data, spec=_spec(data["spec"], mpath), artifacts=artifacts,
                    hashes_verified=verify_hashes)


def verify_artifact(a: Artifact, manifest_path: Path | str = MANIFEST_NAME) -> None:
    """Check `a` is a regular file inside its bundle (no symlink on the way) with the listed
    size and sha256, hashing what one open file descriptor reads."""
    with _open_artifact(a, manifest_path) as f:
        h = hashlib.sha256()
        while block := f.read(1 << 20):
            h.update(block)
    _check_digest(a, h.hexdigest(), manifest_path)


def read_verified(a: Artifact, manifest_path: Path | str = MANIFEST_NAME) -> bytes:
    """The bytes of `a`, read through one open file descriptor and checked against the
    manifest's size and sha256: the bytes returned are the bytes that were hashed."""
    with _open_artifact(a, manifest_path) as f:
        data = f.read(a.bytes + 1)
    if len(data) != a.bytes:
        raise BundleError(f"{quoted(a.file)} (artifact {quoted(a.role)}) changed size while being read; "
                          "re-run `edgesr convert`")
    _check_digest(a, hashlib.sha256(data).hexdigest(), manifest_path)
    return data


def _check_digest(a: Artifact, digest: str, manifest_path: Path | str) -> None:
    if digest != a.sha256:
        raise BundleError(f"{quoted(a.file)} (artifact {quoted(a.role)}) sha256 {digest[:16]}... does not match "
                          f"{quoted(manifest_path)} ({a.sha256[:16]}...): the file was modified or corrupted; "
                          "re-run `edgesr convert`")


def _open_artifact(a: Artifact, manifest_path: Path | str):
    """A binary file object for `a`, opened without following any symlink below the bundle
    folder, checked to be a regular file of the listed size (else a one-line BundleError)."""
    where = f"{quoted(a.file)} (artifact {quoted(a.role)}, listed in {quoted(manifest_path)})"
    fd = _open_inside(a.path.parents[len(PurePosixPath(a.file).parts) - 1], a.file, where)
    f = os.fdopen(fd, "rb")
    try:
        size = os.fstat(fd).st_size
        if size != a.bytes:
            raise BundleError(f"{quoted(a.file)} (artifact {quoted(a.role)}) has {size} bytes, "
                              f"{quoted(manifest_path)} says {a.bytes}: the file was modified or truncated; "
                              "re-run `edgesr convert`")
    except BaseException:
        f.close()
        raise
    return f


def _read_inside(folder: Path, rel: str, where: str, max_bytes: int) -> bytes:
    fd = _open_inside(folder, rel, where)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BundleError(f"{where}: larger than {max_bytes} bytes; no manifest is (refusing to read it)")
    return data


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer


def _open_inside(folder: Path, rel: str, where: str) -> int:
    """fd of ``folder/rel`` (rel: '/'-separated, no '..'), opened component by component
    with O_NOFOLLOW relative to the previous one, so no symlink (and nothing swapped in for a
    checked component) can lead outside `folder`; the result must be a regular file."""
    parts = PurePosixPath(rel).parts
    use_dir_fd = os.open in os.supports_dir_fd and _NOFOLLOW
    try:
        if not use_dir_fd:  # (no openat here: check each component by lstat, then open)
            p = folder
            for part in parts:
                p = p / part
                if p.is_symlink():
                    raise BundleError(f"{where} is a symbolic link; bundles hold real files only")
            fd = os.open(p, os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0))
        else:
            fd = os.open(folder, os.O_RDONLY | _DIRECTORY)
            try:
                for part in parts[:-1]:
                    nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
                leaf = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=fd)
            finally:
                os.close(fd)
            fd = leaf
    except BundleError:
        raise
    except FileNotFoundError:
        raise BundleError(f"{where} is missing") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise BundleError(f"{where} is (or lies under) a symbolic link or a non-folder; bundles hold real "
                              "files only") from None
        raise BundleError(f"{where} cannot be opened ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{where} is not a regular file")
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def _load_json(mpath: Path, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{quoted(mpath)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return load_json_bounded(text, MANIFEST_NAME)
    except json.JSONDecodeError as e:
        raise BundleError(f"{quoted(mpath)}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:
        raise BundleError(f"{quoted(mpath)}: invalid JSON ({one_line(e)})") from None


def _artifact(folder: Path, mpath: Path, a: dict[str, Any]) -> Artifact:
    rel = a["file"]
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in parts or not parts:
        raise BundleError(f"{quoted(mpath)}: artifact {quoted(a['role'])} file {quoted(rel)} must be a relative "
                          "path inside the bundle")
    known = {"role", "file", "sha256", "bytes", "format", "precision", "backend"}
    return Artifact(role=a["role"], file=rel, path=folder.joinpath(*parts), sha256=a["sha256"], bytes=int(a["bytes"]),
                    format=a["format"], precision=a["precision"], backend=a["backend"],
                    extra={k: v for k, v in a.items() if k not in known})


def _spec(d: dict[str, Any], mpath: Path | None = None) -> Spec:
    from .spec import spec_from_untrusted

    try:
        return spec_from_untrusted(d, quoted(mpath or MANIFEST_NAME))
    except ValueError as e:
        raise BundleError(one_line(e)) from None


# Files `edgesr convert` writes into OUTDIR besides the manifest's artifacts.
AUXILIARY_FILES = (MANIFEST_NAME, "report.json", "report.md")
AUXILIARY_GLOBS = ("sensitivity_*.png", "heatmaps/*.png")
_MAX_OWNED_ENTRIES = 10_000


def not_written_by_edgesr(folder: str | Path) -> str | None:
    """Why `folder` is not a bundle edgesr wrote (so ``convert --force`` must not replace
    it), or None when it is: a real folder (no symlink) holding a readable manifest.json of
    format edgesr-bundle and nothing but its listed artifacts, report.json / report.md,
    sensitivity plots and parity heatmaps (or nothing at all). Anything else in it (the
    user's checkpoint, notes, a symlink, a sub-folder) is foreign: replacing it would lose it."""
    import fnmatch
    import os

    folder = Path(folder)
    if folder.is_symlink():
        return "it is a symbolic link"
    if not folder.is_dir():
        return "it is not a folder"
    try:
        with os.scandir(folder) as it:
            first = sorted(e.name for _, e in zip(range(4), it))
    except OSError as e:
        return f"it cannot be listed ({e.strerror or e})"
    if not first:
        return None  # an empty folder holds nothing to lose
    mpath = folder / MANIFEST_NAME
    if mpath.is_symlink() or not mpath.is_file():
        shown = ", ".join(quoted(x) for x in first[:3]) + (" ..." if len(first) > 3 else "")
        return (f"it is not an `edgesr convert` output (no {MANIFEST_NAME}) and holds files edgesr did not "
                f"write ({shown})")
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            return f"its {MANIFEST_NAME} is not one edgesr writes (larger than {MAX_MANIFEST_BYTES} bytes)"
        data = load_json_bounded(mpath.read_bytes(), MANIFEST_NAME)
    except (OSError, ValueError, UnicodeDecodeError):
        return f"its {MANIFEST_NAME} is not readable JSON, so edgesr cannot tell it wrote the folder"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"its {MANIFEST_NAME} is not an edgesr bundle manifest (format is not {FORMAT!r})"
    arts = data.get("artifacts")
    listed = {a["file"] for a in arts if isinstance(a, dict) and isinstance(a.get("file"), str)} \
        if isinstance(arts, list) else set()
    dirs_needed = {str(PurePosixPath(f).parent) for f in listed} | {"heatmaps"}
    foreign: list[str] = []
    count = 0
    for root, dirnames, filenames in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        for d in list(dirnames):
            rel = d if rel_root == "." else f"{rel_root}/{d}"
            if (Path(root) / d).is_symlink() or not any(x == rel or x.startswith(rel + "/") for x in dirs_needed):
                foreign.append(rel + "/")
                dirnames.remove(d)  # never descend into what is not ours
        for f in filenames:
            count += 1
            if count > _MAX_OWNED_ENTRIES:
                return f"it holds more than {_MAX_OWNED_ENTRIES} files (no bundle does)"
            rel = f if rel_root == "." else f"{rel_root}/{f}"
            p = Path(root) / f
            own = (rel in listed or rel in AUXILIARY_FILES or any(fnmatch.fnmatchcase(rel, g) for g in AUXILIARY_GLOBS))
            if p.is_symlink() or not own:
                foreign.append(rel)
    if foreign:
        shown = ", ".join(quoted(x) for x in sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
        return f"it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} edgesr did not write ({shown})"
    return None


# --------------------------------------------------------------------------- validation


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The manifest JSON Schema (draft 2020-12) as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(data: Any, *, use_jsonschema: bool | None = None) -> list[str]:
    """All problems with a manifest dict, most important first ([] when valid).

    Schema problems come first (missing fields before other ones, each in document
    order), then consistency problems between fields. ``use_jsonschema``: None = use it
    when installed; False = the built-in validator; True = require it.
    """
    if use_jsonschema is None:
        use_jsonschema = _have_jsonschema()
    raw = list(_jsonschema_errors(data) if use_jsonschema else _mini_errors(data, schema(), ()))
    raw.sort(key=lambda e: (e[0] != "required", _path_key(e[1])))
    problems = [_message(*e) for e in raw]
    if not problems:
        problems = _consistency(data)
    return problems


def _have_jsonschema() -> bool:
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


# An error is (kind, path, detail): kind is the schema keyword that failed, path a tuple of
# keys / indices of the offending value (for "required": of the missing field itself).
Err = tuple[str, tuple, Any]


def _jsonschema_errors(data: Any) -> Iterator[Err]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    for e in validator.iter_errors(data):
        path = tuple(e.absolute_path)
        if e.validator == "required":
            for name in e.validator_value:
                if isinstance(e.instance, dict) and name not in e.instance:
                    yield ("required", path + (name,), None)
        elif e.validator == "type":
            yield ("type", path, (e.validator_value, e.instance))
        elif e.validator in ("const", "enum"):
            allowed = [e.validator_value] if e.validator == "const" else e.validator_value
            yield ("enum", path, (allowed, e.instance))
        else:
            yield (str(e.validator), path, (e.validator_value, e.instance))


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _JSON_TYPES[t])


def _resolve(s: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in s:
        ref = s["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        node: Any = schema()
        for part in ref[2:].split("/"):
            node = node[part]
        s = node
    return s


def _mini_errors(v: Any, s: dict[str, Any], path: tuple) -> Iterator[Err]:
    """The subset of draft 2020-12 the manifest schema uses."""
    s = _resolve(s)
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(v, t) for t in types):
            yield ("type", path, (s["type"], v))
            return
    if "const" in s and not _json_equal(v, s["const"]):
        yield ("enum", path, ([s["const"]], v))
    if "enum" in s and not any(_json_equal(v, c) for c in s["enum"]):
        yield ("enum", path, (s["enum"], v))
    if isinstance(v, str):
        if "minLength" in s and len(v) < s["minLength"]:
            yield ("minLength", path, (s["minLength"], v))
        if "pattern" in s and not re.search(s["pattern"], v):
            yield ("pattern", path, (s["pattern"], v))
    if _is_type(v, "number") and "minimum" in s and v < s["minimum"]:
        yield ("minimum", path, (s["minimum"], v))
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            yield ("minItems", path, (s["minItems"], v))
        if "maxItems" in s and len(v) > s["maxItems"]:
            yield ("maxItems", path, (s["maxItems"], v))
        if "items" in s:
            for i, item in enumerate(v):
                yield from _mini_errors(item, s["items"], path + (i,))
    if isinstance(v, dict):
        for name in s.get("required", ()):
            if name not in v:
                yield ("required", path + (name,), None)
        props = s.get("properties", {})
        for k, item in v.items():
            if k in props:
                yield from _mini_errors(item, props[k], path + (k,))
            elif isinstance(s.get("additionalProperties"), dict):
                yield from _mini_errors(item, s["additionalProperties"], path + (k,))
            elif s.get("additionalProperties") is False:
                yield ("additionalProperties", path + (k,), (False, item))


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _path_key(path: tuple) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


def format_path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _json_type(v: Any) -> str:
    for t in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(v, t):
            return t
    return type(v).__name__


def _message(kind: str, path: tuple, detail: Any) -> str:
    where = format_path(path)
    if kind == "required":
        return f"missing field '{where}'"
    expected, got = detail
    if kind == "type":
        exp = " or ".join(expected) if isinstance(expected, list) else expected
        return f"field '{where}' must be {exp}, got {_json_type(got)} {_short(got)}"
    if kind == "enum":
        return f"field '{where}' must be {' or '.join(_short(x) for x in expected)}, got {_short(got)}"
    if kind == "minimum":
        return f"field '{where}' must be >= {expected}, got {_short(got)}"
    if kind == "minLength":
        return f"field '{where}' must not be empty"
    if kind == "pattern":
        return f"field '{where}' has an invalid value {_short(got)} (must match {expected})"
    if kind in ("minItems", "maxItems"):
        n = len(got) if isinstance(got, list) else got
        return f"field '{where}' has {n} items; {kind} is {expected}"
    return f"field '{where}' is invalid ({kind} {_short(expected)})"


def _consistency(d: dict[str, Any]) -> list[str]:
    """Cross-field rules the schema cannot express."""
    out = []
    spec, io, tiling = d["spec"], d["io"], d["tiling"]
    if io["scale"] != spec["scale"]:
        out.append(f"field 'io.scale' ({io['scale']}) differs from 'spec.scale' ({spec['scale']})")
    if io["receptive_field"] != spec["receptive_field"]:
        out.append(f"field 'io.receptive_field' ({io['receptive_field']}) differs from 'spec.receptive_field' "
                   f"({spec['receptive_field']})")
    rf = io["receptive_field"]
    if tiling["exact"] and (rf is None or tiling["overlap"] < rf):
        out.append(f"field 'tiling.exact' is true but overlap {tiling['overlap']} vs receptive field {rf} cannot "
                   "make tiled == untiled")
    roles = [a["role"] for a in d["artifacts"]]
    dup = sorted({r for r in roles if roles.count(r) > 1})
    if dup:
        out.append(f"field 'artifacts' lists role {dup[0]!r} more than once")
    for i, a in enumerate(d["artifacts"]):
        parts = PurePosixPath(a["file"]).parts
        if ".." in parts:
            out.append(f"field 'artifacts[{i}].file' ({a['file']!r}) must stay inside the bundle (no '..')")
    return out


# --------------------------------------------------------------------------- writing


def manifest_extras(spec: Spec, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fields ``pipeline.build_manifest`` adds to the manifest: ``tiling``, ``shape_range``,
    ``versions`` (replacing the latency-only ones) and ``latency`` (null without --no-bench).

    ``tiling`` comes from ``report["tiling"]`` (an :class:`edgesr.tiling.TilingMeasurement`
    as a dict); without one, the declared fallback with ``exact: false`` (nothing verified)."""
    report = report or {}
    meas = report.get("tiling")
    m = max(1, int(spec.size_multiple))
    if meas:
        tile, overlap, align = int(meas["tile"]), int(meas["overlap"]), int(meas.get("alignment") or 1)
        from .tiling import TilingMeasurement

        tiling = {"tile": tile, "overlap": overlap, "units": "input_pixels", "exact": bool(meas["exact"]),
                  "alignment": align, "summary": TilingMeasurement.from_dict(meas).summary(), "rule": TILING_RULE,
                  "measured": meas}
        min_size = max(spec.min_size, int(meas.get("min_size") or 1))
    else:
        tile, overlap = recommended_tiling(spec)
        tiling = {"tile": tile, "overlap": overlap, "units": "input_pixels", "exact": False, "alignment": m,
                  "summary": "not measured", "rule": TILING_RULE}
        min_size = spec.min_size
    opt = tile + 2 * overlap
    return {
        "tiling": tiling,
        "shape_range": {"batch": {"min": 1, "max": None, "opt": 1},
                        "height": {"min": max(min_size, m), "max": None, "opt": opt, "multiple": m},
                        "width": {"min": max(min_size, m), "max": None, "opt": opt, "multiple": m}},
        "versions": library_versions(report),
        "latency": _latency_summary(report.get("latency")),
    }


def library_versions(report: dict[str, Any] | None = None) -> dict[str, Any]:
    import platform

    from . import __version__
    from .machine import package_version as _version

    v: dict[str, Any] = {"edgesr": __version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "onnxruntime", "onnxslim", "numpy", "tensorrt", "tensorrt_rtx", "executorch"):
        v[mod] = _version(mod)
    opset = ((report or {}).get("export") or {}).get("opset")
    if opset is not None:
        v["onnx_opset"] = int(opset)
    return v


def _latency_summary(lat: dict[str, Any] | None) -> dict[str, Any] | None:
    if not lat or not lat.get("results"):
        return None
    first = lat["results"][0]
    machine = lat.get("machine") or {}
    return {"input": first.get("size"), "output": first.get("output"), "threads": lat.get("threads"),
            "machine": {k: machine.get(k) for k in ("cpu_model", "logical_cpus", "machine", "platform")},
            "results": [{k: r.get(k) for k in ("backend", "median_ms", "p90_ms", "cv", "mpix_per_s")
                         if r.get(k) is not None} for r in lat["results"]]}


def write_manifest(folder: str | Path, manifest: dict[str, Any], *, verify_hashes: bool = True) -> Path:
    """Validate `manifest` against the schema and the files in `folder`, then write
    ``folder/manifest.json`` atomically (NaN/Infinity written as strings). Raises
    BundleError before writing anything when it would not read back."""
    from .fsutil import atomic_write_text

    folder = Path(folder)
    data = json.loads(json.dumps(json_safe(manifest), default=str))
    problems = validate(data)
    if problems:
        raise BundleError(f"refusing to write an invalid {MANIFEST_NAME}: {problems[0]}")
    if verify_hashes:
        for a in data["artifacts"]:
            verify_artifact(_artifact(folder, folder / MANIFEST_NAME, a), folder / MANIFEST_NAME)
    return atomic_write_text(folder / MANIFEST_NAME, json.dumps(data, indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":  # pragma: no cover - `python -m edgesr.bundle DIR`
    m = read_manifest(sys.argv[1])
    print(f"{m.folder}: valid, {len(m.artifacts)} artifacts")
