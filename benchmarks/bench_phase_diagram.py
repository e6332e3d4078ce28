"""Batched training of the phase-diagram grid against the sequential loop, and its FLOP rate.

One run measures three things on this machine, with the same torch thread count:
  1. the default grid's models (validate.phase_diagram defaults: every (point, seed), default model, batch of
     sequences and task) trained for a few steps the way the command does it (validate.batched_train,
     ``models_per_batch`` models vmapped together, batch after batch);
  2. the same models, same steps, trained one after another (train_sequential): the baseline;
  3. a dense fp32 matmul (1024 x 1024 x 1024) as the machine's attainable FLOP rate.
Rows: batched speed-up over sequential (ratio = sequential time / batched time), and the batched FLOP rate
(FLOPs counted by torch.utils.flop_counter for one training step) as a fraction of the matmul rate.
The machine may be shared: both sides of each ratio are measured in the same run, interleaved, best of
``repeats``, so contention hits both.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from validate.batched_train import TrainConfig, train_batched, train_sequential, training_step_flops
from validate.phase_diagram import PhaseDiagramConfig, params_at


def dense_matmul_flop_rate(size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of a dense fp32 size^3 matmul (best of 5 timed bursts) with the current thread count."""
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


def _grid_models(cfg: PhaseDiagramConfig, limit: int | None):
    items = [(params_at(cfg.base, p), s) for p in cfg.train_points() for s in cfg.seeds]
    return items[:limit] if limit else items


def _time_batched(items, train: TrainConfig, models_per_batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(items), models_per_batch):
        chunk = items[i:i + models_per_batch]
        train_batched([h for h, _ in chunk], [s for _, s in chunk], train)
    return time.perf_counter() - start


def _time_sequential(items, train: TrainConfig) -> float:
    start = time.perf_counter()
    train_sequential([h for h, _ in items], [s for _, s in items], train)
    return time.perf_counter() - start


def run(quick: bool = False) -> list[dict]:
    cfg = PhaseDiagramConfig()
    steps, limit, repeats = (2, 12, 1) if quick else (6, None, 2)
    # few steps and a tiny test set: the benchmark times training steps, which is what the sweep spends
    train = dataclasses.replace(cfg.train, steps=steps, eval_every=steps, test_size=8)
    torch.set_num_threads(train.threads)
    items = _grid_models(cfg, limit)
    warm = dataclasses.replace(train, steps=1)
    _time_batched(items[:2], warm, 2)
    _time_sequential(items[:1], warm)

    batched_s, sequential_s, matmul_rate = float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        matmul_rate = max(matmul_rate, dense_matmul_flop_rate())
        batched_s = min(batched_s, _time_batched(items, train, cfg.models_per_batch))
        sequential_s = min(sequential_s, _time_sequential(items, train))
    batch_sizes = [min(cfg.models_per_batch, len(items) - i) for i in range(0, len(items), cfg.models_per_batch)]
    flops = steps * sum(training_step_flops(m, train) for m in sorted(set(batch_sizes))
                        for _ in range(batch_sizes.count(m)))
    achieved = flops / batched_s
    shape = (f"{len(items)} models (depth {train.depth}, width {train.width}, d_ff {train.d_ff}, "
             f"{train.batch}x{train.task.n_tokens} tokens/step), {steps} steps, {train.threads} threads")
    rows = [
        {"name": "phase_diagram: batched (vmap) training vs sequential loop",
         "baseline": f"sequential {sequential_s:.2f} s", "ratio": sequential_s / batched_s,
         "detail": f"batched {batched_s:.2f} s; {shape}; batches of {cfg.models_per_batch}"},
        {"name": "phase_diagram: batched training FLOP rate / dense matmul FLOP rate",
         "baseline": f"matmul 1024^3 {matmul_rate / 1e9:.1f} GFLOP/s", "ratio": achieved / matmul_rate,
         "detail": f"batched {achieved / 1e9:.1f} GFLOP/s ({flops / 1e9:.1f} GFLOP counted by FlopCounterMode)"},
    ]
    for row in rows:
        print(f"{row['name']}: ratio {row['ratio']:.2f} (baseline {row['baseline']}; {row['detail']})")
    return rows


def main(quick: bool = False) -> list[dict]:
    return run(quick)


if __name__ == "__main__":
    import sys
    main(quick="--quick" in sys.argv)
