"""``vqbench list``: every registered quantizer, dataset and model."""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("list", help="registered quantizers, datasets and models")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard over quantizer names")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..registry import get_quantizer_entry, list_quantizers, registry_document

    doc = registry_document()
    quantizers = []
    for name in list_quantizers(args.pattern):
        e = get_quantizer_entry(name)
        target = e.target if isinstance(e.target, str) else f"{e.target.__module__}:{e.target.__qualname__}"
        quantizers.append({"name": name, "class": target, "source": e.source, "citation": e.citation,
                           "table1_row": e.table1_row, "defaults": e.defaults, "paper": e.paper})
    if args.json:
        print(json.dumps({"quantizers": quantizers, "datasets": doc.get("datasets", {}),
                          "models": doc.get("models", {})}, default=str))
        return 0
    width = max([len(q["name"]) for q in quantizers] + [8])
    print("quantizers:")
    for q in quantizers:
        source = "" if q["source"] == "builtin" else f"  [{q['source']}]"
        print(f"  {q['name']:<{width}}  {q['citation']}{source}")
    print("datasets:")
    for name, spec in doc.get("datasets", {}).items():
        print(f"  {name:<{width}}  {spec.get('citation', '')}")
    print("models:")
    for name, spec in doc.get("models", {}).items():
        print(f"  {name:<{width}}  {spec.get('citation', '')}")
    return 0
