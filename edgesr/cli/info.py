"""edgesr info: validate a bundle (OUTDIR of `edgesr convert`) and show what an app needs to run it."""

from __future__ import annotations

from ..errors import one_line


def add_parser(sub):
    p = sub.add_parser(
        "info", help="validate a bundle and print its manifest (artifacts, I/O, tiling, parity, latency)",
        description="Validate OUTDIR/manifest.json against the bundle schema, check every listed file exists "
                    "and matches its sha256, and print what an application needs: artifacts, tensor names, "
                    "dtype/layout/range/colour order, scale, shape ranges, tiling, parity and latency. Exits "
                    "non-zero with a one-line reason when the bundle is invalid.")
    p.add_argument("outdir", help="bundle folder (holding manifest.json)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifacts (faster)")
    p.add_argument("--json", action="store_true", help="print {valid, folder, manifest} as one JSON object")
    return p


def run(args) -> int:
    from ..bundle import read_manifest
    from .output import emit_json, print_table

    m = read_manifest(args.outdir, verify_hashes=not args.no_verify)
    d = m.data
    if args.json:
        emit_json({"valid": True, "hashes_verified": m.hashes_verified, "folder": str(m.folder), "manifest": d})
        return 0
    spec, io, til, sr = d["spec"], d["io"], d["tiling"], d["shape_range"]
    inp, out = io["input"], io["output"]
    print(one_line(f"{m.folder}: valid edgesr bundle (format {d['format_version']}, edgesr {d['edgesr_version']}, "
          f"created {d['created']}){'' if m.hashes_verified else ' [hashes not verified]'}"))
    print(one_line(f"model: {spec['arch']} ({spec.get('variant') or 'custom'}) x{io['scale']}, from {d['source']['checkpoint']} "
          f"({d['source']['form']} form)"))
    print(one_line(f"input:  {inp['name']} {inp['dtype']} {inp['layout']} {inp['shape']} range {inp['value_range']} "
          f"{inp['color_order']}"))
    print(one_line(f"output: {out['name']} {out['dtype']} {out['layout']} {out['shape']} range {out['value_range']} "
          f"{out['color_order']}"))
    print(one_line(f"sizes:  H in [{sr['height']['min']}, {sr['height']['max'] or 'any'}], W in [{sr['width']['min']}, "
          f"{sr['width']['max'] or 'any'}], multiple of {sr['height'].get('multiple', 1)}; receptive field "
          f"{io['receptive_field']} px"))
    verdict = til.get("summary") or ("exact: tiled == untiled" if til["exact"] else "not exact")
    print(one_line(f"tiling: tile {til['tile']} + overlap {til['overlap']} px per side: {verdict}"))
    print()
    print_table(["role", "file", "format", "precision", "backend", "bytes", "sha256"],
                [[a.role, a.file, a.format, a.precision, a.backend, a.bytes,
                  a.sha256[:12] + ("... ok" if m.hashes_verified else "...")] for a in m.artifacts])
    comps = d["parity"].get("comparisons", [])
    print()
    print(one_line(f"parity: {'OK' if d['parity']['ok'] else 'FAILED'}"))
    if comps:
        print_table(["reference", "candidate", "max abs", "PSNR (dB)", "ok"],
                    [[c.get("reference"), c.get("candidate"), c.get("max_abs"), c.get("psnr"),
                      "yes" if c.get("ok") else "NO"] for c in comps])
    lat = d.get("latency")
    if lat:
        mach = lat.get("machine") or {}
        print()
        print(one_line(f"latency: input {lat.get('input')} -> output {lat.get('output')}, "
                       f"threads {lat.get('threads')}, {mach.get('cpu_model')}"))
        print_table(["backend", "median ms", "p90 ms", "CV"],
                    [[r.get("backend"), r.get("median_ms"), r.get("p90_ms"), r.get("cv")] for r in lat["results"]])
    v = d["versions"]
    print("\nversions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None))
    return 0
