"""The zoo's summary: one row of short cells per model, the terminal table with its legend and
failures, counts, and summary.json / summary.md / summary.txt in OUTROOT (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import one_line
from .zoo_index import CATEGORIES

SUMMARY_HEADERS = ["model", "result", "range", "Set5 fp32", "Set5 INT8", "bicubic", "reparam", "export",
                   "parity", "ms", "s"]
# What the short column names mean (printed under the table and in summary.md).
SUMMARY_LEGEND = (
    "range: input range inferred/index; Set5 fp32, INT8, bicubic: mean PSNR-Y (dB, published-table protocol) "
    "of the converted fp32 graph, the INT8 `trt` graph and a bicubic upscale; reparam: author hooks applied + "
    "regions the generic pass collapsed (mb: of them multi-branch); export: dynamic H/W or the fixed LR size; "
    "parity: max abs of ONNX Runtime vs the author's module (fp32, [0, 1]); ms: ORT fp32 latency at 64x64 LR; "
    "s: seconds the model took.")


def summary_rows(results: list[dict]) -> list[list[str]]:
    """One row of short cells per model (failure reasons are listed apart: :func:`failure_lines`)."""
    rows = []
    for r in results:
        exp = r.get("export") or {}
        rep = r.get("reparam") or {}
        hooks = [h for h in rep.get("hooks") or [] if h.get("applied")]
        n, mb = rep.get("generic_regions_collapsed"), len(rep.get("generic_multi_branch") or [])
        reparam = "+".join((["hooks"] if hooks or rep.get("author_form") else [])
                           + ([f"{n}" + (f" ({mb} mb)" if mb else "")] if rep.get("generic_applied") else []))
        ev = r.get("eval") or {}
        psnr = ev.get("psnr_y") or {}
        int8 = [v for k, v in psnr.items() if k.startswith("int8")]
        rows.append([
            r["name"], "ok" if r.get("ok") else str(r.get("category") or "FAILED"),
            (f"{short_number(r.get('inferred_input_range'))}/{short_number(r.get('declared_input_range'))}"
             + ("*" if (r.get("range_finding") or {}).get("confirmed") else "")
             if r.get("inferred_input_range") is not None else ""),
            _num(psnr.get("fp32"), ".2f"), _num(min(int8) if int8 else None, ".2f"),
            _num(ev.get("bicubic_psnr_y"), ".2f"),
            reparam or ("-" if "reparam" in r else ""),
            ("fixed " + "x".join(map(str, exp["fixed_input_hw"])) if exp.get("fixed_input_hw") else
             ("dynamic" if exp.get("dynamic") else "")),
            _num(r.get("parity_max_abs"), ".1e"), _num((r.get("latency_ms") or {}).get("ort:fp32"), ".1f"),
            _num(r.get("seconds"), ".0f")])
    return rows


def failure_lines(results: list[dict]) -> list[str]:
    """'name: category: reason' of every model that did not convert end to end."""
    return [f"{r['name']}: {r.get('category')}: {r.get('reason') or ''}" for r in results if not r.get("ok")]


def summary_text(results: list[dict], width: int | None = None) -> str:
    """The terminal summary: the table, its legend and the failures, wrapped to `width`
    (default: the terminal's, at least 80)."""
    import shutil
    import textwrap

    from .cli.output import format_table

    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    out = [format_table(SUMMARY_HEADERS, summary_rows(results)), ""]
    out += textwrap.wrap(SUMMARY_LEGEND, width)
    if any((r.get("range_finding") or {}).get("confirmed") for r in results):
        out += textwrap.wrap("*: the index's range is contradicted by evidence it records (see summary.md)", width)
    fails = failure_lines(results)
    if fails:
        out += ["", f"Failures ({len(fails)}):"]
        for line in fails:
            out += textwrap.wrap(one_line(line), width, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(out)


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def short_number(v: Any) -> str:
    """`v` in %g form, or "" for None."""
    return "" if v is None else f"{v:g}"


def counts(results: list[dict]) -> dict[str, Any]:
    by_cat: dict[str, int] = {}
    for r in results:
        if not r.get("ok"):
            by_cat[r.get("category") or "?"] = by_cat.get(r.get("category") or "?", 0) + 1
    ok = sum(bool(r.get("ok")) for r in results)
    return {"models": len(results), "ok": ok, "failed": len(results) - ok,
            "ok_share": round(ok / len(results), 4) if results else 0.0, "failures_by_category": by_cat,
            "range_matches": sum(r.get("range_matches") is True for r in results),
            "range_checked": sum(r.get("range_matches") is not None for r in results),
            "range_findings_confirmed": sorted(r["name"] for r in results
                                               if (r.get("range_finding") or {}).get("confirmed")),
            "seconds": round(sum(r.get("seconds") or 0 for r in results), 1)}


def write_summary(results: list[dict], outroot: Path) -> None:
    from .fsutil import atomic_write_json, atomic_write_text

    c = counts(results)
    atomic_write_json(outroot / "summary.json", {"counts": c, "categories": CATEGORIES, "results": results})
    md = [f"# edgesr zoo conversion: {c['ok']} of {c['models']} converted end to end", "",
          "ok = ONNX exported (dynamic H/W, or fixed with the reason stated), ONNX Runtime within 1e-4 of the "
          "author's PyTorch module on Set5 LR + random inputs, INT8 `trt` QDQ graph built, inferred input "
          "range equal to the index's, and (eval after convert, where Set5 is at hand) the fp32 and INT8 graphs "
          "both above bicubic on Set5.", "",
          "| " + " | ".join(SUMMARY_HEADERS) + " |", "|" + "---|" * len(SUMMARY_HEADERS)]
    for row in summary_rows(results):
        md.append("| " + " | ".join(_md(v) for v in row) + " |")
    md += ["", SUMMARY_LEGEND, "",
           "Failures by category: " + (", ".join(f"{k} {v}" for k, v in sorted(c["failures_by_category"].items()))
                                       or "none"), ""]
    md += [f"- {_md(line)}" for line in failure_lines(results)] + ([""] if c["failed"] else [])
    findings = [r for r in results if r.get("range_finding")]
    if findings:
        md += ["Input ranges where the evidence contradicts the author's test script (\"*\" in the table; the "
               "index entry holds the evidence):", ""]
        md += [f"- {r['name']}: index {short_number(r.get('declared_input_range'))}, edgesr infers "
               f"{short_number(r.get('inferred_input_range'))}, evidence says {short_number(r['range_finding']['range'])}: "
               f"{r['range_finding']['evidence']}" for r in findings] + [""]
    atomic_write_text(outroot / "summary.md", "\n".join(md))
    atomic_write_text(outroot / "summary.txt", summary_text(results, width=120) + "\n")


def _md(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2e}" if (v and abs(v) < 1e-2) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|")
