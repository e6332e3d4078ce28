"""`python -m validate.publish OUT/COMMAND.json [--name NAME]`: put a run's JSON record under the repository's
results/ as README quotes it.

The copy keeps the config, metrics, verdicts, versions and timings and drops the per-step curves (training and
test loss, gradient norm: validate._common.reporting.CURVE_KEYS), saying so in its `results_note`. It is written to
results/NAME.json (NAME: the record's command unless given, e.g. `--name phase_diagram_crossing`). A record made
from a tree with uncommitted changes is refused (run the command from a clean checkout, then publish) unless
--allow-dirty, and then its note says so. Publishing a published record changes nothing.

    python -m validate.signal_prop --out runs/signal_prop
    python -m validate.publish runs/signal_prop/signal_prop.json          # -> results/signal_prop.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from validate._common import reporting

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def publish(source: str, name: str | None = None, results_dir: str | None = None, allow_dirty: bool = False) -> str:
    """Write results_dir/NAME.json (default: the repository's results/) from the record at `source`; returns its
    path. ValueError, naming the input, for a file that is not a record of a validate command or is dirty."""
    try:
        with open(source) as handle:
            record = json.load(handle)
    except OSError as error:
        raise ValueError(f"{source}: cannot be read ({error.strerror})")
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not JSON ({error.msg}, line {error.lineno})")
    if not isinstance(record, dict):
        raise ValueError(f"{source}: not the JSON record of a validate command (not an object)")
    try:
        published = reporting.results_record(record, allow_dirty)
    except ValueError as error:
        raise ValueError(f"{source}: {error}")
    name = record["command"] if name is None else name
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--name {name!r}: must be lower-case letters, digits and '_', starting with a letter")
    results_dir = reporting.REPOSITORY_RESULTS if results_dir is None else results_dir
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}.json")
    reporting.atomic_write_text(path, json.dumps(published, indent=1, allow_nan=False) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validate.publish", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the JSON record a validate command wrote to its --out")
    parser.add_argument("--name", help="results/NAME.json (default: the record's command)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="publish a record made from a tree with uncommitted changes (its note says so)")
    args = parser.parse_args(argv)
    try:
        path = publish(args.source, args.name, allow_dirty=args.allow_dirty)
    except ValueError as error:
        print(f"python -m validate.publish: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
