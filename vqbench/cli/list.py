"""``vqbench list``: every registered quantizer, dataset and model."""
from __future__ import annotations

import fnmatch
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("list", help="registered quantizers, datasets and models")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard over quantizer names")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..registry import get_quantizer_entry, list_quantizers, registry_document, unavailable_quantizers

    doc = registry_document()
    quantizers = []
    for name in list_quantizers(args.pattern):
        e = get_quantizer_entry(name)
        quantizers.append({"name": name, "class": e.target_name, "source": e.source, "origin": e.origin,
                           "citation": e.citation,
                           "table1_row": e.table1_row, "defaults": e.defaults, "paper": e.paper})
    unavailable = {n: why for n, why in sorted(unavailable_quantizers().items())
                   if fnmatch.fnmatchcase(n, args.pattern)}
    if args.json:
        print(json.dumps({"quantizers": quantizers, "unavailable": unavailable,
                          "datasets": doc.get("datasets", {}), "models": doc.get("models", {})}, default=str))
        return 0
    width = max([len(q["name"]) for q in quantizers] + [8])
    print("quantizers:")
    for q in quantizers:
        source = "" if q["source"] == "builtin" else f"  [{q['source']}]"
        print(f"  {q['name']:<{width}}  {q['citation']}{source}")
    for reason in sorted(set(unavailable.values())):  # one line per missing extra
        names = ", ".join(n for n, why in unavailable.items() if why == reason)
        print(f"  (not available: {names}: {reason})")
    print("datasets:")
    for name, spec in doc.get("datasets", {}).items():
        print(f"  {name:<{width}}  {spec.get('citation', '')}")
    print("models:")
    for name, spec in doc.get("models", {}).items():
        print(f"  {name:<{width}}  {spec.get('citation', '')}")
    return 0
