"""SIGKILL `edgesr convert` at many moments: OUTDIR is absent or complete, never half-written.

One test, 20 kills of real ``python -m edgesr convert CKPT -o OUT --no-bench --no-ort-format``
processes (a 12k-parameter training-form ETDS x2, so the reparameterize, export and parity
steps all run). The kill moments are spread over the whole run:

* at a random delay after the process starts (import, load, reparameterize, export, parity),
* at a random delay after the export step finished,
* the instant the staging folder holds report.json / manifest.json (just before publishing),
* the instant OUT changes (just after the rename, before the process exits).

Two chains of 10 kills run side by side: in one, OUT is deleted before each run (a first
publish); in the other, each run replaces the complete OUT of the previous ones with
``--force`` (the atomic replace). Each run is also a re-run of the killed one before it. After every kill, OUT must either not exist or be a
complete bundle: ``manifest.json`` readable and valid, every artifact present with the
listed size and sha256, ``report.json`` present. When OUT was complete before a ``--force``
run, it must still be complete after the kill (Linux: one atomic exchange). Every fifth kill
is followed by an uninterrupted re-run, which must succeed and leave no stale
``.edgesr-partial-*`` entries beside OUT.

A run that finishes before its event-triggered kill lands (the publish window is a few
microseconds wide) is repeated, up to three times, so that all 20 kills happen. Seeded
(EDGESR_SIGKILL_SEED, default 0) so a failing schedule can be replayed.
Runtime: 25 python processes, two at a time (see the final message for the measured time).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGING_PREFIX = ".edgesr-partial-"
KILLS = 20
RUN_TIMEOUT = 180

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


@dataclass
class Plan:
    kind: str  # "delay" | "after_export" | "staging_file" | "out_changes"
    value: float | str = 0.0

    def __str__(self) -> str:
        if self.kind in ("delay", "after_export"):
            return f"{self.kind} {float(self.value):.2f}s"
        return f"{self.kind} {self.value}" if self.value else self.kind


@dataclass
class Trial:
    plan: Plan
    pid: int = 0
    rc: int | None = None
    killed_at: float | None = None
    last_step: str = "(none)"
    saw_staging: bool = False
    out_before: str = "absent"
    out_after: str = "absent"
    seconds: float = 0.0  # how long the process lived
    lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        at = f"{self.killed_at:.2f}s" if self.killed_at is not None else "-"
        return (f"{self.plan!s:<26} pid {self.pid:<7} rc {self.rc!s:<4} killed at {at:<7} after step "
                f"{self.last_step!r:<18} staging seen {self.saw_staging!s:<5} OUT {self.out_before} -> {self.out_after}")


def _env() -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + (os.pathsep + pp if pp else ""))


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def bundle_state(out: Path) -> str:
    """'absent' or 'complete'; raises AssertionError for anything in between."""
    if not os.path.lexists(out):
        return "absent"
    assert out.is_dir(), f"{out} exists but is not a folder"
    names = sorted(p.name for p in out.iterdir())
    mpath = out / "manifest.json"
    assert mpath.is_file(), f"{out} exists without manifest.json (half-written): {names}"
    manifest = json.loads(mpath.read_text())
    for a in manifest["artifacts"]:
        f = out / a["file"]
        assert f.is_file(), f"{a['file']} listed in the manifest is missing: {names}"
        assert f.stat().st_size == a["bytes"], f"{a['file']} has {f.stat().st_size} bytes, manifest {a['bytes']}"
        assert _sha256(f) == a["sha256"], f"{a['file']} sha256 differs from the manifest"
    assert (out / "report.json").is_file(), f"report.json missing: {names}"
    json.loads((out / "report.json").read_text())
    from edgesr.bundle import read_manifest

    read_manifest(out)  # the product's own full validation (schema + hashes)
    return "complete"


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(STAGING_PREFIX))


def _exchange_supported(tmp: Path) -> bool:
    from edgesr.publish import _RENAME_EXCHANGE, _rename2

    a, b = tmp / "xa", tmp / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return _rename2(a, b, _RENAME_EXCHANGE)
    finally:
        a.rmdir()
        b.rmdir()


class Converter:
    def __init__(self, ckpt: Path, out: Path):
        self.ckpt, self.out = ckpt, out

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "edgesr", "convert", str(self.ckpt), "-o", str(self.out),
                "--no-bench", "--no-ort-format"]
        return argv + (["--force"] if os.path.lexists(self.out) else [])

    def run_full(self) -> tuple[float, dict[str, float]]:
        """An uninterrupted run: (seconds, {step line prefix: seconds since start})."""
        t0 = time.monotonic()
        p = subprocess.Popen(self.argv(), cwd=self.out.parent, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        steps: dict[str, float] = {}

        def read():
            for line in p.stderr:
                if line.startswith("["):
                    steps[line.split(":")[0]] = time.monotonic() - t0
                steps.setdefault("_log", 0.0)
                err.append(line)

        err: list[str] = []
        th = threading.Thread(target=read, daemon=True)
        th.start()
        out, _ = p.communicate(timeout=RUN_TIMEOUT)
        th.join(5)
        assert p.returncode == 0, f"uninterrupted convert failed (rc {p.returncode}):\n{''.join(err)[-3000:]}"
        return time.monotonic() - t0, steps

    def run_killed(self, plan: Plan) -> Trial:
        trial = Trial(plan, out_before=bundle_state(self.out))
        ino_before = self.out.stat().st_ino if self.out.exists() else None
        t0 = time.monotonic()
        p = subprocess.Popen(self.argv(), cwd=self.out.parent, env=_env(), text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        trial.pid = p.pid
        staging = self.out.parent / f"{STAGING_PREFIX}{self.out.name}-{p.pid}"
        export_done: list[float] = []

        def read():
            for line in p.stderr:
                trial.lines.append(line)
                if line.startswith("["):
                    trial.last_step = line.split(":")[0]
                    if "export" in line.split(":")[0]:
                        export_done.append(time.monotonic() - t0)

        th = threading.Thread(target=read, daemon=True)
        th.start()
        while p.poll() is None:
            now = time.monotonic() - t0
            if staging.is_dir():
                trial.saw_staging = True
            fire = False
            if plan.kind == "delay":
                fire = now >= float(plan.value)
            elif plan.kind == "after_export":
                fire = bool(export_done) and now >= export_done[0] + float(plan.value)
            elif plan.kind == "staging_file":
                fire = (staging / str(plan.value)).exists()
            elif plan.kind == "out_changes":
                try:
                    fire = self.out.stat().st_ino != ino_before
                except FileNotFoundError:
                    fire = False
            if fire:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    trial.killed_at = now
                except ProcessLookupError:
                    pass
                break
            if now > RUN_TIMEOUT:
                p.kill()
                pytest.fail(f"convert did not finish in {RUN_TIMEOUT} s: {''.join(trial.lines)[-2000:]}")
            time.sleep(0.001)
        trial.rc = p.wait(timeout=60)
        trial.seconds = time.monotonic() - t0
        th.join(5)
        if trial.rc != -signal.SIGKILL:
            assert trial.rc == 0, f"convert failed on its own (rc {trial.rc}): {''.join(trial.lines)[-2000:]}"
            trial.killed_at = None
        trial.out_after = bundle_state(self.out)
        return trial


def schedule(rng: random.Random, total: float, export_at: float) -> list[Plan]:
    """10 kill moments over the whole run, for one chain (see the module docstring)."""
    after = max(0.5, total - export_at)
    plans = [Plan("delay", rng.uniform(0.2, total)) for _ in range(4)]
    plans += [Plan("after_export", rng.uniform(0.0, after)) for _ in range(2)]
    plans += [Plan("staging_file", "report.json"), Plan("staging_file", "report.md"),
              Plan("staging_file", "manifest.json"), Plan("out_changes")]
    rng.shuffle(plans)
    return plans


def run_chain(conv: Converter, plans: list[Plan], fresh: bool, exchange: bool) -> tuple[list[str], int]:
    """Kill one run per plan; `fresh`: OUT is deleted before each run (first publish, no --force),
    else each run replaces the complete OUT left by the previous ones (--force)."""
    log: list[str] = []
    killed = 0
    earlier_pids: list[int] = []
    work = conv.out.parent
    retry_rng = random.Random(len(plans) + fresh)
    for i, plan in enumerate(plans, 1):
        current = plan
        for attempt in range(6):
            if fresh and os.path.lexists(conv.out):
                shutil.rmtree(conv.out)
            trial = conv.run_killed(current)
            log.append(f"{i:2d}. {trial.describe()}" + (f" (attempt {attempt + 1})" if attempt else ""))
            if trial.killed_at is not None:
                break
            # The run finished before its kill moment (runs speed up once caches are warm, and an
            # event can come and go between polls): aim at a random point of the run just seen.
            current = Plan("delay", retry_rng.uniform(0.1, 0.9) * trial.seconds)
        context = "\n".join(log)
        killed += trial.killed_at is not None
        if trial.out_before == "complete" and exchange:
            assert trial.out_after == "complete", f"--force run lost the existing bundle:\n{context}"
        if trial.saw_staging:
            # this run created its staging folder, so it must have removed the dead runs' ones
            stale = [n for n in leftovers(work) if any(n.endswith((f"-{pid}", f"-{pid}.lock")) for pid in earlier_pids)]
            assert not stale, f"stale staging of earlier killed runs not cleaned: {stale}\n{context}"
        earlier_pids.append(trial.pid)
        if i % 5 == 0:
            conv.run_full()  # a re-run (with --force if OUT exists) must succeed and clean up
            assert bundle_state(conv.out) == "complete", context
            assert leftovers(work) == [], f"re-run left {leftovers(work)}\n{context}"
            earlier_pids.clear()
            log.append("    re-run ok, no staging left")
    return log, killed


def test_sigkill_leaves_no_half_written_outdir(tmp_path):
    import torch
    from safetensors.torch import save_file

    from edgesr.registry import build_variant

    torch.manual_seed(0)
    model = build_variant("etds-t-x2", "training").module
    ckpt = tmp_path / "tiny_training.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    exchange = _exchange_supported(tmp_path)
    chains = {}
    for name in ("fresh", "force"):
        (tmp_path / name).mkdir()
        chains[name] = Converter(ckpt, tmp_path / name / "out")

    t_start = time.monotonic()
    total, steps = chains["force"].run_full()  # baseline: the reference timing, and OUT for --force runs
    assert bundle_state(chains["force"].out) == "complete" and leftovers(tmp_path / "force") == []
    export_at = next((t for k, t in steps.items() if k.startswith("[3")), total / 2)
    seed = int(os.environ.get("EDGESR_SIGKILL_SEED", "0"))
    rng = random.Random(seed)
    plans = {name: schedule(rng, total, export_at) for name in chains}
    assert sum(map(len, plans.values())) == KILLS

    # Two independent chains (separate folders) run side by side to halve the wall time.
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_chain, conv, plans[name], name == "fresh", exchange)
                   for name, conv in chains.items()}
        results = {name: f.result() for name, f in futures.items()}
    seconds = time.monotonic() - t_start
    killed = sum(k for _, k in results.values())
    report = "\n".join([f"seed {seed}; baseline run {total:.1f} s, export done at {export_at:.1f} s; "
                        f"atomic exchange: {exchange}"]
                       + [f"-- {name} chain ({'OUT deleted before each run' if name == 'fresh' else '--force over a complete OUT'})"
                          f"\n" + "\n".join(log) for name, (log, _) in results.items()]
                       + [f"{killed} of {KILLS} runs killed mid-run; total {seconds:.0f} s"])
    print(report)
    # the schedule must really interrupt runs, not just watch them finish
    assert killed == KILLS, report
