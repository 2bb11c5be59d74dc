"""edgesr list: registered architectures and named variants."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("list", help="list registered architectures and named variants",
                       description="List every registered architecture, its forms and its named variants.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def run(args) -> int:
    from ..registry import architectures
    from .output import emit_json, print_table

    archs = architectures()
    if args.json:
        emit_json({"architectures": [
            {"name": a.name, "description": a.description, "forms": list(a.forms),
             "reparameterizable": a.reparameterizable, "source": a.source,
             "variants": [{"name": v.name, "hyperparams": v.hyperparams, "note": v.note} for v in a.variants]}
            for a in archs]})
        return 0
    print_table(["architecture", "forms", "variants", "description"],
                [[a.name, "+".join(a.forms), ", ".join(v.name for v in a.variants) or "-", a.description]
                 for a in archs])
    return 0
