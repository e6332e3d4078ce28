"""validate._execution_manifold.stacked_training computes what the plain loop (trajectory.train_with_snapshots)
computes: the same weights, losses, accuracies, markers and snapshots per seed, step by step.

Tolerances. float64: every difference is rounding of sums taken in another order, measured <= 3e-14 in the
weights after 10 steps (paper-sized model, seeds 0 and 1), so 1e-10 (weights) and 1e-12 (losses, probe logits).
float32: measured on the paper-sized model, seeds 0-3 x 10 steps and seeds 0-1 x 30 steps: weights and snapshots
differ by at most 4.9e-6 (one element, from the first AdamW step, where the update lr g / (|g| + eps) is most
sensitive to the rounding of a small g; it does not grow over the 30 steps), the loss by at most 4.8e-7, the
logits of a probe batch at the snapshots by at most 4.2e-7 (seeds 0-3, 4 steps); tolerances 2e-5 for weights
and 2e-6 for losses and logits (about 4x). A wrong update direction moves a weight by about lr = 3e-4 per AdamW
step, 15x the tolerance; a wrong scale of a gradient, which AdamW's normalization hides, fails the float64
gradient and SGD tests. The key bias (rows d..2d of qkv.bias) cannot change the model's output (softmax is
invariant to adding the same number to every key's score), so its gradient is rounding noise in both paths, and
AdamW turns noise into steps of up to lr: it is compared in float64 only.
"""
import numpy as np
import pytest
import torch

from validate._execution_manifold.modular import MarkerTransformer, ModelConfig, TaskConfig, sample_batch
from validate._execution_manifold.stacked_training import StackedMarkerTransformers, train_stacked
from validate._execution_manifold.trajectory import Diverged, RunConfig, train_with_snapshots

PAPER = RunConfig(steps=4, snapshot_every=2)  # the paper-sized model (5 layers, d 128, batch 128), 4 steps
PAPER_SHORT = RunConfig(steps=2, snapshot_every=1)
SMALL = RunConfig(steps=6, snapshot_every=2, n_layers=2, d_model=32, batch_size=16)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _parameter_differences(plain_model, stacked_model, d, compare_key_bias=True):
    """{parameter name: max |difference|} between two MarkerTransformers."""
    out = {}
    for (name, a), b in zip(plain_model.named_parameters(), stacked_model.parameters()):
        diff = (a - b).detach().abs()
        if name.endswith("qkv.bias") and not compare_key_bias:
            diff = torch.cat([diff[:d], diff[2 * d:]])
        out[name] = float(diff.max())
    return out


def _assert_same_runs(run, seeds, weight_tol, loss_tol, exact_accuracy, compare_key_bias, probes=True):
    """train_stacked against train_with_snapshots, seed by seed; the on_snapshot hook sees the same models."""
    task, model_config = run.task_config(), run.model_config(run.task_config())
    task_batch = sample_batch(task, 1, torch.Generator().manual_seed(99))
    plain_probes, stacked_probes = {}, {}

    def probe(log, key, step, model):
        log[(key, step)] = model(task_batch.tokens).logits.detach().clone()

    plain = []
    for seed in seeds:
        plain.append(train_with_snapshots(task, model_config, run.train_config(seed),
                                          on_snapshot=lambda step, model, seed=seed: probe(plain_probes, seed, step,
                                                                                           model)))
    progress = []
    stacked = train_stacked(task, model_config, [run.train_config(seed) for seed in seeds],
                            on_snapshot=lambda index, step, model: probe(stacked_probes, seeds[index], step, model),
                            progress=progress.append)
    assert sum(progress) == run.steps
    assert plain_probes.keys() == stacked_probes.keys() and len(plain_probes) == len(seeds) * run.n_snapshots
    for key in plain_probes:
        assert torch.allclose(plain_probes[key], stacked_probes[key], rtol=0, atol=loss_tol), key
    for p, s in zip(plain, stacked):
        np.testing.assert_array_equal(p.snapshot_steps, s.snapshot_steps)
        np.testing.assert_array_equal(p.markers, s.markers)
        np.testing.assert_allclose(s.loss, p.loss, rtol=0, atol=loss_tol)
        if exact_accuracy:
            np.testing.assert_array_equal(s.accuracy, p.accuracy)
        else:  # an argmax tie broken the other way flips one example of the batch
            np.testing.assert_allclose(s.accuracy, p.accuracy, rtol=0, atol=1.01 / run.batch_size)
        assert p.trajectories.keys() == s.trajectories.keys()
        for name in p.trajectories:
            # float32 snapshots of float64 runs: one float32 rounding apart at most
            tol = max(weight_tol, 1e-8)
            np.testing.assert_allclose(s.trajectories[name], p.trajectories[name], rtol=0, atol=tol, err_msg=name)
        differences = _parameter_differences(p.model, s.model, run.d_model, compare_key_bias)
        assert max(differences.values()) <= weight_tol, differences


@pytest.mark.parametrize("mlp", ["none", "on"])
def test_gradients_equal_the_plain_modules_float64(float64, mlp):
    """One forward and backward of the paper-sized model (mlp "on": d 32), seeds 0 and 1, their own batches:
    every parameter's gradient equal to the plain module's (measured max relative difference 4e-15). AdamW hides
    a gradient's scale, so a wrong factor in a gradient shows here and in the SGD run below, not in AdamW runs."""
    task = TaskConfig()
    config = ModelConfig.for_task(task, mlp=mlp, **({} if mlp == "none" else dict(d_model=32, n_layers=2)))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(MarkerTransformer(config))
    stack = StackedMarkerTransformers(models)
    batches = [sample_batch(task, m, torch.Generator().manual_seed(m)) for m in (2, 4)]
    logits = stack(torch.stack([b.tokens for b in batches]))
    sum(torch.nn.functional.cross_entropy(logits[i], b.labels) for i, b in enumerate(batches)).backward()
    for index, (model, batch) in enumerate(zip(models, batches)):
        plain_logits = model(batch.tokens).logits
        torch.testing.assert_close(logits[index], plain_logits, rtol=0, atol=1e-12)
        torch.nn.functional.cross_entropy(plain_logits, batch.labels).backward()
        for plain, stacked in stack.parameter_pairs(model):
            scale = float(plain.grad.abs().max())
            torch.testing.assert_close(stacked.grad[index], plain.grad, rtol=0, atol=1e-10 * scale)


def test_paper_sized_float64_equals_plain_loop(float64):
    _assert_same_runs(PAPER_SHORT, (0, 1), weight_tol=1e-10, loss_tol=1e-12, exact_accuracy=True,
                      compare_key_bias=True)


def test_paper_sized_float32_equals_plain_loop_within_rounding():
    _assert_same_runs(PAPER, (0, 1), weight_tol=2e-5, loss_tol=2e-6, exact_accuracy=False, compare_key_bias=False)


@pytest.mark.parametrize("changes", [dict(optimizer="sgd", weight_decay=0.01), dict(mlp="unused"), dict(mlp="on"),
                                     dict(markers=(1, 3), modulus=16, n_heads=2)])
def test_variants_float64_equal_plain_loop(float64, changes):
    run = RunConfig(**{**SMALL.__dict__, **changes})
    _assert_same_runs(run, (3, 0, 7), weight_tol=1e-10, loss_tol=1e-12, exact_accuracy=True, compare_key_bias=True)


def test_a_seed_is_independent_of_the_others_in_its_stack():
    """Seed 1 trained alone and beside seed 0 gives the same numbers (every sum is within a seed)."""
    task, model_config = SMALL.task_config(), SMALL.model_config(SMALL.task_config())
    alone, = train_stacked(task, model_config, [SMALL.train_config(1)])
    beside = train_stacked(task, model_config, [SMALL.train_config(0), SMALL.train_config(1)])[1]
    np.testing.assert_allclose(beside.loss, alone.loss, rtol=0, atol=1e-6)
    for name in alone.trajectories:
        np.testing.assert_allclose(beside.trajectories[name], alone.trajectories[name], rtol=0, atol=1e-6)


def test_nan_in_one_seed_does_not_reach_another():
    """A diverged seed keeps training inside the stack: its NaNs must stay in its own slices."""
    task = TaskConfig(batch_size=8)
    config = ModelConfig.for_task(task, n_layers=2, d_model=32)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(MarkerTransformer(config))
    stack = StackedMarkerTransformers(models)
    with torch.no_grad():
        stack.qkv_weight[0][0].fill_(float("nan"))
    batch = sample_batch(task, 2, torch.Generator().manual_seed(0))
    logits = stack(batch.tokens.expand(2, -1, -1).contiguous())
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.repeat(2)).backward()
    assert torch.isnan(logits[0]).all() and torch.isfinite(logits[1]).all()
    for parameter in stack.parameters():
        assert torch.isfinite(parameter.grad[1]).all()


def test_divergence_is_reported_as_the_plain_loop_reports_it():
    """SGD at lr 1e30 sends the loss to NaN at step 1 in both paths; the Diverged carries step, place, loss curve."""
    run = RunConfig(**{**SMALL.__dict__, "optimizer": "sgd", "lr": 1e30})
    task, model_config = run.task_config(), run.model_config(run.task_config())
    stacked = train_stacked(task, model_config, [run.train_config(seed) for seed in (0, 1)])
    for seed, diverged in zip((0, 1), stacked):
        with pytest.raises(Diverged) as plain:
            train_with_snapshots(task, model_config, run.train_config(seed))
        assert isinstance(diverged, Diverged)
        assert (diverged.step, diverged.where) == (plain.value.step, plain.value.where) == (1, "loss")
        np.testing.assert_allclose(diverged.loss, plain.value.loss, rtol=1e-6)


def test_a_hook_that_raises_diverged_stops_only_its_seed():
    task, model_config = SMALL.task_config(), SMALL.model_config(SMALL.task_config())

    def hook(index, step, model):
        if index == 0 and step == 4:
            raise Diverged(step, "attention")

    stopped, trained = train_stacked(task, model_config, [SMALL.train_config(0), SMALL.train_config(1)],
                                     on_snapshot=hook)
    with pytest.raises(Diverged) as plain:
        train_with_snapshots(task, model_config, SMALL.train_config(0),
                             on_snapshot=lambda step, model: hook(0, step, model))
    assert (stopped.step, stopped.where) == (plain.value.step, plain.value.where) == (4, "attention")
    np.testing.assert_allclose(stopped.loss, plain.value.loss, rtol=0, atol=2e-6)
    assert len(trained.loss) == SMALL.steps and list(trained.snapshot_steps) == [0, 2, 4, 6]


@pytest.mark.parametrize("trains, model_config, match", [
    ([], None, "trains"),
    ("not a list", None, "trains"),
    ([SMALL.train_config(0), RunConfig(**{**SMALL.__dict__, "lr": 1e-3}).train_config(1)], None, "seed only"),
    ([SMALL.train_config(0)], "a config", "model_config"),
])
def test_bad_input_is_named(trains, model_config, match):
    task = SMALL.task_config()
    with pytest.raises(ValueError, match=match):
        train_stacked(task, model_config or SMALL.model_config(task), trains)
