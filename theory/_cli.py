"""The command line of `python -m theory.<module>`: pick which sections of a derivation to print.

Each theory module keeps a table SECTIONS = {name: (what it shows, printer(args))}; this builds its parser
(--help, --section NAME [NAME ...]) and prints the chosen sections in table order. Standard library only, so
theory/ still imports nothing but SymPy.
"""
from __future__ import annotations

import argparse


def section_parser(module: str, doc: str, sections: dict) -> argparse.ArgumentParser:
    """The parser of `python -m theory.<module>`: its description is the first paragraph of doc."""
    parser = argparse.ArgumentParser(prog=f"python -m theory.{module}", description=doc.split("\n\n")[0])
    parser.add_argument("--section", nargs="+", choices=sections, default=list(sections), metavar="NAME",
                        help="what to print, space-separated: " + "; ".join(
                            f"{name} ({text})" for name, (text, _) in sections.items()) + " (default: all)")
    # one line, not the usage block: the error names the flag, --help shows the rest
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    return parser


def print_sections(sections: dict, args: argparse.Namespace) -> None:
    """Print the sections named in args.section, in the table's order, a blank line between them."""
    chosen = [name for name in sections if name in args.section]
    for i, name in enumerate(chosen):
        if i:
            print()
        sections[name][1](args)
