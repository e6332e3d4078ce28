"""Batched training of the phase-diagram grid against the sequential loop, and its FLOP rate.

One run measures, on this machine:
  1. the default grid's models (every (point, seed) of `python -m validate.phase_diagram`'s defaults: same
     model, batch of sequences, task, workers and threads) trained for a few steps exactly the way the
     command does it: validate._common.sweep over the local worker processes, ``models_per_batch`` models
     trained together per task as one stacked module (validate._signal_prop.batched_train.train_batched);
  2. the same models, same steps, same sweep and workers, but one model per task trained through its own
     forward (train_sequential): the sequential loop, the baseline;
  3. a dense fp32 1024^3 matmul in each worker process at the same thread count, summed over the workers:
     this machine's attainable dense-matmul FLOP rate for that process layout.
Rows: the batched speed-up (sequential time / batched time), and the batched FLOP rate (FLOPs of one
training step counted by torch.utils.flop_counter, times steps, over the batched wall time) as a fraction of
the matmul rate. Both sides of each ratio run in the same run, on the same warm worker pool; on a shared
machine the contention hits both (best of ``repeats``).

``python -m benchmarks.bench_phase_diagram --profile`` prints where a model-step's time goes instead
(profile): README's table behind the speed-up.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import torch

from validate._common.sweep import SweepStore, make_executor, run_sweep
from validate._signal_prop.batched_train import (TrainPoints, params_at, train_batched, train_sequential,
                                                 training_step_flops)
from validate._signal_prop.phase_experiment import PhaseDiagramConfig


def dense_matmul_flop_rate(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of a dense fp32 size^3 matmul with ``threads`` torch threads (best of 5 timed bursts)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            a @ b
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start))
    return best


def _concurrent_matmul_rate(pool, workers: int, threads: int) -> float:
    """All workers time the matmul at once (as they train at once); their rates add up."""
    futures = [pool.submit(dense_matmul_flop_rate, threads) for _ in range(workers)]
    return sum(f.result() for f in futures)


def _timed_sweep(task, points, seeds, pool, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        store = SweepStore(f"{scratch}/bench.sqlite", "bench")
        start = time.perf_counter()
        run_sweep(task, points, seeds, store, batch_size=batch_size, executor=pool)
        return time.perf_counter() - start


def run(quick: bool = False) -> list[dict]:
    cfg = PhaseDiagramConfig()
    steps, repeats = (2, 1) if quick else (8, 2)
    points = cfg.train_points()[:6] if quick else cfg.train_points()
    seeds = list(cfg.seeds)
    # a few steps and a tiny test set: the benchmark times training steps, which is what a sweep spends
    train = dataclasses.replace(cfg.train, steps=steps, eval_every=steps, test_size=8)
    batched = TrainPoints(cfg.base, train)
    sequential = TrainPoints(cfg.base, train, sequential=True)
    workers = max(cfg.workers, 1)
    batch_size = min(cfg.models_per_batch, len(points) * len(seeds))

    with make_executor(max_workers=workers) as pool:
        warm = dataclasses.replace(train, steps=1)    # spawn + import + first-call costs, paid before timing
        _timed_sweep(TrainPoints(cfg.base, warm), points[:workers], seeds[:1], pool, 1)
        batched_s = sequential_s = float("inf")
        matmul_rate = 0.0
        for _ in range(repeats):
            matmul_rate = max(matmul_rate, _concurrent_matmul_rate(pool, workers, train.threads))
            batched_s = min(batched_s, _timed_sweep(batched, points, seeds, pool, batch_size))
            sequential_s = min(sequential_s, _timed_sweep(sequential, points, seeds, pool, 1))

    n_models = len(points) * len(seeds)
    sizes = [min(batch_size, n_models - i) for i in range(0, n_models, batch_size)]
    torch.set_num_threads(train.threads)
    flops_per_size = {m: training_step_flops(m, train) for m in set(sizes)}
    flops = steps * sum(flops_per_size[m] for m in sizes)
    achieved = flops / batched_s
    shape = (f"{n_models} models (depth {train.depth}, width {train.width}, d_ff {train.d_ff}, "
             f"{train.batch}x{train.task.n_tokens} tokens/step), {steps} steps, {workers} workers x "
             f"{train.threads} thread(s)")
    rows = [
        {"name": "phase_diagram: batched (stacked) training vs sequential loop",
         "baseline": f"sequential {sequential_s:.2f} s", "ratio": sequential_s / batched_s,
         "detail": f"batched {batched_s:.2f} s ({batch_size} models per task); {shape}"},
        {"name": "phase_diagram: batched training FLOP rate / dense matmul FLOP rate",
         "baseline": f"matmul 1024^3 {matmul_rate / 1e9:.1f} GFLOP/s ({workers} workers x {train.threads} "
                     "thread(s))",
         "ratio": achieved / matmul_rate,
         "detail": f"batched {achieved / 1e9:.1f} GFLOP/s ({flops / 1e9:.1f} GFLOP counted by FlopCounterMode, "
                   "forward + backward, optimizer and evaluation not counted)"},
    ]
    for row in rows:
        print(f"{row['name']}: ratio {row['ratio']:.2f} (baseline {row['baseline']}; {row['detail']})")
    return rows


_MATMULS = {"aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::mm", "aten::addmm", "aten::matmul"}


def _profiled_step_ms(trainer, points: list, seeds: list, train) -> dict:
    """Per model and training step, one process: unprofiled wall time, and a torch.profiler split of a
    second, profiled run into matmul kernels, the optimizer, all other ATen ops, and the rest (Python,
    autograd, dispatch: wall minus every op's self time)."""
    from torch.profiler import ProfilerActivity, profile

    args = ([params_at(PhaseDiagramConfig().base, p) for p in points], seeds, train)
    trainer(*args)                                   # first-call costs
    model_steps = len(seeds) * train.steps
    start = time.perf_counter()
    trainer(*args)
    wall = (time.perf_counter() - start) * 1e3 / model_steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer(*args)
        profiled_wall = (time.perf_counter() - start) * 1e3 / model_steps
    events = prof.key_averages()   # times in microseconds
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / model_steps for e in events}
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")) / 1e3 / model_steps
    matmuls = sum(v for k, v in self_ms.items() if k in _MATMULS)
    ops = sum(v for k, v in self_ms.items() if k.startswith("aten::"))
    return {"wall": wall, "profiled wall": profiled_wall, "matmuls": matmuls, "optimizer": optimizer,
            "other ATen ops": ops - matmuls - optimizer, "Python, autograd, dispatch": profiled_wall - ops}


def profile(models: int = 12, steps: int = 20) -> list[dict]:
    """README's table: where one model-step goes, sequential loop against the stacked module (one thread)."""
    cfg = PhaseDiagramConfig()
    train = dataclasses.replace(cfg.train, steps=steps, eval_every=steps, test_size=8, threads=1)
    items = [(p, s) for p in cfg.train_points() for s in cfg.seeds][:models]
    points, seeds = [p for p, _ in items], [s for _, s in items]
    rows = [{"path": "sequential loop", **_profiled_step_ms(train_sequential, points, seeds, train)},
            {"path": f"stacked, {models} models", **_profiled_step_ms(train_batched, points, seeds, train)}]
    keys = ["matmuls", "other ATen ops", "optimizer", "Python, autograd, dispatch", "profiled wall", "wall"]
    print("ms per model and training step (one process, one thread; profiled columns from a second run)")
    print("| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['path']} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    return rows


if __name__ == "__main__":  # the flags of `python -m benchmarks`, for this benchmark alone
    import sys

    from benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks(only="phase_diagram"))
