"""Live progress for long work: one helper used by every stage that can take more than a
couple of seconds (INT8 calibration / sensitivity / search, quantize, tiled and folder
upscale, parity, zoo, bench).

- On a terminal: a tqdm bar with counts when the work is countable, otherwise a bar-less
  line with the elapsed time that keeps ticking (a spinner).
- Not on a terminal (logs, CI, pipes): a plain line ``edgesr: <stage>: 12/40 layers (30%),
  61 s`` every ``EDGESR_PROGRESS_S`` seconds (default 30) while the stage runs, and nothing
  for stages shorter than that.
- Always on stderr, so stdout stays one JSON object under ``--json``.
- ``EDGESR_PROGRESS=0`` (or :func:`set_enabled(False) <set_enabled>`) silences it.

A background thread does the ticking, so a stage whose single step takes minutes (one ORT
calibration pass) still shows that it is alive.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import IO, Iterable, Iterator, Sized, TypeVar

T = TypeVar("T")

DEFAULT_PLAIN_INTERVAL_S = 30.0
TTY_REFRESH_S = 0.5

_enabled: bool | None = None  # None: decided by EDGESR_PROGRESS


def set_enabled(enabled: bool | None) -> None:
    """Switch progress output on/off for this process (None: back to the environment default)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("EDGESR_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def plain_interval() -> float:
    """Seconds between plain progress lines when stderr is not a terminal."""
    try:
        v = float(os.environ.get("EDGESR_PROGRESS_S", DEFAULT_PLAIN_INTERVAL_S))
    except ValueError:
        return DEFAULT_PLAIN_INTERVAL_S
    return v if v > 0 else DEFAULT_PLAIN_INTERVAL_S


# uncountable work: the stage name and a ticking clock (tqdm's default would say "0it ?it/s")
SPINNER_FORMAT = "{desc}: running, {elapsed} elapsed{postfix}"


def _terminal_size(stream: IO[str]) -> tuple[int | None, int | None]:
    """(columns, rows) to give tqdm: None where the terminal reports its size (tqdm follows
    it), 80 x 24 where it reports 0 (some pseudo-terminals), on which tqdm draws nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return 80, 24
    return (80 if size.columns <= 0 else None), (24 if size.lines <= 0 else None)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """One stage's progress. Use through :func:`progress` / :func:`track`."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", show: bool = True,
                 stream: IO[str] | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0
        self.postfix = ""
        self._stream = stream if stream is not None else sys.stderr
        self._t0 = time.monotonic()
        self._show = show and enabled()
        self._bar = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if not self._show:
            return
        if _is_tty(self._stream):
            from tqdm import tqdm

            width, height = _terminal_size(self._stream)
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self._stream, leave=False,
                             dynamic_ncols=width is None, ncols=width, nrows=height,
                             bar_format=None if total else SPINNER_FORMAT)
            interval = TTY_REFRESH_S
        else:
            interval = plain_interval()
        self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True,
                                        name=f"edgesr-progress-{desc}")
        self._thread.start()

    # -- updates ----------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.bar_format = None if total else SPINNER_FORMAT
                self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        """A short status shown after the counts (e.g. the current PSNR drop)."""
        with self._lock:
            self.postfix = text
            if self._bar is not None:
                self._bar.set_postfix_str(text, refresh=True)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)

    # -- rendering --------------------------------------------------------------------------
    def line(self) -> str:
        """The plain progress line (what a non-terminal sees every interval)."""
        elapsed = time.monotonic() - self._t0
        if self.total:
            counts = f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"
        elif self.n:
            counts = f"{self.n} {self.unit}"
        else:
            counts = "running"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"edgesr: {self.desc}: {counts}{extra}, {elapsed:.0f} s"

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                else:
                    try:
                        print(self.line(), file=self._stream, flush=True)
                    except (OSError, ValueError):  # stream closed under us: stop quietly
                        return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def progress(desc: str, total: int | None = None, unit: str = "it", show: bool = True) -> Iterator[Progress]:
    """A stage with live progress: ``with progress("sensitivity", 40, "layers") as p: ... p.update()``.
    ``total=None`` is a spinner with elapsed time. ``show=False`` keeps the stage silent."""
    p = Progress(desc, total, unit, show)
    try:
        yield p
    finally:
        p.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          show: bool = True) -> Iterator[T]:
    """Iterate `items`, counting each one as done when the next is asked for."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress(desc, total, unit, show) as p:
        for item in items:
            yield item
            p.update()
