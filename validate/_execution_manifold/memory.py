"""What an execution-manifold run needs in memory, estimated before any compute, so that a configuration this
machine cannot hold is refused in one line instead of failing (or swapping) hours in.

    needs = memory_needed(part_one_config, part_two_config, workers)   {what: bytes} of the largest allocations
    problem = memory_problem(part_one_config, part_two_config, workers)  None, or a line naming the flags to lower

The estimate counts the allocations that grow with the flags (trajectories, model and optimizer state,
activations, per-step records, commutator samples, SAE data); it is an order of magnitude, not a bound.
"""
from __future__ import annotations

from sim.machine import physical_memory

FLOAT32, FLOAT64 = 4, 8


def _parameters(run) -> int:
    """The number of parameters of the run's model (counted, not built)."""
    return run.model_config(run.task_config()).n_parameters


def _activations(run, examples: int) -> int:
    """Residual streams and attention maps of a forward and backward pass over `examples` sequences."""
    T, d = run.seq_len, run.d_model
    return examples * run.n_layers * (12 * T * d + 4 * run.n_heads * T * T) * FLOAT32


def memory_needed(one, two=None, workers: int = 0) -> dict[str, int]:
    """{what it is for (with the flags that set it): bytes} for part one's runs (times the parallel workers)
    and for part two's run (config `two`, when given)."""
    run = one.run
    n, block = run.n_snapshots, run.d_model ** 2
    parallel = max(1, workers)
    needs = {
        "the weight trajectories (--steps / --snapshot-every snapshots of 4 --n-layers --d-model^2 weights)":
            parallel * (n * 4 * run.n_layers * block * FLOAT32 + 2 * n * block * FLOAT64),
        "the model and its optimizer state (--d-model, --n-layers, --seq-len)":
            parallel * 4 * _parameters(run) * FLOAT32,
        "the activations (--batch-size, --seq-len, --d-model, --n-layers)":
            parallel * _activations(run, max(run.batch_size, one.probe_examples)),
        "the per-step records (--steps)": parallel * run.steps * 16,
        "the null draws (--null-draws)": parallel * one.null_draws * n * FLOAT64 * 4,
    }
    if two is not None:
        P = _parameters(two.run)
        needs.update({
            "part two's float64 snapshots (--steps / --snapshot-every, --n-layers, --d-model)":
                3 * n * 4 * run.n_layers * block * FLOAT64,
            "part two's commutator samples (--commutator-samples, the model's size)":
                (3 * two.commutator_samples + 4) * P * FLOAT64 + len(two.sae_stages) * P * FLOAT32,
            "part two's SAE data (--sae-examples, --sae-d, --d-model)":
                two.sae_examples * (run.d_model + 3 * two.sae_d) * FLOAT32 * 2 + 8 * two.sae_d * run.d_model * FLOAT32
                + _activations(two.run, 512 * len(run.markers)),
        })
    return needs


def memory_problem(one, two=None, workers: int = 0, limit: int | None = None) -> str | None:
    """None when the estimate fits in `limit` bytes (default: this machine's memory; none known: no check), else
    one line saying how much is needed, what most of it is for, and which flags to lower."""
    needs = memory_needed(one, two, workers)
    limit = physical_memory() if limit is None else limit
    total = sum(needs.values())
    if limit is None or total <= limit:
        return None
    largest = max(needs, key=needs.get)
    return (f"this run needs about {total / 2 ** 30:.3g} GiB of memory, more than this machine's "
            f"{limit / 2 ** 30:.3g} GiB; most of it for {largest}: lower those flags")
