"""`--executor ray` on a real local Ray cluster: `ray start --head` on 127.0.0.1 with two CPUs (two
worker processes at a time) and one bench slot, started and stopped here.

- a sweep over a small zoo gives the same per-model results as the local executor, while one of
  its workers is SIGKILLed mid-conversion (the task is retried, nothing partial is left), and a
  rerun does no work (content-addressed results);
- bulk upscaling of a folder on Ray Data equals the local result byte for byte (failures too);
- Ctrl-C of a Ray run stops the cluster work it started;
- without Ray installed, one line names the extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edgesr.pipeline import BUNDLED_CHECKPOINT

from helpers.video import CLIP_FRAMES, CLIP_RATE, audio_summary, write_clip

ray = pytest.importorskip("ray", reason="needs pip install 'edgesr[ray]'")

TINY_CODE = '''
import torch
from torch import nn


class TinySR(nn.Module):
    """conv - ReLU - conv - PixelShuffle plus a nearest-neighbour skip: a small, plausible SR net."""

    def __init__(self, channels=8, scale=2):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 3 * scale * scale, 3, padding=1))
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.up(self.body(x)) + nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
'''


@pytest.fixture(scope="module", autouse=True)
def without_set5(tmp_path_factory):
    """The tiny zoo's untrained models (close to nearest-neighbour) score below bicubic on Set5, and the zoo's
    eval after convert rightly fails them for it. These tests compare Ray with local runs, so they run (Ray's
    cluster included: it starts after this) as where ../shared is absent."""
    saved = os.environ.get("EDGESR_SHARED")
    os.environ["EDGESR_SHARED"] = str(tmp_path_factory.mktemp("no-shared") / "absent")
    yield
    if saved is None:
        os.environ.pop("EDGESR_SHARED", None)
    else:
        os.environ["EDGESR_SHARED"] = saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """HOST:PORT of a head node (2 CPUs, one bench slot) in its own session; stopped at the end by
    signalling that session only (never `ray stop`, which would stop every Ray on the machine).
    Token authentication with a token of its own (environment, inherited by the edgesr processes
    the tests start), independent of any ~/.ray/auth_token."""
    import secrets

    from edgesr.distributed.cluster import BENCH_SLOT

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

    exe = Path(sys.executable).parent / "ray"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    cmd = [str(exe), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--resources", json.dumps({BENCH_SLOT: 1}), "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={temp}", "--block"]
    log = open(Path(temp) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(Path(temp) / 'ray-start.log').read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail("ray start did not listen within 180 s")
            time.sleep(0.5)
        yield address
    finally:
        _stop_session(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop_session(proc: subprocess.Popen) -> None:
    sid = proc.pid  # start_new_session: the session (and process group) id is the leader's pid
    for sig, wait in ((signal.SIGKILL, 10),):  # nothing in a test cluster needs a graceful stop
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _session_pids(sid):
            time.sleep(0.5)
        if not _session_pids(sid):
            break
    for pid in _session_pids(sid):  # Ray services that made their own process group, same session
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _session_pids(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    stat = (d / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        out.append(int(d.name))
            except (OSError, IndexError):
                pass
    return out


def _procs(match: str) -> dict[int, int]:
    """pid -> parent pid of the processes whose command line contains `match`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if match in cmd:
                stat = (d / "stat").read_text()
                out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- a small zoo


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("tinyzoo")
    (root / "code").mkdir()
    (root / "code" / "tiny.py").write_text(TINY_CODE)
    sys.path.insert(0, str(root / "code"))
    try:
        from tiny import TinySR
    finally:
        sys.path.remove(str(root / "code"))
        sys.modules.pop("tiny", None)
    (root / "weights").mkdir()
    for i, name in enumerate(["a", "b"]):
        torch.manual_seed(i)
        m = TinySR()
        with torch.no_grad():  # small residual: close to nearest-neighbour, so every convention is plausible
            for p in m.body.parameters():
                p.mul_(0.1)
        torch.save(m.state_dict(), root / "weights" / f"tiny-{name}.pth")
    entries = "".join(f'''
[[model]]
name = "tiny-{n}"
code = "code/tiny.py:TinySR"
weights = "weights/tiny-{n}.pth"
''' for n in ("a", "b", "gone"))
    (root / "index.toml").write_text(f'root = "."\nscale = 2\n{entries}')
    return root / "index.toml"


COMPARED = ("ok", "category", "reason", "inferred_input_range", "convention", "range_matches", "int8_built",
            "export", "reparam")


def _sweep(index: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "edgesr", "convert", "--zoo", str(index), "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def test_sweep_on_ray_matches_local_survives_a_killed_worker_and_reruns_for_free(ray_cluster, tiny_zoo, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    rc, out, err = _sweep(tiny_zoo, local)
    assert rc == 1, out + err  # tiny-gone has no weights
    cmd = [sys.executable, "-m", "edgesr", "convert", "--zoo", str(tiny_zoo), "-o", str(remote), "--executor", "ray",
           "--ray-address", ray_cluster]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        # the conversion of tiny-b runs in a child of a Ray worker: kill that worker mid-conversion
        children = {pid: ppid for pid, ppid in _procs("edgesr.zoo").items()
                    if '"tiny-b"' in _cmdline(pid) and str(remote) in _cmdline(pid)}
        if children:
            child, worker = next(iter(children.items()))
            time.sleep(2.0)  # well inside the conversion (importing torch alone takes longer)
            os.kill(worker, signal.SIGKILL)
            killed = (worker, child)
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=900)
    assert killed is not None, f"never saw tiny-b converting: {out}"
    assert proc.returncode == 1, out
    assert not _alive(killed[1]), "the killed worker's conversion kept running"
    for name in ("tiny-a", "tiny-b", "tiny-gone"):
        a = json.loads((local / "results" / f"{name}.json").read_text())
        b = json.loads((remote / "results" / f"{name}.json").read_text())
        for k in COMPARED:
            assert a.get(k) == b.get(k), (name, k, a.get(k), b.get(k))
        for k in ("psnr_y", "parity_max_abs", "int8_psnr_drop"):
            assert (a.get(k) is None) == (b.get(k) is None) and (a.get(k) is None or abs(a[k] - b[k]) <= 1e-3 * max(
                1.0, abs(a[k]))), (name, k, a.get(k), b.get(k))
        assert a["key"] == b["key"]  # the same inputs and settings
        assert sorted(a.get("latency_ms") or {}) == sorted(b.get("latency_ms") or {})
    b = json.loads((remote / "results" / "tiny-b.json").read_text())
    assert b["ok"] and b["bench"]["slot"] == "edgesr_bench_slot" and b["bench"]["node"].get("node_id")
    assert (remote / "tiny-b" / "manifest.json").is_file()
    leftovers = [p.name for p in remote.rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers  # no staging folder, temp or partial result
    # a rerun does no work: every result reused, nothing written
    stamps = {p: p.stat().st_mtime_ns for p in remote.rglob("*") if p.is_file() and "summary" not in p.name}
    rc, out, err = _sweep(tiny_zoo, remote, "--executor", "ray", "--ray-address", ray_cluster, "--json")
    assert rc == 1, out + err
    res = json.loads(out)["results"]
    assert [r.get("reused") for r in res] == [True, True, True]
    assert err.count("(reused") == 3, err
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert not [pid for pid in _procs("edgesr.zoo") if str(remote) in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        time.sleep(0.2)
    return True


def test_ctrl_c_stops_the_cluster_work(ray_cluster, tiny_zoo, tmp_path):
    out = tmp_path / "z"
    cmd = [sys.executable, "-m", "edgesr", "convert", "--zoo", str(tiny_zoo), "-o", str(out), "--executor", "ray",
           "--ray-address", ray_cluster, "--zoo-only", "tiny-a", "--no-bench"]
    # SIGINT back to its default in the child: a runner started as a background job has it ignored,
    # and the test plays a terminal's Ctrl-C
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child = None
    deadline = time.monotonic() + 300
    while child is None and proc.poll() is None and time.monotonic() < deadline:
        found = [pid for pid in _procs("edgesr.zoo") if '"tiny-a"' in _cmdline(pid) and str(out) in _cmdline(pid)]
        child = found[0] if found else None
        time.sleep(0.1)
    assert child is not None, proc.communicate()[0]
    worker = _procs("edgesr.zoo")[child]
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted" in text
    assert not _alive(child, wait=30) and not _alive(worker, wait=30)
    assert not (out / "tiny-a").exists() and not (out / "results" / "tiny-a.json").exists()


# --------------------------------------------------------------------------- bulk upscale


def _images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (17, 20), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (19, 26, 4), dtype=np.uint8)).save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (30, 22, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def _cli(*args: str) -> tuple[int, str, str]:
    """edgesr in a child process (Ray reads its authentication settings once per process)."""
    proc = subprocess.run([sys.executable, "-m", "edgesr", *args], capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def test_bulk_upscale_on_ray_equals_local_byte_for_byte(ray_cluster, tmp_path):
    src = tmp_path / "in"
    _images(src)
    rc_local, out, err = _cli("upscale", str(BUNDLED_CHECKPOINT), str(src), str(tmp_path / "local"), "--threads", "1",
                              "--json")
    local = json.loads(out)
    rc_ray, out, err = _cli("upscale", str(BUNDLED_CHECKPOINT), str(src), str(tmp_path / "ray"), "--threads", "1",
                            "--json", "--executor", "ray", "--ray-address", ray_cluster, "--ray-workers", "2")
    remote = json.loads(out)
    assert rc_local == rc_ray != 0, err  # the broken image fails in both
    assert "5 images in" in err and "1 failed" in err and "2 workers" in err, err
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir()) and len(files) == 4
    for name in files:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    fails = {Path(i["input"]).name: i["error"] for i in remote["images"] if not i["ok"]}
    assert fails == {Path(i["input"]).name: i["error"] for i in local["images"] if not i["ok"]}
    assert list(fails) == ["broken.png"]
    peaks = [i["memory"]["worker_peak_rss"] for i in remote["images"] if i["ok"]]
    assert len(peaks) == 4 and all(p < 4 << 30 for p in peaks)


def test_convert_folder_on_ray_matches_local(ray_cluster, tmp_path):
    """`convert DIR --executor ray`: one task per checkpoint, the same bundle as the local batch."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(BUNDLED_CHECKPOINT, folder / "ecbsr.safetensors")
    (folder / "broken.pth").write_bytes(b"not a checkpoint")
    common = ["--no-bench", "--no-ort-format", "--json"]
    rc_local, out, err = _cli("convert", str(folder), "-o", str(tmp_path / "local"), *common)
    local = json.loads(out)
    rc_ray, out, err = _cli("convert", str(folder), "-o", str(tmp_path / "ray"), *common, "--executor", "ray",
                            "--ray-address", ray_cluster)
    remote = json.loads(out)
    assert rc_local == rc_ray != 0, err  # the broken checkpoint fails in both
    for a, b in zip(local["results"], remote["results"]):
        keys = ("checkpoint", "ok", "converted", "error", "error_type", "arch", "scale")
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
    ma = json.loads((tmp_path / "local" / "ecbsr" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "ray" / "ecbsr" / "manifest.json").read_text())
    assert [x["file"] for x in ma["artifacts"]] == [x["file"] for x in mb["artifacts"]]
    assert ma["spec"] == mb["spec"]


def test_video_over_frame_ranges_on_ray_equals_local(ray_cluster, tmp_path):
    """A lossless video split over two Ray workers decodes to the local run's frames, with the
    same count, rate and audio."""
    pytest.importorskip("av", reason="needs pip install 'edgesr[video]'")
    import av

    from edgesr.video import probe

    src = tmp_path / "in.mkv"
    write_clip(src, "ffv1", "bgr0")
    rc, out, err = _cli("upscale", str(BUNDLED_CHECKPOINT), str(src), str(tmp_path / "local.mkv"), "--threads", "1")
    assert rc == 0, err
    rc, out, err = _cli("upscale", str(BUNDLED_CHECKPOINT), str(src), str(tmp_path / "ray.mkv"), "--threads", "1",
                        "--json", "--executor", "ray", "--ray-address", ray_cluster, "--ray-workers", "2")
    assert rc == 0, err
    res = json.loads(out)["video"]
    assert res["frames"] == CLIP_FRAMES and res["segments"] == 4
    info = probe(tmp_path / "ray.mkv")
    assert info["frames"] == CLIP_FRAMES and info["rate"] == CLIP_RATE
    assert audio_summary(tmp_path / "ray.mkv") == audio_summary(src)
    frames = []
    for name in ("local.mkv", "ray.mkv"):
        with av.open(str(tmp_path / name)) as c:
            frames.append([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert all(np.array_equal(a, b) for a, b in zip(*frames)) and len(frames[1]) == CLIP_FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "local.mkv", "ray.mkv"]  # segments removed
