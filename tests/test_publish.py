"""`python -m validate.publish`: a run's record under results/ without its per-step curves, and refusals of what
is not a clean record."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from validate import publish as P
from validate._common.reporting import make_record

REPO = Path(__file__).resolve().parents[1]


def _record(commit="0123abc", **extra):
    record = make_record("phase_diagram", [], {"steps": 3}, {"spearman": 0.5}, [], {"total": 1.0}, **extra)
    record["git_commit"] = commit
    return record


def _write(path: Path, record) -> str:
    path.write_text(json.dumps(record))
    return str(path)


def test_publish_drops_every_per_step_curve_and_says_so(tmp_path):
    points = [{"sigma_w": 1.0, "train_loss": [3.0, 2.0, 1.0], "test_loss": [3.1, 2.2], "grad_norm": [1.0, 0.5],
               "final_test_loss": 2.2}]
    source = _write(tmp_path / "run.json", _record(points=points, runs={"m": [{"loss_curve": [1, 2], "r90": 3}]}))
    path = P.publish(source, "phase_diagram_crossing", results_dir=str(tmp_path / "results"))
    assert path == str(tmp_path / "results" / "phase_diagram_crossing.json")
    published = json.loads(Path(path).read_text())
    assert published["points"] == [{"sigma_w": 1.0, "final_test_loss": 2.2}]
    assert published["runs"] == {"m": [{"r90": 3}]}
    assert published["metrics"] == {"spearman": 0.5} and published["git_commit"] == "0123abc"
    assert published["results_note"].startswith("per-step curves (grad_norm, loss_curve, test_loss, train_loss)")


def test_publish_of_a_record_without_curves_adds_no_note(tmp_path):
    path = P.publish(_write(tmp_path / "run.json", _record()), results_dir=str(tmp_path))
    assert Path(path).name == "phase_diagram.json"
    assert "results_note" not in json.loads(Path(path).read_text())


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not the JSON record of a validate command (not an object)"),
    (json.dumps({"command": "x"}), "it has no git_commit, config, metrics, verdicts"),
    (json.dumps(_record(commit="0123abc+dirty")), "uncommitted changes (0123abc+dirty)"),
])
def test_publish_refuses_what_is_not_a_clean_record(tmp_path, content, message):
    source = tmp_path / "run.json"
    source.write_text(content)
    with pytest.raises(ValueError, match=r"run\.json: .*" + re.escape(message)):
        P.publish(str(source), results_dir=str(tmp_path / "results"))
    assert not (tmp_path / "results").exists()


def test_the_command_line_refuses_in_one_line_with_exit_code_2(tmp_path):
    for argv, says in (([str(tmp_path / "absent.json")], "cannot be read"),
                       ([_write(tmp_path / "run.json", _record()), "--name", "../elsewhere"], "--name '../elsewhere'")):
        done = subprocess.run([sys.executable, "-m", "validate.publish", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m validate.publish: error: ") and says in lines[0], \
            done.stderr


def test_a_dirty_record_is_published_only_when_allowed_and_then_says_so(tmp_path):
    source = _write(tmp_path / "run.json", _record(commit="0123abc+dirty", points=[{"train_loss": [1.0]}]))
    published = json.loads(Path(P.publish(source, results_dir=str(tmp_path), allow_dirty=True)).read_text())
    assert published["results_note"] == ("per-step curves (train_loss) dropped from this committed record; the run's "
                                         "--out JSON holds them; " + P.reporting.DIRTY_NOTE)
    assert P.reporting.results_record(published, allow_dirty=True) == published   # publishing again changes nothing


def test_the_committed_records_are_published_records():
    """Every record under results/ went through validate.publish: no curves, and a dirty tree said in its note."""
    for path in sorted((REPO / "results").glob("*.json")):
        record = json.loads(path.read_text())
        assert P.reporting.results_record(record, allow_dirty=True) == record, (
            f"{path.name}: publish it with python -m validate.publish")
