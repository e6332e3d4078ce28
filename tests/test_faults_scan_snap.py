"""Faults and bad input for `python -m validate.scan_snap` and `python -m validate.scan_snap_sweep`: every bad
value is refused before any compute with exit code 2 and one line naming it (ValueError from the API); runs that
diverge (all or some) and flows the integrator cannot finish are recorded and the JSON and figures are still
written; the sweep survives kill -9 and Ctrl-C with what it finished, and refuses a corrupt, foreign or busy store."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests._signals import default_sigint
from validate import scan_snap, scan_snap_sweep
from validate._common import reporting
from validate._common.sweep import point_key
from validate._scan_snap import experiment
from validate._scan_snap.experiment import ScanSnapConfig
from validate._scan_snap.fig6 import SweepConfig
from validate._scan_snap.models import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_SNAP = ["--quick", "--steps", "10", "--theory-steps", "30", "--snap-steps", "20", "--batch", "32",
             "--seq-len", "32", "--theory-seq-len", "32", "--quiet"]
TINY_SWEEP = ["--next-tokens", "2", "--lr-z", "1", "--ratios", "1", "2", "--seeds", "1", "2", "--steps", "10",
              "--workers", "0", "--quiet"]
# Y(0) = Z(0) = 0 and eta_Z * eta_Y past ~1e308: the second SGD step overflows (measured: every seed, step 2)
ALL_DIVERGE_SNAP = ["--lr-z", "1e190", "--theory-lr-z", "1e190"]
SOME_DIVERGE_SNAP = ["--lr-z", "1e150", "--theory-lr-z", "1e150", "--ratios", "1", "--lr-ratio", "1e30"]
ALL_DIVERGE_SWEEP = ["--init", "zero", "--lr-z", "1e190", "--batch", "32", "--seq-len", "32"]
SOME_DIVERGE_SWEEP = ["--init", "zero", "--lr-z", "1", "1e150", "--ratios", "1", "1e20", "--batch", "32",
                      "--seq-len", "32"]


@pytest.fixture(autouse=True)
def _figures_untouched(tmp_path, monkeypatch):
    """No test here may write the repository's figures/."""
    figures = tmp_path / "repository_figures"
    figures.mkdir()
    monkeypatch.setattr(reporting, "REPOSITORY_FIGURES", str(figures))


# ----------------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming it, nothing computed
# ----------------------------------------------------------------------------------------------------------
SNAP_BAD = [  # (words, what the one line must name)
    (["--lr-ratio", "nan"], "--lr-ratio"), (["--lr-ratio", "inf"], "--lr-ratio"), (["--lr-ratio", "-1"], "lr_ratio"),
    (["--lr-ratio", "0"], "lr_ratio"), (["--lr-z", "nan"], "--lr-z"), (["--lr-z", "-0.5"], "lr_z"),
    (["--lr-z", "0"], "lr_z"), (["--lr-z", "1e-13"], "lr_z"), (["--lr-z", "1e201"], "lr_z"),
    (["--lr-z", "1e150", "--lr-ratio", "1e60"], "lr_y"), (["--ratios", "1", "nan"], "--ratios"),
    (["--ratios", "0"], "ratios"), (["--ratios", "-2"], "ratios"), (["--ratios", "1", "1"], "ratios"),
    (["--ratios", "1e250"], "ratio"), (["--theory-lr-z", "nan"], "--theory-lr-z"),
    (["--theory-lr-z", "0"], "theory_lr_z"), (["--theory-lr-z", "1e199", "--ratios", "100"], "theory_lr_z"),
    (["--steps", "0"], "steps"), (["--steps", "1.5"], "--steps"), (["--steps", "100000000"], "steps"),
    (["--batch", "0"], "batch"), (["--batch", "100000000"], "batch"), (["--seq-len", "1"], "seq_len"),
    (["--seq-len", "100000000"], "seq_len"), (["--theory-seq-len", "1"], "theory_seq_len"),
    (["--theory-seq-len", "10000000"], "theory_seq_len"), (["--next-tokens", "0"], "next_tokens"),
    (["--next-tokens", "201"], "next_tokens"), (["--next-tokens", "200", "--snap-steps", "5000"], "next_tokens"),
    (["--dataset", "syn-medium", "--next-tokens", "3"], "next_tokens"), (["--theory-seeds", "0"], "theory_seeds"),
    (["--theory-seeds", "3"], "theory_seeds"), (["--seed", "4", "--theory-seeds", "2"], "theory_seeds"),
    (["--theory-steps", "0"], "theory_steps"), (["--snap-steps", "2"], "snap_steps"),
    (["--snap-steps", "5000000"], "snap_steps"), (["--momentum", "1"], "momentum"),
    (["--momentum", "-0.1"], "momentum"),
    (["--momentum", "nan"], "--momentum"), (["--model", "transformer"], "init"),
    (["--model", "transformer", "--init", "default", "--d-model", "0"], "d_model"),
    (["--model", "transformer", "--init", "default", "--d-model", "5000"], "d_model"),
    (["--dataset", "foo"], "--dataset"),
    (["--model", "foo"], "--model"), (["--init", "foo"], "--init"), (["--seeds", "-1"], "--seeds"),
    (["--seed", str(2 ** 63)], "--seed"), (["--seeds", "1", "1"], "--seeds"), (["--seeds", "a"], "--seeds"),
    (["--device", "gpu"], "--device"), (["--device", "cuda:99"], "device"), (["--out", "{file}"], "--out"),
    (["--out", "{file}/sub"], "--out"), (["--out", "/proc"], "--out"), (["--workers", "2"], "--workers"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler"), (["--no-such-flag"], "--no-such-flag"),
]

SWEEP_BAD = [
    (["--ratios", "nan"], "--ratios"), (["--ratios", "inf"], "--ratios"), (["--ratios", "-1"], "ratios"),
    (["--ratios", "0"], "ratios"), (["--ratios", "1", "1"], "ratios"), (["--ratios", "1e250"], "lr_y"),
    (["--lr-z", "nan"], "--lr-z"), (["--lr-z", "0"], "lr_z"), (["--lr-z", "-1"], "lr_z"),
    (["--lr-z", "1e-13"], "lr_z"),
    (["--lr-z", "1", "1"], "lr_z"), (["--lr-z", "1e201"], "lr_z"),
    (["--next-tokens", "3"], "next_tokens"),
    (["--next-tokens", "0"], "next_tokens"), (["--next-tokens", "-2"], "next_tokens"),
    (["--next-tokens", "2", "2"], "next_tokens"), (["--next-tokens", "202"], "next_tokens"),
    (["--steps", "0"], "steps"),
    (["--steps", "2.5"], "--steps"), (["--steps", "100000000"], "steps"), (["--batch", "0"], "batch"),
    (["--batch", "100000000"], "batch"), (["--seq-len", "1"], "seq_len"), (["--seq-len", "100000000"], "seq_len"),
    (["--momentum", "1"], "momentum"), (["--momentum", "-0.5"], "momentum"), (["--momentum", "inf"], "--momentum"),
    (["--d-model", "0"], "d_model"), (["--model", "transformer", "--init", "zero"], "init"),
    (["--model", "foo"], "--model"),
    (["--init", "foo"], "--init"), (["--seeds", "-1"], "--seeds"), (["--seeds", "1", "1"], "--seeds"),
    (["--seed", str(2 ** 63)], "--seed"), (["--seeds", "x"], "--seeds"), (["--device", "gpu"], "--device"),
    (["--device", "cuda:99"], "device"), (["--out", "{file}"], "--out"), (["--out", "{file}/sub"], "--out"),
    (["--out", "/proc"], "--out"), (["--workers", "-1"], "--workers"), (["--workers", "100000"], "workers"),
    (["--scheduler", "tcp://127.0.0.1:1"], "scheduler"), (["--scheduler", "nonsense"], "scheduler"),
    (["--dataset", "syn-small"], "--dataset"), (["--no-such-flag"], "--no-such-flag"),
]


def _refuses(command, module_patches, words, names, tmp_path, monkeypatch, capsys):
    """command.main(TINY + words) exits 2 with one stderr line naming `names`, before computing or writing."""
    def computed(*args, **kwargs):
        raise AssertionError("a bad input reached the computation")
    for owner, name in module_patches:
        monkeypatch.setattr(owner, name, computed)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = tmp_path / "out"
    tiny = TINY_SNAP if command is scan_snap else TINY_SWEEP
    argv = [*tiny, "--out", str(out), *(w.replace("{file}", str(a_file)) for w in words)]
    with pytest.raises(SystemExit) as stop:
        command.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(lines) == 1 and lines[0].startswith(f"python -m validate.{command.COMMAND}: error: "), lines
    assert names in lines[0], lines[0]
    assert not list(tmp_path.rglob(f"{command.COMMAND}.json")) and not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("words, names", SNAP_BAD, ids=[" ".join(w) for w, _ in SNAP_BAD])
def test_scan_snap_refuses_bad_input_in_one_line_before_compute(words, names, tmp_path, monkeypatch, capsys):
    _refuses(scan_snap, [(experiment, "authors_regime"), (experiment, "theory_regime")], words, names, tmp_path,
             monkeypatch, capsys)


@pytest.mark.parametrize("words, names", SWEEP_BAD, ids=[" ".join(w) for w, _ in SWEEP_BAD])
def test_scan_snap_sweep_refuses_bad_input_in_one_line_before_compute(words, names, tmp_path, monkeypatch, capsys):
    _refuses(scan_snap_sweep, [(scan_snap_sweep, "run_sweep")], words, names, tmp_path, monkeypatch, capsys)


def test_tables_hold_at_least_30_inputs_per_command():
    assert len(SNAP_BAD) >= 30 and len(SWEEP_BAD) >= 30


# ----------------------------------------------------------------------------------------------------------
# The API: ValueError naming the field; NumPy scalars accepted
# ----------------------------------------------------------------------------------------------------------
API_BAD = [
    (TrainConfig, {"steps": 8.0}, "steps"), (TrainConfig, {"steps": True}, "steps"),
    (TrainConfig, {"batch": "8"}, "batch"),
    (TrainConfig, {"lr_z": float("nan")}, "lr_z"), (TrainConfig, {"lr_z": np.float32("inf")}, "lr_z"),
    (TrainConfig, {"lr_ratio": -1}, "lr_ratio"), (TrainConfig, {"momentum": 1.0}, "momentum"),
    (TrainConfig, {"seed": -1}, "seed"), (TrainConfig, {"seed": 2 ** 63}, "seed"),
    (TrainConfig, {"dataset": None}, "dataset"),
    (TrainConfig, {"seq_len": np.int64(1)}, "seq_len"), (TrainConfig, {"next_tokens": 10 ** 6}, "next_tokens"),
    (ScanSnapConfig, {"seeds": ()}, "seeds"), (ScanSnapConfig, {"seeds": (1.5,)}, "seeds"),
    (ScanSnapConfig, {"seeds": "12"}, "seeds"), (ScanSnapConfig, {"ratios": np.array([1.0, np.nan])}, "ratios"),
    (ScanSnapConfig, {"theory_seeds": 6}, "theory_seeds"), (ScanSnapConfig, {"device": "tpu"}, "device"),
    (ScanSnapConfig, {"train": {"steps": 10}}, "train"), (ScanSnapConfig, {"snap_steps": np.int64(1)}, "snap_steps"),
    (SweepConfig, {"next_tokens": (2, 3)}, "next_tokens"), (SweepConfig, {"lr_z": ()}, "lr_z"),
    (SweepConfig, {"ratios": (1.0, float("inf"))}, "ratios"), (SweepConfig, {"seeds": (1, 1)}, "seeds"),
    (SweepConfig, {"device": "cuda:99"}, "device"), (SweepConfig, {"lr_z": (1e150,), "ratios": (1e60,)}, "lr_y"),
]


@pytest.mark.parametrize("build, fields, names", API_BAD,
                         ids=[f"{b.__name__}-{'-'.join(f)}-{i}" for i, (b, f, _) in enumerate(API_BAD)])
def test_configs_raise_value_error_naming_the_field(build, fields, names):
    with pytest.raises(ValueError, match=re.escape(names)):
        build(**fields)


def test_configs_accept_numpy_scalars_and_arrays():
    train = TrainConfig(steps=np.int64(8), lr_z=np.float32(0.5), momentum=np.float64(0.9), seq_len=np.int32(16))
    assert (type(train.steps), type(train.lr_z), type(train.seq_len)) == (int, float, int)
    cfg = ScanSnapConfig(train=train, seeds=np.array([1, 2]), ratios=np.array([1.0, 2.0]), theory_seeds=np.int64(1),
                         snap_steps=np.int16(20))
    assert cfg.seeds == (1, 2) and cfg.ratios == (1.0, 2.0, 10.0) and type(cfg.snap_steps) is int
    sweep = SweepConfig(next_tokens=np.array([6, 2]), lr_z=(np.float32(1.0),), seeds=(np.int64(3),))
    assert sweep.next_tokens == (2, 6) and sweep.seeds == (3,)
    for point in sweep.points():  # the store keys points as JSON scalars
        point_key(point)


def test_api_runs_refuse_an_unwritable_out_before_compute(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "authors_regime", lambda *a: pytest.fail("computed"))
    monkeypatch.setattr(scan_snap_sweep, "run_sweep", lambda *a, **k: pytest.fail("computed"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="cannot write"):
        scan_snap.run(ScanSnapConfig(), str(a_file / "sub"))
    with pytest.raises(ValueError, match="not a directory"):
        scan_snap_sweep.run(SweepConfig(), str(a_file))
    with pytest.raises(ValueError, match="workers"):
        scan_snap_sweep.run(SweepConfig(), str(tmp_path / "out"), workers=10 ** 5)
    with pytest.raises(ValueError, match="ScanSnapConfig"):
        scan_snap.run({"steps": 10}, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="SweepConfig"):
        scan_snap_sweep.run(ScanSnapConfig(), str(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------------------
# Divergence of all and of some runs; integrator failures
# ----------------------------------------------------------------------------------------------------------
def _table_is_clean(record):
    """No verdict cell shows a NaN or inf number (the words 'NaN or inf' in a description are fine)."""
    for row in record["verdicts"]:
        for cell in row.values():
            text = cell.replace("NaN/inf", "").replace("NaN or inf", "")
            assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE), cell


def _run_main(command, argv) -> dict:
    assert command.main(argv) == 0
    path = Path(argv[argv.index("--out") + 1]) / f"{command.COMMAND}.json"
    record = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"non-strict JSON {token}"))
    for name in record["figures"]:
        assert (path.parent / name).stat().st_size > 10_000
    _table_is_clean(record)
    return record


def test_scan_snap_finishes_when_every_run_diverges(tmp_path):
    record = _run_main(scan_snap, [*TINY_SNAP, *ALL_DIVERGE_SNAP, "--out", str(tmp_path)])
    m = record["metrics"]
    assert m["diverged_count"] == m["runs"] == 7 and all(isinstance(d["step"], int) for d in m["diverged"])
    assert "excluded" in m["divergence_policy"] and len(record["figures"]) == 3
    first = record["verdicts"][0]
    assert first["verdict"] == "FAIL" and first["measurement"].startswith("7 of 7")
    judged = [row for row in record["verdicts"][2:] if row["verdict"] != "INFO"]
    assert judged and all(row["verdict"] == "FAIL" for row in judged)
    assert sum("no finite run" in row["measurement"] for row in judged) >= 3
    assert m["final_entropy_distinct"] is None and m["ode_comparison"]["max_rel_error"] is None
    assert {f["ratio"] for f in m["prediction_failures"]} == {1.0, 10.0}  # no flow or t0' at eta 1e190: recorded


def test_scan_snap_excludes_and_counts_the_runs_that_diverge(tmp_path):
    record = _run_main(scan_snap, [*TINY_SNAP, *SOME_DIVERGE_SNAP, "--out", str(tmp_path)])
    m = record["metrics"]
    assert 0 < m["diverged_count"] < m["runs"]
    assert {d["ratio"] for d in m["diverged"]} == {1e30}  # only the runs at the huge ratio blew up
    by_ratio = m["final_entropy_distinct_by_ratio"]
    assert by_ratio["1.0"]["runs"] == 2 and np.isfinite(by_ratio["1.0"]["mean"])
    assert by_ratio["1e+30"] == {"mean": None, "sem": None, "runs": 0}
    assert record["verdicts"][0]["verdict"] == "FAIL" and not record["all_pass"]


def test_scan_snap_records_a_flow_the_integrator_cannot_finish(tmp_path, monkeypatch):
    integrate = experiment.ss.integrate_yz_flow

    def failing(table, eta_Y, eta_Z, t, **kwargs):  # the settings at ratio 10 stop with a step-size underflow
        if np.any(np.asarray(eta_Y) / np.asarray(eta_Z) > 5):
            raise RuntimeError("dopri5: setting 0 stopped early (status 2: 1 = max_steps, 2 = step-size underflow)")
        return integrate(table, eta_Y, eta_Z, t, **kwargs)

    monkeypatch.setattr(experiment.ss, "integrate_yz_flow", failing)
    record = _run_main(scan_snap, [*TINY_SNAP, "--out", str(tmp_path)])
    failures = record["metrics"]["prediction_failures"]
    assert {(f["ratio"], f["reason"]) for f in failures} == {(10.0, "integrator stopped early (step-size underflow)")}
    assert len(failures) == 2  # the authors' momentum-scaled flow and the theory regime's
    rows = {row["quantity"].split(",")[0]: row for row in record["verdicts"]}
    assert "integration failed" in rows["Y/Z model: c_n on distinct tokens"]["measurement"]
    assert rows["Y/Z model: c_n on distinct tokens"]["verdict"] == "FAIL"
    assert record["metrics"]["entropy_vs_step"]["ode_by_ratio"].keys() == {"1.0"}


def test_flows_keeps_the_settings_that_finish(monkeypatch):
    from sim import scan_snap as ss
    from validate._scan_snap.models import make_classes
    table = ss.ClassTable.from_classes(make_classes("syn-small", 2))
    results = experiment.flows(table, [0.25, 1e300], [0.25, 0.25], np.arange(0.0, 5.0))
    assert isinstance(results[0], dict) and results[0]["attention"].shape == (5, 2, 34)
    assert isinstance(results[1], str) and results[1]  # why: the integrator stopped, or the sim refused the rate


def test_scan_snap_sweep_finishes_when_every_run_diverges(tmp_path):
    record = _run_main(scan_snap_sweep, [*TINY_SWEEP, *ALL_DIVERGE_SWEEP, "--out", str(tmp_path)])
    m = record["metrics"]
    assert np.sum(m["runs_diverged"]) == 4 and np.sum(m["runs_finite"]) == 0
    assert all(isinstance(d["step"], int) for d in m["diverged"])
    assert np.array(m["entropy_mean"], dtype=float).shape == (1, 1, 2)  # every cell null
    assert all(v is None for v in np.ravel(np.array(m["entropy_mean"], dtype=object)))
    assert record["verdicts"][0]["verdict"] == "FAIL" and "4 of 4" in record["verdicts"][0]["measurement"]
    with sqlite3.connect(tmp_path / "sweep.sqlite") as db:  # stored with their step
        results = [json.loads(r) for (r,) in db.execute("SELECT result FROM results")]
    assert len(results) == 4 and all(r["diverged_step"] is not None and r["entropy_final"] is None for r in results)


def test_scan_snap_sweep_excludes_and_counts_the_runs_that_diverge(tmp_path):
    argv = [*TINY_SWEEP, *SOME_DIVERGE_SWEEP, "--out", str(tmp_path)]
    record = _run_main(scan_snap_sweep, argv)
    m = record["metrics"]
    diverged, finite = np.array(m["runs_diverged"]), np.array(m["runs_finite"])
    assert 0 < diverged.sum() < diverged.sum() + finite.sum() == 8
    assert diverged[0, 0].sum() == 0  # eta_Z = 1 never blows up; eta_Z = 1e150 at ratio 1e20 does
    assert diverged[0, 1, 1] == 2 and m["entropy_mean"][0][1][1] is None
    assert record["verdicts"][0]["verdict"] == "FAIL"
    assert any("left out" in row["measurement"] for row in record["verdicts"])
    # a rerun reads the diverged rows back from the store and aggregates them the same way
    assert _run_main(scan_snap_sweep, argv)["metrics"] == m


# ----------------------------------------------------------------------------------------------------------
# The sweep's store: kill -9, Ctrl-C, corrupt, foreign and busy stores
# ----------------------------------------------------------------------------------------------------------
# 16 runs in 4 batches of 4 (PAIRS_PER_TASK), ~0.4 s a batch here: time to catch the sweep between batches
KILL_SWEEP = ["--next-tokens", "2", "--lr-z", "1", "--ratios", "1", "2", "5", "10", "--seeds", "1", "2", "3", "4",
              "--steps", "60", "--quiet"]


def _stored(out: Path) -> dict:
    """{(point_key, seed): finished_at} of the rows in out/sweep.sqlite (empty before the store exists)."""
    try:
        with sqlite3.connect(out / "sweep.sqlite", timeout=10) as db:
            return {(k, s): f for k, s, f in db.execute("SELECT point_key, seed, finished_at FROM results")}
    except sqlite3.OperationalError:  # no table yet
        return {}


def _signal_midway(out: Path, signum: int) -> tuple[subprocess.Popen, dict, str]:
    """Start the sweep (its default executor: one worker process) and send `signum` once its first batch is stored;
    returns the process (ended), the rows stored at that moment, and its stderr."""
    process = subprocess.Popen([sys.executable, "-m", "validate.scan_snap_sweep", *KILL_SWEEP, "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    rows = {}
    while process.poll() is None and time.monotonic() < deadline:
        if (out / "sweep.sqlite").exists():
            rows = _stored(out)
            if rows:
                if signum == signal.SIGKILL:
                    process.kill()
                else:
                    os.killpg(process.pid, signum)  # Ctrl-C in a terminal reaches the whole process group
                break
        time.sleep(0.02)
    _, err = process.communicate(timeout=60)
    assert 0 < len(rows) < 16, f"the sweep was not caught midway ({len(rows)} rows)"
    return process, rows, err


def test_sweep_killed_midway_resumes_without_recomputing_and_ends_as_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    process, at_kill, _ = _signal_midway(killed, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "scan_snap_sweep.json").exists()
    kept = _stored(killed)
    assert len(kept) >= len(at_kill) and len(kept) % 4 == 0  # whole batches only
    # the rerun (default executor again) computes only what was missing: the kept rows are untouched
    assert scan_snap_sweep.main([*KILL_SWEEP, "--out", str(killed)]) == 0
    after = _stored(killed)
    assert len(after) == 16 and all(after[key] == finished for key, finished in kept.items())
    whole = tmp_path / "whole"
    assert scan_snap_sweep.main([*KILL_SWEEP, "--workers", "0", "--out", str(whole)]) == 0
    resumed = json.loads((killed / "scan_snap_sweep.json").read_text())
    uninterrupted = json.loads((whole / "scan_snap_sweep.json").read_text())
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert not list(killed.glob(".tmp-*"))


def test_sweep_interrupted_by_ctrl_c_exits_130_in_one_line_and_keeps_its_rows(tmp_path):
    process, at_signal, err = _signal_midway(tmp_path, signal.SIGINT)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    kept = _stored(tmp_path)
    assert len(kept) >= len(at_signal) and all(kept[k] == f for k, f in at_signal.items())
    assert not (tmp_path / "scan_snap_sweep.json").exists()


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
def test_sweep_refuses_a_store_that_is_not_one_and_leaves_it_alone(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scan_snap_sweep, "run_sweep", lambda *a, **k: pytest.fail("computed"))
    store = tmp_path / "sweep.sqlite"
    if kind == "corrupt":
        store.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))  # a header, then garbage
    else:
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE measurements (x)")
    before = store.read_bytes()
    with pytest.raises(SystemExit) as stop:
        scan_snap_sweep.main([*TINY_SWEEP, "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and "sweep.sqlite" in lines[0], lines
    assert not (tmp_path / "scan_snap_sweep.json").exists()
    if kind == "corrupt":
        assert store.read_bytes() == before
    else:  # its tables are kept (SweepStore switches its journal to WAL before it looks: header bytes 18-19)
        with sqlite3.connect(store) as db:
            assert [n for (n,) in db.execute("SELECT name FROM sqlite_master")] == ["measurements"]


def test_sweep_refuses_a_store_another_run_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scan_snap_sweep, "run_sweep", lambda *a, **k: pytest.fail("computed"))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
                               str(tmp_path / "sweep.sqlite.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as stop:
            scan_snap_sweep.main([*TINY_SWEEP, "--out", str(tmp_path)])
    finally:
        holder.kill()
        holder.wait()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and "in use" in lines[0], lines


def test_scan_snap_interrupted_by_ctrl_c_exits_130_without_a_traceback(tmp_path):
    argv = [a for a in TINY_SNAP if a != "--quiet"]  # its progress line says when the training has started
    process = subprocess.Popen([sys.executable, "-m", "validate.scan_snap", *argv, "--out", str(tmp_path)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_sigint)
    first = process.stderr.readline()
    assert "started" in first, first
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err.strip().splitlines()[-1]
    assert not (tmp_path / "scan_snap.json").exists() and not list(tmp_path.glob(".tmp-*"))
