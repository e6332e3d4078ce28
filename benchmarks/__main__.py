"""`python -m benchmarks [--quick] [names...]`: every benchmarks/bench_<name>.py, ratios measured in one run.

Each module has run(quick) -> list of rows {"name", "baseline", "ratio", "detail"}; speed is always a ratio
against a baseline timed in the same process, never seconds compared across runs.
"""
import argparse
import importlib
import json
import pkgutil
import sys

import benchmarks


def main(argv=None):
    available = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                       if m.name.startswith("bench_"))
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which benchmarks (default all: {', '.join(available)})")
    parser.add_argument("--quick", action="store_true", help="smaller problems (smoke test)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; allowed: {available}")
    rows = []
    for name in args.names or available:
        print(f"== {name}")
        rows += importlib.import_module(f"benchmarks.bench_{name}").run(args.quick)
    print("\n" + "\n".join(f"{r['name']:<48} {r['ratio']:>9.1f}x  vs {r['baseline']}" for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
