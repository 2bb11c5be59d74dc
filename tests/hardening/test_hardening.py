"""Hardening checks that need more than one CLI call per input (issue 14).

* memory: every ``memory`` case of the hostile corpus runs in a child ``python -m edgesr``
  whose peak RSS (``os.wait4``) must stay under a generous bound, far below what the input
  declares (a 1 GiB zip bomb record, an 8 GiB sparse safetensors, 1,000,000 tensors);
* interruptibility: a real CLI run stuck inside ONNX Runtime (a 2^63-iteration Loop) ends
  on SIGINT and on SIGTERM within seconds, exit 130, one line;
* bundle integrity: a file swapped right after its sha256 was checked is never used;
* outputs: a read-only folder is one clear line, and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_hostile_inputs import CASES, REPO, Corpus, Outcome, problems, run_in_process  # noqa: E402

MEMORY_CASES = [c for c in CASES if c.memory]
PEAK_RSS_BOUND = 1 << 30  # bytes; edgesr's own baseline (torch, onnx, onnxruntime imported) is ~0.25-0.35 GiB


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


# Peak RSS must be measured on a process forked from a small one: Linux carries a process's
# high-water mark across fork+exec, so a child forked straight from this (large) pytest
# process would report pytest's own RSS. A tiny launcher process forks the real child and
# reports that child's ru_maxrss (os.wait4) in a file.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_child_measured(argv: list[str], cwd: Path, timeout: float = 300) -> tuple[Outcome, int]:
    """Run ``python -m edgesr ARGV``; (outcome, peak RSS in bytes of that process)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgesr-rss-") as tmp:
        rss_file = Path(tmp) / "maxrss"
        p = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(rss_file), sys.executable, "-m", "edgesr", *argv],
                             cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        rss_kb = int(rss_file.read_text()) if rss_file.exists() else -1
    rss = rss_kb * (1 if sys.platform == "darwin" else 1024)
    return Outcome(argv, p.returncode, out.decode(errors="replace"), err.decode(errors="replace")), rss


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 (POSIX) for a child's peak RSS")
def test_memory_cases_bounded_peak_rss(tmp_path):
    """Each memory case refuses with one line while its process stays under PEAK_RSS_BOUND."""
    assert len(MEMORY_CASES) >= 5
    corpus = Corpus(tmp_path / "mem")
    cwd = os.getcwd()
    os.chdir(corpus.root)
    try:
        argvs = [c.argv(corpus) for c in MEMORY_CASES]
    finally:
        os.chdir(cwd)
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda a: run_child_measured(a, corpus.root), argvs))
    report, failures = [], []
    for case, (o, rss) in zip(MEMORY_CASES, results):
        report.append(f"{case.id}: peak {rss / 2**20:.0f} MiB, exit {o.rc}")
        bad = problems(case, o)
        if rss > PEAK_RSS_BOUND:
            bad.append(f"peak RSS {rss / 2**20:.0f} MiB > {PEAK_RSS_BOUND / 2**20:.0f} MiB")
        if bad:
            failures.append((case.id, bad, o.err[-800:]))
    print("\n".join(report))
    assert not failures, failures


# --------------------------------------------------------------------------- Ctrl-C / SIGTERM


_CHILD = textwrap.dedent("""
    import sys
    import edgesr.backends.ort_runner as ort_runner

    real = ort_runner.run_session

    def announced(*a, **k):  # tells the parent the ONNX Runtime run has started
        print("RUNNING", flush=True)
        return real(*a, **k)

    ort_runner.run_session = announced
    from edgesr.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_stops_endless_onnx_run(tmp_path, sig):
    """`edgesr upscale` of a model whose Loop never ends: the signal, sent while ORT runs, ends
    the process within seconds with exit 130 and one 'edgesr: interrupted' line."""
    from test_hostile_inputs import _onnx_endless_loop

    corpus = Corpus(tmp_path / "c")
    model = _onnx_endless_loop(corpus)
    img = corpus.write("a.png", corpus.png_rgb(8, 8))
    p = subprocess.Popen([sys.executable, "-c", _CHILD, "upscale", model, img, "out.png", "--backend", "ort",
                          "--scale", "2"], cwd=corpus.root, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = _readline_within(p.stdout, 300)  # the run has started (or the child died / never got there)
        assert line.strip() == "RUNNING", (line, p.stderr.read()[-2000:] if p.poll() is not None else "")
        time.sleep(1.0)
        assert p.poll() is None, "the endless model finished?"
        t0 = time.monotonic()
        p.send_signal(getattr(signal, sig))
        first = _readline_within(p.stderr, 120)  # printed once the run has stopped (never a hang)
        seconds = time.monotonic() - t0
        out, err = p.communicate(timeout=120)  # interpreter shutdown may be slow on a loaded machine
        err = first + err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert lines == ["edgesr: interrupted"], err[-2000:]
    assert seconds < 20, f"took {seconds:.1f} s to stop after {sig}"  # ~1 s on an idle machine
    assert not (corpus.root / "out.png").exists()


_OV_CHILD = textwrap.dedent("""
    import sys
    import edgesr.backends.openvino_runner as ov
    import edgesr.backends.ort_runner as ortr

    told = []

    def announcing(real):
        def run(*a, **k):  # tells the parent the first inference of the endless model has started
            if not told:
                told.append(1)
                print("RUNNING", flush=True)
            return real(*a, **k)
        return run

    # upscale first reads the graph's receptive field (ONNX Runtime), then runs OpenVINO: whichever
    # starts the endless model first must be stoppable
    ov.wait_interruptibly = announcing(ov.wait_interruptibly)
    ortr.run_session = announcing(ortr.run_session)
    from edgesr.cli import main
    sys.exit(main())  # argv None: the real command line, as `edgesr ...` runs it
""")


def _readline_within(stream, seconds: float) -> str:
    """One line from a child's pipe, or '' when none arrives in time (a test must not hang)."""
    import select

    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["SIGINT", "time-limit"])
def test_endless_openvino_run_ends(tmp_path, how):
    """An endless model given to `upscale --backend openvino` ends on Ctrl-C / --time-limit within
    seconds, with one line: ONNX Runtime's receptive-field analysis is stoppable, and OpenVINO
    (which cannot cancel a running node) is waited for in short steps, the process exiting although
    its inference thread is still busy."""
    pytest.importorskip("openvino")
    from test_hostile_inputs import _onnx_endless_loop

    corpus = Corpus(tmp_path / "c")
    model = _onnx_endless_loop(corpus)
    img = corpus.write("a.png", corpus.png_rgb(64, 64))  # no min-size probe below 64 px: the run itself
    extra = ["--time-limit", "2"] if how == "time-limit" else []
    p = subprocess.Popen([sys.executable, "-c", _OV_CHILD, "upscale", model, img, "out.png", "--backend", "openvino",
                          "--scale", "2", *extra], cwd=corpus.root, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = _readline_within(p.stdout, 300)
        assert line.strip() == "RUNNING", (line, p.stderr.read()[-2000:] if p.poll() is not None else "")
        t0 = time.monotonic()
        if how == "SIGINT":
            time.sleep(1.0)
            assert p.poll() is None, "the endless model finished?"
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        seconds = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if how == "SIGINT":
        assert p.returncode == 130 and lines == ["edgesr: interrupted"], (p.returncode, err[-2000:])
    else:
        assert p.returncode == 2 and len(lines) == 1 and "time limit of 2 s" in lines[0], (p.returncode, err[-2000:])
    assert seconds < 30, f"took {seconds:.1f} s to end"  # a few seconds on an idle machine
    assert not (corpus.root / "out.png").exists()


def test_time_limit_stops_a_library_run(tmp_path):
    """run_session's own time limit (used by --time-limit) stops an endless run in the caller's thread."""
    from test_hostile_inputs import _onnx_endless_loop

    from edgesr.backends.ort_runner import OrtRunner, run_time_limit
    from edgesr.errors import BackendRunError

    corpus = Corpus(tmp_path / "c")
    runner = OrtRunner(corpus.abs(_onnx_endless_loop(corpus)))
    x = np.zeros((1, 3, 4, 4), np.float32)
    t0 = time.monotonic()
    with run_time_limit(0.5), pytest.raises(BackendRunError, match="time limit of 0.5 s"):
        runner.run(x)
    assert time.monotonic() - t0 < 5


def test_normal_runs_unaffected_by_watchdog(tmp_path):
    """Many short runs with and without a limit give the same numbers as the bare session."""
    import onnxruntime as ort
    from test_hostile_inputs import _onnx_x2

    from edgesr.backends.ort_runner import run_session, session_options

    corpus = Corpus(tmp_path / "c")
    sess = ort.InferenceSession(str(corpus.abs(_onnx_x2(corpus, "x2.onnx"))), sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    ref = sess.run(None, {"input": x})[0]
    for limit in (None, 30.0) * 50:
        np.testing.assert_array_equal(run_session(sess, None, {"input": x}, time_limit=limit)[0], ref)


# --------------------------------------------------------------------------- bundles: check == use


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_artifact_swapped_after_its_check_is_not_used(tmp_path, monkeypatch, backend):
    """Swap the model file for another valid one (all-zero weights: a black picture) right
    after read_manifest verified it: the run must refuse (sha256), not write a black image."""
    from safetensors.torch import load_file

    import edgesr.bundle as bundle

    corpus = Corpus(tmp_path / "c")
    b = corpus.abs(corpus.bundle("b"))
    m = bundle.read_manifest(b)
    role = "onnx_fp32" if backend == "ort" else "torch_deploy"
    victim = m.artifact(role).path
    if backend == "torch":  # same header, every weight byte zeroed: same size, valid, all-black output
        data = victim.read_bytes()
        n = 8 + int.from_bytes(data[:8], "little")
        evil = tmp_path / "zeros.safetensors"
        evil.write_bytes(data[:n] + bytes(len(data) - n))
        assert all(float(v.abs().max()) == 0 for v in load_file(str(evil)).values())
    else:
        import onnx
        from onnx import numpy_helper

        g = onnx.load(str(victim))
        for init in g.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
        evil = tmp_path / "zeros.onnx"
        onnx.save(g, str(evil))
    evil_size = evil.stat().st_size
    real = bundle.read_manifest

    def read_then_swap(*a, **k):
        man = real(*a, **k)
        os.replace(evil, victim)  # the attacker's moment: after the check, before the load
        return man

    monkeypatch.setattr(bundle, "read_manifest", read_then_swap)
    img = corpus.write("a.png", corpus.png_rgb(8, 8))
    cwd = os.getcwd()
    os.chdir(corpus.root)
    try:
        import contextlib
        import io

        from edgesr.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["upscale", str(b), img, "out.png", "--backend", backend])
    finally:
        os.chdir(cwd)
    assert evil.exists() is False and victim.stat().st_size in (m.artifact(role).bytes, evil_size)
    msg = err.getvalue()
    assert rc != 0 and "re-run `edgesr convert`" in msg and len(msg.strip().splitlines()) == 1, msg
    if victim.stat().st_size == m.artifact(role).bytes:  # same size: only the hash can tell
        assert "sha256" in msg and "does not match" in msg, msg
    assert not (corpus.root / "out.png").exists()


@pytest.fixture(scope="module")
def mobile_bundle(tmp_path_factory):
    """One `convert --tflite --ncnn` output of the corpus's tiny model; tests copy it."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("ncnn")
    corpus = Corpus(tmp_path_factory.mktemp("mobile"))
    return corpus.abs(corpus.mobile_bundle_source())


@pytest.mark.parametrize("backend", ["litert", "ncnn"])
def test_mobile_artifact_swapped_after_its_check_is_not_used(tmp_path, monkeypatch, mobile_bundle, backend):
    """A bundle's .tflite / ncnn .bin swapped for a valid all-zero-weights file (a black picture)
    right after read_manifest verified it: upscale must refuse (sha256), not write the picture."""
    import edgesr.bundle as bundle

    b = tmp_path / "b"
    shutil.copytree(mobile_bundle, b)
    m = bundle.read_manifest(b)
    role = "tflite_fp32" if backend == "litert" else "ncnn_fp32_weights"
    victim = m.artifact(role).path
    data = victim.read_bytes()
    evil = tmp_path / "evil"
    if backend == "ncnn":  # same size, every weight zero: a valid .bin (tags kept zero = fp32)
        evil.write_bytes(bytes(len(data)))
    else:  # same size, a flipped byte deep in the weights: the file still loads
        mutated = bytearray(data)
        mutated[len(data) // 2] ^= 0xFF
        evil.write_bytes(bytes(mutated))
    real = bundle.read_manifest

    def read_then_swap(*a, **k):
        man = real(*a, **k)
        os.replace(evil, victim)  # after the check, before the load
        return man

    monkeypatch.setattr(bundle, "read_manifest", read_then_swap)
    img = tmp_path / "a.png"
    img.write_bytes(Corpus.png_rgb(20, 20))
    import contextlib
    import io

    from edgesr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["upscale", str(b), str(img), str(tmp_path / "out.png"), "--backend", backend])
    msg = err.getvalue()
    assert not evil.exists() and victim.read_bytes() != data  # the swap happened
    assert rc != 0 and "sha256" in msg and "does not match" in msg and len(msg.strip().splitlines()) == 1, msg
    assert not (tmp_path / "out.png").exists()


def test_verified_path_is_a_private_copy_of_the_hashed_bytes(tmp_path):
    import edgesr.bundle as bundle

    corpus = Corpus(tmp_path / "c")
    b = corpus.abs(corpus.bundle("b"))
    m = bundle.read_manifest(b)
    art = m.artifact("onnx_fp32")
    copy = m.verified_path(art)
    assert copy != art.path and copy.read_bytes() == art.path.read_bytes()
    art.path.write_bytes(b"swapped")  # the copy is unaffected, and a fresh read refuses
    assert copy.read_bytes() != b"swapped"
    with pytest.raises(bundle.BundleError, match="bytes"):
        m.verified_bytes(art)


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot create entries in: mode 0555, or for root (which ignores
    modes) the immutable attribute; skipped where neither is possible."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: cannot make a folder read-only")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def test_convert_into_read_only_folder_is_one_line(tmp_path, read_only_folder):
    corpus = Corpus(tmp_path / "c")
    from test_hostile_inputs import Case

    case = Case("ro", "output", "convert into a read-only folder",
                lambda c: ["convert", c.ckpt(), "-o", str(read_only_folder / "out"), "--no-bench",
                           "--no-ort-format"], ("cannot create the output folder",))
    o = run_in_process(case, corpus)
    assert not problems(case, o), (problems(case, o), o.err[-1500:])
    assert list(read_only_folder.iterdir()) == []


# --------------------------------------------------------------------------- names and lines


def test_quoted_and_one_line_escape_every_unprintable_character():
    """Every character str.isprintable() rejects (C0/C1 controls, DEL, line and paragraph
    separators, bidi and other format controls, unassigned, surrogates from undecodable bytes)
    comes out escaped: the result is printable, one line, and distinct inputs stay distinct."""
    from edgesr.errors import one_line, quoted

    bad = "".join(chr(i) for i in range(0x110000) if not chr(i).isprintable())
    assert "\n" in bad and "\x1b" in bad and "\u2028" in bad and "\u202e" in bad and "\udcff" in bad
    for f in (quoted, one_line):
        out = f("a" + bad + "b")
        assert out.isprintable() and "\n" not in out and "\r" not in out
    assert quoted("x'y") != quoted("x\\'y") and quoted("a\nb") != quoted("a\\nb")
    assert quoted(os.fsdecode(b"bad\xff.pth")) == "'bad\\xff.pth'"


@pytest.mark.parametrize("unit", ["a", "\u00e9", "\u4e2d", "\U0001f600"])  # 1-, 2-, 3- and 4-byte UTF-8
def test_staging_and_temp_names_fit_the_name_limit(unit):
    from edgesr.fsutil import temp_stem
    from edgesr.publish import STAGING_PREFIX, _staging_name

    n = 255 // len(unit.encode())
    name = unit * n  # the longest legal name made of this character
    other = unit * (n - 1) + "b"
    for tag in ("", "old-"):
        s = _staging_name(name, tag)
        assert s.startswith(STAGING_PREFIX + tag) and s.rsplit("-", 1)[1] == str(os.getpid())
        assert len(os.fsencode(s + ".lock")) <= 255
        assert _staging_name(other, tag) != s
    assert len(os.fsencode("." + temp_stem(name) + ".abcdefgh.tmp")) <= 255
    assert _staging_name("short") == f"{STAGING_PREFIX}short-{os.getpid()}"  # unchanged for ordinary names


@pytest.mark.parametrize("unit", ["u", "\u00e9", "\U0001f600"])
def test_streamed_output_temp_names_fit_and_are_cleaned(tmp_path, unit):
    """upscale's streamed temp file (".<name>.edgesr-XXXXXXXX.tmp") of the longest legal output
    name stays within 255 bytes, and a killed run's leftover of that name is found and removed."""
    from edgesr.imaging import _temp_prefix, clean_stale_temps, streaming_output

    name = unit * ((255 - 4) // len(unit.encode())) + ".png"
    final = tmp_path / name
    with streaming_output(final) as f:
        f.write(b"x")
    assert final.read_bytes() == b"x"
    stale = tmp_path / (_temp_prefix(name) + "abcd1234.tmp")
    assert len(os.fsencode(stale.name)) <= 255
    stale.write_bytes(b"half")  # what a SIGKILL leaves
    other = tmp_path / (_temp_prefix(unit * 3 + ".png") + "abcd1234.tmp")
    other.write_bytes(b"not ours")
    assert clean_stale_temps(final) == [stale] and other.exists() and final.exists()


def test_usage_errors_are_one_line(capsys):
    from edgesr.cli import main

    for argv in (["convert", "--threads", "x"], ["bench", "m.onnx", "--warmup", "1e999"], ["nosuchcommand"],
                 ["eval", "m", "--scale", "2"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("edgesr: error: "), err


def test_library_warnings_do_not_reach_stderr(capsys):
    """Inside a CLI run a library's warning is not printed (it would come before, and look like
    part of, edgesr's answer); edgesr's own warnings become one 'edgesr: note:' line each."""
    import warnings

    from edgesr.cli import _warnings_as_notes

    with _warnings_as_notes(debug=False):
        warnings.warn("Detected pickle protocol 5 in the checkpoint\nsecond line", UserWarning)
        warnings.warn("edgesr export: simplify skipped\x1b[2K", UserWarning)
    assert capsys.readouterr().err == "edgesr: note: export: simplify skipped\\x1b[2K\n"
    with _warnings_as_notes(debug=True):
        warnings.warn("from a library", UserWarning)
    err = capsys.readouterr().err
    assert err.startswith("edgesr: note: UserWarning from ") and err.count("\n") == 1
