"""Faults and bad input for `python -m validate.execution_manifold`: every bad value ends the command before any
compute with exit code 2 and one line naming it; a kill -9 or Ctrl-C midway loses at most the run in flight and
a rerun ends where an uninterrupted run ends; runs that diverge (all of them, some of them) are recorded and
counted and the JSON and figures are still written; NaN rows, a corrupt or busy store, lost arrays and stray
temporary files do not stop a rerun with a traceback.

The configurations are tiny (1-2 layers of width 16, 60 steps): seconds per run."""
from __future__ import annotations

import fcntl
import json
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch

from tests._signals import default_sigint
from validate import execution_manifold as em
from validate._execution_manifold import part_one, part_two, stacked_training

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FIGURES = 5

# both parts, one seed, no difficulty sweep: part two needs >= 10 snapshots (min_basis_snapshots + 5)
TINY = ["--steps", "60", "--snapshot-every", "6", "--seeds", "0", "--n-layers", "1", "--d-model", "16",
        "--n-heads", "2", "--batch-size", "32", "--null-draws", "20", "--window", "4", "--difficulty-seeds", "0",
        "--lr", "3e-3", "--commutator-samples", "2", "--sae-steps", "20", "--sae-examples", "256", "--sae-d", "16",
        "--sae-k", "4", "--ablation-sizes", "1", "2", "--random-ablation-draws", "1", "--quiet"]


def _record(out) -> dict:
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads((Path(out) / "execution_manifold.json").read_text(), parse_constant=refuse)


def _figures_written(out, record) -> None:
    assert len(record["figures"]) == FIGURES
    for name in record["figures"]:
        assert (Path(out) / name).stat().st_size > 5_000, name


def _stable(value):
    """A record without what legitimately differs between two runs of the same configuration: the argv (its
    --out), wall-clock timings and the run's git state."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()
                if k not in ("argv", "timings_s", "seconds", "git_commit")}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _runs_rows(record) -> list[tuple[str, str]]:
    return [(r["measurement"], r["verdict"]) for r in record["verdicts"] if r["claim"] == "runs"]


@pytest.fixture
def no_compute(monkeypatch):
    """Training refuses to start: a test using this proves that nothing was computed."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(part_one, "train_stacked", refuse)
    monkeypatch.setattr(part_two, "train_with_snapshots", refuse)


# ---------------------------------------------------------------- bad values: exit 2, one line, no compute --

A_FILE = "a_file"  # created in the test's directory: --out cannot be a file, nor a directory below one
BAD_INPUT = [  # (extra argv, what the one line must name)
    (["--steps", "0"], "--steps"), (["--steps", "-1"], "--steps"), (["--steps", "1e3"], "--steps"),
    (["--steps", "10000000000"], "memory"), (["--snapshot-every", "0"], "--snapshot-every"),
    (["--snapshot-every", "100"], "--snapshot-every"), (["--snapshot-every", "30"], "--snapshot-every"),
    (["--snapshot-every", "7", "--window", "11"], "--window"), (["--window", "0"], "--window"),
    (["--window", "2"], "--window"), (["--window", "100"], "--window"), (["--markers", "0"], "--markers"),
    (["--markers", "1", "9"], "--markers"), (["--markers", "1", "1"], "--markers"), (["--markers"], "--markers"),
    (["--seq-len", "3"], "--seq-len"), (["--seq-len", "100000000"], "memory"), (["--modulus", "1"], "--modulus"),
    (["--modulus", "0"], "--modulus"), (["--modulus", "101"], "--modulus"), (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "-1"], "--lr"),
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--weight-decay", "inf"], "--weight-decay"),
    (["--q", "0"], "--q"), (["--q", "1.5"], "--q"), (["--q", "nan"], "--q"), (["--q", "-0.1"], "--q"),
    (["--null-draws", "0"], "--null-draws"), (["--null-draws", "19"], "--null-draws"),
    (["--null-draws", "1000000000000"], "--null-draws"), (["--commutator-samples", "0"], "--commutator-samples"),
    (["--commutator-lr", "0"], "--commutator-lr"), (["--commutator-lr", "inf"], "--commutator-lr"),
    (["--commutator-samples", "100000000"], "--commutator-samples"), (["--sae-d", "0"], "--sae-d"),
    (["--sae-k", "0"], "--sae-k"), (["--sae-k", "32"], "--sae-k"), (["--sae-examples", "10"], "--sae-examples"),
    (["--sae-steps", "0"], "--sae-steps"), (["--sae-examples", "1000000000000"], "--sae-examples"),
    (["--sae-d", "1000000000"], "--sae-d"), (["--k-per-block", "0"], "--k-per-block"),
    (["--k-per-block", "r91"], "--k-per-block"), (["--ablation-sizes", "0"], "--ablation-sizes"),
    (["--ablation-sizes", "17"], "--ablation-sizes"), (["--random-ablation-draws", "0"], "--random-ablation-draws"),
    (["--seeds", "-1"], "--seeds"), (["--seeds", "0", "0"], "--seeds"), (["--seed", str(2 ** 63)], "--seed"),
    (["--device", "gpu"], "--device"), (["--device", "cuda:99"], "--device"),
    (["--out", A_FILE], "--out"), (["--out", f"{A_FILE}/below"], "--out"), (["--out", "/proc/no/such"], "--out"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "100000000"], "--batch-size"),
    (["--n-layers", "0"], "--n-layers"), (["--d-model", "30", "--n-heads", "4"], "--n-heads"),
    (["--n-heads", "0"], "--n-heads"), (["--d-model", "1000000"], "--d-model"), (["--n-layers", "100000"], "memory"),
    (["--difficulty-seeds", "-1"], "--difficulty-seeds"),
    (["--seeds", "0", "1", "--difficulty-seeds", "3"], "--difficulty-seeds"),  # more than --seeds holds
    (["--difficulty-seeds", "1", "--sweep-max-markers", "9"], "--sweep-max-markers"),
    (["--difficulty-seeds", "1", "--sweep-moduli", "1"], "--sweep-moduli"),
    (["--difficulty-seeds", "1", "--sweep-moduli", "101"], "--sweep-moduli"),
    (["--difficulty-seeds", "1", "--sweep-max-markers", "0"], "--sweep-max-markers"),
    (["--threads", "0"], "--threads"), (["--workers", "-1"], "--workers"), (["--optimizer", "adam"], "--optimizer"),
    (["--mlp", "maybe"], "--mlp"), (["--part", "three"], "--part"),
    (["--commutator-precision", "float16"], "--commutator-precision"), (["--scheduler", "nonsense"], "scheduler"),
    (["--part", "two", "--steps", "400", "--snapshot-every", "50"], "--snapshot-every"),
]


@pytest.mark.parametrize("words, named", BAD_INPUT, ids=[" ".join(w) for w, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_it_before_any_compute(words, named, tmp_path, monkeypatch, capsys,
                                                                      no_compute):
    monkeypatch.chdir(tmp_path)
    Path(A_FILE).write_text("")
    out = [] if "--out" in words else ["--out", "out"]
    with pytest.raises(SystemExit) as stop:
        em.main(TINY + out + words)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m validate.execution_manifold: error: "), captured.err
    assert named in lines[0], lines[0]
    assert not Path("out", "sweep.sqlite").exists() and captured.out == ""


def test_at_least_thirty_bad_inputs_are_tried():
    assert len(BAD_INPUT) >= 30


# ---------------------------------------------------------------- stores and output directories -----------

@pytest.mark.parametrize("content", [b"not a database at all" * 100, "foreign"])
def test_corrupt_or_foreign_store_exits_2_in_one_line(content, tmp_path, capsys, no_compute):
    store = tmp_path / "sweep.sqlite"
    if content == "foreign":
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE results (x INTEGER)")
    else:
        store.write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        em.main(TINY + ["--out", str(tmp_path)])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "sweep.sqlite" in lines[0] and "store" in lines[0]


def test_store_in_use_by_another_run_exits_2_in_one_line(tmp_path, capsys, no_compute):
    (tmp_path / "sweep.sqlite.lock").touch()
    with open(tmp_path / "sweep.sqlite.lock", "a+") as held:  # what a running sweep holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as stop:
            em.main(TINY + ["--out", str(tmp_path)])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run of both parts (train, store, judge, plot): the tests below copy and break it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert em.main(TINY + ["--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil
    target = tmp_path / "out"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


def _count_training(monkeypatch) -> dict:
    """Count the trainings of part one and part two from here on."""
    counts = {"one": 0, "two": 0}
    # part one trains through the stacked path (one seed per stack), part two through the plain loop
    for part, module, name in (("one", part_one, "train_stacked"), ("two", part_two, "train_with_snapshots")):
        original = getattr(module, name)

        def counted(*args, _part=part, _original=original, **kwargs):
            counts[_part] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return counts


def test_lost_arrays_file_exits_2_in_one_line_and_fresh_recomputes(finished_run, tmp_path, capsys, monkeypatch):
    out = _copy(finished_run, tmp_path)
    for npz in (out / "arrays").glob("*.npz"):
        npz.unlink()
    counts = _count_training(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        em.main(TINY + ["--out", str(out)])
    assert stop.value.code == 2 and counts == {"one": 0, "two": 0}
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "arrays" in lines[0] and "--fresh" in lines[0]
    assert em.main(TINY + ["--out", str(out), "--fresh"]) == 0
    assert counts == {"one": 1, "two": 1}


def test_stray_temporary_files_of_a_killed_write_are_removed(finished_run, tmp_path, monkeypatch):
    out = _copy(finished_run, tmp_path)
    strays = [out / ".tmp-abc.tmp", out / ".tmp-def.png", out / "arrays" / ".tmp-ghi.npz"]
    for stray in strays:
        stray.write_bytes(b"half a file")
    counts = _count_training(monkeypatch)
    assert em.main(TINY + ["--out", str(out)]) == 0
    assert counts == {"one": 0, "two": 0} and not any(stray.exists() for stray in strays)


def _poison(value):
    """Every float of a stored result replaced by NaN (ints, strings and structure kept)."""
    if isinstance(value, float):
        return float("nan")
    if isinstance(value, dict):
        return {k: _poison(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v) for v in value]
    return value


def test_nan_rows_in_the_store_do_not_stop_a_rerun(finished_run, tmp_path, capsys, monkeypatch):
    """Rows whose every number is NaN (both parts) are read back, judged and plotted: the command finishes with
    strict JSON and its figures, without --fresh and without training again."""
    out = _copy(finished_run, tmp_path)
    with sqlite3.connect(out / "sweep.sqlite") as db:
        for key, seed, result in db.execute("SELECT point_key, seed, result FROM results").fetchall():
            db.execute("UPDATE results SET result = ? WHERE point_key = ? AND seed = ?",
                       (json.dumps(_poison(json.loads(result))), key, seed))
    counts = _count_training(monkeypatch)
    assert em.main(TINY + ["--out", str(out)]) == 0
    assert counts == {"one": 0, "two": 0}
    record = _record(out)
    _figures_written(out, record)
    assert record["metrics"]["part_two"]["final_train_loss"] is None  # NaN -> null in strict JSON
    assert {r["verdict"] for r in record["verdicts"]} <= {"PASS", "FAIL", "INFO"}


# ---------------------------------------------------------------- divergence -------------------------------

def test_every_run_diverges_and_the_command_still_writes_its_json_and_figures(tmp_path, capsys, monkeypatch):
    """SGD with lr 1e6 overflows within a few steps, in every seed and in part two: each is stored as diverged
    with its step, every claim is INFO (not measured), the two "runs" rows FAIL, and a rerun trains nothing."""
    out = tmp_path / "out"
    argv = TINY + ["--seeds", "0", "1", "--optimizer", "sgd", "--lr", "1e6", "--out", str(out)]
    assert em.main(argv) == 0
    record = _record(out)
    _figures_written(out, record)
    diverged = record["metrics"]["part_one"]["diverged"]
    assert [d["seed"] for d in diverged] == [0, 1] and all(d["where"] in ("loss", "weights") for d in diverged)
    assert all(0 <= d["step"] <= 60 for d in diverged)
    assert record["metrics"]["part_two"]["diverged"]["where"] in ("loss", "weights")
    assert [v for _, v in _runs_rows(record)] == ["FAIL", "FAIL"]
    assert _runs_rows(record)[0][0].startswith("2 of 2")
    assert {r["verdict"] for r in record["verdicts"] if r["claim"] != "runs"} == {"INFO"}
    assert "left out of every claim" in record["divergence_policy"] and not record["all_pass"]
    counts = _count_training(monkeypatch)
    assert em.main(argv) == 0
    assert counts == {"one": 0, "two": 0} and _record(out)["verdicts"] == record["verdicts"]


def test_some_runs_diverge_and_are_left_out_and_counted(tmp_path, capsys, monkeypatch):
    """Seed 1 diverges at step 20 (its training loss is made inf there), in the main setting and in the difficulty
    setting; seeds 0 and 2 finish. The claims are judged on the finished runs, the "runs" row counts 2 of 5."""
    real_forward = stacked_training.StackedMarkerTransformers.forward
    steps = weakref.WeakKeyDictionary()  # training steps taken, per stack (part one trains one seed per stack)

    def logits_that_diverge_for_seed_1(stack, tokens):
        logits = real_forward(stack, tokens)
        steps[stack] = steps.get(stack, 0) + 1
        if torch.initial_seed() == 1 and steps[stack] > 20:  # train_stacked seeds torch with the run's seed
            logits = logits * float("inf")  # a NaN training loss from step 20 on
        return logits

    monkeypatch.setattr(stacked_training.StackedMarkerTransformers, "forward", logits_that_diverge_for_seed_1)
    out = tmp_path / "out"
    argv = TINY + ["--part", "one", "--seeds", "0", "1", "2", "--difficulty-seeds", "2", "--sweep-max-markers", "2",
                   "--sweep-moduli", "--out", str(out)]
    assert em.main(argv) == 0
    record = _record(out)
    assert len(record["figures"]) == 3
    diverged = record["metrics"]["part_one"]["diverged"]
    assert [(d["setting"], d["seed"], d["where"]) for d in diverged] == [
        ("m=1,2,3,4 C=8", 1, "loss"), ("m=1,2 C=8", 1, "loss")]
    assert all(d["step"] == 20 for d in diverged)
    assert _runs_rows(record)[0][1] == "FAIL" and _runs_rows(record)[0][0].startswith("2 of 5")
    c1 = [r for r in record["verdicts"] if r["claim"].startswith("C1")]
    assert {r["measure"] for r in c1} == {"paper", "null"} and {r["verdict"] for r in c1} <= {"PASS", "FAIL"}
    assert len(record["metrics"]["part_one"]["joint_r90"]) == 2  # seeds 0 and 2
    assert record["metrics"]["part_one"]["difficulty"]["m=1,2 C=8"]["seeds"] == 1
    counts = _count_training(monkeypatch)
    assert em.main(argv) == 0
    assert counts == {"one": 0, "two": 0} and _record(out)["verdicts"] == record["verdicts"]


def test_a_run_that_never_moves_finishes(tmp_path, capsys):
    """lr 1e-30 leaves the float32 weights where they started: no dimension, no execution basis (K = 0); part
    two's ratios are NaN (null in the JSON) rather than a ZeroDivisionError."""
    out = tmp_path / "out"
    assert em.main(TINY + ["--part", "two", "--lr", "1e-30", "--out", str(out)]) == 0
    record = _record(out)
    assert record["metrics"]["part_two"]["commutators"]["accumulated"]["K"] == 0
    assert _runs_rows(record) == [("0 of 1", "PASS")]


# ---------------------------------------------------------------- kill -9 and Ctrl-C -----------------------

# `--quick`, shrunk by explicit flags (they beat the preset) so that a run takes seconds: two seeds of part one,
# then part two; the default executor (--workers 0, in this process)
QUICK_SHRUNK = ["--quick"] + [w for w in TINY if w != "--quiet"] + ["--seeds", "0", "1"]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "validate.execution_manifold", *QUICK_SHRUNK, "--out", str(out), *extra]


def _stored(out: Path) -> list[tuple[str, int, float]]:
    """(sweep, seed, finished_at) of every stored row; [] before the store exists."""
    path = out / "sweep.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT sweep, seed, finished_at FROM results ORDER BY finished_at").fetchall()
    except sqlite3.OperationalError:  # the table is being created
        return []


def _start_and_wait_for_the_first_row(out: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(_command(out, *extra), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not _stored(out):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no row stored within 120 s"
        time.sleep(0.02)
    return process


def test_kill_9_after_the_first_seed_then_a_rerun_recomputes_nothing_finished_and_equals_an_uninterrupted_run(
        tmp_path):
    out = tmp_path / "killed"
    process = _start_and_wait_for_the_first_row(out, "--quiet")
    process.kill()  # SIGKILL: no handler runs
    process.communicate()
    before = _stored(out)
    assert 1 <= len(before) < 3  # killed midway: 2 runs of part one and part two's run make 3
    assert all(sweep.startswith("execution_manifold-") for sweep, _, _ in before)  # part one's rows

    rerun = subprocess.run(_command(out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _stored(out)
    assert len(after) == 3 and set(before) <= set(after)  # the finished rows are kept as they were
    for _, seed, _ in before:  # and not trained again: the rerun shows a progress line per run it trains
        assert f"seed={seed}]" not in rerun.stderr
    assert "seed=1]" in rerun.stderr or len(before) == 2
    assert not [p for p in out.rglob(".tmp-*")]

    reference = tmp_path / "uninterrupted"
    clean = subprocess.run(_command(reference, "--quiet"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert _stable(_record(out)) == _stable(_record(reference))


def test_ctrl_c_midway_exits_130_with_one_line_and_keeps_the_finished_rows(tmp_path):
    out = tmp_path / "out"
    process = _start_and_wait_for_the_first_row(out, "--quiet", "--part", "one")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr, stderr
    assert _stored(out) and not (out / "execution_manifold.json").exists()
