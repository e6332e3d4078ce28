"""Tests of the marker task, the model, trajectory recording and the execution-manifold command."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from validate import execution_manifold as em
from validate._common import cli
from validate._execution_manifold import part_one, part_two
from validate._execution_manifold.modular import MarkerTransformer, ModelConfig, TaskConfig, probe_sets, sample_batch
from validate._execution_manifold.part_one import PartOneConfig
from validate._execution_manifold.part_two import PartTwoConfig
from validate._execution_manifold.trajectory import RunConfig, TrainConfig, TrajectoryRecorder, train_with_snapshots

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

def test_parameter_counts_match_the_released_code():
    # P of the released code's BubbleTransformer (5 layers, d = 128): 1,026,184 with its never-called MLPs,
    # 367,624 without them
    config = ModelConfig.for_task(TaskConfig())
    count = lambda c: sum(p.numel() for p in MarkerTransformer(c).parameters())
    assert count(config) == 367_624
    assert count(ModelConfig.for_task(TaskConfig(), mlp="unused")) == 1_026_184
    assert count(ModelConfig.for_task(TaskConfig(), mlp="on")) == 1_026_184 + 5 * 256  # plus a pre-MLP LayerNorm
    for mlp in ("none", "on", "unused"):  # the count without building the model (the memory check uses it)
        for config in (ModelConfig.for_task(TaskConfig(), mlp=mlp), ModelConfig(n_layers=2, d_model=12, n_heads=3,
                                                                                 vocab_size=50, d_mlp=7, mlp=mlp)):
            assert config.n_parameters == count(config), (mlp, config)


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
    # the released code's W.detach().cpu() returns the live parameter on CPU: its snapshots are not copies
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
    (lambda: RunConfig(markers=(1, 9)), "markers"),
    (lambda: RunConfig(optimizer="adam"), "optimizer"),
    (lambda: RunConfig(threads=0), "threads"),
    (lambda: PartOneConfig(run=RunConfig(steps=100, snapshot_every=50)), "snapshots"),
    (lambda: PartOneConfig(seeds=(1, 1)), "seeds"),
    (lambda: PartTwoConfig(run=RunConfig(steps=400, snapshot_every=50)), "snapshots"),
    (lambda: PartTwoConfig(sae_k=999), "sae_k"),
])
def test_bad_configuration_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_run_config_takes_the_learning_rate_and_decay_of_its_optimizer():
    assert (RunConfig().lr, RunConfig().weight_decay) == (3e-4, 0.01)  # the released code's AdamW
    assert (RunConfig(optimizer="sgd").lr, RunConfig(optimizer="sgd").weight_decay) == (1e-3, 0.0)  # paper text
    assert RunConfig(optimizer="sgd", lr=0.1).lr == 0.1


def test_part_two_trains_the_first_seed_of_part_one_with_the_codes_unused_mlps():
    one = PartOneConfig(run=RunConfig(steps=600, snapshot_every=50, n_layers=2), seeds=(3, 4), window=6)
    two = PartTwoConfig.from_part_one(one, sae_d=64)
    assert two.seed == 3 and two.window == 6 and two.sae_d == 64
    assert two.run == RunConfig(steps=600, snapshot_every=50, n_layers=2, mlp="unused")
    assert PartTwoConfig.from_part_one(one, mlp="none").run == one.run


def test_store_names_are_those_of_the_stores_written_before_the_configs_were_nested():
    """The --quick configurations name their sweeps as before (fingerprints read from a store of the earlier
    layout), so existing stores resume instead of training again."""
    one, two = em.build_configs(cli.parse(em.build_parser(), ["--quick"], quick=em.QUICK))
    assert one.fingerprint() == "6a5e2bbd3dce6d18"
    assert two.fingerprint() == "9974f448846be2ea"
    assert PartOneConfig(run=RunConfig(device="cpu", threads=4)).fingerprint() == PartOneConfig().fingerprint()


@pytest.mark.parametrize("argv", [["--markers", "1", "9"], ["--optimizer", "adam"], ["--steps", "10"],
                                  ["--markers", "a", "b"], ["--markers", "1,2"], ["--window", "1"]])
def test_cli_bad_input_exits_2_with_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        em.main(argv + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- the command, end to end -----------------

TINY = ["--part", "one", "--steps", "60", "--snapshot-every", "10", "--seeds", "0", "1", "--n-layers", "1",
        "--d-model", "16", "--n-heads", "2", "--batch-size", "32", "--null-draws", "20", "--window", "4",
        "--sweep-max-markers", "2", "--sweep-moduli", "--difficulty-seeds", "1", "--lr", "3e-3", "--quiet"]
VERDICT_KEYS = {"claim", "measure", "quantity", "prediction", "measurement", "tolerance", "verdict"}


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_command_writes_verdicts_json_and_figures_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert em.main(TINY + ["--out", out]) == 0
    printed = capsys.readouterr().out
    assert "verdict" in printed and "C1 dimension 3-4" in printed
    record = _read(os.path.join(out, "execution_manifold.json"))
    assert record["command"] == "execution_manifold" and record["parts"] == ["one"]
    claims = {row["claim"] for row in record["verdicts"]}
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6"):
        rows = [r for r in record["verdicts"] if r["claim"].startswith(claim)]
        assert {r["measure"] for r in rows} == {"paper", "null"}, claim  # the paper's measure and the corrected one
        assert all(r["verdict"] in ("PASS", "FAIL") for r in rows)
    assert "C2 robust across m and C" in claims
    assert record["config"]["part_one"]["seeds"] == [0, 1] and record["config"]["part_one"]["run"]["n_layers"] == 1
    assert record["all_pass"] == all(r["verdict"] != "FAIL" for r in record["verdicts"])
    for name in record["figures"]:
        assert os.path.getsize(os.path.join(out, name)) > 10_000
    # a rerun reads every (setting, seed) from the SQLite store and reproduces the same numbers
    assert em.main(TINY + ["--out", out]) == 0
    again = _read(os.path.join(out, "execution_manifold.json"))
    assert again["verdicts"] == record["verdicts"]
    assert again["timings_s"]["train_per_run"] == record["timings_s"]["train_per_run"]
    # a fresh run in another directory recomputes them identically (same command + seed = same numbers)
    other = str(tmp_path / "other")
    assert em.main(TINY + ["--out", other]) == 0
    fresh = _read(os.path.join(other, "execution_manifold.json"))
    assert fresh["verdicts"] == record["verdicts"]
    assert fresh["metrics"]["part_one"]["r90_mean_per_block"] == record["metrics"]["part_one"]["r90_mean_per_block"]


# ---------------------------------------------------------------- both parts, one command -----------------

# part two needs >= 10 snapshots (min_basis_snapshots + 5); one seed, no difficulty sweep: part one is one run
TINY_BOTH = ["--steps", "60", "--snapshot-every", "6", "--seeds", "0", "--n-layers", "2", "--d-model", "16",
             "--n-heads", "2", "--batch-size", "32", "--null-draws", "20", "--window", "4", "--difficulty-seeds", "0",
             "--lr", "3e-3", "--commutator-samples", "2", "--sae-steps", "30", "--sae-examples", "256",
             "--sae-d", "16", "--sae-k", "4", "--ablation-sizes", "1", "2", "--quiet"]
PART_ONE_CLAIMS = ("C1", "C2", "C3", "C4", "C5", "C6")
PART_TWO_CLAIMS = ("C7", "C8", "C9", "C10", "C11", "C12")


def _claim_ids(record) -> set:
    """The claims of the table; "runs" rows count the diverged runs of each part."""
    return {row["claim"].split()[0] for row in record["verdicts"] if row["claim"] != "runs"}


def _part_rows(record, part: str, claims) -> list:
    """The rows of one part: its claims and its "runs" row."""
    return [r for r in record["verdicts"]
            if r["claim"].split()[0] in claims or (r["claim"] == "runs" and r["quantity"].startswith(part))]


def test_one_command_runs_both_parts_stores_part_two_and_resumes(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    computed = {"one": 0, "two": 0}
    run_one, run_two = part_one.SeedRun.run_one, part_two.run_part_two

    def counting_run_one(self, *args):
        computed["one"] += 1
        return run_one(self, *args)

    def counting_run_two(*args, **kwargs):
        computed["two"] += 1
        return run_two(*args, **kwargs)

    monkeypatch.setattr(part_one.SeedRun, "run_one", counting_run_one)
    monkeypatch.setattr(part_two, "run_part_two", counting_run_two)
    assert em.main(TINY_BOTH + ["--out", out]) == 0
    printed = capsys.readouterr().out
    assert printed.count("verdict") == 1 and "C1 dimension" in printed and "C7 commutator" in printed  # ONE table
    record = _read(os.path.join(out, "execution_manifold.json"))
    assert computed == {"one": 1, "two": 1}
    assert record["parts"] == ["one", "two"]
    assert _claim_ids(record) == set(PART_ONE_CLAIMS + PART_TWO_CLAIMS)
    assert [(r["quantity"].split()[:2], r["measurement"], r["verdict"]) for r in record["verdicts"]
            if r["claim"] == "runs"] == [(["part", "one"], "0 of 1", "PASS"), (["part", "two"], "0 of 1", "PASS")]
    assert record["divergence_policy"] and record["metrics"]["part_one"]["diverged"] == []
    assert all(set(row) == VERDICT_KEYS for row in record["verdicts"])
    assert {row["verdict"] for row in record["verdicts"]} <= {"PASS", "FAIL", "INFO"}
    config = record["config"]
    assert config["part_one"]["seeds"] == [0] and config["part_two"]["seed"] == 0
    assert config["part_two"]["run"]["mlp"] == "unused"  # the code's P for the whole-vector baseline
    assert config["part_two"]["sae_d"] == 16 and config["part_two"]["run"]["n_layers"] == 2
    assert "r90_mean_per_block" in record["metrics"]["part_one"] and "commutators" in record["metrics"]["part_two"]
    assert len(record["figures"]) == 5 and "execution_manifold_sae.png" in record["figures"]
    for name in record["figures"]:
        assert os.path.getsize(os.path.join(out, name)) > 10_000

    # a rerun reads both parts from the SQLite store: nothing is trained again, the same table comes out
    assert em.main(TINY_BOTH + ["--out", out]) == 0
    again = _read(os.path.join(out, "execution_manifold.json"))
    assert computed == {"one": 1, "two": 1}
    assert again["verdicts"] == record["verdicts"]
    assert again["timings_s"]["part_two_run"] == record["timings_s"]["part_two_run"]

    # each part alone, from the same store
    assert em.main(TINY_BOTH + ["--out", out, "--part", "one"]) == 0
    alone = _read(os.path.join(out, "execution_manifold.json"))
    assert alone["parts"] == ["one"] and _claim_ids(alone) == set(PART_ONE_CLAIMS)
    assert "part_two" not in alone["metrics"] and "part_two" not in alone["config"]
    assert em.main(TINY_BOTH + ["--out", out, "--part", "two"]) == 0
    alone = _read(os.path.join(out, "execution_manifold.json"))
    assert alone["parts"] == ["two"] and _claim_ids(alone) == set(PART_TWO_CLAIMS)
    assert alone["verdicts"] == _part_rows(record, "part two", PART_TWO_CLAIMS)
    assert computed == {"one": 1, "two": 1}

    # --fresh discards the stored row and computes again (a stand-in run here: test_run_part_two_smoke in
    # test_commutator.py checks that the same seed gives the same numbers)
    def stand_in(*args, **kwargs):
        computed["two"] += 1
        return record["metrics"]["part_two"]

    monkeypatch.setattr(part_two, "run_part_two", stand_in)
    assert em.main(TINY_BOTH + ["--out", out, "--part", "two", "--fresh"]) == 0
    assert computed == {"one": 1, "two": 2}
    assert _read(os.path.join(out, "execution_manifold.json"))["verdicts"] == alone["verdicts"]


def test_quick_applies_the_presets_of_both_parts_and_explicit_flags_win():
    parser = em.build_parser()
    one, two = em.build_configs(cli.parse(parser, ["--quick"], quick=em.QUICK))
    for dest, value in em.QUICK.items():
        holder = one if hasattr(one, dest) else one.run if hasattr(one.run, dest) else two
        assert getattr(holder, dest) == value, dest
    assert two.run == dataclasses.replace(one.run, mlp="unused")  # the same training, with the code's MLPs
    assert two.seed == one.seeds[0] and two.window == one.window
    one, two = em.build_configs(cli.parse(parser, ["--quick", "--sae-steps", "7", "--k-per-block", "r90",
                                                   "--n-layers", "3", "--sweep-moduli", "16"], quick=em.QUICK))
    assert two.sae_steps == 7 and two.k_per_block == "r90" and two.sae_d == em.QUICK["sae_d"]
    assert one.run.n_layers == two.run.n_layers == 3 and one.sweep_moduli == (16,)


def test_only_the_default_experiment_publishes_figures():
    parser = em.build_parser()
    default = lambda argv: em.is_default_experiment(cli.parse(parser, argv, quick=em.QUICK))
    assert default([]) and default(["--workers", "4", "--threads", "2", "--out", "elsewhere", "--quiet"])
    assert default(["--steps", "20000", "--lr", "3e-4"])  # the defaults, spelled out
    for argv in (["--quick"], ["--part", "one"], ["--seeds", "0", "1"], ["--sae-d", "128"], ["--lr", "1e-3"]):
        assert not default(argv), argv


@pytest.mark.parametrize("argv", [["--part", "three"], ["--k-per-block", "x"], ["--k-per-block", "0"],
                                  ["--commutator-samples", "0"], ["--sae-k", "999"], ["--ablation-sizes", "1", "x"],
                                  ["--steps", "400", "--snapshot-every", "50", "--window", "4"],  # part two: >= 10
                                  ["--commutator-lr", "-1"], ["--workers", "-1"]])
def test_part_two_bad_input_exits_2_with_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        em.main(argv + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    if "snapshots" in err:
        assert "part two:" in err and "--part one" in err  # says which part cannot run, and how to skip it
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_memory_problem_names_the_largest_need_and_checks_against_the_machine(monkeypatch):
    from validate._execution_manifold import memory
    one = PartOneConfig()
    needs = memory.memory_needed(one)
    total = sum(needs.values())
    assert memory.memory_problem(one, limit=total) is None
    line = memory.memory_problem(one, limit=total - 1)
    assert line.startswith("this run needs about") and max(needs, key=needs.get) in line
    monkeypatch.setattr(memory, "physical_memory", lambda: total - 1)   # the default limit is this machine's memory
    assert memory.memory_problem(one) == line
    monkeypatch.setattr(memory, "physical_memory", lambda: None)        # the system does not say: no check
    assert memory.memory_problem(one) is None
