"""Read a pickle's opcodes without executing any of them.

``torch.load(weights_only=True)`` already refuses to import anything beyond tensors and plain
containers; this scan runs *before* it so that edgesr can say exactly what a refused file
is, and bound the work a file may cause:

* every global the pickle would import (``GLOBAL``, ``STACK_GLOBAL``, ``INST``; ``EXT*``
  codes count as unknown globals) is listed, so a code-running pickle is called that,
  whatever protocol or opcode it uses to reach its callable;
* opcodes PyTorch's safe loader does not implement (protocol 4/5 framing, short strings,
  ``MEMOIZE``, ...) are listed, so a pickle it cannot read gets that reason, not "corrupt";
* persistent ids (one per tensor storage) and all opcodes are counted, and inline data
  (a string or bytes argument) larger than a limit stops the scan, so neither memory nor
  time depends on what the file claims.

The scan uses :func:`pickletools.genops`, which only decodes opcode arguments.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field
from typing import IO, BinaryIO, cast

# Opcodes torch._weights_only_unpickler.Unpickler implements (torch 2.4 - 2.13).
TORCH_SAFE_OPCODES = frozenset({
    "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK", "TUPLE",
    "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT",
    "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID",
    "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP"})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                         "SHORT_BINSTRING"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# Modules whose callables run arbitrary code / commands / I/O when a pickle calls them.
CODE_MODULES = frozenset({"os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket",
                          "runpy", "importlib", "pty", "code", "webbrowser", "ctypes", "pickle", "marshal", "types",
                          "operator", "functools", "io", "codecs", "platform", "multiprocessing", "asyncio"})
CODE_NAMES = frozenset({"eval", "exec", "compile", "open", "getattr", "setattr", "__import__", "system", "popen",
                        "apply", "input", "breakpoint", "attrgetter", "methodcaller", "call", "run", "Popen"})


class ScanLimit(Exception):
    """The pickle exceeds a scan limit (message says which)."""


@dataclass
class PickleScan:
    protocol: int = 0
    globals: list[str] = field(default_factory=list)  # "module.name", first-seen order, distinct
    unsupported_ops: list[str] = field(default_factory=list)  # opcodes torch's safe loader lacks
    persistent_ids: int = 0
    ops: int = 0
    complete: bool = False  # reached STOP
    error: str | None = None  # why decoding stopped early (malformed / truncated)

    def unsafe_globals(self, allowed: frozenset[str]) -> list[str]:
        return [g for g in self.globals if g not in allowed]


def torch_allowed_globals() -> frozenset[str]:
    """The globals torch.load(weights_only=True) accepts ("module.name")."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - private API moved: fall back to the essentials
        return frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                          "collections.OrderedDict", "torch.FloatStorage", "torch.HalfStorage",
                          "torch.BFloat16Storage", "torch.DoubleStorage", "torch.LongStorage", "torch.IntStorage"})


class _BoundedReader(io.RawIOBase):
    """File wrapper refusing any single read larger than `max_read` (a pickle's inline data)."""

    def __init__(self, f: BinaryIO, max_read: int):
        self.f, self.max_read = f, max_read

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.max_read:
            raise ScanLimit(f"it holds an inline object of {'unbounded' if n is None or n < 0 else n} bytes "
                            f"(a state_dict keeps tensor data outside its pickle)")
        return self.f.read(n)

    def readline(self, size: int | None = -1) -> bytes:  # `size` ignored: the bound is max_read
        line = self.f.readline(self.max_read + 1)
        if len(line) > self.max_read:
            raise ScanLimit(f"it holds a text line longer than {self.max_read} bytes")
        return line

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.f.tell()


def scan_pickle(f: BinaryIO, *, max_ops: int, max_persistent_ids: int, max_inline_bytes: int = 64 << 20,
                allowed: frozenset[str] | None = None) -> PickleScan:
    """Scan one pickle (up to its STOP) from the current position of `f`.

    Raises ScanLimit when the pickle exceeds `max_ops` opcodes, `max_persistent_ids`
    storages or holds an inline argument larger than `max_inline_bytes`. A malformed or
    truncated stream is not an exception: the result says ``complete=False`` and why.
    """
    res = PickleScan()
    seen: set[str] = set()
    # A shadow of the pickle stack holding only what STACK_GLOBAL needs: recent string
    # values (None for anything else), and the memo entries that were strings.
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}

    def add_global(name: str) -> None:
        if name not in seen:
            seen.add(name)
            res.globals.append(name)

    reader = _BoundedReader(f, max_inline_bytes)
    try:
        # genops only calls read / readline, which the bounded reader provides.
        for op, arg, _pos in pickletools.genops(cast(IO[bytes], reader)):
            res.ops += 1
            if res.ops > max_ops:
                raise ScanLimit(f"it has more than {max_ops} pickle opcodes")
            name = op.name
            if name not in TORCH_SAFE_OPCODES and name not in res.unsupported_ops:
                res.unsupported_ops.append(name)
            if name == "PROTO":
                res.protocol = max(res.protocol, _int_arg(arg))
            elif name in ("GLOBAL", "INST"):
                add_global(".".join(str(arg).split(" ", 1)))
            elif name == "STACK_GLOBAL":
                mod = strings[-2] if len(strings) >= 2 else None
                attr = strings[-1] if strings else None
                add_global(f"{mod}.{attr}" if mod is not None and attr is not None else "<computed name>")
            elif name in ("EXT1", "EXT2", "EXT4"):
                add_global(f"<copyreg extension {arg}>")
            elif name in ("BINPERSID", "PERSID"):
                res.persistent_ids += 1
                if res.persistent_ids > max_persistent_ids:
                    raise ScanLimit(f"it declares more than {max_persistent_ids} tensor storages")
            if name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else (arg.decode("latin-1") if isinstance(arg, bytes)
                                                                 else None))
            elif name in _PUT_OPS or name == "MEMOIZE":
                memo[len(memo) if name == "MEMOIZE" else _int_arg(arg)] = strings[-1] if strings else None
                continue  # the stack is unchanged
            elif name in _GET_OPS:
                strings.append(memo.get(_int_arg(arg)))
            elif name != "FRAME":
                strings.append(None)
            del strings[:-2]
            if name == "STOP":
                res.complete = True
                break
    except ScanLimit:
        raise
    except (ValueError, EOFError, OSError, UnicodeDecodeError, IndexError, TypeError) as e:
        res.error = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return res


def _int_arg(arg: object) -> int:
    """The argument of PROTO / PUT / GET opcodes, which pickletools always decodes as an int
    (its type says Any | None); anything else is a malformed stream, reported like the others."""
    if not isinstance(arg, int):
        raise TypeError(f"expected an integer opcode argument, got {type(arg).__name__}")
    return arg


def scan_pickles(f: BinaryIO, *, max_pickles: int, **kw) -> list[PickleScan]:
    """Scan consecutive pickles from `f` (torch's legacy format writes five in a row before
    the raw tensor data), stopping after `max_pickles`, at the end of the file, or at the
    first stream that does not decode (the raw data after the last pickle)."""
    out: list[PickleScan] = []
    while len(out) < max_pickles:
        start = f.tell()
        if not f.read(1):
            break
        f.seek(start)
        s = scan_pickle(f, **kw)
        if not s.complete and out:
            break  # past the pickles: raw storage bytes
        out.append(s)
        if not s.complete:
            break
    return out


def describe_global(name: str) -> str:
    """'runs code (it calls os.system)' or 'imports and runs code (it references X: ...)'."""
    parts = name.split(".")
    module, attr = (".".join(parts[:-1]) or "builtins"), parts[-1]
    if name.startswith("<") or module.split(".")[0] in CODE_MODULES or attr in CODE_NAMES:
        return f"unpickling it would run code (it calls {name})"
    return (f"unpickling it would import and run code (it references {name}: a pickled Python object, "
            "not a plain state_dict of tensors)")
