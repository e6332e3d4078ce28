"""What every validate command reports, in one place: verdict rows and the one table printer, the one JSON
record, package versions, progress lines, atomic writers, and the rule for the repository's figures/.

    rows = [Verdict.check("spectral gap", "0.5", "0.49 +- 0.01", "3 SE", passed=True, claim="C1")]
    print(format_table(rows))
    record = make_record("phase_diagram", argv, config, metrics, rows, timings_s)
    write_record(record, out_dir)            # out_dir/phase_diagram.json, strict JSON, written atomically

Files are written atomically: a temporary file in the target directory, then a rename (mode 0644, since mkstemp
creates 0600), so a killed run never leaves a half-written JSON or figure behind.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass

import numpy as np

VERDICTS = ("PASS", "FAIL", "INFO")
# the table's columns, in order; a column that is empty in every row is left out
COLUMNS = ("claim", "measure", "quantity", "prediction", "measurement", "tolerance", "verdict")
TEMPORARY_PREFIX = ".tmp-"  # what the atomic writers call their temporary files; a later run removes strays
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPOSITORY_FIGURES = os.path.join(REPOSITORY, "figures")


# ----------------------------------------------------------------------------------------------------------
# Verdict rows and their table
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """One row of a command's verdict table.

    claim: what the row belongs to (a claim of the paper, a setting), or "" where a command has one subject;
    measure: "paper" (the paper's own measure) or "null" (the null-corrected one), or "" where there is one;
    verdict: PASS, FAIL, or INFO (reported, not judged).
    """

    quantity: str
    prediction: str
    measurement: str
    tolerance: str
    verdict: str
    claim: str = ""
    measure: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}: allowed values are {VERDICTS}")
        for name in COLUMNS:
            if not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, str(getattr(self, name)))

    @classmethod
    def check(cls, quantity, prediction, measurement, tolerance, passed, claim: str = "", measure: str = ""):
        """A row judged by `passed`: True gives PASS, False FAIL, None INFO (nothing to judge)."""
        verdict = "INFO" if passed is None else ("PASS" if bool(passed) else "FAIL")
        return cls(str(quantity), str(prediction), str(measurement), str(tolerance), verdict, claim, measure)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_dict(cls, row: dict) -> "Verdict":
        return cls(**{name: row.get(name, "") for name in COLUMNS})


def all_pass(rows) -> bool:
    """True when no judged row failed (INFO rows are not judged)."""
    return all(_as_verdict(r).verdict != "FAIL" for r in rows)


def _as_verdict(row) -> Verdict:
    return row if isinstance(row, Verdict) else Verdict.from_dict(row)


def terminal_width() -> int:
    """The terminal's width (COLUMNS wins), 160 when there is no terminal."""
    return shutil.get_terminal_size(fallback=(160, 24)).columns


def format_table(rows, width: int | None = None) -> str:
    """The verdict rows as a table at most `width` characters wide (default: the terminal's).

    Cells that do not fit are wrapped onto further lines of the same row, never cut: every character of every
    cell is printed. Columns empty in every row are left out; the verdict column and the headers are never
    wrapped, so the table is at least as wide as its headers."""
    rows = [_as_verdict(r) for r in rows]
    if not rows:
        return "(no verdicts)"
    width = terminal_width() if width is None else int(width)
    columns = [c for c in COLUMNS if c in ("quantity", "verdict") or any(getattr(r, c) for r in rows)]
    cells = [[c for c in columns]] + [[getattr(r, c) for c in columns] for r in rows]
    natural = [max(len(line) for row in cells for line in row[i].splitlines() or [""]) for i in range(len(columns))]
    separator = "  "
    budget = max(width - len(separator) * (len(columns) - 1), 0)
    widths = list(natural)
    # a column is never narrower than its header: on a terminal too narrow for that, the table is wider than
    # asked rather than unreadable
    while sum(widths) > budget:
        shrinkable = [i for i, c in enumerate(columns) if c != "verdict" and widths[i] > len(c)]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1

    def wrap(text: str, w: int) -> list[str]:
        lines = []
        for paragraph in text.splitlines() or [""]:
            lines += textwrap.wrap(paragraph, w, break_long_words=True, break_on_hyphens=False) or [""]
        return lines

    out = []
    for k, row in enumerate(cells):
        wrapped = [wrap(text, w) for text, w in zip(row, widths)]
        for j in range(max(len(w) for w in wrapped)):
            parts = [(w[j] if j < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)]
            out.append(separator.join(parts).rstrip())
        if k == 0:
            out.append(separator.join("-" * w for w in widths))
    return "\n".join(out)


def report(record: dict, out_dir: str, seconds: float) -> str:
    """How every command ends: write the record to out_dir, print the verdict table and the summary line; returns
    the JSON's path."""
    path = write_record(record, out_dir)
    print(format_table(record["verdicts"]))
    print(summary_line(record["verdicts"], seconds, path))
    return path


def summary_line(rows, seconds: float, wrote: str) -> str:
    """The last line every command prints: how the verdicts came out, how long it took, where the JSON is."""
    rows = [_as_verdict(r) for r in rows]
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    head = "ALL PASS" if counts["FAIL"] == 0 else f"{counts['FAIL']} FAIL"
    return (f"{head} ({counts['PASS']} pass, {counts['FAIL']} fail, {counts['INFO']} info); {seconds:.0f} s; "
            f"wrote {wrote}")


# ----------------------------------------------------------------------------------------------------------
# The JSON record
# ----------------------------------------------------------------------------------------------------------
def versions() -> dict:
    """Versions of Python and of every package whose numbers a record depends on."""
    import matplotlib
    import numba
    import scipy
    import sympy
    import torch
    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "sympy": sympy.__version__, "numba": numba.__version__, "torch": torch.__version__,
            "matplotlib": matplotlib.__version__}


def package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("transformer-dynamics-theory")
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" when the tree has changes), or None outside a git checkout.

    The answer of the first call in the process: every command asks when it parses its arguments
    (validate._common.cli.parse), before it writes anything, so a default run that rewrites a figure under
    figures/ does not mark its own record "+dirty"."""
    try:
        commit = subprocess.run(["git", "-C", REPOSITORY, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", REPOSITORY, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def json_safe(value, nonfinite_as_none: bool = False):
    """value as plain JSON types: dataclasses as dicts, NumPy scalars and arrays as Python ones, tuples as lists,
    anything else without a JSON form as its str; nonfinite_as_none turns NaN and inf into None (strict JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): json_safe(v, nonfinite_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite_as_none) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), nonfinite_as_none)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if nonfinite_as_none and not math.isfinite(value) else value
    if value is None or isinstance(value, str):
        return value
    return str(value)  # e.g. a SymPy activation: its printed form


def make_record(command: str, argv, config, metrics: dict, verdicts, timings_s: dict, **extra) -> dict:
    """The one JSON record of a command run, the same keys for every command, as strict-JSON-ready values."""
    rows = [_as_verdict(r) for r in verdicts]
    record = {"command": command, "argv": list(sys.argv[1:] if argv is None else argv),
              "package_version": package_version(), "git_commit": git_commit(), "config": config,
              "versions": versions(), "timings_s": timings_s, "metrics": metrics,
              "verdicts": [r.to_dict() for r in rows], "all_pass": all_pass(rows)}
    for key, value in extra.items():
        if key in record:
            raise ValueError(f"extra key {key!r} would overwrite a schema key")
        record[key] = value
    return json_safe(record, nonfinite_as_none=True)


def write_record(record: dict, out_dir: str) -> str:
    """out_dir/<command>.json, strict JSON (NaN and inf become null), written atomically; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{record['command']}.json")
    atomic_write_text(path, json.dumps(json_safe(record, nonfinite_as_none=True), indent=1, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# The committed record under results/: metrics and provenance, no per-step curves
# ----------------------------------------------------------------------------------------------------------
REPOSITORY_RESULTS = os.path.join(REPOSITORY, "results")
# per-step series a record may carry (phase_diagram's points, a model's training): the run's --out JSON keeps them,
# the copy under results/ does not (README's records are metrics, config, versions and timings)
CURVE_KEYS = ("train_loss", "grad_norm", "test_loss", "loss_curve")
DIRTY_NOTE = "published from a run whose tree had uncommitted changes (git_commit ends in +dirty)"


def _without_curves(value, dropped: set):
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if key in CURVE_KEYS and isinstance(item, list):
                dropped.add(key)
            else:
                kept[key] = _without_curves(item, dropped)
        return kept
    if isinstance(value, list):
        return [_without_curves(item, dropped) for item in value]
    return value


def results_record(record: dict, allow_dirty: bool = False) -> dict:
    """The record as committed under results/: every per-step curve (CURVE_KEYS, at any depth) dropped, and a
    `results_note` saying which were dropped and where they are. Raises ValueError for what is not a record of
    a validate command (the keys make_record writes), and for a record of a run from a tree with uncommitted
    changes (git_commit ends in "+dirty": no commit regenerates it for sure) unless allow_dirty, when the note
    says so. Idempotent: a published record publishes to itself."""
    missing = [key for key in ("command", "git_commit", "config", "metrics", "verdicts") if key not in record]
    if missing:
        raise ValueError(f"not the JSON record of a validate command: it has no {', '.join(missing)}")
    dirty = str(record["git_commit"]).endswith("+dirty")
    if dirty and not allow_dirty:
        raise ValueError(f"the record was made from a tree with uncommitted changes ({record['git_commit']}); "
                         "rerun from a clean checkout (or pass --allow-dirty, which the record will say)")
    dropped = set()
    published = _without_curves(record, dropped)
    notes = [note for note in str(record.get("results_note", "")).split("; ") if note]
    if dropped and not any(note.startswith("per-step curves") for note in notes):
        notes.append(f"per-step curves ({', '.join(sorted(dropped))}) dropped from this committed record; the "
                     "run's --out JSON holds them")
    if dirty and DIRTY_NOTE not in notes:
        notes.append(DIRTY_NOTE)
    if notes:
        published["results_note"] = "; ".join(notes)
    return published


# ----------------------------------------------------------------------------------------------------------
# Files, written atomically
# ----------------------------------------------------------------------------------------------------------
def _atomic_replace(path: str, suffix: str, write) -> None:
    """write(temporary_path) into a temporary file beside `path`, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX, suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)
    _atomic_replace(path, ".tmp", write)


def atomic_savez(path: str, arrays: dict) -> None:
    _atomic_replace(path, ".npz", lambda temporary: np.savez_compressed(temporary, **arrays))


def atomic_savefig(fig, path: str, **savefig_kwargs) -> None:
    """fig.savefig(path, format="png", **savefig_kwargs), atomically (the directory is created if needed)."""
    _atomic_replace(path, ".png", lambda temporary: fig.savefig(temporary, format="png", **savefig_kwargs))


def save_figure(fig, out_dir: str, name: str, dpi: int = 110, **savefig_kwargs) -> str:
    """Save a Matplotlib figure as out_dir/name atomically, close it, return the path."""
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, name)
    try:
        atomic_savefig(fig, path, dpi=dpi, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def publish_figures(paths, publish: bool, figures_dir: str | None = None) -> list[str]:
    """Copy the figures a run wrote to --out into the repository's figures/ (what README shows), when `publish`.

    The rule every command follows: `publish` is true for the command's default experiment (its configuration
    equal to the defaults, up to where and how it runs) or when the user passes --update-figures; a toy or
    --quick run never touches figures/. Nothing is copied when figures/ does not exist (an installed package)."""
    figures_dir = REPOSITORY_FIGURES if figures_dir is None else figures_dir  # looked up now: tests redirect it
    if not publish or not os.path.isdir(figures_dir):
        return []
    copied = []
    for path in paths:
        target = os.path.join(figures_dir, os.path.basename(path))
        _atomic_replace(target, ".png", lambda temporary, source=path: shutil.copyfile(source, temporary))
        copied.append(target)
    return copied


# ----------------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------------
class _PlainProgress:
    """A progress line on stderr every `interval` seconds, for logs and pipes where a bar would be noise. A
    heartbeat thread prints the line also while no unit finishes (one unit of a paper-scale sweep is a
    training run of tens of minutes), so a log shows the command is alive."""

    def __init__(self, total: int, desc: str, interval: float, stream):
        self.total, self.desc, self.interval, self.stream = total, desc, interval, stream
        self.n = 0
        self.start = self.last = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._print("started")
        if interval > 0:
            threading.Thread(target=self._heartbeat, name=f"progress {desc}", daemon=True).start()

    def _print(self, state: str) -> None:
        with self._lock:
            self.last = now = time.monotonic()
            elapsed = now - self.start
            left = ""
            if 0 < self.n < self.total:
                left = f", ~{elapsed / self.n * (self.total - self.n):.0f} s left"
            print(f"[{self.desc}] {self.n}/{self.total} {state} ({elapsed:.0f} s elapsed{left})", file=self.stream,
                  flush=True)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(self.interval / 4):
            if time.monotonic() - self.last >= self.interval:
                self._print("done, running")

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._print("done")

    def close(self) -> None:
        self._stopped.set()
        self._print("done, finished")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self._stopped.set()
        if exc_type is None:  # stopped by an exception or Ctrl-C: the error says so, not a "finished" line
            self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress(total: int, desc: str, quiet: bool = False, interval: float = 30.0, stream=None):
    """A progress reporter with update(n) and close(), usable as a context manager: a tqdm bar when stderr is a
    terminal, a plain line every `interval` seconds when it is not (a log, a pipe), nothing when quiet."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return _NoProgress()
    if stream.isatty():
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, file=stream)
    return _PlainProgress(total, desc, interval, stream)
