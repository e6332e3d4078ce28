"""Speed of the execution-manifold experiment: the random-walk null model (N1) and the training of the paper's model.

Null model. Claim: a null draw from the Wishart (Bartlett) Gram matrix costs O(n^3) whatever the block size D, while
the direct way (draw n-1 isotropic increments in R^D, rescale to the observed norms, form their Gram matrix) costs
O(n^2 D). Both then take the same (n x n) spectrum, and tests/test_geometry.py checks that they give the same
distribution. Baseline: the direct draw, measured in the same run.

Training. The paper-sized model (Xu 2026's released run: 5 attention-only layers, d = 128, 4 heads, batch 128 x
T = 16 tokens, AdamW): model-steps per second of validate._execution_manifold.stacked_training.train_stacked (one
seed, and five seeds stacked) against the plain loop, trajectory.train_with_snapshots (MarkerTransformer, autograd,
torch.optim.AdamW), both timed in the same run, and each as a fraction of this machine's dense float32 matmul rate
(one (B T, d) x (d, 3d) matmul, the qkv projection's shape), all on one thread. Times are the thread's CPU time
(time.thread_time): a machine shared with other jobs deschedules this process, which CPU time does not count (their
contention for caches and memory still slows it); on a quiet machine it is the wall time of one thread. The paths
are timed in turns (plain, stacked, stacked x5, matmul; repeated); a ratio is the median of the ratios within a turn.

FLOPs per training step: the matmul FLOPs of the plain forward, times 3 (the backward computes, for every matmul,
the gradient with respect to each of its two operands, each as many FLOPs as the forward one). Forward, with
N = B T tokens: per layer 2 N d (3d) for the qkv projection, 2 N d d for the output projection, 2 (2 B H T^2
d_head) for the scores and the attention-weighted values; the head 2 B d C. At the paper's sizes 4.28 GFLOP per
step, equal to torch's FlopCounterMode count of the plain module's forward and backward (checked in every run).
The stacked path skips the last layer's work at the positions the readout does not read (about 10% of the FLOPs),
so its fraction counts the plain model's FLOPs per step: the same work, per second, in the plain model's units.
`--profile` prints where a step's time goes in either path.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from validate._execution_manifold import geometry as geo
from validate._execution_manifold.modular import (MarkerTransformer, ModelConfig, cross_entropy_and_accuracy,
                                                  probe_sets, sample_batch)
from validate._execution_manifold.part_one import probe_attention
from validate._execution_manifold.stacked_training import StackedMarkerTransformers, _optimizer, train_stacked
from validate._execution_manifold.trajectory import (RunConfig, TrajectoryRecorder, make_optimizer,
                                                     train_with_snapshots)


def _direct_null_gram(gram, ambient_dim, rng):
    norms = np.sqrt(np.diag(gram))
    increments = rng.standard_normal((len(norms), ambient_dim))
    increments *= (norms / np.linalg.norm(increments, axis=1))[:, None]
    return increments @ increments.T


def _time_per_draw(draw, n_draws) -> float:
    start = time.perf_counter()
    for _ in range(n_draws):
        geo.trajectory_statistics(draw())
    return (time.perf_counter() - start) / n_draws


def _null_model_rows(quick: bool) -> list[dict]:
    rows = []
    n_snapshots = 41  # the released code's 20,000 steps / 500 + 1
    # one attention block of the paper's model (128 x 128) and all 20 of them jointly
    for ambient_dim in ((16_384,) if quick else (16_384, 327_680)):
        rng = np.random.default_rng(0)
        observed = geo.increment_gram(np.cumsum(rng.standard_normal((n_snapshots, 64)), axis=0))
        n_draws = 5 if quick or ambient_dim > 100_000 else 20
        direct = _time_per_draw(lambda: _direct_null_gram(observed, ambient_dim, rng), n_draws)
        bartlett = _time_per_draw(lambda: geo.null_increment_gram(observed, "random_walk", ambient_dim, rng),
                                  4 * n_draws)
        rows.append({"name": f"random-walk null draw, D={ambient_dim}, n={n_snapshots}",
                     "baseline": "explicit Gaussian increments in R^D", "ratio": direct / bartlett,
                     "detail": f"direct {direct * 1e3:.2f} ms, Bartlett {bartlett * 1e3:.2f} ms per draw "
                               f"(incl. the shared spectrum)"})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Training of the paper-sized model
# ----------------------------------------------------------------------------------------------------------

def training_step_flops(model_config: ModelConfig, batch_size: int) -> int:
    """Matmul FLOPs of one training step of the plain MarkerTransformer (attention-only): 3 x the forward's."""
    B, T, d, H = batch_size, model_config.seq_len, model_config.d_model, model_config.n_heads
    N = B * T
    per_layer = 2 * N * d * 3 * d + 2 * N * d * d + 2 * 2 * B * H * T * T * (d // H)
    return 3 * (model_config.n_layers * per_layer + 2 * B * d * model_config.n_classes)


def _counted_flops(run: RunConfig) -> int:
    """torch's FlopCounterMode count of one plain forward and backward (matmuls), to check training_step_flops."""
    from torch.utils.flop_counter import FlopCounterMode

    task = run.task_config()
    model = MarkerTransformer(run.model_config(task))
    batch = sample_batch(task, 1, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        cross_entropy_and_accuracy(model, batch)[0].backward()
    return counter.get_total_flops()


def _cpu_seconds(function) -> float:
    start = time.thread_time()
    function()
    return time.thread_time() - start


def _matmul_rate(run: RunConfig, repeats: int = 20) -> float:
    """FLOP/s of one float32 (B T, d) x (d, 3d) matmul (the qkv projection's shape), this thread."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(run.batch_size * run.seq_len, run.d_model, generator=generator)
    b = torch.randn(run.d_model, 3 * run.d_model, generator=generator)
    a @ b

    def matmuls():
        for _ in range(repeats):
            a @ b
    return repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1] / _cpu_seconds(matmuls)


def _training_seconds_per_model_step(run: RunConfig, n_models: int, plain: bool) -> float:
    """CPU seconds per model and step of the whole training function (initialization, the first and last
    snapshot and the data included), seeds 0..n_models-1."""
    task = run.task_config()
    model_config = run.model_config(task)
    if plain:
        seconds = _cpu_seconds(lambda: [train_with_snapshots(task, model_config, run.train_config(seed))
                                        for seed in range(n_models)])
    else:
        seconds = _cpu_seconds(lambda: train_stacked(task, model_config,
                                                     [run.train_config(seed) for seed in range(n_models)]))
    return seconds / (n_models * run.steps)


def _training_rows(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    steps, repeats, stacked_seeds = (2, 1, 2) if quick else (20, 5, 5)
    run = RunConfig(steps=steps, snapshot_every=steps)  # the paper-sized model; one snapshot before, one after
    flops = training_step_flops(run.model_config(run.task_config()), run.batch_size)
    counted = _counted_flops(run)
    if counted != flops:
        raise RuntimeError(f"training_step_flops gives {flops}, FlopCounterMode counts {counted}")
    times = {"plain": [], "stacked": [], "stacked_many": [], "matmul": []}
    _training_seconds_per_model_step(RunConfig(steps=1, snapshot_every=1), 1, plain=False)  # first-call costs
    for _ in range(repeats):
        times["plain"].append(_training_seconds_per_model_step(run, 1, plain=True))
        times["stacked"].append(_training_seconds_per_model_step(run, 1, plain=False))
        times["stacked_many"].append(_training_seconds_per_model_step(run, stacked_seeds, plain=False))
        times["matmul"].append(1 / _matmul_rate(run))  # seconds per FLOP
    plain, stacked, many, per_flop = (statistics.median(times[k]) for k in times)
    rate = 1 / per_flop

    def paired(numerator, denominator):
        """The median over repeats of a ratio of two times taken in the same repeat (load drifts between them)."""
        return statistics.median(n / d for n, d in zip(times[numerator], times[denominator]))
    shape = (f"paper-sized model (5 layers, d 128, batch 128 x T 16, AdamW), {flops / 1e9:.2f} GFLOP per step, "
             f"one thread, CPU time, median of {repeats} x {steps} steps")
    rows = [
        {"name": "paper-sized step: stacked (1 seed) vs plain", "ratio": paired("plain", "stacked"),
         "baseline": f"plain loop {1 / plain:.1f} model-steps/s",
         "detail": f"stacked {1 / stacked:.1f} model-steps/s; {shape}"},
        {"name": f"paper-sized step: {stacked_seeds} seeds stacked vs plain", "ratio": paired("plain", "stacked_many"),
         "baseline": f"plain loop {1 / plain:.1f} model-steps/s",
         "detail": f"{stacked_seeds} seeds stacked {1 / many:.1f} model-steps/s; {shape}"},
        {"name": "paper-sized step, plain: share of matmul rate", "ratio": flops * paired("matmul", "plain"),
         "baseline": f"dense float32 matmul {rate / 1e9:.1f} GFLOP/s",
         "detail": f"plain loop {flops / plain / 1e9:.1f} GFLOP/s; {shape}"},
        {"name": "paper-sized step, stacked: share of matmul rate", "ratio": flops * paired("matmul", "stacked"),
         "baseline": f"dense float32 matmul {rate / 1e9:.1f} GFLOP/s",
         "detail": f"stacked {flops / stacked / 1e9:.1f} GFLOP/s (the plain model's FLOPs per step); {shape}"},
    ]
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = _null_model_rows(quick) + _training_rows(quick)
    for row in rows:
        print(f"{row['name']}: {row['ratio']:.2f}x {row['baseline']} ({row['detail']})")
    return rows

_MATMULS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_"}
_COPIES = {"aten::copy_", "aten::cat", "aten::clone", "aten::stack", "aten::contiguous"}


_ADD_MATMULS = {"aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_"}  # input 0 is the added term


def _forward_backward_split(forward_backward, n_calls: int, attention_batch: int, repeats: int = 3) -> dict:
    """Fractions of profiled runs of forward_backward(i) (i = 0..n_calls-1; repeats runs pooled): matmuls of the
    projections and of the attention (a 3-D matmul over >= attention_batch = B H small matrices), copies and
    concatenations, LayerNorm and softmax, the other ATen ops, and the rest (Python, autograd, dispatch: wall
    minus ops). torch.profiler's times are wall times: on a loaded machine the runs are pooled to average out
    the moments this process waits."""
    from torch.profiler import ProfilerActivity, profile

    forward_backward(0)
    split = dict.fromkeys(("projection matmuls", "attention matmuls", "copies, concatenations",
                           "LayerNorm, softmax", "other ATen ops"), 0.0)
    wall = 0.0
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            start = time.perf_counter()
            for i in range(n_calls):
                forward_backward(i)
            wall += (time.perf_counter() - start) * 1e6  # profiler times are in microseconds
        for event in profiler.key_averages(group_by_input_shape=True):
            name, shapes = event.key, [s for s in event.input_shapes if s]
            if name in _MATMULS:
                operand = shapes[1] if name in _ADD_MATMULS else shapes[0]
                attention = len(operand) == 3 and operand[0] >= attention_batch
                split["attention matmuls" if attention else "projection matmuls"] += event.self_cpu_time_total
            elif name in _COPIES:
                split["copies, concatenations"] += event.self_cpu_time_total
            elif "layer_norm" in name or "softmax" in name:
                split["LayerNorm, softmax"] += event.self_cpu_time_total
            elif name.startswith("aten::"):
                split["other ATen ops"] += event.self_cpu_time_total
    split["Python, autograd, dispatch"] = max(0.0, wall - sum(split.values()))
    return {key: value / wall for key, value in split.items()}


def profile(n_steps: int = 10, stacked_seeds: int = 1) -> list[dict]:
    """README's table: where a training step of the paper-sized model goes, plain loop against the stacked path
    (CPU milliseconds per model-step, one thread). Data, optimizer and a snapshot with part one's attention probes
    (one per 500 steps) are timed apart; the forward and backward are timed, then split in the proportions of
    further, profiled runs (torch.profiler; its own overhead lands in "Python, autograd, dispatch")."""
    torch.set_num_threads(1)
    run = RunConfig()
    task = run.task_config()
    model_config = run.model_config(task)
    train = run.train_config(0)
    seeds = list(range(stacked_seeds))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def draw(step, generator):
        return sample_batch(task, task.markers_at_step(step, generator), generator)

    batches = [[draw(step, generator) for generator in generators] for step in range(n_steps)]
    probes = probe_sets(task, 0)

    torch.manual_seed(0)
    model = MarkerTransformer(model_config)
    optimizer = make_optimizer(model, train)

    def plain_forward_backward(i):
        optimizer.zero_grad(set_to_none=True)
        cross_entropy_and_accuracy(model, batches[i][0])[0].backward()

    def plain_snapshot():
        TrajectoryRecorder(model.attention_weights).record(0)
        probe_attention(model, probes, (8, 4, 2, 1))

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(MarkerTransformer(model_config))
    stack = StackedMarkerTransformers(models)
    stacked_optimizer = _optimizer(stack.parameters(), train)
    tokens = [torch.stack([b.tokens for b in step]) for step in batches]
    labels = [torch.stack([b.labels for b in step]) for step in batches]

    def stacked_forward_backward(i):
        stacked_optimizer.zero_grad(set_to_none=True)
        logits = stack(tokens[i])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[i].flatten(), reduction="none")
        loss.view(labels[i].shape).mean(1).sum().backward()

    def stacked_snapshot():
        for index in seeds:
            TrajectoryRecorder(lambda: stack.attention_weights(index)).record(0)
            probe_attention(stack.copy_into(models[index], index), probes, (8, 4, 2, 1))

    paths = {"plain loop": (plain_forward_backward, optimizer, plain_snapshot, 1),
             f"stacked, {stacked_seeds} seed(s)": (stacked_forward_backward, stacked_optimizer, stacked_snapshot,
                                                 stacked_seeds)}
    rows = []
    for path, (forward_backward, path_optimizer, snapshot, n_models) in paths.items():
        per_model_step = 1e3 / (n_steps * n_models)  # CPU seconds of n_steps steps -> ms per model-step
        data = _cpu_seconds(lambda: [draw(step, generator) for step in range(n_steps) for generator in
                                     [torch.Generator().manual_seed(seed) for seed in range(n_models)]])
        forward_backward(0)
        compute = _cpu_seconds(lambda: [forward_backward(i) for i in range(n_steps)])
        step = _cpu_seconds(lambda: [path_optimizer.step() for _ in range(n_steps)])
        probe = _cpu_seconds(snapshot) / train.snapshot_every  # one snapshot every snapshot_every steps
        split = _forward_backward_split(forward_backward, n_steps, run.batch_size * run.n_heads)
        row = {"path": path, "data": data * per_model_step}
        row.update({key: fraction * compute * per_model_step for key, fraction in split.items()})
        row.update({"optimizer": step * per_model_step, "snapshot, probes": probe * n_steps * per_model_step})
        row["total"] = sum(v for k, v in row.items() if k != "path")
        rows.append(row)
    keys = [k for k in rows[0] if k != "path"]
    print("CPU ms per model-step of the paper-sized model, one thread (snapshot and probes: one per 500 steps)")
    print("| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['path']} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    return rows


if __name__ == "__main__":  # the flags of `python -m benchmarks`, for this benchmark alone
    import sys

    from benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks(only="execution_manifold"))
