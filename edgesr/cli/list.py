"""edgesr list: registered architectures and named variants."""

from __future__ import annotations

# The table fits a 100-column terminal; the full text lives under `list NAME` and `--json`.
TABLE_WIDTH = 100


def add_parser(sub):
    p = sub.add_parser("list", help="list registered architectures and named variants",
                       description="List every registered architecture (one line each, fits 100 columns), "
                                   "or everything about one: `edgesr list NAME` (an architecture or variant name).")
    p.add_argument("name", nargs="?", help="architecture or variant to show in full (forms, variants with their "
                                           "hyperparameters, source)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (every field, untruncated)")
    return p


def _arch_dict(a) -> dict:
    return {"name": a.name, "description": a.description, "forms": list(a.forms),
            "reparameterizable": a.reparameterizable, "source": a.source,
            "variants": [{"name": v.name, "hyperparams": v.hyperparams, "note": v.note} for v in a.variants]}


def run(args) -> int:
    from ..registry import architectures, get_architecture
    from .output import emit_json

    if args.name:
        a = get_architecture(args.name)  # UnknownArchitecture (one line, names the known ones) otherwise
        if args.json:
            emit_json(_arch_dict(a))
        else:
            _print_one(a)
        return 0
    archs = architectures()
    if args.json:
        emit_json({"architectures": [_arch_dict(a) for a in archs]})
        return 0
    print(format_list(archs))
    print(f"\n{len(archs)} architectures; `edgesr list NAME` shows one in full (variants, hyperparameters, source)")
    return 0


def format_list(archs, width: int = TABLE_WIDTH) -> str:
    """One line per architecture: name, forms, variant count, description clipped to `width`."""
    from .output import format_table

    rows = [[a.name, "+".join(a.forms), str(len(a.variants)), a.description] for a in archs]
    headers = ["architecture", "forms", "variants", "description"]
    fixed = sum(max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:3])) + 2 * 3
    room = max(len(headers[3]), width - fixed)
    for r in rows:
        r[3] = clip(r[3], room)
    return format_table(headers, rows)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters at a word boundary, ending in '...' when cut."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 3)]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:(") + "..."


def _print_one(a) -> None:
    import textwrap

    from ..errors import one_line
    from .output import print_table

    wrap = textwrap.TextWrapper(width=TABLE_WIDTH, subsequent_indent="  ")
    print(one_line(a.name))
    print(wrap.fill(one_line(f"description: {a.description}")))
    print(one_line(f"forms: {', '.join(a.forms)}"
                   + (" (reparameterizable: training -> deploy)" if a.reparameterizable else "")))
    if a.source:
        print(wrap.fill(one_line(f"source: {a.source}")))
    if a.variants:
        print()
        print_table(["variant", "hyperparameters", "note"],
                    [[v.name, ", ".join(f"{k}={val}" for k, val in v.hyperparams.items()), v.note or ""]
                     for v in a.variants])
