"""report.md of a convert OUTDIR: what was built, checked and measured, in Markdown tables."""

from __future__ import annotations


def render_report_md(report: dict, manifest: dict) -> str:
    spec = manifest["spec"]
    lines = [f"# edgesr conversion report: {spec['arch']} ({spec.get('variant') or 'custom'}) x{spec['scale']}", "",
             f"- source: `{report['source']['checkpoint']}` (sha256 `{report['source']['sha256'][:16]}...`, "
             f"{report['source']['form']} form)",
             f"- result: **{'OK' if report['ok'] else 'FAILED'}**", ""]
    rp = report["reparameterization"]
    lines += ["## Reparameterization", "",
              (f"training form vs deploy form, fp32 max abs = {rp['max_abs']:.2e} (tolerance {rp['tolerance']:g}) "
               f"over {len(rp['inputs'])} inputs" if rp.get("applied") else f"not applied: {rp.get('reason')}"), ""]
    ex = report["export"]
    lines += ["## ONNX export", "", f"- opset {ex['opset']}, dynamic N/H/W: {ex['dynamic']}, simplified: {ex['simplified']}",
              f"- operators: {ex['op_counts']}",
              f"- ONNX Runtime vs PyTorch max abs: {ex['max_abs_vs_torch']:.2e}", ""]
    par = report["parity"]
    lines += ["## Parity", "", f"Inputs: {', '.join(par.get('samples', []))}", "",
              "| reference | candidate | max abs | mean abs | p99 abs | PSNR (dB) | SSIM | 8-bit pixels differing "
              "| PSNR vs HR (ref / cand) | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in par.get("comparisons", []):
        gt = (f"{_f(c.get('ref_psnr_gt'))} / {_f(c.get('test_psnr_gt'))}"
              if c.get("ref_psnr_gt") is not None else "-")
        lines.append(f"| {c['reference']} | {c['test']} | {_f(c.get('max_abs'))} | {_f(c.get('mean_abs'))} | "
                     f"{_f(c.get('p99_abs'))} | {_f(c.get('psnr'))} | {_f(c.get('ssim'))} | "
                     f"{_f(c.get('diff8_share'))} | {gt} | {'info' if c.get('gate') is False else 'yes' if c['ok'] else 'NO'} |")
    for c in par.get("comparisons", []):
        if c.get("first_divergence"):
            d = c["first_divergence"]
            lines += ["", f"{c['test']}: first diverging operator `{d.get('node', d)}` ({d.get('op_type', '')})"]
        for fail in c.get("failures", []):
            lines.append(f"- {c['test']}: {fail}")
    lines.append("")
    if "int8" in report:
        crit = next(iter(report["int8"].values())).get("criterion", "")
        lines += ["## INT8", "", f"Verdict (the only one; parity's INT8 rows above are information): {crit}.",
                  "Y-PSNR (dB) on the evaluation set (held-out crops of the sample photos, never the "
                  "calibration patches), measured in the runtime each graph is made for; `all-int8` is before "
                  "mixed precision.", "",
                  "| profile | eval set | fp32 | all-int8 | int8 | drop | within budget | float layers | test set fp32 / int8 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for prof, q in report["int8"].items():
            test = (f"{_f(q.get('test_psnr_fp32'))} / {_f(q.get('test_psnr_int8'))} ({q.get('test_set')})"
                    if q.get("test_psnr_int8") is not None else "-")
            lines.append(f"| {prof} | {q.get('eval_set')} | {_f(q['psnr_fp32'])} | {_f(q['psnr_int8_all'])} | "
                         f"{_f(q['psnr_int8'])} | {_f(q['drop'])} | {q['within_budget']} | "
                         f"{', '.join(q.get('float_layers') or []) or '-'} | {test} |")
        v = report.get("int8_verdict") or {}
        lines.append("")
        for p, g in v.get("graphs", {}).items():
            speed = (f"{g['speedup']:.2f}x fp32 in {g['runtime']} ({g['int8_ms']:.1f} vs {g['fp32_ms']:.1f} ms)"
                     if "speedup" in g else f"speed in {g['runtime']} not measured here")
            lines.append(f"- {p}: {'within budget' if g['within_budget'] else 'OVER BUDGET'}, {speed}; "
                         f"{'the default for ' + g['runtime'] if g['default'] else 'not the default (fp32 is)'}; "
                         f"evaluation images: {', '.join(g['eval_images'])}; calibration images: "
                         f"{', '.join(g['calibration_images'])}"
                         + (f"; measured on {g['measured_on']['cpu_model']} (u8 x s8: {g['measured_on']['u8s8_path']})"
                            if g.get("measured_on") else ""))
        for prof, q in report["int8"].items():
            sp = q.get("speed") or {}
            if sp.get("not_taken_too_slow"):  # the search's own timings (edgesr/quant/speed.py)
                lines.append(f"- {prof}: the search passed over {len(sp['not_taken_too_slow'])} float-layer "
                             f"candidate(s) slower than {sp['min_speedup']}x fp32 on this machine (timed at "
                             f"{sp['lr_hw'][0]}x{sp['lr_hw'][1]} LR); the graph it kept: "
                             f"{sp['speedup_vs_fp32']:.2f}x")
        for line in v.get("problems", []) + v.get("notes", []):
            lines.append(f"- **{line}**")
        lines.append("")
    if "engines" in report:
        eng = report["engines"]
        run = eng["run"] if isinstance(eng["run"], str) else f"verified on {eng['run'].get('device', {}).get('name')}"
        p = eng["profile"]
        lines += ["## TensorRT engines", "", f"- profile (LR H x W): min {p['min_hw']}, opt {p['opt_hw']}, "
                  f"max {p['max_hw']}; targets: {eng['options']['compute_capabilities']}",
                  f"- run: {run}", "",
                  "| engine | flavour | precision | source | cache hit | build s | MiB |", "|---|---|---|---|---|---|---|"]
        for b in eng["builds"]:
            lines.append(f"| {b['file']} | {b['flavour']} {b['flavour_version']} | {b['precision']} | {b['source']} | "
                         f"{b['cache_hit']} | {b['build_seconds']} | {b['bytes'] / 2**20:.2f} |")
        for note in eng.get("skipped", []):
            lines.append(f"- skipped: {note}")
        lines.append("")
    if any(k in report for k in ("tflite", "ncnn", "coreml")):
        from .export.mobile_convert import render_mobile_md

        lines += render_mobile_md(report)
    if "latency" in report:
        m = report["latency"]["machine"]
        lines += ["## CPU latency", "", f"{m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, "
                  f"onnxruntime {m.get('onnxruntime_version')}, torch {m.get('torch_version')}", "",
                  "| backend | input | output | median ms | p90 ms | CV | Mpix/s |", "|---|---|---|---|---|---|---|"]
        for r in report["latency"]["results"]:
            lines.append(f"| {r['backend']} | {r['size']} | {r['output']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['cv']:.2f} | {r['mpix_per_s']} |")
        lines.append("")
    from .report_figures import figures_md

    lines += figures_md(report)
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"
    return str(v)
