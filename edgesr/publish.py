"""Where `edgesr convert` writes: OUTDIR checks, a staging folder beside OUTDIR (locked while this
process converts into it; stale ones of dead processes cleaned), and the atomic publish of the
finished bundle (rename, or an atomic exchange with the old OUTDIR under --force).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from .errors import OutputError, OutputExists, quoted

STAGING_PREFIX = ".edgesr-partial-"


def check_outdir(outdir: Path, force: bool, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse an OUTDIR whose replacement could lose data, before any work (and again just
    before publishing): the current folder or one of its parents (`-o .`); a folder holding
    (or being) one of `inputs` (the checkpoint, --calib, --testset, --model code), even with --force; an
    existing OUTDIR without --force; and, with --force, anything but a bundle edgesr wrote
    itself (a real folder with an edgesr manifest and only edgesr's files in it)."""
    from .bundle import not_written_by_edgesr

    out = _absolute(outdir)
    cwd = _absolute(Path.cwd())
    if not outdir.name or out == cwd or out in cwd.parents:
        raise OutputError(f"output folder {quoted(outdir)} is the current folder or one of its parents; convert "
                          "writes a new folder and --force would replace it: name one, e.g. -o out/model")
    for p in inputs:
        if p is None:
            continue
        ip = _absolute(Path(p))
        if ip == out or out in ip.parents:
            raise OutputError(f"output folder {quoted(outdir)} holds the input {quoted(p)}; replacing it would "
                              "delete that: choose another output folder")
    if not os.path.lexists(outdir):
        return
    if not force:
        raise OutputExists(f"{quoted(outdir)} exists; pass --force to replace it")
    why = not_written_by_edgesr(outdir)
    if why is not None:
        raise OutputError(f"refusing to replace {quoted(outdir)} even with --force: {why}; edgesr only replaces "
                          "bundles it wrote. Move what you need out of it, or choose another -o")


def _absolute(p: Path) -> Path:
    """Absolute, symlinks resolved where they exist (a missing tail is kept as written)."""
    try:
        return p.expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # e.g. a symlink loop
        return Path(os.path.abspath(p))


def staging_name(outdir_name: str, tag: str = "") -> str:
    """``.edgesr-partial-[tag]<name>-<pid>``, the name shortened (with a hash, so two long
    names stay apart) when the result plus ``.lock`` would pass the file system's name limit:
    a legal 250-character OUTDIR must not fail because its staging name is longer."""
    import hashlib

    pid = str(os.getpid())
    budget = _name_max() - len(_LOCK_SUFFIX) - len(STAGING_PREFIX) - len(tag) - 1 - len(pid)
    name = outdir_name
    if len(os.fsencode(name)) > budget:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        keep = os.fsencode(name)[: max(0, budget - len(digest) - 1)].decode("utf-8", "ignore")
        name = f"{keep}~{digest}"
    return f"{STAGING_PREFIX}{tag}{name}-{pid}"


def _name_max() -> int:
    return 255  # NAME_MAX of ext4, XFS, btrfs, APFS, NTFS (UTF-16 units there)


def make_staging(outdir: Path) -> Path:
    """A fresh hidden folder beside OUTDIR, owned by this process (see `_lock_staging`)."""
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(outdir.parent)
        staging = outdir.parent / staging_name(outdir.name)
        _lock_staging(staging)  # before mkdir: a folder whose lock nobody holds is a stale leftover
        if os.path.lexists(staging):
            _remove_path(staging)
        staging.mkdir()
    except OSError as e:
        blocker = next((a for a in [outdir.parent, *outdir.parent.parents] if os.path.lexists(a)), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"cannot create the output folder {quoted(outdir)}: {quoted(blocker)} is a file, "
                              "not a folder") from None
        raise OutputError(f"cannot create the output folder {quoted(outdir)}: {e.strerror or e}") from None
    return staging


def _clean_stale_staging(parent: Path) -> None:
    """Remove staging folders (and their lock files) left by killed runs.

    A folder is stale when its lock file is not held by a live process (the kernel drops
    an flock when its holder dies, so a reused PID cannot keep a leftover alive), or, for
    a folder without a lock file, when the PID in its name is not running. Folders of
    running conversions, this process's included, are left alone.
    """
    try:
        entries = sorted(parent.glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return
    for p in entries:
        if p.name.endswith(_LOCK_SUFFIX):
            folder = p.with_name(p.name[: -len(_LOCK_SUFFIX)])
            if _HAVE_FLOCK and str(folder) not in _STAGING_LOCKS and not os.path.lexists(folder):
                fd = _try_lock(p)
                if fd is not None:  # orphan lock (killed right after publishing, or before mkdir)
                    _unlink_quietly(p)
                    os.close(fd)
            continue
        if str(p) in _STAGING_LOCKS:
            continue  # ours
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        lock = p.with_name(p.name + _LOCK_SUFFIX)
        if _HAVE_FLOCK and lock.exists():
            fd = _try_lock(lock)
            if fd is None:
                continue  # a live conversion holds it
            try:
                _remove_path(p)
                _unlink_quietly(lock)
            finally:
                os.close(fd)
        elif not _pid_alive(int(pid)):
            _remove_path(p)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. Windows: an invalid PID
        return False
    return True


def publish(staging: Path, outdir: Path, force: bool) -> None:
    """Rename the finished staging folder onto OUTDIR (replacing it only with --force).

    On Linux the replacement is one atomic exchange (renameat2 RENAME_EXCHANGE), so OUTDIR
    is at every instant either the complete old bundle or the complete new one; elsewhere
    it is two renames, and a kill between them leaves no OUTDIR (never a partial one) with
    the old bundle in a stale staging folder that the next run removes.
    """
    try:
        if os.path.lexists(outdir):
            if not force:
                raise OutputExists(f"{quoted(outdir)} appeared while converting; pass --force to replace it")
            check_outdir(outdir, force)  # still a bundle edgesr wrote? (it may have changed meanwhile)
            if rename2(staging, outdir, RENAME_EXCHANGE):
                _fsync_parent(outdir)
                _remove_path(staging)  # now holds the previous OUTDIR
            else:
                old = outdir.parent / staging_name(outdir.name, "old-")
                os.replace(outdir, old)
                os.replace(staging, outdir)
                _fsync_parent(outdir)
                _remove_path(old)
        else:
            if not rename2(staging, outdir, RENAME_NOREPLACE):
                os.rename(staging, outdir)
            _fsync_parent(outdir)
    except FileExistsError:
        raise OutputExists(f"{quoted(outdir)} appeared while converting; pass --force to replace it") from None
    except OSError as e:
        raise OutputError(f"cannot publish {quoted(outdir)}: {e.strerror or e}") from None
    finally:
        _unlock_staging(staging)


def discard_staging(staging: Path) -> None:
    """Remove an unfinished staging folder and release its lock (on any failure)."""
    _remove_path(staging)
    _unlock_staging(staging)


# ---- staging helpers: lock files, atomic renames --------------------------------------------

_LOCK_SUFFIX = ".lock"
_STAGING_LOCKS: dict[str, int] = {}  # staging folder -> fd of the lock file this process holds
try:
    import fcntl

    _HAVE_FLOCK = True
except ImportError:  # Windows: stale folders are recognised by PID only (every use checks _HAVE_FLOCK)
    _HAVE_FLOCK = False
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h), for rename2


def _lock_staging(staging: Path) -> None:
    """Create and hold ``<staging>.lock`` (flock) while this process converts into `staging`."""
    if not _HAVE_FLOCK or str(staging) in _STAGING_LOCKS:
        return
    lock = staging.with_name(staging.name + _LOCK_SUFFIX)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputExists(f"{staging} is in use by another edgesr process") from None
    _STAGING_LOCKS[str(staging)] = fd


def _unlock_staging(staging: Path) -> None:
    fd = _STAGING_LOCKS.pop(str(staging), None)
    if fd is not None:
        _unlink_quietly(staging.with_name(staging.name + _LOCK_SUFFIX))
        os.close(fd)


def _try_lock(lock: Path) -> int | None:
    """An fd holding `lock` exclusively, or None when a live process holds it."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def rename2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(src, dst, flags); False when the C library or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        _unlink_quietly(p)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_parent(path: Path) -> None:
    from .fsutil import _fsync_dir

    _fsync_dir(path.parent)
