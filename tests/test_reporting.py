"""The shared reporting spine (validate._common.reporting): the one verdict table, the one JSON record, atomic
writes, progress lines, and the rule for the repository's figures/."""
from __future__ import annotations

import io
import time
import json
import math
import os
import re

import numpy as np
import pytest

from validate._common import reporting as R
from validate._common.reporting import Verdict, format_table

LONG = ("the drop order of distinct tokens against c_l(0) ~ P(l|n), Kendall tau pooled over classes and seeds, "
        "with a_very_long_identifier_that_has_no_space_to_break_at_and_must_still_be_printed_whole_somewhere")


def _rows():
    return [Verdict.check(LONG, "1", "min 1.000, mean 1.000", "= 1 in every seed", True, claim="C3 drop order",
                          measure="paper"),
            Verdict.check("spectral gap", "0.5", "0.49 +- 0.01", "3 SE " * 30, False, claim="C1", measure="null"),
            Verdict.check("informational", "n/a", "7", "info", None)]


def _words(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("width", [60, 80, 120, 160, 400])
def test_table_fits_the_width_and_never_truncates(width):
    rows = _rows()
    table = format_table(rows, width=width)
    lines = table.splitlines()
    narrowest = len("  ".join(R.COLUMNS))  # no column is narrower than its header
    assert max(len(line) for line in lines) <= max(width, narrowest)
    # every character of every cell is printed: with the white space removed, each cell's text appears in order
    # inside its column's text (columns are read back by their character offsets from the header rule)
    rule = lines[1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    header = [lines[0][a:b].strip() for a, b in spans]
    body = lines[2:]
    columns = {name: "".join(line[a:b] for line in body) for name, (a, b) in zip(header, spans)}
    for name in ("claim", "measure", "quantity", "prediction", "measurement", "tolerance", "verdict"):
        assert _words(columns[name]) == "".join(_words(getattr(r, name)) for r in rows)


def test_table_keeps_a_row_together_and_the_verdict_whole():
    table = format_table(_rows(), width=80)
    verdict_lines = [line for line in table.splitlines() if line.rstrip().endswith(("PASS", "FAIL", "INFO"))]
    assert len(verdict_lines) == 3  # one verdict per row, never split


def test_table_leaves_out_columns_empty_in_every_row():
    table = format_table([Verdict.check("q", "1", "1", "exact", True)], width=160)
    assert "claim" not in table and "measure " not in table
    assert table.splitlines()[0].split() == ["quantity", "prediction", "measurement", "tolerance", "verdict"]


def test_verdict_rejects_unknown_verdicts_and_counts_info_as_unjudged():
    with pytest.raises(ValueError, match="verdict"):
        Verdict("q", "p", "m", "t", "n/a")
    assert R.all_pass([Verdict.check("q", "p", "m", "t", True), Verdict.check("q", "p", "m", "t", None)])
    assert not R.all_pass([Verdict.check("q", "p", "m", "t", False)])


def test_record_is_strict_json_with_the_common_keys(tmp_path):
    record = R.make_record("demo", ["--quick"], {"steps": 3, "ratios": (1.0, np.float64(2.0))},
                           {"loss": float("nan"), "values": np.array([1.0, np.inf]), "count": np.int64(4)},
                           _rows(), {"total_s": 1.5}, figures=["a.png"])
    path = R.write_record(record, str(tmp_path / "out"))
    assert os.path.basename(path) == "demo.json"

    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    data = json.loads(open(path).read(), parse_constant=refuse)
    assert {"command", "argv", "package_version", "git_commit", "config", "versions", "timings_s", "metrics",
            "verdicts", "all_pass"} <= set(data)
    assert data["metrics"] == {"loss": None, "values": [1.0, None], "count": 4}
    assert data["config"]["ratios"] == [1.0, 2.0] and data["all_pass"] is False
    assert data["verdicts"][0] == _rows()[0].to_dict()
    assert {"torch", "numpy", "sympy", "numba", "python"} <= set(data["versions"])
    with pytest.raises(ValueError, match="overwrite"):
        R.make_record("demo", [], {}, {}, [], {}, all_pass=True)


def test_atomic_writes_leave_no_temporary_file_when_the_write_fails(tmp_path):
    target = tmp_path / "x.json"
    R.atomic_write_text(str(target), "old")

    class Boom(Exception):
        pass

    def failing(temporary):
        open(temporary, "w").write("half")
        raise Boom

    with pytest.raises(Boom):
        R._atomic_replace(str(target), ".tmp", failing)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x.json"]
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, as for a log file or a pipe
    bar = R.progress(4, "models", stream=stream, interval=0.0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[models] 0/4") and lines[-1].startswith("[models] 4/4")
    assert len(lines) == 6  # started, one line per update (interval 0), finished
    quiet = io.StringIO()
    with R.progress(4, "models", quiet=True, stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_progress_heartbeat_prints_while_no_unit_finishes_and_stops_at_close():
    stream = io.StringIO()
    with R.progress(2, "runs", stream=stream, interval=0.05):
        time.sleep(0.3)  # one unit of a paper-scale sweep takes minutes: the log still shows the command lives
    lines = stream.getvalue().splitlines()
    assert any("0/2 done, running" in line for line in lines) and lines[-1].startswith("[runs] 0/2 done, finished")
    count = len(lines)
    time.sleep(0.2)
    assert len(stream.getvalue().splitlines()) == count  # the heartbeat ended with the bar


def test_publish_figures_copies_only_when_asked(tmp_path):
    figure = tmp_path / "run" / "a.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    assert R.publish_figures([str(figure)], publish=False, figures_dir=str(figures_dir)) == []
    assert os.listdir(figures_dir) == []
    assert R.publish_figures([str(figure)], publish=True, figures_dir=str(figures_dir)) == [str(figures_dir / "a.png")]
    assert (figures_dir / "a.png").read_bytes() == b"png"
    # no figures/ (an installed package, not a checkout): nothing to update
    assert R.publish_figures([str(figure)], publish=True, figures_dir=str(tmp_path / "absent")) == []


def test_json_safe_turns_what_json_cannot_hold_into_plain_values():
    from dataclasses import dataclass

    @dataclass
    class Inner:
        x: float = math.inf

    assert R.json_safe({"a": Inner(), "b": (np.bool_(True),)}, nonfinite_as_none=True) == {"a": {"x": None},
                                                                                          "b": [True]}
    assert R.json_safe(Inner())["x"] == math.inf  # kept for stores that round-trip NaN/inf
