"""Tests of the marker task, the model, trajectory recording and the execution-manifold command."""
import json
import os

import numpy as np
import pytest
import torch

from validate import execution_manifold as em
from validate.modular import (MarkerTransformer, ModelConfig, TaskConfig, cross_entropy_and_accuracy, probe_sets,
                              sample_batch)
from validate.trajectory import TrainConfig, TrajectoryRecorder, train_with_snapshots

torch.set_num_threads(1)


# ---------------------------------------------------------------- task ------------------------------------

@pytest.mark.parametrize("m", [1, 3, 6])
def test_batch_follows_the_task_definition(m):
    task = TaskConfig(seq_len=16, markers=(m,), modulus=8)
    batch = sample_batch(task, m, torch.Generator().manual_seed(m), n_examples=64, shared_positions=False)
    tokens, positions = batch.tokens, batch.marker_positions
    rows = torch.arange(64)[:, None]
    assert positions.min() >= 1 and positions.max() <= task.seq_len - 2
    if m > 1:
        assert torch.all(torch.diff(positions, dim=1) >= 2)  # a value never lands on the next marker
    assert torch.equal(tokens[rows, positions], (task.marker_offset + torch.arange(m)).expand(64, m))
    values = tokens[rows, positions + 1]
    assert values.min() >= 0 and values.max() < task.modulus
    assert torch.equal(batch.labels, values.sum(dim=1) % task.modulus)
    distractors = tokens[~batch.target_mask]
    assert torch.all(distractors >= task.modulus)  # no value tokens among distractors
    assert not torch.any(torch.isin(distractors, task.marker_offset + torch.arange(m)))
    assert batch.target_mask.sum() == 64 * 2 * m


def test_training_batches_share_positions_and_probes_do_not():
    task = TaskConfig()
    train_batch = sample_batch(task, 3, torch.Generator().manual_seed(0))
    assert torch.all(train_batch.marker_positions == train_batch.marker_positions[0])
    probes = probe_sets(task, seed=0)
    assert sorted(probes) == [1, 2, 3, 4]
    assert len(torch.unique(probes[3].marker_positions, dim=0)) > 1
    again = probe_sets(task, seed=0)
    assert all(torch.equal(probes[m].tokens, again[m].tokens) for m in probes)  # fixed probe sets


def test_schedules():
    g = torch.Generator().manual_seed(0)
    mixed = TaskConfig(markers=(1, 2, 3, 4))
    drawn = {mixed.markers_at_step(s, g) for s in range(200)}
    assert drawn == {1, 2, 3, 4}
    curriculum = TaskConfig(markers=(1, 2, 3), schedule="curriculum", steps_per_stage=10)
    assert [curriculum.markers_at_step(s, g) for s in (0, 9, 10, 25, 99)] == [1, 1, 2, 3, 3]


# ---------------------------------------------------------------- model -----------------------------------

def test_parameter_counts_match_the_reference():
    # reference section 2.2: P = 367,624 without the unused MLPs and 1,026,184 with them (code's model)
    config = ModelConfig.for_task(TaskConfig())
    count = lambda c: sum(p.numel() for p in MarkerTransformer(c).parameters())
    assert count(config) == 367_624
    assert count(ModelConfig.for_task(TaskConfig(), mlp="unused")) == 1_026_184
    assert count(ModelConfig.for_task(TaskConfig(), mlp="on")) == 1_026_184 + 5 * 256  # plus a pre-MLP LayerNorm


def test_attention_blocks_are_the_qkv_split_and_attention_is_causal():
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=8, n_classes=5, vocab_size=120)
    model = MarkerTransformer(config)
    blocks = model.attention_weights()
    assert len(blocks) == 8 and all(b.shape == (32, 32) for b in blocks.values())
    qkv = model.blocks[1].attention.qkv.weight
    assert torch.equal(torch.cat([blocks["L1.W_Q"], blocks["L1.W_K"], blocks["L1.W_V"]]), qkv)
    tokens = torch.randint(0, 120, (3, 8))
    out = model(tokens, return_attention=True)
    for attention in out.attention:
        assert torch.allclose(attention.sum(-1), torch.ones(3, 4, 8))
        assert torch.all(attention.triu(diagonal=1) == 0)
    one_hot = model(tokens, return_attention=True, top_k=1).attention[0]
    assert torch.all((one_hot == 0) | (one_hot == 1))
    unused = MarkerTransformer(ModelConfig(**{**config.__dict__, "mlp": "unused"}))
    unused.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=False)
    assert torch.allclose(unused(tokens).logits, model(tokens).logits)  # the unused MLP is never called


# ---------------------------------------------------------------- trajectory ------------------------------

def test_snapshots_are_copies_on_cpu():
    # the released code's W.detach().cpu() returns the live parameter on CPU (reference section 3, item 11)
    weight = torch.nn.Parameter(torch.zeros(3))
    assert weight.detach().cpu().data_ptr() == weight.data_ptr()
    task = TaskConfig(batch_size=16)
    config = ModelConfig.for_task(task, n_layers=1, d_model=16, n_heads=2)
    run = train_with_snapshots(task, config, TrainConfig(steps=4, snapshot_every=2, lr=1e-2))
    assert list(run.snapshot_steps) == [0, 2, 4]
    for name, trajectory in run.trajectories.items():
        assert trajectory.shape == (3, 16 * 16)
        assert not np.array_equal(trajectory[0], trajectory[1]), name
        assert not np.array_equal(trajectory[1], trajectory[2]), name
        np.testing.assert_array_equal(trajectory[-1], run.model.attention_weights()[name].detach().numpy().ravel())


def test_recorder_keeps_old_values_after_in_place_updates():
    weight = torch.nn.Parameter(torch.ones(2, 2))
    recorder = TrajectoryRecorder(lambda: {"W": weight})
    recorder.record(0)
    with torch.no_grad():
        weight.add_(1.0)
    recorder.record(1)
    np.testing.assert_array_equal(recorder.trajectories()["W"], [[1, 1, 1, 1], [2, 2, 2, 2]])


def test_training_is_seeded_and_both_optimizers_learn_something():
    task = TaskConfig(batch_size=32, markers=(1,))
    config = ModelConfig.for_task(task, n_layers=1, d_model=32, n_heads=2)
    runs = [train_with_snapshots(task, config, TrainConfig(steps=60, snapshot_every=30, lr=3e-3, seed=3))
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].loss, runs[1].loss)
    np.testing.assert_array_equal(runs[0].trajectories["L0.W_Q"], runs[1].trajectories["L0.W_Q"])
    sgd = train_with_snapshots(task, config, TrainConfig(steps=60, snapshot_every=30, optimizer="sgd", lr=0.1))
    for run in (runs[0], sgd):
        assert np.isfinite(run.loss).all()
        assert run.loss[-10:].mean() < run.loss[:10].mean()  # loss falls from chance (ln 8) within 60 steps


# ---------------------------------------------------------------- configuration errors --------------------

@pytest.mark.parametrize("make, message", [
    (lambda: TaskConfig(markers=(8,)), "markers"),
    (lambda: TaskConfig(modulus=1), "modulus"),
    (lambda: TaskConfig(schedule="random"), "schedule"),
    (lambda: ModelConfig(d_model=30, n_heads=4), "divisible"),
    (lambda: ModelConfig(mlp="maybe"), "mlp"),
    (lambda: TrainConfig(optimizer="adam"), "optimizer"),
    (lambda: TrainConfig(steps=10, snapshot_every=20), "snapshot_every"),
    (lambda: em.ExperimentConfig(steps=100, snapshot_every=50), "snapshots"),
    (lambda: em.ExperimentConfig(seeds=(1, 1)), "seeds"),
    (lambda: em.ExperimentConfig(markers=(1, 9)), "markers"),
])
def test_bad_configuration_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("argv", [["--markers", "1,9"], ["--optimizer", "adam"], ["--steps", "10"],
                                  ["--markers", "a,b"], ["--window", "1"]])
def test_cli_bad_input_exits_2_with_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        em.main(argv + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- the command, end to end -----------------

TINY = ["--steps", "60", "--snapshot-every", "10", "--seeds", "0", "1", "--layers", "1", "--d-model", "16",
        "--heads", "2", "--batch-size", "32", "--null-draws", "20", "--window", "4", "--sweep-max-markers", "2",
        "--sweep-moduli", "", "--difficulty-seeds", "1", "--lr", "3e-3", "--quiet"]


def test_command_writes_claims_json_and_figures_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert em.main(TINY + ["--out", out]) == 0
    printed = capsys.readouterr().out
    assert "verdict" in printed and "C1 dimension 3-4" in printed
    with open(os.path.join(out, "execution_manifold.json")) as f:
        record = json.load(f)
    claims = {row["claim"] for row in record["claims"]}
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6"):
        rows = [r for r in record["claims"] if r["claim"].startswith(claim)]
        assert len(rows) >= 2, claim  # the paper-faithful figure and the null-corrected one
        assert all(r["verdict"] in ("PASS", "FAIL") for r in rows)
    assert "C2 robust across m and C" in claims
    assert record["config"]["seeds"] == [0, 1]
    for name in record["figures"]:
        assert os.path.getsize(os.path.join(out, name)) > 10_000
    # a rerun reads every (setting, seed) from the SQLite store and reproduces the same numbers
    assert em.main(TINY + ["--out", out]) == 0
    with open(os.path.join(out, "execution_manifold.json")) as f:
        again = json.load(f)
    assert again["claims"] == record["claims"]
    assert again["timings"]["train_seconds_per_run"] == record["timings"]["train_seconds_per_run"]
    # a fresh run in another directory recomputes them identically (same command + seed = same numbers)
    other = str(tmp_path / "other")
    assert em.main(TINY + ["--out", other]) == 0
    with open(os.path.join(other, "execution_manifold.json")) as f:
        fresh = json.load(f)
    assert fresh["claims"] == record["claims"]
    assert fresh["metrics"]["r90_mean_per_block"] == record["metrics"]["r90_mean_per_block"]
