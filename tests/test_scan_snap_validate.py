"""validate.scan_snap and validate.scan_snap_sweep: torch Y/Z gradients equal Lemma 1, the data sampler, the
transformer's Z, and both commands (flags, --quick, JSON records, figures/)."""
import functools
import json
import pickle
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from theory import scan_snap as th
from validate import scan_snap, scan_snap_sweep
from validate._common import cli, reporting
from validate._scan_snap import analysis as an
from validate._scan_snap import experiment, fig6
from validate._scan_snap.experiment import ScanSnapConfig
from validate._scan_snap.models import OneLayerTransformer, SyntheticSequences, TrainConfig, YZModel, train


def test_yz_gradients_equal_lemma1():
    # one sequence: Lemma 1 (Eqn. 3) holds at finite T with X^T b_T, which is Eqn. 5 with P(l|n) replaced by the
    # empirical token frequencies of the sequence; so theory's formulas evaluated there must equal autograd
    torch.manual_seed(0)
    M, query, nxt = 6, 4, 5
    model = YZModel(M, init="default").double()
    context = [0, 1, 1, 2, 3, 0, 1]
    x = torch.tensor([context + [query]])
    loss = F.cross_entropy(model(x), torch.tensor([nxt]))
    loss.backward()
    freq = [context.count(l) / len(context) for l in range(M)]
    Y = model.decoder.weight.detach().T.numpy()
    z = model.attention.weight.detach()[query].numpy()
    dY, dz = th.lemma1_gradients_numeric(Y.tolist(), z.tolist(), freq, nxt)
    dY = np.array(dY, dtype=float)
    dz = np.array(dz, dtype=float)
    # loss = -J and decoder.weight = Y^T; float64 autograd vs 30-digit SymPy: agreement to ~1e-15
    np.testing.assert_allclose(model.decoder.weight.grad.numpy(), -dY.T, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(model.attention.weight.grad[query].numpy(), -dz, rtol=1e-10, atol=1e-13)
    others = [m for m in range(M) if m != query]
    assert torch.all(model.attention.weight.grad[others] == 0)  # Eqn. 4: only the query's row moves


def test_sampler_matches_class_probabilities():
    classes = th.syn_small()
    data = SyntheticSequences(classes, seq_len=129, seed=3)
    x, y = data.sample(2000)
    assert torch.all(x[:, -1] == torch.where(y == 32, 30, 31))  # query psi(n) last
    ctx = x[y == 32, :-1].reshape(-1)
    freq = torch.bincount(ctx, minlength=34).double() / ctx.numel()
    P = torch.tensor([float(p) for p in classes.probabilities[0]], dtype=torch.float64)
    # binomial standard error of a frequency from ctx.numel() draws; 5 sigma keeps this deterministic test robust
    se = torch.sqrt(P * (1 - P) / ctx.numel())
    assert torch.all(torch.abs(freq - P) <= 5 * se + 1e-12)


def test_transformer_attention_logits_match_forward():
    torch.manual_seed(1)
    model = OneLayerTransformer(10, d_model=16).double()
    Z = model.attention_logits()
    x = torch.tensor([[1, 2, 3, 2, 7]])
    u = model.embed(x)
    scores = model.W_Q(u[:, -1]) @ model.W_K(u[:, :-1]).transpose(1, 2) / 4.0
    np.testing.assert_allclose(scores.detach().numpy().ravel(), Z[7, [1, 2, 3, 2]].numpy(), rtol=1e-12)


def test_drop_order_tau_counts_censored_pairs():
    P = [0.1, 0.2, 0.3, 0.4]
    assert an.drop_order_tau(P, [1.0, 2.0, np.inf, np.inf]) == (1.0, 5)
    assert an.drop_order_tau(P, [2.0, 1.0, np.inf, np.inf])[0] == pytest.approx(3 / 5)
    assert np.isnan(an.drop_order_tau(P, [np.inf] * 4)[0])


def test_train_stops_where_a_run_diverges_and_says_at_which_step():
    # Y(0) = Z(0) = 0: step 1 moves Y by ~eta_Y, step 2 moves Z by ~eta_Z * |Y| = 1e380, past float64
    blown = train(TrainConfig(lr_z=1e190, lr_ratio=1.0, steps=10, batch=32, seq_len=32), range(11))
    assert blown.diverged_step == 2 and len(blown.loss) == 2 and list(blown.steps) == [0, 1]
    assert np.all(np.isfinite(blown.Y)) and np.all(np.isfinite(blown.loss))
    fine = train(TrainConfig(steps=4, batch=8, seq_len=8), [0, 4])
    assert fine.diverged_step is None and list(fine.steps) == [0, 4] and fine.Z.shape == (2, 2, 34)


def test_entropy_of_non_finite_attention_is_nan_not_a_number_that_passes():
    classes = th.syn_small()
    attention = np.full((3, 2, 34), 1 / 34)
    attention[1, 0, 12] = np.nan  # a distinct token of class 0
    attention[2, 1, 25] = np.inf  # one of class 1
    entropy = an.entropy_distinct(classes, attention)
    assert entropy[0] == pytest.approx(np.log(10)) and np.isnan(entropy[1:]).all()


def test_first_nonfinite_step():
    steps = [0, 2, 4]
    assert an.first_nonfinite_step(steps, np.ones((3, 2)), np.zeros(3)) is None
    assert an.first_nonfinite_step(steps, np.array([[1.0], [np.inf], [np.nan]])) == 2
    assert an.first_nonfinite_step(steps, np.ones(3), np.array([1.0, 1.0, np.nan])) == 4


def test_logged_steps_end_at_the_last_step():
    # an odd or single step count used to end the logs early (steps=1 logged only step 0 and crashed the ODE)
    assert list(experiment._logged_steps(1)) == [0, 1]
    assert experiment._logged_steps(11)[-1] == 11 and experiment._logged_steps(1001)[-1] == 1001


def test_power_law_fits_the_known_points_only():
    assert experiment._power_law([1.0, 2.0], [3.0, None]) == (None, None)
    slope, se = experiment._power_law([1.0, 2.0, 4.0], [8.0, None, 2.0])
    assert slope == pytest.approx(-1.0) and se is None
    slope, se = experiment._power_law([1.0, 2.0, 4.0, 8.0], [8.0, 4.0, 2.0, 1.0])
    assert slope == pytest.approx(-1.0) and se == pytest.approx(0.0, abs=1e-12)


def test_aggregate_leaves_diverged_runs_out_and_counts_them():
    cfg = fig6.SweepConfig(next_tokens=(2,), lr_z=(1.0,), ratios=(1.0, 2.0), seeds=(1, 2, 3))
    point = {p["lr_ratio"]: p for p in cfg.points()}
    rows = [{"point": point[1.0], "seed": 1, "result": {"entropy_final": 1.0, "diverged_step": None}},
            {"point": point[1.0], "seed": 2, "result": {"entropy_final": 2.0}},  # a row of an older store
            {"point": point[1.0], "seed": 3, "result": {"entropy_final": None, "diverged_step": 7}},
            {"point": point[2.0], "seed": 1, "result": {"entropy_final": float("nan")}},  # older store, blown up
            {"point": point[2.0], "seed": 2, "result": {"entropy_final": None, "diverged_step": 3}}]
    agg = fig6.aggregate(rows, cfg)
    assert agg["mean"][0, 0, 0] == 1.5 and np.isnan(agg["mean"][0, 0, 1])
    assert agg["finite"].tolist() == [[[2, 0]]] and agg["diverged"].tolist() == [[[1, 2]]]
    assert [(d["ratio"], d["seed"], d["step"]) for d in agg["diverged_runs"]] == [(1.0, 3, 7), (2.0, 1, None),
                                                                                  (2.0, 2, 3)]
    rows_ = fig6.verdicts(agg, cfg)
    assert rows_[0].verdict == "FAIL" and rows_[0].measurement.startswith("3 of 5")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr_z"):
        TrainConfig(lr_z=-1.0)
    with pytest.raises(ValueError, match="init='zero' with model='transformer'"):
        TrainConfig(model="transformer", init="zero")


# ----------------------------------------------------------------------------------------------------------
# The commands
# ----------------------------------------------------------------------------------------------------------
COMMANDS = (scan_snap, scan_snap_sweep)
SCHEMA = ("command", "argv", "package_version", "git_commit", "config", "versions", "timings_s", "metrics",
          "verdicts", "all_pass")
VERDICT_KEYS = {"claim", "measure", "quantity", "prediction", "measurement", "tolerance", "verdict"}


@pytest.mark.parametrize("command, args, message", [
    (scan_snap, ["--lr-ratio", "-1"], "lr_ratio"),
    (scan_snap, ["--dataset", "syn-medium", "--next-tokens", "3"], "even"),
    (scan_snap, ["--model", "transformer"], "init='zero'"),
    (scan_snap, ["--seeds", "a"], "not an integer"),
    (scan_snap, ["--ratios", "1,2"], "not a number"),  # lists are space-separated
    (scan_snap, ["--seeds", "1", "1"], "distinct"),
    (scan_snap_sweep, ["--next-tokens", "2", "3"], "even"),
    (scan_snap_sweep, ["--lr-z", "0"], "lr_z"),
    (scan_snap_sweep, ["--ratios", "1", "1"], "distinct"),
    (scan_snap_sweep, ["--workers", "-1"], "--workers"),
])
def test_bad_input_exits_2(command, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main([*args, "--out", str(tmp_path / "never-written")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_flag_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in command.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.dest
    assert "--quick: 1 2" in text  # the preset's seeds are shown where they change the default


@pytest.mark.parametrize("command", COMMANDS)
def test_parser_defaults_are_the_default_experiment(command):
    # the default experiment is recognised by comparing configs: the parser's defaults must build exactly it
    parser = command.build_parser()
    cfg = command.config_from_args(cli.parse(parser, []))
    assert cfg == type(cfg)()


def test_quick_presets_are_the_old_ones_and_explicit_flags_win():
    quick = scan_snap.config_from_args(cli.parse(scan_snap.build_parser(), ["--quick"], quick=scan_snap.QUICK))
    assert quick == ScanSnapConfig(train=TrainConfig(steps=40), seeds=(1, 2), ratios=(1.0, 10.0), theory_steps=150,
                                   theory_seq_len=128, theory_seeds=1, snap_steps=60)
    given = cli.parse(scan_snap.build_parser(), ["--quick", "--steps", "70", "--seed", "4"], quick=scan_snap.QUICK)
    assert (given.steps, given.seeds, given.theory_steps) == (70, (4,), 150)
    sweep = scan_snap_sweep.config_from_args(
        cli.parse(scan_snap_sweep.build_parser(), ["--quick", "--lr-z", "2"], quick=scan_snap_sweep.QUICK))
    assert sweep == fig6.SweepConfig(next_tokens=(2, 6), lr_z=(2.0,), ratios=(1.0, 2.0, 10.0), seeds=(1, 2, 3))


@pytest.fixture
def figures_dir(tmp_path, monkeypatch):
    """A stand-in for the repository's figures/, so a test can see what a run would publish."""
    directory = tmp_path / "repository_figures"
    directory.mkdir()
    monkeypatch.setattr(reporting, "REPOSITORY_FIGURES", str(directory))
    monkeypatch.setattr(reporting, "publish_figures",
                        functools.partial(reporting.publish_figures, figures_dir=str(directory)))
    return directory


def _refuse(token):
    raise AssertionError(f"non-strict JSON token {token}")


def _check_record(path, command):
    record = json.loads(path.read_text(), parse_constant=_refuse)  # strict JSON: no NaN/Infinity tokens
    assert set(SCHEMA) <= set(record) and record["command"] == command
    assert record["verdicts"] and all(set(row) == VERDICT_KEYS for row in record["verdicts"])
    assert {row["verdict"] for row in record["verdicts"]} <= {"PASS", "FAIL", "INFO"}
    assert record["all_pass"] == all(row["verdict"] != "FAIL" for row in record["verdicts"])
    for name in record["figures"]:
        assert (path.parent / name).stat().st_size > 10_000
    return record


def test_scan_snap_main_writes_its_record_and_leaves_figures_alone(tmp_path, figures_dir, capsys):
    out = tmp_path / "run"
    tiny = ["--quick", "--steps", "10", "--theory-steps", "30", "--snap-steps", "20", "--quiet", "--out", str(out)]
    assert scan_snap.main(tiny) == 0
    record = _check_record(out / "scan_snap.json", "scan_snap")
    for key in ("final_entropy_distinct", "final_entropy_distinct_sem", "final_entropy_distinct_by_ratio",
                "entropy_vs_step", "kendall_tau_drop_order", "kendall_tau_logit_change", "common_tokens_fall",
                "final_loss", "ode_comparison", "snap"):
        assert key in record["metrics"]
    assert record["config"]["ratios"] == [1.0, 10.0] and record["config"]["train"]["steps"] == 10
    assert record["argv"] == tiny
    assert len(record["figures"]) == 3
    assert list(figures_dir.iterdir()) == []  # a --quick run never publishes
    printed = capsys.readouterr().out
    assert "verdict" in printed and "wrote" in printed and str(out / "scan_snap.json") in printed


def test_scan_snap_sweep_main_writes_its_record_publishes_on_request_and_resumes(tmp_path, figures_dir):
    out = tmp_path / "sweep"
    tiny = ["--next-tokens", "2", "--lr-z", "1", "3", "--ratios", "1", "2", "10", "--seeds", "1", "2",
            "--steps", "20", "--workers", "0", "--quiet", "--out", str(out)]
    assert scan_snap_sweep.main(tiny) == 0
    record = _check_record(out / "scan_snap_sweep.json", "scan_snap_sweep")
    mean = np.array(record["metrics"]["entropy_mean"])
    assert mean.shape == (1, 2, 3) and np.all(np.isfinite(mean))
    assert np.array(record["metrics"]["entropy_sem"]).shape == (1, 2, 3)
    assert 0 < record["metrics"]["entropy_start_mean"] <= np.log(10)  # 10 distinct tokens per class
    assert record["config"]["lr_z"] == [1.0, 3.0] and "lr_z" not in record["config"]["train"]
    assert list(figures_dir.iterdir()) == []  # not the default experiment
    # a rerun resumes from the store: no new rows, the same numbers; --update-figures publishes the figure
    assert scan_snap_sweep.main([*tiny, "--update-figures"]) == 0
    with sqlite3.connect(out / "sweep.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2 * 3 * 2
    again = json.loads((out / "scan_snap_sweep.json").read_text())
    assert again["metrics"] == record["metrics"]
    assert [p.name for p in figures_dir.iterdir()] == ["scan_snap_fig6.png"]


def test_sweep_task_travels_to_worker_processes():
    # spawned workers receive the task by reference: it must pickle as a module-level function
    assert pickle.loads(pickle.dumps(fig6.sweep_task)) is fig6.sweep_task
