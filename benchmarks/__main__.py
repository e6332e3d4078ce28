"""Run the benchmarks (every benchmarks/bench_<name>.py) and print each speed-up as a ratio against a baseline
timed in the same run.

Each module has run(quick) -> list of rows {"name", "baseline", "ratio", "detail"}; speed is always a ratio
against a baseline timed in the same process, never seconds compared across runs. A module may also have
profile(), which prints where its time goes (--profile).
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import benchmarks
from theory._cli import one_line_errors


def _parser(available: list, only: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks`, or of `python -m benchmarks.bench_<only>` (one benchmark)."""
    if only is None:
        parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                         epilog=__doc__.split("\n\n", 1)[1])
        parser.add_argument("names", nargs="*", metavar="NAME",
                            help=f"which benchmarks, from {', '.join(available)} (default: all)")
    else:
        doc = importlib.import_module(f"benchmarks.bench_{only}").__doc__
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks.bench_{only}",
                                         description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller problems, a smoke test (default off: full-size problems)")
    parser.add_argument("--profile", action="store_true",
                        help="print where the time goes instead of the ratios, for the benchmarks that have a "
                             "profile (phase_diagram) (default off)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the rows to this JSON file (default: none, rows are only printed)")
    return one_line_errors(parser)


def main(argv=None, only: str | None = None):
    """Run the benchmarks named on the command line (all by default), or only benchmarks/bench_<only>.py."""
    available = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                       if m.name.startswith("bench_"))
    parser = _parser(available, only)
    args = parser.parse_args(argv)
    names = [only] if only is not None else args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; allowed: {available}")
    if args.profile:
        profiled = [n for n in names if hasattr(importlib.import_module(f"benchmarks.bench_{n}"), "profile")]
        if not profiled:
            parser.error(f"--profile: none of {names} has a profile; these do: "
                         f"{[n for n in available if hasattr(importlib.import_module(f'benchmarks.bench_{n}'), 'profile')]}")
        for name in profiled:
            importlib.import_module(f"benchmarks.bench_{name}").profile()
        return 0
    rows = []
    for name in names:
        print(f"== {name}")
        rows += importlib.import_module(f"benchmarks.bench_{name}").run(args.quick)
    print("\n" + "\n".join(f"{r['name']:<48} {r['ratio']:>9.1f}x  vs {r['baseline']}" for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
