"""Which LiteRT int8 tensors cost a model its picture: one op type at a time, float or INT8.

For one model of benchmarks/mobile.py and the first held-out sample photo (astronaut, 128x128 LR):
the fp32 .tflite of the model as given (no edgesr preparation: this asks which *op types* the
full-integer scheme hurts, not how well edgesr's rewrites do), min-max ranges over edgesr's
calibration patches, then ai-edge-quantizer builds with (a) every op of one type kept float and
(b) only the ops of that type INT8, everything else float. Y-PSNR drop vs the fp32 file, in dB.

Prints a table; writes benchmarks/results/litert_op_types.json (one entry per model, --update
keeps the others).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "litert_op_types.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


def probe(name: str) -> dict:
    import mobile

    from edgesr.backends.litert_runner import LiteRtRunner, interpreter
    from edgesr.export.litert import calibration_ranges, convert_fp32_bytes, quantize_int8_bytes
    from edgesr.export.mobile import calibration_inputs
    from edgesr.metrics import psnr_y
    from edgesr.quant.calibration import from_model_output, held_out_eval_set, to_model_input

    module, spec = mobile.load(name)
    p = held_out_eval_set(spec.scale).pairs[0]
    hw = p.lr.shape[:2]
    fp32 = convert_fp32_bytes(module, spec, hw)
    ranges = calibration_ranges(fp32, calibration_inputs(spec, hw, None), spec.value_range)
    x = to_model_input(p.lr, spec)[None]

    def psnr(model: bytes) -> float:
        return psnr_y(np.clip(from_model_output(LiteRtRunner(model).run(x)[0], spec), 0, 1), p.hr, spec.scale)

    base = psnr(fp32)
    it = interpreter(fp32)
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = [(o["op_name"], names[o["outputs"][0]]) for o in it._get_ops_details()]  # noqa: SLF001

    def drop(float_type) -> float:
        return round(base - psnr(quantize_int8_bytes(fp32, ranges, float_ops=[n for t, n in ops if float_type(t)])), 4)

    rows = {t: {"count": c, "drop_this_type_float": drop(lambda o, t=t: o == t),
                "drop_only_this_type_int8": drop(lambda o, t=t: o != t)}
            for t, c in sorted(Counter(t for t, _ in ops).items())}
    return {"image": p.name, "lr_hw": list(hw), "psnr_fp32": round(base, 4), "drop_all_int8": drop(lambda o: False),
            "op_types": rows}


def main(argv=None) -> int:
    import mobile

    from edgesr.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="SAFMN++ (NTIRE 2024 team23)", help="comma-separated names of "
                    "benchmarks/mobile.py: " + ", ".join(mobile.MODELS))
    ap.add_argument("--update", action="store_true", help="keep the other models' entries of the saved JSON")
    args = ap.parse_args(argv)
    data = {"machine": machine_info(), "models": {}}
    if args.update and RESULTS.is_file():
        data["models"] = json.loads(RESULTS.read_text()).get("models", {})
    for name in args.models.split(","):
        t0 = time.time()
        r = probe(name) | {"seconds": round(time.time() - t0, 1), "loadavg": os.getloadavg()}
        data["models"][name] = r
        print(f"{name}: {r['image']} {r['lr_hw']}, all INT8 {r['drop_all_int8']:.3f} dB")
        print("| op type | ops | drop, this type float | drop, only this type INT8 |\n|---|---|---|---|")
        for t, row in r["op_types"].items():
            print(f"| {t} | {row['count']} | {row['drop_this_type_float']:.3f} | {row['drop_only_this_type_int8']:.3f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
