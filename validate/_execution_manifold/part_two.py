"""Part two of the execution-manifold experiment (claims C7-C12 of Xu 2026): one training run probed at every
snapshot with SGD commutators (section 3.3.2), and sparse autoencoders fitted at three checkpoints (section
3.3.3).

    config = PartTwoConfig.from_part_one(part_one_config)     the main setting's training, its first seed
    metrics = stored_part_two(config, out_dir)                 through the SQLite store: computed once, then read

The metrics are JSON-safe, so the claims and figures (validate._execution_manifold.claims and .figures) come
out the same whether the run was just computed or read back from the store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from validate._common import checks
from validate._common.reporting import json_safe, progress
from validate._common.sweep import SweepStore, run_sweep
from validate._execution_manifold.commutator_probe import CommutatorProbe, commutator_summary, leading_term_check
from validate._execution_manifold.sae_stages import sae_stage
from validate._execution_manifold.trajectory import Diverged, RunConfig, diverged_result, train_with_snapshots

# part two's rows in the store keep the name they had when part two was a command of its own, so existing
# stores still resume
SWEEP = "execution_manifold_ii"
POINT = {"part": "two"}  # the one point of part two's sweep (its seed: config.seed)


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

def _unused_mlp_run() -> RunConfig:
    return RunConfig(mlp="unused")


@dataclass(frozen=True)
class PartTwoConfig:
    """One training run (`run`, seeded by `seed`) and its probes. The default run carries the released code's
    never-called MLP parameters (mlp "unused"), so that the paper's whole-vector random baseline sqrt(K / P)
    counts the same P = 1,026,184 parameters as the code, about 659k of which never receive a gradient."""
    run: RunConfig = field(default_factory=_unused_mlp_run)
    seed: int = 0
    # commutators: the released code's bubble_exp_comm_v2.py (eta 1e-3, 9 samples per snapshot, K_b = 3 PCs per
    # block, the basis rebuilt every 2,000 steps once 5 snapshots exist, 10 random bases)
    commutator_lr: float = 1e-3
    commutator_samples: int = 9
    commutator_precision: str = "float64"
    k_per_block: int | str = 3   # K_b: the paper's 3, or "r90" (each block's own r_q)
    basis_every: int = 4          # snapshots between rebuilds of the accumulated basis (code: 2000 / 500 steps)
    min_basis_snapshots: int = 5  # the code's first basis needs >= 5 snapshots
    window: int = 10
    n_random: int = 10
    early_fraction: float = 0.2   # the paper's "first / last 20%" of the measurements
    # sparse autoencoders: the released code's experiment_full.py (TopK, d_sae 256, k 16, checkpoints at steps
    # 2k, 8k, 18k of 20k)
    sae_stages: tuple = (0.1, 0.4, 0.9)  # fractions of training
    sae_layer: int = -1                   # -1: n_layers // 2 (an intermediate layer the readout depends on)
    sae_d: int = 256
    sae_k: int = 16
    sae_l1: float = 0.3
    sae_steps: int = 2000
    sae_examples: int = 8192
    ablation_sizes: tuple = (1, 3, 6, 12)
    random_ablation_draws: int = 5

    def __post_init__(self):
        min_basis = checks.field(self, "min_basis_snapshots", checks.integer, 2)
        if self.run.n_snapshots < min_basis + 5:
            raise ValueError(f"steps / snapshot_every must give >= {min_basis + 5} snapshots "
                             f"(min_basis_snapshots + 5), got {self.run.n_snapshots}")
        checks.field(self, "commutator_precision", checks.choice, ("float64", "float32"))
        checks.field(self, "seed", checks.integer, 0, checks.SEED_LIMIT - 1)
        checks.field(self, "commutator_lr", checks.real, 0.0, above=True)
        for name, minimum in (("commutator_samples", 1), ("basis_every", 1), ("window", 2), ("n_random", 1),
                              ("sae_d", 1), ("sae_steps", 1), ("sae_examples", 256), ("random_ablation_draws", 1)):
            checks.field(self, name, checks.integer, minimum)
        if self.k_per_block != "r90":
            checks.field(self, "k_per_block", checks.integer, 1, why=" (or 'r90')")
        checks.field(self, "early_fraction", checks.real, 0.0, 0.5, above=True)
        checks.field(self, "sae_stages", checks.sequence, lambda name, s: checks.real(name, s, 0.0, 1.0, above=True))
        checks.field(self, "sae_layer", checks.integer, -1, self.run.n_layers - 1, why=" (-1: the middle layer)")
        checks.field(self, "sae_k", checks.integer, 1, self.sae_d, why=" (sae_k <= sae_d)")
        checks.field(self, "sae_l1", checks.real, 0.0)
        checks.field(self, "ablation_sizes", checks.sequence,
                     lambda name, n: checks.integer(name, n, 1, self.sae_d, why=" (at most sae_d latents)"))

    @classmethod
    def from_part_one(cls, config, mlp: str = "auto", **probes) -> "PartTwoConfig":
        """Part two inside the experiment `config` (a PartOneConfig, read by attribute): its training run with
        its first seed and its window. mlp "auto" adds the code's never-called MLPs when that run has none
        (so the whole-vector baseline counts the code's P), else keeps its MLPs; any other value replaces them."""
        if mlp == "auto":
            mlp = "unused" if config.run.mlp == "none" else config.run.mlp
        return cls(run=dataclasses.replace(config.run, mlp=mlp), seed=config.seeds[0], window=config.window,
                   **probes)

    def fingerprint(self) -> str:
        """Names the stored result: every field that changes the numbers except the seed (the sweep's seed
        column)."""
        values = self.run.numbers_fields()
        values.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                       if f.name not in ("run", "seed")})
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def layer_for_sae(self) -> int:
        return self.run.n_layers // 2 if self.sae_layer == -1 else self.sae_layer


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------

def run_part_two(config: PartTwoConfig, quiet: bool = True) -> dict:
    """Train one run with commutator probes at every snapshot, fit SAEs at the checkpoints; the metrics, made
    JSON-safe so that claims remade from a stored copy are the same. A run whose loss, weights or commutators
    leave the finite numbers stops there and returns {"diverged": {"step", "where"}, "loss_curve", "seconds"}."""
    torch.set_num_threads(config.run.threads)
    task = config.run.task_config()
    probe = CommutatorProbe(config, task)
    started = time.perf_counter()
    try:
        with progress(config.run.steps, "part two: train + commutators", quiet) as bar:
            run = train_with_snapshots(task, config.run.model_config(task), config.run.train_config(config.seed),
                                       on_snapshot=probe, progress=bar.update)
    except Diverged as diverged:
        return json_safe(diverged_result(diverged, config.run, time.perf_counter() - started))
    train_seconds = time.perf_counter() - started
    commutators = commutator_summary(probe)
    model = run.model
    commutators["leading_term_check"] = leading_term_check(model, task, config)
    stages = {}
    sae_started = time.perf_counter()
    for step, state in sorted(probe.checkpoints.items()):
        model.load_state_dict(state)
        stages[step] = sae_stage(model, task, config, config.seed)
        if not quiet:
            print(f"[part two] SAEs at step {step} done", file=sys.stderr)
    sae_seconds = time.perf_counter() - sae_started
    return json_safe({"commutators": commutators, "sae": {str(k): v for k, v in stages.items()}, "diverged": None,
                      "final_train_loss": float(np.mean(run.loss[-max(1, config.run.snapshot_every // 5):])),
                      "seconds": {"train_and_commutators": train_seconds, "commutators": probe.seconds,
                                  "sae": sae_seconds}})


@dataclass(frozen=True)
class PartTwoRun:
    """The validate._common.sweep task of part two: its one item, (POINT, config.seed), gives the metrics of
    run_part_two."""
    config: PartTwoConfig
    quiet: bool = True

    def __call__(self, items):
        results = []
        for point, seed in items:
            if dict(point) != POINT or seed != self.config.seed:
                raise ValueError(f"PartTwoRun of seed {self.config.seed} was given ({point}, {seed})")
            results.append(run_part_two(self.config, quiet=self.quiet))
        return results


def stored_part_two(config: PartTwoConfig, out_dir: str, fresh: bool = False, workers: int = 0,
                    scheduler: str | None = None, quiet: bool = True) -> dict:
    """run_part_two's metrics through the SQLite store out_dir/sweep.sqlite (part one's store): one row of the
    sweep `execution_manifold_ii-<fingerprint>`, written as soon as the run finishes, so a rerun with the same
    configuration reads it instead of training again (fresh=True recomputes)."""
    os.makedirs(out_dir, exist_ok=True)
    store = SweepStore(os.path.join(out_dir, "sweep.sqlite"), sweep=f"{SWEEP}-{config.fingerprint()}")
    task = PartTwoRun(config, quiet=quiet or workers > 0 or scheduler is not None)
    row, = run_sweep(task, [POINT], [config.seed], store, max_workers=workers, scheduler=scheduler, fresh=fresh)
    metrics = row["result"]
    if not metrics.get("diverged"):
        metrics["sae"] = dict(sorted(metrics["sae"].items(), key=lambda item: int(item[0])))  # the store sorts keys
    return metrics
