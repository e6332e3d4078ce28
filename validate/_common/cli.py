"""The command line every validate command shares: its common flags, declared once, one list syntax, and the
rule that flags the user gives beat the --quick preset.

    parser = command_parser("scan_snap", __doc__)
    add_config_flags(parser.add_argument_group("training"), TrainConfig(), {"steps": "SGD steps", ...})
    add_common_flags(parser, "scan_snap", seeds=(1, 2, 3), workers=None)
    args = parse(parser, argv, quick={"steps": 40, "seeds": (1, 2)})

Conventions, the same in every command:
- lists are space-separated everywhere: `--seeds 1 2 3`, `--ratios 1 2 5 10`;
- `--seeds S [S ...]` are seed values (each seeds one independent replicate); `--seed S` is `--seeds S`;
- `--quick` applies a small preset to every flag the user did not give;
- every flag's help ends with its default (and its --quick value, where the preset changes it);
- a bad value exits with code 2 and one line naming the flag and what is allowed.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile

from theory._cli import one_line_errors
from validate._common import checks
from validate._common.reporting import TEMPORARY_PREFIX, git_commit
from validate._common.sweep import StoreInUse, SweepStore, check_scheduler

SEED_LIMIT = 2 ** 63  # seeds are stored as SQLite INTEGERs and fed to torch.Generator.manual_seed: int64
COMMON_FLAGS = ("out", "seeds", "seed", "quick", "device", "workers", "threads", "scheduler", "fresh", "quiet",
                "update_figures")


# ----------------------------------------------------------------------------------------------------------
# Value types: each raises ArgumentTypeError with what is allowed, which argparse turns into exit code 2
# ----------------------------------------------------------------------------------------------------------
def _number(text: str, kind):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")


def integer(minimum: int | None = None, maximum: int | None = None):
    """An argparse type: an integer in [minimum, maximum]."""
    def parse(text):
        value = _number(text, int)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = " and ".join(s for s in (f">= {minimum}" if minimum is not None else "",
                                              f"<= {maximum}" if maximum is not None else "") if s)
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return value
    parse.__name__ = "integer"
    return parse


def real(minimum: float | None = None, exclusive: bool = False):
    """An argparse type: a finite number, >= minimum (> minimum with exclusive=True)."""
    def parse(text):
        value = _number(text, float)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise argparse.ArgumentTypeError(f"{value:g}: must be {'>' if exclusive else '>='} {minimum:g}")
        return value
    parse.__name__ = "number"
    return parse


seed_value = integer(0, SEED_LIMIT - 1)


def device_value(text: str) -> str:
    """cpu, cuda or cuda:N, the CUDA forms only where torch sees that device."""
    try:
        return checks.device("--device", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(error).partition(': ')[2]}") from None


# ----------------------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout; help texts wrap to the terminal."""


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m validate.<command>`, its description the command module's docstring."""
    parser = argparse.ArgumentParser(prog=f"python -m validate.{command}", description=doc,
                                     formatter_class=_HelpFormatter)
    return one_line_errors(parser)


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value) if value else "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_common_flags(parser: argparse.ArgumentParser, command: str, *, seeds: tuple | None,
                     workers: int | None = None, threads: int | None = None, scheduler: bool = False,
                     fresh: bool = False, quick: str = "a small preset for smoke tests",
                     seeds_help: str = "seed values, one independent replicate each") -> None:
    """The flags every command shares, with the same names, types, defaults and help everywhere.

    seeds=None leaves --seeds/--seed out; workers/threads=None leave those flags out; scheduler and fresh add
    --scheduler and --fresh (commands with a resumable sweep)."""
    group = parser.add_argument_group("common flags (the same in every command)")
    group.add_argument("--out", default=os.path.join("runs", command), metavar="DIR",
                       help="directory for the JSON record, figures and stores (default %(default)s)")
    if seeds is not None:
        chosen = group.add_mutually_exclusive_group()
        chosen.add_argument("--seeds", type=seed_value, nargs="+", default=tuple(seeds), metavar="S",
                            help=f"{seeds_help}; space-separated (default {_shown(seeds)})")
        chosen.add_argument("--seed", type=seed_value, default=None, metavar="S",
                            help="shorthand for --seeds S (default: none)")
    group.add_argument("--quick", action="store_true",
                       help=f"{quick}; flags given explicitly beat the preset (default off)")
    group.add_argument("--device", type=device_value, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    if workers is not None:
        group.add_argument("--workers", type=integer(0), default=workers, metavar="N",
                           help="local worker processes; 0 runs in this process (default %(default)s)")
    if threads is not None:
        group.add_argument("--threads", type=integer(1), default=threads, metavar="N",
                           help="torch CPU threads per process (default %(default)s)")
    if scheduler:
        group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                           help="Dask scheduler address, e.g. tcp://host:8786 (default: local processes)")
    if fresh:
        group.add_argument("--fresh", action="store_true",
                           help="discard this configuration's stored results first (default off: resume)")
    group.add_argument("--update-figures", action="store_true",
                       help="also copy the figures into the repository's figures/ (default: only the default "
                            "experiment does)")
    group.add_argument("--quiet", action="store_true",
                       help="no progress output (default off: a bar on a terminal, a line every 30 s otherwise)")


def add_config_flags(group, defaults, fields: dict, *, choices: dict | None = None, prefix: str = "") -> None:
    """One flag per config field: --field-name with the type and default of `defaults` (a config instance) and
    the help text fields[name]. Tuples become space-separated lists; booleans on/off switches."""
    choices = choices or {}
    for name, text in fields.items():
        default = getattr(defaults, name)
        flag = "--" + (prefix + name).replace("_", "-")
        kwargs = {"dest": prefix + name, "default": default, "help": f"{text} (default {_shown(default)})"}
        if name in choices:
            kwargs["choices"] = choices[name]
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if isinstance(default, tuple):
            element = type(default[0]) if default else float
            kwargs.update(nargs="+", type=_element_type(element), metavar=name[0].upper())
        elif default is not None:
            kwargs.update(type=_element_type(type(default)))
        group.add_argument(flag, **kwargs)


def _element_type(kind):
    if kind is int:
        return integer()
    if kind is float:
        return real()
    return kind


def config_values(args: argparse.Namespace, fields, prefix: str = "") -> dict:
    """{field: value} of the flags add_config_flags made (lists as tuples), for building the config."""
    values = {}
    for name in fields:
        value = getattr(args, prefix + name)
        values[name] = tuple(value) if isinstance(value, list) else value
    return values


def _explicit_dests(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations the user gave on the command line (parsed again with every default suppressed)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def annotate_quick(parser: argparse.ArgumentParser, quick: dict) -> None:
    """Append "; --quick: VALUE" to the help of every flag whose default the preset changes."""
    for action in parser._actions:
        if action.dest in quick and action.help and action.help != argparse.SUPPRESS:
            value = quick[action.dest]
            if action.help.endswith(")"):
                action.help = action.help[:-1] + f"; --quick: {_shown(value)})"
            else:
                action.help += f" (--quick: {_shown(value)})"


def parse(parser: argparse.ArgumentParser, argv=None, quick: dict | None = None) -> argparse.Namespace:
    """Parse argv; fold --seed into --seeds (a tuple); with --quick, set every preset value the user did not
    give explicitly. Unknown flags and bad values exit with code 2 and one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    explicit = _explicit_dests(parser, argv)
    if getattr(args, "quick", False) and quick:
        for dest, value in quick.items():
            if dest not in explicit and not (dest == "seeds" and "seed" in explicit):
                setattr(args, dest, value)
    if hasattr(args, "seeds"):
        seeds = (args.seed,) if getattr(args, "seed", None) is not None else tuple(args.seeds)
        if len(set(seeds)) != len(seeds):
            parser.error(f"argument --seeds: {list(seeds)} must be distinct")
        args.seeds = seeds
    for name, value in vars(args).items():
        if isinstance(value, list):
            setattr(args, name, tuple(value))
    try:
        if getattr(args, "out", None) is not None:
            prepare_output_directory(args.out)
        if getattr(args, "scheduler", None) is not None:
            check_scheduler(args.scheduler)
    except ValueError as error:
        parser.error(str(error))
    args.explicit = frozenset(explicit)
    git_commit()  # the record's commit is the tree's state now, before the command writes figures/
    return args


def prepare_output_directory(path: str) -> str:
    """Create --out if needed and make sure this run can write there, before any compute; remove the temporary
    files a killed write left behind (the atomic writers' ".tmp-" files). ValueError in one line otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"--out {path!r}: cannot write there ({error.strerror or error})") from None
    for name in os.listdir(path):
        if name.startswith(TEMPORARY_PREFIX):
            try:
                os.remove(os.path.join(path, name))
            except OSError:
                pass  # gone already, or not ours to remove: harmless either way
    return path


def fail(command: str, message: str):
    """End `python -m validate.<command>` with one line and exit code 2, as argparse does for a bad flag."""
    print(f"python -m validate.{command}: error: {message} (see --help)", file=sys.stderr)
    raise SystemExit(2)


def open_store(command: str, path: str, sweep: str) -> SweepStore:
    """The sweep store at `path`, checked before any compute: a file that is not a sweep store, or one another
    run is using, ends the command with one line and exit code 2."""
    try:
        store = SweepStore(path, sweep)
        with store.lock():
            pass
        return store
    except (ValueError, StoreInUse) as error:
        fail(command, str(error))


def run_command(command: str, main, argv=None, resumable: bool = True) -> int:
    """main(argv), with the ends a user may cause turned into one line instead of a traceback: Ctrl-C (what
    finished is kept, exit 130) and a store another run holds (exit 2)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"python -m validate.{command}: interrupted; " + (
            "every finished run is kept in the store, and running the same command again resumes" if resumable
            else "nothing was written"), file=sys.stderr)
        return 130
    except StoreInUse as error:  # another run took the store after open_store checked it
        print(f"python -m validate.{command}: error: {error}", file=sys.stderr)
        return 2


def config_or_exit(parser: argparse.ArgumentParser, build):
    """build() (a config constructor); its ValueError becomes one usage line and exit code 2."""
    try:
        return build()
    except ValueError as error:
        parser.error(str(error))

