"""The manifest.json `edgesr convert` writes: I/O contract, artifacts with their roles, parity and
latency summaries, INT8 verdicts and the artifact an application should load per runtime.
(`edgesr.bundle` reads and validates manifests; this module builds them.)
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from . import __version__
from .fsutil import sha256_file, text_name
from .spec import Spec


def build_manifest(spec: Spec, artifacts: list[dict], folder: Path, report: dict) -> dict:
    from .bundle import manifest_extras

    lat = {r["backend"]: r["median_ms"] for r in report.get("latency", {}).get("results", [])}
    return {
        "format": "edgesr-bundle",
        "format_version": 1,
        "edgesr_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": report["source"],
        "spec": spec.to_dict(),
        "io": {"input": {"name": "input", "dtype": "float32", "layout": spec.layout,
                         "shape": ["N", spec.in_channels, "H", "W"], "value_range": list(spec.value_range),
                         "color_order": spec.color_order},
               "output": {"name": "output", "dtype": "float32", "layout": spec.layout,
                          "shape": ["N", spec.out_channels, f"H*{spec.scale}", f"W*{spec.scale}"],
                          "value_range": list(spec.value_range), "color_order": spec.color_order},
               "scale": spec.scale, "size_multiple": spec.size_multiple, "min_size": spec.min_size,
               "receptive_field": spec.receptive_field},
        "artifacts": artifacts,
        "parity": {"ok": report["parity"]["ok"],
                   "comparisons": [{"reference": c["reference"], "candidate": c["test"], "precision": c.get("precision"),
                                    "max_abs": c.get("max_abs"), "psnr": c.get("psnr"), "ok": c["ok"],
                                    "gate": c.get("gate", True)}
                                   for c in report["parity"].get("comparisons", [])]},
        "latency_ms_median": lat,
    } | manifest_extras(spec, report) | int8_manifest(artifacts, report)


def int8_manifest(artifacts: list[dict], report: dict) -> dict:
    """``int8``: each INT8 graph's verdict (criterion, images, drop, budget, speed vs fp32) and
    ``default_artifacts``: the artifact role an application should load per runtime - the INT8
    graph made for that runtime when it met the budget and (where measured) is faster than fp32
    here, else the fp32 one."""
    roles = {a["role"] for a in artifacts}
    verdict = (report.get("int8_verdict") or {}).get("graphs", {})
    int8_role = {"cpu": "onnx_int8_cpu", "openvino": "openvino_int8", "trt": "onnx_int8_trt"}
    defaults: dict[str, str] = {}
    for runtime, fp32_role, profile in (("onnxruntime", "onnx_fp32", "cpu"), ("openvino", "openvino_fp32", "openvino"),
                                        ("tensorrt", "onnx_fp32", "trt")):
        v = verdict.get(profile)
        if v is not None and v.get("default") and int8_role[profile] in roles:
            defaults[runtime] = int8_role[profile]
        elif fp32_role in roles and (runtime != "tensorrt" or "engines" in report):
            defaults[runtime] = fp32_role
        elif runtime == "openvino" and int8_role[profile] in roles:
            defaults[runtime] = "onnx_fp32"  # OpenVINO reads the fp32 ONNX directly
    out: dict = {"default_artifacts": defaults}
    if verdict:
        out["int8"] = {p: {**v, "artifact": int8_role.get(p)} for p, v in verdict.items()}
    return out


def state_fixed_shape(manifest: dict, report: dict) -> None:
    """A fixed-shape export (user code whose trace bakes sizes in) says so in the manifest: the
    input/output shapes are numbers, the shape range is that one size, and why."""
    hw = (report.get("export") or {}).get("fixed_input_hw")
    if not hw:
        return
    h, w = hw
    s = manifest["spec"]["scale"]
    manifest["io"]["input"]["shape"] = ["N", manifest["spec"]["in_channels"], h, w]
    manifest["io"]["output"]["shape"] = ["N", manifest["spec"]["out_channels"], h * s, w * s]
    manifest["io"]["fixed_input_hw"] = [h, w]
    manifest["io"]["fixed_reason"] = report["export"].get("fixed_reason", "")
    for dim, v in (("height", h), ("width", w)):
        manifest["shape_range"][dim].update({"min": v, "max": v, "opt": v})


def source_info(ckpt: Path, spec: Spec, bundled: bool) -> dict:
    return {"checkpoint": text_name(ckpt.name), "sha256": sha256_file(ckpt), "bundled": bundled, "form": spec.form,
            "arch": spec.arch, "variant": spec.variant, "hyperparams": spec.hyperparams}


def artifact_entry(path: Path, role: str, fmt: str, precision: str, backend: str, **extra) -> dict:
    return {"role": role, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "format": fmt, "precision": precision, "backend": backend, **extra}
