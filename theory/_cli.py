"""What every theory module shares: the command line of `python -m theory.<module>` (pick which sections of a
derivation to print) and the checks of numeric inputs that theory's and sim's public functions run first.

Each theory module keeps a table SECTIONS = {name: (what it shows, printer(args))}; `section_parser` builds its
parser (--help, --section NAME [NAME ...]) and `print_sections` prints the chosen sections in table order.
`real_number` and `count` turn a number given as a Python, NumPy or SymPy scalar into the Python int or float
it stands for, or raise a one-line ValueError naming the input (`shown`) and what is allowed. Standard library
only, so theory/ still imports nothing but SymPy.
"""
from __future__ import annotations

import argparse
import math
import numbers


def section_parser(module: str, doc: str, sections: dict) -> argparse.ArgumentParser:
    """The parser of `python -m theory.<module>`: its description is the first paragraph of doc."""
    parser = argparse.ArgumentParser(prog=f"python -m theory.{module}", description=doc.split("\n\n")[0])
    parser.add_argument("--section", nargs="+", choices=sections, default=list(sections), metavar="NAME",
                        help="what to print, space-separated: " + "; ".join(
                            f"{name} ({text})" for name, (text, _) in sections.items()) + " (default: all)")
    return one_line_errors(parser)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` with errors in one line and exit code 2, not the usage block: the error names the flag and what
    is allowed, --help shows the rest. Every command line of the package (theory, validate, benchmarks) uses it."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    return parser


def print_sections(sections: dict, args: argparse.Namespace) -> None:
    """Print the sections named in args.section, in the table's order, a blank line between them."""
    chosen = [name for name in sections if name in args.section]
    for i, name in enumerate(chosen):
        if i:
            print()
        sections[name][1](args)


# ----------------------------------------------------------------------------------------------------------
# Numeric inputs
# ----------------------------------------------------------------------------------------------------------
def shown(value) -> str:
    """repr(value) on one line (a matrix or a long array prints over several), for one-line error messages."""
    return " ".join(repr(value).split())


def _scalar(value):
    """A NumPy scalar or 0-d array as the Python number it holds (np.float32(0.5) -> 0.5); anything else as is."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


def _interval(low, high, open_low) -> str:
    if high == math.inf:
        return f" {'>' if open_low else '>='} {low:g}" if low > -math.inf else ""
    return f" in {'(' if open_low else '['}{low:g}, {high:g}]"


def real_number(name: str, value, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
                keep_int: bool = False):
    """`value` as a Python float (an int stays an int with keep_int) if it is a finite real number in
    [low, high] ((low, high] with open_low): a Python, NumPy or SymPy number, not a bool. Otherwise a
    ValueError naming `name` and the allowed range."""
    number = value if type(value) in (float, int) else _scalar(value)   # the common case first: it is hot
    if type(number) is not float and (isinstance(number, bool) or not isinstance(number, numbers.Real)):
        raise ValueError(f"{name}={shown(value)}: must be a finite real number{_interval(low, high, open_low)}")
    try:
        as_float = float(number)
    except OverflowError:   # an int too large for a float
        as_float = math.inf
    if not (math.isfinite(as_float) and (low < as_float if open_low else low <= as_float) and as_float <= high):
        raise ValueError(f"{name}={shown(value)}: must be a finite real number{_interval(low, high, open_low)}")
    return int(number) if keep_int and isinstance(number, numbers.Integral) else as_float


def count(name: str, value, low: int = 0, high: int | None = None) -> int:
    """`value` as a Python int if it is an integer (Python, NumPy or SymPy; not a bool, not a float) in
    [low, high]; otherwise a ValueError naming `name` and the allowed range."""
    number = value if type(value) is int else _scalar(value)
    if type(number) is not int and (isinstance(number, bool) or not isinstance(number, numbers.Integral)) or not (
            low <= number and (high is None or number <= high)):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={shown(value)}: must be an integer {allowed}")
    return int(number)


def choice(name: str, value, allowed: tuple) -> str:
    """`value` if it is one of the strings `allowed` (a NumPy string becomes a str); otherwise a ValueError."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={shown(value)}: allowed values are {allowed}")
    return str(value)
