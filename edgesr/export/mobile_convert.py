"""`edgesr convert --tflite / --ncnn / --coreml`: one function per format, called by the pipeline.

Each writes its files into the staging folder, appends manifest artifacts, a report section
and (for formats with a runtime here) parity rows: PyTorch deploy form vs the artifact run on
this CPU, on real photo crops (the check the export already made, so it is measured, not
assumed). Core ML has no runtime on Linux: its report says "converted, not run here" and
carries the static op check instead of a parity row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..spec import Spec
from .mobile import MobileExport


def _row(res: MobileExport, name: str) -> dict[str, Any]:
    ok = True  # export_* refuse artifacts beyond tolerance before writing them
    return {"reference": "torch:deploy", "test": name, "precision": res.precision, "max_abs": res.max_abs_vs_torch,
            "psnr": res.psnr_vs_torch, "ok": ok, "inputs": f"sample photo crops {res.checked_shapes}"}


def _record(res: MobileExport, role: str, section: dict, artifacts: list, comparisons: list | None) -> None:
    section[res.precision] = res.to_dict()
    artifacts.extend(res.artifacts(role))
    if comparisons is not None:
        comparisons.append(_row(res, f"{res.backend}:{res.precision}"))


def _int8_note(res: MobileExport) -> str:
    v = res.details.get("verdict")
    if not v:
        return ""
    fl = ", ".join(v["float_layers"]) or "none"
    over = "" if v["within_budget"] else f" - OVER the {v['psnr_budget']} dB budget"
    scheme = f", scheme {v['scheme']} ({v['activations']} activations)" if "scheme" in v else ""
    t = res.details.get("cpu_time_vs_fp32")
    speed = (f", {t['ratio']:.2f}x the fp32 file's time on this CPU" + ("" if t["faster_than_fp32"] else " (SLOWER)")
             if t else "")
    return (f", held-out drop {v['drop']:.3f} dB (all-int8 {v['drop_all_int8']:.3f}){scheme}, float layers: "
            f"{fl}{over}{speed}")


def mobile_int8_problems(report: dict) -> list[str]:
    """One line per mobile INT8 file whose held-out verdict missed its budget (the file is written,
    the convert fails, as for ONNX INT8 graphs: see :func:`edgesr.pipeline.int8_verdict`)."""
    import math

    out = []
    for key, title in (("tflite", "LiteRT"), ("ncnn", "ncnn")):
        for precision, r in (report.get(key) or {}).items():
            v = (r.get("details") or {}).get("verdict")
            if v and not v["within_budget"]:
                tried = ", ".join(f"{t['scheme']} {t['drop']:.3f} dB" for t in v.get("schemes", []))
                out.append(f"{title} {precision} ({', '.join(r['files'])}): no choice met the {v['psnr_budget']} dB "
                           f"budget on {v['eval_set'].split(' (')[0]}" + (f" (tried {tried})" if tried else "")
                           + f"; the best one written loses {v['drop']:.3f} dB; accept the drop with --psnr-budget "
                           f"{math.ceil(v['drop'] * 100) / 100:.2f}")
    return out


def _warn_over_budget(res: MobileExport, what: str, report: dict) -> None:
    v = res.details.get("verdict")
    if v and not v["within_budget"]:
        report.setdefault("warnings", []).append(
            f"{what}: no mixed-precision choice held the {v['psnr_budget']} dB budget on {v['eval_set']}: "
            f"best drop {v['drop']:.3f} dB with {len(v['float_layers'])} float layers")


def export_tflite_step(deploy, spec: Spec, staging: Path, opts, artifacts: list, report: dict,
                       done: Callable[[str, str], None]) -> None:
    from .litert import INTEGER_SCHEMES, SCHEME_NAMES, convert_fp32_bytes, default_hw, export_tflite, time_vs_fp32

    hw = tuple(opts.mobile_size) if opts.mobile_size else default_hw(spec)
    section = report.setdefault("tflite", {})
    fp32 = convert_fp32_bytes(deploy, spec, hw)
    for precision in ["fp32"] + (["int8"] if opts.int8 else []):
        res = export_tflite(deploy, spec, staging / f"model_{precision}.tflite", precision=precision, hw=hw,
                            calib=opts.calib, fp32_bytes=fp32, psnr_budget=opts.psnr_budget,
                            schemes=INTEGER_SCHEMES if opts.tflite_integer else SCHEME_NAMES)
        if res.precision != "fp32" and getattr(opts, "bench", False):
            t = res.details["cpu_time_vs_fp32"] = time_vs_fp32(fp32, res.path, spec.in_channels)
            if not t["faster_than_fp32"]:
                report.setdefault("warnings", []).append(
                    f"LiteRT {res.precision}: {res.path.name} takes {t['ratio']:.1f}x the fp32 file's time on this CPU "
                    f"({t['quantized_ms']:.1f} vs {t['fp32_ms']:.1f} ms, {t['rounds']} interleaved rounds, 1 thread); "
                    "on a CPU use model_fp32.tflite, and time it on the target device")
        _record(res, f"tflite_{res.precision}", section, artifacts, report["parity"]["comparisons"])
        _warn_over_budget(res, "LiteRT INT8", report)
        done(f"tflite ({res.precision})", f"input {hw[0]}x{hw[1]} NHWC, vs PyTorch max abs {res.max_abs_vs_torch:.2e}, "
                                      f"PSNR {res.psnr_vs_torch} dB, GPU-delegate rank ok "
                                      f"{res.static_check['gpu_delegate']['rank_ok']}{_int8_note(res)}")


def export_ncnn_step(deploy, spec: Spec, staging: Path, opts, artifacts: list, report: dict,
                     done: Callable[[str, str], None]) -> None:
    from .litert import default_hw
    from .ncnn import export_ncnn, shape_mode

    hw, why = shape_mode(deploy, spec, tuple(opts.mobile_size) if opts.mobile_size else default_hw(spec))
    section = report.setdefault("ncnn", {})
    for precision in ["fp32", "fp16"] + (["int8"] if opts.int8 else []):
        res = export_ncnn(deploy, spec, staging / f"model_{precision}.ncnn.param", precision=precision,
                          calib=opts.calib, psnr_budget=opts.psnr_budget, hw=hw, shape_note=why)
        _record(res, f"ncnn_{precision}", section, artifacts, report["parity"]["comparisons"])
        _warn_over_budget(res, "ncnn INT8", report)
        shapes = "any input size" if hw is None else f"fixed input {hw[0]}x{hw[1]} ({why})"
        done(f"ncnn ({precision})", f"{shapes}, vs PyTorch max abs {res.max_abs_vs_torch:.2e}, "
                                    f"PSNR {res.psnr_vs_torch} dB{_int8_note(res)}")


def export_coreml_step(deploy, spec: Spec, staging: Path, opts, artifacts: list, report: dict,
                       done: Callable[[str, str], None]) -> None:
    from .coreml import export_coreml
    from .litert import default_hw

    hw = tuple(opts.mobile_size) if opts.mobile_size else default_hw(spec)
    section = report.setdefault("coreml", {})
    for precision in ["fp32", "fp16", "int8w"]:
        res = export_coreml(deploy, spec, staging / f"model_{precision}.mlpackage.zip", precision=precision, hw=hw)
        _record(res, f"coreml_{precision}", section, artifacts, None)
        sc = res.static_check
        done(f"coreml ({precision})", f"{res.status}; static check: {sum(sc['ops'].values())} ops, "
                                      f"outside the Neural Engine list: {sc['ops_outside_ane_list'] or 'none'}")


def export_mobile(deploy, spec: Spec, staging: Path, opts, artifacts: list, report: dict,
                  done: Callable[[str, str], None]) -> None:
    """The mobile formats asked for in `opts` (after parity, whose comparisons they extend)."""
    if getattr(opts, "tflite", False):
        export_tflite_step(deploy, spec, staging, opts, artifacts, report, done)
    if getattr(opts, "ncnn", False):
        export_ncnn_step(deploy, spec, staging, opts, artifacts, report, done)
    if getattr(opts, "coreml", False):
        export_coreml_step(deploy, spec, staging, opts, artifacts, report, done)


def render_mobile_md(report: dict) -> list[str]:
    """report.md lines for the mobile sections (empty when none was asked for)."""
    lines: list[str] = []
    for key, title in (("tflite", "LiteRT (.tflite)"), ("ncnn", "ncnn (.param/.bin)"), ("coreml", "Core ML")):
        sec = report.get(key)
        if not sec:
            continue
        lines += [f"## {title}", "", "| precision | files | input | status | max abs vs torch | PSNR vs torch (dB) "
                  "| static check |", "|---|---|---|---|---|---|---|"]
        for prec, r in sec.items():
            hw = "x".join(map(str, r["input_hw"])) + f" {r['layout']}" if r.get("input_hw") else f"any, {r['layout']}"
            sc = r.get("static_check") or {}
            note = (f"GPU delegate: rank <= 4 {sc['gpu_delegate']['rank_ok']}, ops outside list "
                    f"{sc['gpu_delegate']['ops_outside_list'] or 'none'}" if "gpu_delegate" in sc else
                    f"Neural Engine list: outside {sc.get('ops_outside_ane_list') or 'none'}; "
                    f"{'; '.join(sc.get('concerns') or []) or 'no concerns'}" if "ops_outside_ane_list" in sc else
                    f"layers {sc.get('layers')}")
            mx = "-" if r.get("max_abs_vs_torch") is None else f"{r['max_abs_vs_torch']:.2e}"
            lines.append(f"| {prec} | {', '.join(r['files'])} | {hw} | {r['status']} | {mx} | "
                         f"{r.get('psnr_vs_torch') if r.get('psnr_vs_torch') is not None else '-'} | {note} |")
        lines.append("")
        for prec, r in sec.items():
            v = (r.get("details") or {}).get("verdict")
            if v:
                lines += [f"{title} {prec} verdict on {v['eval_set']}: fp32 {v['psnr_fp32']:.3f} dB, all-int8 drop "
                          f"{v['drop_all_int8']:.3f} dB, final drop {v['drop']:.3f} dB (budget {v['psnr_budget']}, "
                          f"within: {v['within_budget']}), float layers: {', '.join(v['float_layers']) or 'none'}"
                          + (f"; scheme {v['scheme']} ({v['activations']} activations)" if "scheme" in v else "")
                          + ".", ""]
            t = (r.get("details") or {}).get("cpu_time_vs_fp32")
            if t:
                lines += [f"{title} {prec} on this CPU: {t['quantized_ms']:.1f} ms vs fp32 {t['fp32_ms']:.1f} ms "
                          f"({t['ratio']:.2f}x, {t['rounds']} interleaved rounds, 1 thread, load {t['loadavg'][0]:.1f})"
                          + ("" if t["faster_than_fp32"] else ": NOT faster than fp32 here") + ".", ""]
    return lines
