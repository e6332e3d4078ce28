"""The phase-diagram pipeline: the task's exact losses, batched training, the verdict logic on synthetic loss maps,
the CLI of both experiments, Dask vs local sweeps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from theory.signal_prop import BlockParams
from validate._common.sweep import SweepStore, run_sweep
from validate._signal_prop.batched_train import (StackedPhaseModels, TrainConfig, TrainPoints, _Block, _LayerNorm,
                                                 build_models, params_at, train_batched, train_sequential)
from validate._signal_prop.phase_analysis import (distances_to, learning_rate_choice, on_zero_curve,
                                                  simultaneous_vanishing, zero_crossings, zero_curve)
from validate._signal_prop.phase_experiment import PhaseDiagramConfig, default_config, same_experiment
from validate._signal_prop.phase_task import HistogramTask
from validate._signal_prop.transformer import layer_norm, torch_activation
from validate.phase_diagram import QUICK, QUICK_CROSSING, build_parser, main, parse_config, run

TASK = HistogramTask(n_tokens=8, vocab=4, noise=0.2)
TINY = TrainConfig(depth=3, width=16, d_ff=16, steps=6, batch=4, test_size=32, eval_every=3, threads=1,
                   task=TASK)


# -- the task ---------------------------------------------------------------------------------------------
def test_clean_labels_count_each_symbol():
    tokens = torch.tensor([[0, 1, 0, 2, 0, 1, 3, 3]])
    assert TASK.clean_labels(tokens).tolist() == [[2, 1, 2, 0, 2, 1, 1, 1]]  # count - 1


def test_bayes_predictor_attains_bayes_loss_and_label_noise_is_as_specified():
    generator = torch.Generator().manual_seed(0)
    tokens, noisy = TASK.sample(20000, generator)
    clean = TASK.clean_labels(tokens)
    k, e = TASK.n_classes, TASK.noise
    bayes = torch.full((*clean.shape, k), e / k).scatter(-1, clean.unsqueeze(-1), 1 - e + e / k)
    # the noise-averaged loss of the Bayes predictor is the closed-form floor (exactly, up to float rounding)
    assert TASK.expected_loss(bayes.log(), clean).item() == pytest.approx(TASK.bayes_loss(), rel=1e-5)
    # and sampled labels agree with it: Monte Carlo within 4 standard errors of the per-token loss
    per_token = -bayes.log().gather(-1, noisy.unsqueeze(-1)).squeeze(-1)
    se = per_token.std().item() / math.sqrt(per_token.numel())
    assert abs(per_token.mean().item() - TASK.bayes_loss()) < 4 * se


def test_label_marginal_and_context_free_loss():
    marginal = torch.tensor(TASK.label_marginal())
    assert marginal.sum().item() == pytest.approx(1.0, abs=1e-12)
    _, noisy = TASK.sample(20000, torch.Generator().manual_seed(1))
    frequencies = torch.bincount(noisy.flatten(), minlength=TASK.n_classes).double() / noisy.numel()
    # binomial standard error of each frequency (tokens within a sequence are dependent: x2 margin)
    se = (marginal * (1 - marginal) / noisy.numel()).sqrt()
    assert ((frequencies - marginal).abs() < 8 * se + 1e-12).all()
    assert TASK.bayes_loss() < TASK.context_free_loss() < math.log(TASK.n_classes)


@pytest.mark.parametrize("kwargs", [dict(n_tokens=1), dict(vocab=1), dict(noise=1.0), dict(noise=-0.1)])
def test_task_rejects_bad_fields(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        HistogramTask(**kwargs)


# -- the model and batched training ----------------------------------------------------------------------
def test_stacked_forward_equals_each_models_own_forward():
    params = [BlockParams(alpha_A=0.4, alpha_M=0.7, sigma_w=2.5, n_tokens=8),
              BlockParams(alpha_A=0.9, alpha_M=0.2, sigma_A=3.0, n_tokens=8), BlockParams(n_tokens=8)]
    models = build_models(params, [3, 4, 3], TINY)
    tokens, _ = TASK.sample(5, torch.Generator().manual_seed(4))
    stacked = StackedPhaseModels(models)(tokens.expand(3, -1, -1))
    for m, model in enumerate(models):   # same math, other summation order: float32 rounding only
        torch.testing.assert_close(stacked[m], model(tokens), rtol=0, atol=1e-5)


def test_layer_norm_backward_is_the_derivative_of_layer_norm():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.equal(_LayerNorm.apply(x), layer_norm(x))   # the same expression, the same rounding
    assert torch.autograd.gradcheck(_LayerNorm.apply, (x,))


@pytest.mark.parametrize("activation", ["tanh", "erf"])
def test_block_backward_is_the_derivative_of_the_block(activation):
    # 2 models, 3 sequences of 4 tokens, width 5, d_ff 6: the hand-written backward against finite differences
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, dtype=torch.float64, generator=g)
    weights = [torch.randn(2, *shape, dtype=torch.float64, generator=g) / 2 for shape in
               ((5, 5), (5, 5), (5, 5), (5, 6), (6, 5))]
    coefficients = [torch.tensor([a, b], dtype=torch.float64).view(2, 1, 1) for a, b in
                    ((0.8, 0.6), (0.6, 0.8), (1.0, 0.3), (0.5, 1.0))]
    inputs = [t.requires_grad_() for t in (x, *weights)]
    block = lambda *tensors: _Block.apply(*tensors, *coefficients, torch_activation(activation), 4)
    assert torch.autograd.gradcheck(block, inputs)


def test_batched_training_reproduces_sequential_training():
    params = [BlockParams(alpha_A=a, alpha_M=a, sigma_w=s, n_tokens=8) for a, s in ((0.2, 1.0), (0.6, 3.0),
                                                                                     (0.9, 2.0))]
    seeds = [0, 1, 0]
    batched = train_batched(params, seeds, TINY)
    sequential = train_sequential(params, seeds, TINY)
    for b, s in zip(batched, sequential):
        # same models, same data, same Adam: only float32 rounding differs (summation order of bmm vs mm,
        # fused vs for-loop Adam); measured differences are <= 6e-7 relative after 6 steps, so 1e-5 leaves
        # room without hiding a real mismatch
        for key in ("train_loss", "grad_norm", "test_loss"):
            np.testing.assert_allclose(b[key], s[key], rtol=1e-5)
    assert batched[0]["train_loss"] != batched[2]["train_loss"]  # different points really differ


def test_init_depends_only_on_point_and_seed():
    h = BlockParams(alpha_A=0.3, alpha_M=0.3, n_tokens=8)
    alone = build_models([h], [5], TINY)[0]
    among = build_models([h.replace(sigma_w=3.0), h], [1, 5], TINY)[1]
    for (name, a), (_, b) in zip(alone.named_parameters(), among.named_parameters()):
        assert torch.equal(a, b), name


def test_a_diverging_model_is_recorded_and_the_others_train_on_unchanged():
    healthy = [BlockParams(alpha_A=0.3, alpha_M=0.3, n_tokens=8), BlockParams(alpha_A=0.6, alpha_M=0.6,
                                                                              n_tokens=8)]
    poisoned = BlockParams(alpha_A=0.3, alpha_M=0.3, sigma_2=1e39, n_tokens=8)  # W_2 overflows float32
    together = train_batched([healthy[0], poisoned, healthy[1]], [0, 0, 0], TINY)
    apart = train_batched(healthy, [0, 0], TINY)
    assert together[1]["diverged"] and together[1]["diverged_at"] == 0
    assert together[1]["final_test_loss"] is None and all(v is None for v in together[1]["train_loss"])
    for t, a in zip((together[0], together[2]), apart):
        assert not t["diverged"]
        np.testing.assert_allclose(t["train_loss"], a["train_loss"], rtol=1e-5)  # float32 rounding only


def test_divergence_midway_is_recorded_at_its_step():
    # Adam at lr 1e10 throws the weights far out within a step or two, until some forward or backward
    # quantity overflows float32. Which step that is depends on float rounding (by then the batched and the
    # sequential gradients are both overflow noise), so the two need not agree on it; both must see it.
    blowup = TrainConfig(**{**TINY.to_dict(), "task": TASK, "lr": 1e10, "steps": 12})
    h = BlockParams(alpha_A=0.5, alpha_M=0.5, n_tokens=8)
    record = train_batched([h], [0], blowup)[0]
    step = record["diverged_at"]
    assert record["diverged"] and step is not None and 0 < step < 12
    assert all(math.isfinite(v) for v in record["train_loss"][:step])
    assert all(v is None for v in record["train_loss"][step:])
    sequential = train_sequential([h], [0], blowup)[0]["diverged_at"]
    assert sequential is not None and 0 < sequential < 12


# -- the command ---------------------------------------------------------------------------------------
SMALL = ["--grid", "3", "2", "--seeds", "0", "1", "--depth", "2", "--width", "16", "--d-ff", "16",
         "--steps", "8", "--batch", "4", "--test-size", "32", "--eval-every", "4", "--n-tokens", "8",
         "--vocab", "4", "--map-points", "20", "--workers", "0", "--threads", "1", "--quiet"]


def test_cli_writes_json_and_figure_a_rerun_resumes_and_figures_are_left_alone(tmp_path, capsys):
    out, figures = tmp_path / "run", tmp_path / "figures"
    figures.mkdir()
    cfg, _ = parse_config(SMALL + ["--out", str(out)])
    record = run(cfg, quiet=True, figures_dir=str(figures))
    assert list(figures.iterdir()) == []                  # not the default experiment: figures/ untouched
    assert json.loads((out / "phase_diagram.json").read_text()) == record
    metrics = record["metrics"]
    for key in ("spearman", "spearman_p", "min_loss_point", "predicted_critical_point", "distance_cells",
                "finite_depth_distance_cells"):
        assert key in metrics and record[key] == metrics[key]
    assert len(record["points"]) == 3 * 2 * 2 and record["store"]["models_trained_now"] == 12
    assert [row["quantity"] for row in record["verdicts"]] == [
        "Spearman(final test loss, |lambda|)", "loss minimum to the lambda_a = 0 curve (asymptotic)",
        "runs diverged (NaN or inf loss, gradient or test loss)"]
    # the finite-depth exponents of the trained depth beside the asymptotic ones, at every training point
    assert np.array(record["grid"]["finite_depth_angle"]).shape == (2, 3)
    assert {"fd_angle_exponent", "fd_gradient_exponent", "fd_gradient_frobenius_exponent"} <= set(record["points"][0])
    assert record["verdicts"][2]["verdict"] == "INFO" and metrics["diverged_runs"] == 0 and metrics["runs"] == 12
    assert (out / "phase_diagram.png").stat().st_size > 10_000

    assert main(SMALL + ["--out", str(out)]) == 0          # everything stored: nothing retrained
    assert "Spearman" in capsys.readouterr().out
    again = json.loads((out / "phase_diagram.json").read_text())
    assert again["store"]["models_trained_now"] == 0
    assert again["metrics"] == metrics and again["points"] == record["points"]
    fresh_cfg, _ = parse_config(SMALL + ["--out", str(out), "--fresh"])
    fresh = run(fresh_cfg, quiet=True, update_figures=True, figures_dir=str(figures))
    assert fresh["store"]["models_trained_now"] == 12
    assert [p["final_test_loss"] for p in fresh["points"]] == [p["final_test_loss"] for p in record["points"]]
    assert [p.name for p in figures.iterdir()] == ["phase_diagram.png"]   # --update-figures publishes


@pytest.mark.parametrize("args, message", [
    (["--grid", "1", "4"], "grid"), (["--x-range", "0.5", "0.2"], "x_range"),
    (["--x-range", "0.1", "1.5"], "alpha"), (["--base", "foo=1"], "FIELD"), (["--base", "sigma_A=-1"], "sigma_A"),
    (["--noise", "1.5"], "noise"), (["--x-field", "sigma_w"], "different fields"), (["--steps", "0"], "steps"),
    (["--seeds", "2", "2"], "distinct"), (["--workers", "-1"], "workers")])
def test_cli_rejects_bad_input_with_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m validate.phase_diagram: error:")


def test_only_the_default_experiment_counts_as_the_readme_figure():
    default = PhaseDiagramConfig()
    for where in ([], ["--workers", "1", "--threads", "2", "--out", "/tmp/elsewhere", "--fresh",
                       "--models-per-batch", "4", "--store", "/tmp/s.sqlite", "--quiet"]):
        assert same_experiment(parse_config(where)[0], default), where
    for other in (["--steps", "10"], ["--x-field", "sigma_A"], ["--seeds", "3"], ["--quick"]):
        assert not same_experiment(parse_config(other)[0], default), other


def test_quick_preset_sets_flags_the_user_did_not_give():
    quick, _ = parse_config(["--quick"])
    assert quick.grid == (3, 3) and quick.models_per_batch == 9
    assert (quick.train.depth, quick.train.width, quick.train.steps, quick.train.test_size) == (4, 32, 150, 256)
    mine, _ = parse_config(["--quick", "--steps", "20", "--grid", "4", "2"])
    assert mine.train.steps == 20 and mine.grid == (4, 2) and mine.train.depth == 4


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--x-field", "--y-range", "--grid", "--base", "--residual", "--depth", "--width", "--steps",
                 "--seeds", "--seed", "--lr", "--noise", "--out", "--store", "--scheduler", "--device", "--quick",
                 "--fresh", "--workers", "--threads", "--models-per-batch", "--update-figures", "--quiet",
                 "--experiment", "--sgd-lr", "--sgd-lr-candidates", "--probes"):
        assert flag in text, flag
    assert "--quick: 150" in " ".join(build_parser().format_help().split())


def test_dask_local_cluster_stores_the_same_quick_grid_as_local_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    # the --quick grid and model; 30 of its 150 steps suffice to compare stored numbers (and keep CI short)
    quick_train = TrainConfig(**{**TrainConfig().to_dict(), "task": HistogramTask(),
                                 **{k: v for k, v in QUICK.items() if k in TrainConfig.__dataclass_fields__},
                                 "steps": 30, "eval_every": 10})
    cfg = PhaseDiagramConfig(grid=QUICK["grid"], train=quick_train)
    task, points = TrainPoints(cfg.base, cfg.train), cfg.train_points()
    local = SweepStore(tmp_path / "local.sqlite", cfg.sweep_name())
    run_sweep(task, points, list(cfg.seeds), local, batch_size=9, max_workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = SweepStore(tmp_path / "dask.sqlite", cfg.sweep_name())
        run_sweep(task, points, list(cfg.seeds), remote, batch_size=9, scheduler=cluster.scheduler_address)
    local_rows, remote_rows = local.rows(), remote.rows()
    assert len(local_rows) == len(points) * len(cfg.seeds)
    # same batches, same seeds, same thread count: the stored numbers are identical, not merely close
    assert [(r["point"], r["seed"], r["result"]) for r in local_rows] == \
        [(r["point"], r["seed"], r["result"]) for r in remote_rows]


def test_params_at_sets_alpha_pair():
    h = params_at(BlockParams(n_tokens=8), {"alpha": 0.25, "sigma_w": 3.0})
    assert (h.alpha_A, h.alpha_M, h.sigma_w) == (0.25, 0.25, 3.0)


# -- the verdict logic on synthetic loss maps ------------------------------------------------------------
# a plane of unit cells, x, y in 0..6, with lambda_a = y - x (zero on the diagonal) and lambda_g = x + y - 6
# (zero on the anti-diagonal): the two zero curves cross at (3, 3)
XS = YS = np.arange(7.0)
GX, GY = np.meshgrid(XS, YS)
ANGLE, GRADIENT = GY - GX, GX + GY - 6.0
SE = np.full(ANGLE.shape, 0.01)
CROSSING = {"synthetic": {"crossings": [(3.0, 3.0)], "angle": ANGLE, "curve": zero_curve(XS, YS, ANGLE, refine=8)}}


def test_zero_curves_and_their_crossing_are_found_on_the_grid():
    curve = zero_curve(XS, YS, ANGLE, refine=4)
    assert len(curve) > 0 and np.allclose(curve[:, 0], curve[:, 1])        # the diagonal y = x
    assert on_zero_curve(ANGLE).sum() == 7 and on_zero_curve(ANGLE)[GX == GY].all()
    (x, y), = zero_crossings(XS, YS, ANGLE, GRADIENT, refine=32)
    assert abs(x - 3) <= 1 / 32 and abs(y - 3) <= 1 / 32                   # to a fine cell
    assert zero_crossings(XS, YS, ANGLE, GRADIENT + 100.0) == []            # curves that do not cross
    mean = 0.5 + 0.05 * np.abs(GX - 5)                                      # minimum at x = 5, on every row
    assert distances_to(XS, YS, mean, SE, np.array([[3.0, 3.0]]))["tied_cells"] == pytest.approx(2.0)


def test_a_minimum_at_the_crossing_with_worse_loss_along_lambda_a_zero_passes():
    mean = 0.5 + 0.05 * (np.abs(ANGLE) + np.abs(GRADIENT))
    verdict = simultaneous_vanishing(XS, YS, mean, SE, CROSSING)
    assert verdict["passed"] and verdict["outcome"] == "pass" and verdict["definition"] == "synthetic"
    per = verdict["per_definition"]["synthetic"]
    # the diagonal's points more than 2 cells from (3, 3): (0, 0), (1, 1), (5, 5), (6, 6), all worse
    assert per["minimum_cells"] == 0 and per["far_curve_points"] == 4 and per["far_curve_points_worse"] == 4


def test_a_minimum_that_follows_lambda_a_zero_fails_as_evidence_against_the_claim():
    flat_on_the_curve = 0.5 + 0.05 * np.abs(ANGLE)         # the loss ignores lambda_g
    verdict = simultaneous_vanishing(XS, YS, flat_on_the_curve, SE, CROSSING)
    assert verdict["passed"] is False and verdict["outcome"] == "against"
    assert "against the claim" in verdict["text"] and "follows lambda_a = 0 wherever lambda_g is" in verdict["text"]
    # along the curve the crossing is not special: every far point matches the point at the crossing
    assert verdict["per_definition"]["synthetic"]["far_curve_points_not_worse_than_crossing"] == 4
    assert "matched within 2 SE or beaten by 4 of the 4 points" in verdict["text"]
    # the same when the minimum sits at the crossing but the rest of the curve is as good within 2 SE
    at_crossing = flat_on_the_curve - 0.001 * ((GX == 3) & (GY == 3))
    verdict = simultaneous_vanishing(XS, YS, at_crossing, SE, CROSSING)
    assert verdict["outcome"] == "against" and verdict["per_definition"]["synthetic"]["minimum_cells"] == 0
    assert verdict["per_definition"]["synthetic"]["far_curve_points_tied"] == 4
    # on the curve 1.4 cells from the crossing, every far point of the curve worse: neither PASS nor against
    near = 0.5 + 0.05 * np.abs(ANGLE) + 0.05 * np.hypot(GX - 4, GY - 4)
    verdict = simultaneous_vanishing(XS, YS, near, SE, CROSSING)
    assert verdict["passed"] is False and verdict["outcome"] == "inconclusive"
    assert "against the claim" not in verdict["text"]
    # a minimum far from lambda_a = 0 and from the crossing follows neither
    corner = 0.5 + 0.01 * np.hypot(GX - 6, GY)
    verdict = simultaneous_vanishing(XS, YS, corner, SE, CROSSING)
    assert verdict["outcome"] == "neither" and "against the claim" in verdict["text"]


@pytest.mark.parametrize("standard_errors, passed", [(1.9, False), (2.1, True)])
def test_far_points_on_the_curve_count_as_worse_only_beyond_two_combined_standard_errors(standard_errors, passed):
    # minimum 0.5 at the crossing; every other point standard_errors x sqrt(0.01^2 + 0.01^2) above it
    mean = np.full(ANGLE.shape, 0.5 + standard_errors * np.sqrt(2) * 0.01)
    mean[3, 3] = 0.5
    verdict = simultaneous_vanishing(XS, YS, mean, SE, CROSSING)
    assert verdict["passed"] is passed
    assert verdict["per_definition"]["synthetic"]["far_curve_points_worse"] == (4 if passed else 0)


def test_simultaneous_vanishing_is_not_computable_without_a_minimum_or_a_crossing():
    no_crossing = {"synthetic": {**CROSSING["synthetic"], "crossings": []}}
    assert simultaneous_vanishing(XS, YS, 0.5 + np.abs(ANGLE), SE, no_crossing)["text"] == \
        "not computable: no crossing inside the window"
    diverged = simultaneous_vanishing(XS, YS, np.full(ANGLE.shape, np.inf), SE, CROSSING)
    assert diverged["passed"] is False and diverged["outcome"] == "not computable"
    # a crossing whose lambda_a = 0 curve has no training point more than 2 cells away cannot be judged
    short = {"synthetic": {"crossings": [(1.0, 1.0)], "angle": np.where(GX + GY <= 3, ANGLE, np.nan),
                           "curve": zero_curve(XS, YS, np.where(GX + GY <= 3, ANGLE, np.nan))}}
    verdict = simultaneous_vanishing(XS, YS, 0.5 + 0.05 * np.hypot(GX - 1, GY - 1), SE, short)
    assert verdict["outcome"] == "not computable" and "no training point more than 2 cells" in verdict["text"]


def test_sgd_learning_rate_is_the_best_candidate_at_the_central_point_and_a_diverged_one_never_wins():
    cfg = default_config("crossing", seeds=(0, 1), sgd_lr_candidates=(0.1, 0.2, 0.4))
    def row(lr, seed, loss):
        return {"point": {"lr": lr}, "seed": seed, "result": {"final_test_loss": loss, "diverged": loss is None}}
    rows = [row(0.1, 0, 0.9), row(0.1, 1, 0.8), row(0.2, 0, 0.6), row(0.2, 1, 0.7), row(0.4, 0, 0.1),
            row(0.4, 1, None)]
    choice = learning_rate_choice(cfg, rows)
    assert choice["value"] == 0.2 and not choice["at_edge_of_candidates"]
    assert [c["diverged_seeds"] for c in choice["candidates"]] == [0, 0, 1]
    assert choice["central_point"] == {"sigma_V": 0.8, "sigma_w": 2.625} and "0.2, the lowest" in choice["text"]


# -- the crossing experiment's command -------------------------------------------------------------------
CROSSING_TINY = ["--experiment", "crossing", "--grid", "3", "3", "--seeds", "0", "1", "--depth", "2", "--width", "8",
                 "--d-ff", "8", "--steps", "4", "--batch", "4", "--test-size", "8", "--eval-every", "2",
                 "--map-points", "12", "--sgd-lr-candidates", "0.1", "0.2", "--probes", "1", "--workers", "0",
                 "--threads", "1", "--quiet"]


def test_crossing_experiment_defaults_and_its_quick_preset():
    cfg, _ = parse_config(["--experiment", "crossing"])
    assert cfg == default_config("crossing")
    assert (cfg.x_field, cfg.x_range, cfg.y_field, cfg.y_range) == ("sigma_V", (0.2, 1.4), "sigma_w", (0.75, 4.5))
    assert (cfg.base.alpha_A, cfg.base.alpha_M, cfg.base.sigma_A, cfg.base.sigma_2) == (0.25, 0.25, 1.0, 1.0)
    assert cfg.base.residual == "normalized" and cfg.train.depth == 16 and cfg.train.width == 64
    assert cfg.out == "runs/phase_diagram_crossing" and cfg.sgd_lr is None
    quick, _ = parse_config(["--experiment", "crossing", "--quick"])
    assert quick.grid == QUICK_CROSSING["grid"] and quick.train.depth == 16 and quick.train.steps == 150
    assert not same_experiment(quick, default_config("crossing"))
    assert parse_config(["--experiment=crossing", "--sgd-lr", "0.3"])[0].sgd_lr == 0.3


@pytest.mark.parametrize("args, message", [
    (["--sgd-lr", "0.1"], "crossing"), (["--probes", "3"], "crossing"),
    (["--experiment", "crossing", "--optimizer", "sgd"], "optimizer"),
    (["--experiment", "crossing", "--sgd-lr", "0"], "--sgd-lr"), (["--experiment", "bogus"], "--experiment")])
def test_crossing_only_settings_are_refused_elsewhere_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_crossing_experiment_writes_its_record_and_figure_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "crossing"
    cfg, _ = parse_config(CROSSING_TINY + ["--out", str(out)])
    record = run(cfg, quiet=True, figures_dir=str(tmp_path))
    assert json.loads((out / "phase_diagram.json").read_text()) == record
    assert (out / "phase_diagram_crossing.png").stat().st_size > 10_000
    trained = record["store"]["models_trained_now"]
    assert trained == {"measured_networks": 18, "learning_rate_candidates": 4, "adam": 18, "sgd": 18}
    metrics = record["metrics"]
    # both optimizers, three definitions each; SGD's learning rate recorded with how it was chosen
    assert set(metrics["optimizers"]) == {"adam", "sgd"}
    assert set(metrics["optimizers"]["sgd"]["definitions"]) == {"common", "frobenius", "measured"}
    assert record["config"]["sgd_lr_used"] in (0.1, 0.2) and record["config"]["sgd_train"]["optimizer"] == "sgd"
    assert "central point" in record["config"]["sgd_lr_how"]
    claims = [row["claim"] for row in record["verdicts"]]
    assert claims.count("Adam") == claims.count("SGD") - 1 == 7
    assert [r["quantity"] for r in record["verdicts"] if r["quantity"].startswith("simultaneous")] and \
        record["verdicts"][-1]["verdict"] == "INFO"
    assert len(record["points"]) == 2 * 9 * 2 and len(record["measured_points"]) == 9 * 2
    again = run(cfg, quiet=True, figures_dir=str(tmp_path))
    assert set(again["store"]["models_trained_now"].values()) == {0}
    assert again["metrics"] == metrics
