"""Run every hostile-input case of tests/hardening/test_hostile_inputs.py and write the table of what
the CLI answered (docs/hostile_inputs.md by default).

    OMP_NUM_THREADS=1 python tests/hardening/hostile_table.py [--out docs/hostile_inputs.md]

The table is the real output of this run: exit status and the stderr error line of each
case, plus a verdict from the same checks the tests apply. Memory cases run in a child
``python -m edgesr`` instead, and their peak RSS (``os.wait4``) is recorded and checked
against the bound of tests/hardening/test_hardening.py. Exits 1 if any case misbehaves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from test_hardening import PEAK_RSS_BOUND, run_child_measured  # noqa: E402
from test_hostile_inputs import CASES, Corpus, problems, run_in_process  # noqa: E402

NOTES = """## Rules behind the round-two cases

- **Outputs (`convert -o`, `--force`).** `--force` replaces only a bundle edgesr wrote: a real
  folder with an `edgesr-bundle` manifest.json holding nothing but its listed artifacts,
  report.json/report.md, sensitivity plots and heatmaps (or an empty folder). A folder holding
  the input checkpoint, `--calib` or `--testset`, the working folder or one of its parents
  (`-o .`, `-o ..`), a symlink, a file, or a folder with anything else in it is refused, with
  or without `--force`, and the check is repeated just before the atomic publish. Batch mode
  applies the same rule to every `OUTROOT/<name>`. Staging and temporary names are shortened
  (with a hash) so any legal OUTDIR or output file name works.
- **Memory.** What a checkpoint declares is checked before anything is allocated
  (`edgesr/limits.py`): tensor data at most min(4 GiB, RAM/4) (`EDGESR_MAX_CHECKPOINT_MB`),
  at most 50,000 tensors (`EDGESR_MAX_TENSORS`; the safetensors header size and the zip
  record count are bounded from it), zip records inflating more than 100x are refused, and a
  pickle's opcodes and storages are counted by a static scan before `torch.load`. Inference
  sizes (`bench --size`, `parity --sizes`) whose float32 input and output alone exceed half
  the RAM are refused.
- **Hangs.** ONNX Runtime runs end on Ctrl-C and SIGTERM (a watchdog thread sets
  `RunOptions.terminate`; `benchmarks/ort_interrupt.py` measures the cost per call) and after
  `--time-limit S` when given. Numeric options are typed: finite, in range, threads 1..1024,
  seconds 0..86400, run counts bounded.
- **Bundles.** Every artifact (and manifest.json) is opened component by component without
  following symlinks, must be a regular file inside the bundle, and is hashed and loaded from
  the same bytes (a private verified copy where a path is needed). manifest.json is at most
  16 MiB and 64 levels deep; spec values are range-checked.
- **Messages.** Every name is quoted with control characters, escape sequences, bidi controls
  and undecodable bytes escaped; every printed line passes the same escaping, so one error is
  one line. Library warnings are not printed (`--debug` shows them). A pickle that would
  import or call anything is named as code-running whatever opcode or protocol it uses.
- **New surfaces.** `--model FILE.py:NAME`: code that calls `sys.exit()` (at import, while
  building, in forward) is an error, never a silent exit 0; `--model-kwargs` is bounded JSON.
  Zoo index: every field typed, model names plain folder names (no control characters, NUL,
  `..`, at most 100 characters), size and nesting bounded. Mobile artifacts of a bundle load
  from the bytes whose sha256 was checked (.tflite bytes; .param text + the .bin the manifest
  links to it), also when the file is named by path beside its manifest.json; an ncnn .param
  is parsed with its header counts checked before ncnn sizes tables from them. OpenVINO IR:
  the .xml is checked before any parser (size, XML, no DTD: no entity expansion), the model
  must take one float image; OpenVINO's and ncnn's native log lines are kept off stderr.
  OpenVINO inferences are waited for in 100 ms steps, so Ctrl-C and `--time-limit` end
  `edgesr` (OpenVINO cannot cancel a running node: the process exits without waiting for it).
  Bundle artifacts listed above `EDGESR_MAX_ARTIFACT_MB` (default min(4 GiB, RAM/4)) are
  refused before they are read.
"""


def _cell(s: str) -> str:
    from edgesr.errors import one_line

    return one_line(s).replace("|", "\\|").strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "hostile_inputs.md"))
    args = ap.parse_args(argv)

    # as tests/conftest.py: the corpus's tiny model has random weights, which edgesr's plausibility
    # check (edgesr.conventions) would refuse before the case's own input is looked at
    import os

    os.environ.setdefault("EDGESR_ALLOW_IMPLAUSIBLE", "1")
    import torch

    import edgesr

    torch.set_num_threads(1)
    rows, bad = [], 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgesr-hostile-") as tmp:
        corpus = Corpus(Path(tmp))
        for i, case in enumerate(CASES, 1):
            peak = ""
            try:
                if case.memory:
                    cwd = Path.cwd()
                    os.chdir(corpus.root)
                    try:
                        argv = case.argv(corpus)
                    finally:
                        os.chdir(cwd)
                    o, rss = run_child_measured(argv, corpus.root)
                    peak = f"{rss / 2**20:.0f} MiB"
                    issues = problems(case, o)
                    if rss > PEAK_RSS_BOUND:
                        issues.append(f"peak RSS {peak} > {PEAK_RSS_BOUND / 2**20:.0f} MiB")
                else:
                    o = run_in_process(case, corpus)
                    issues = problems(case, o)
                if case.after and not issues:
                    try:
                        case.after(corpus)
                    except AssertionError as e:
                        issues.append(str(e))
                if case.expect_ok:
                    msg = "(accepted)" if not o.error_lines else o.error_lines[0]
                else:
                    msg = o.error_lines[0] if o.error_lines else (o.err.strip().splitlines() or ["(nothing)"])[-1]
                cmd = "edgesr " + " ".join(o.argv)
                rc = o.rc
            except Exception as e:  # noqa: BLE001 - a case that cannot even be built is reported, not hidden
                issues, msg, cmd, rc = [f"case setup failed: {type(e).__name__}: {e}"], "", "", "-"
            bad += bool(issues)
            verdict = "ok" if not issues else "**FAIL**: " + "; ".join(issues)
            rows.append(f"| {i} | {case.group} | {_cell(case.what)} | `{_cell(cmd)}` | {rc} | {_cell(msg)} | "
                        f"{peak} | {_cell(verdict)} |")
            print(f"[{i}/{len(CASES)}] {case.id}: {'ok' if not issues else 'FAIL ' + '; '.join(issues)}",
                  file=sys.stderr)
    seconds = time.perf_counter() - t0
    n_err = sum(not c.expect_ok for c in CASES)
    text = "\n".join([
        "# Hostile inputs: what the CLI answers",
        "",
        "Generated by `python tests/hardening/hostile_table.py` from a real run of the cases in",
        "`tests/hardening/test_hostile_inputs.py` (each through `edgesr.cli.main`, working directory = the",
        "generated corpus, so paths are relative to it). Every error case must exit non-zero with",
        "exactly one `edgesr: error: ...` line on stderr (convert's progress lines may precede it)",
        "and no traceback; the 'valid' image cases must be accepted. A pickle case also checks that",
        "the file its payload would create does not exist afterwards. Names in commands and",
        "messages are shown with control characters escaped, as edgesr prints them. The corpus's",
        "tiny model has random weights, so the run sets EDGESR_ALLOW_IMPLAUSIBLE=1 (as the tests do).",
        "",
        "Memory cases (group `memory`) run in a child `python -m edgesr` whose peak resident",
        f"memory (`os.wait4`) is the 'peak RSS' column; the check bound is {PEAK_RSS_BOUND / 2**30:.0f} GiB",
        "(edgesr's own baseline with torch, onnx and onnxruntime imported is about 0.25-0.35 GiB).",
        "The rules the round-two cases check are summarised below the table.",
        "",
        f"{n_err} error cases + {len(CASES) - n_err} accepted cases; {len(CASES) - bad} behaved, {bad} did not. "
        f"edgesr {edgesr.__version__}, torch {torch.__version__.split('+')[0]}, Python "
        f"{sys.version.split()[0]}; {seconds:.0f} s.",
        "",
        "| # | group | input | command | exit | stderr (error line) | peak RSS | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        NOTES,
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {len(CASES)} cases, {bad} misbehaved ({seconds:.0f} s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
