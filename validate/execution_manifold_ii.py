"""`python -m validate.execution_manifold_ii`: the second half of Xu (2026)'s claims, SGD commutators and
sparse autoencoders, measured as the paper does and corrected (reference sections 2.7-2.9, 5.4-5.7).

One training run (helper code: validate.modular, validate.trajectory) is probed at every snapshot:

  C7 commutators aligned with the execution subspace early (up to 10x random), less late
       paper:     rho_exec / rho_rand over the WHOLE parameter vector, median-D sample, early/late medians
       corrected: the same against the support-matched and block-matched baselines; the gradient-inheritance
                  control rho_exec(delta) / rho_exec(mean gradient); Spearman of the ratio with time
  C8 ">92% of non-commutativity perpendicular throughout"
       paper: min_t (1 - rho) (what the code plots); corrected: min_t sqrt(1 - rho^2) and 1 - rho^2, beside
       what a random vector would give
  C9 the normalized defect D grows over training (NaN where gradients vanish, float64 paths)
  C10 SAEs capture routing (correlation with m, positions, tokens)
  C11 SAEs do not isolate execution (single-latent vs all-latent probes of the answer)
  C12 ablating SAE latents barely changes accuracy
       paper: the code's splice (post-final-LN, value positions, head at T-1); corrected: error-term-keeping
       ablation at the readout position of an intermediate layer, against random latents and dense PCA

`run_part_two(config, out_dir)` returns the claim rows (the same dict format as validate.execution_manifold),
the metrics and the figure paths; `stored_part_two` does the same through validate.sweep's SQLite store (one row,
resumable). `python -m validate.execution_manifold` runs it after part one and prints both parts in one table;
`python -m validate.execution_manifold_ii` is that command's `--part two`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from validate import commutator as comm
from validate import geometry as geo
from validate import sae as saes
from validate.modular import MLP_MODES, ModelConfig, TaskConfig, cross_entropy_and_accuracy, sample_batch
from validate.reporting import json_safe, save_figure, verdict_row as _row
from validate.sweep import SweepStore, run_sweep
from validate.trajectory import OPTIMIZERS, TrainConfig, train_with_snapshots

COMMAND = "execution_manifold_ii"
SIGNIFICANCE = 0.05


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartTwoConfig:
    """One training run and its probes. Training fields mirror validate.execution_manifold.ExperimentConfig;
    mlp "unused" (default) carries the released code's never-called MLP parameters, so the paper's
    whole-vector baseline is diluted exactly as in the code (reference section 2.8)."""
    steps: int = 20_000
    snapshot_every: int = 500
    seed: int = 0
    markers: tuple = (1, 2, 3, 4)
    modulus: int = 8
    seq_len: int = 16
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.01
    mlp: str = "unused"
    n_layers: int = 5
    d_model: int = 128
    n_heads: int = 4
    device: str = "cpu"
    threads: int = 1
    # commutators (reference sections 2.7, 2.8, 5.4, 5.5)
    commutator_lr: float = 1e-3
    commutator_samples: int = 9
    commutator_precision: str = "float64"
    k_per_block: int | str = 3   # K_b: the paper's 3, or "r90" (each block's own r_q)
    basis_every: int = 4          # snapshots between rebuilds of the accumulated basis (code: 2000 / 500 steps)
    min_basis_snapshots: int = 5  # the code's first basis needs >= 5 snapshots
    window: int = 10
    n_random: int = 10
    early_fraction: float = 0.2
    # sparse autoencoders (reference sections 2.9, 5.7)
    sae_stages: tuple = (0.1, 0.4, 0.9)  # fractions of training (code: steps 2k, 8k, 18k of 20k)
    sae_layer: int = -1                   # -1: n_layers // 2 (an intermediate layer the readout depends on)
    sae_d: int = 256
    sae_k: int = 16
    sae_l1: float = 0.3
    sae_steps: int = 2000
    sae_examples: int = 8192
    ablation_sizes: tuple = (1, 3, 6, 12)
    random_ablation_draws: int = 5

    def __post_init__(self):
        for name in ("markers", "ablation_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "sae_stages", tuple(float(v) for v in self.sae_stages))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mlp not in MLP_MODES:
            raise ValueError(f"mlp must be one of {MLP_MODES}, got {self.mlp!r}")
        if self.steps // self.snapshot_every + 1 < self.min_basis_snapshots + 5:
            raise ValueError(f"steps / snapshot_every must give >= {self.min_basis_snapshots + 5} snapshots "
                             f"(min_basis_snapshots + 5), got {self.steps // self.snapshot_every + 1}")
        if self.commutator_samples < 1 or self.n_random < 1:
            raise ValueError("commutator_samples and n_random must be >= 1, got "
                             f"{self.commutator_samples}, {self.n_random}")
        if self.k_per_block != "r90" and not (isinstance(self.k_per_block, int) and self.k_per_block >= 1):
            raise ValueError(f"k_per_block must be an int >= 1 or 'r90', got {self.k_per_block!r}")
        if not self.commutator_lr > 0:
            raise ValueError(f"commutator_lr must be > 0, got {self.commutator_lr}")
        if self.commutator_precision not in ("float32", "float64"):
            raise ValueError(f"commutator_precision must be float32 or float64, got {self.commutator_precision!r}")
        if self.basis_every < 1 or self.min_basis_snapshots < 2 or self.window < 2:
            raise ValueError(f"need basis_every >= 1, min_basis_snapshots >= 2, window >= 2")
        if not 0 < self.early_fraction <= 0.5:
            raise ValueError(f"early_fraction must be in (0, 0.5], got {self.early_fraction}")
        if not self.sae_stages or not all(0 < s <= 1 for s in self.sae_stages):
            raise ValueError(f"sae_stages must be fractions of training in (0, 1], got {self.sae_stages}")
        if not -1 <= self.sae_layer < self.n_layers:
            raise ValueError(f"sae_layer must be -1 or in [0, {self.n_layers - 1}], got {self.sae_layer}")
        if not 1 <= self.sae_k <= self.sae_d or self.sae_steps < 1 or self.sae_examples < 256:
            raise ValueError(f"need 1 <= sae_k <= sae_d, sae_steps >= 1, sae_examples >= 256; got sae_k="
                             f"{self.sae_k}, sae_d={self.sae_d}, sae_steps={self.sae_steps}, "
                             f"sae_examples={self.sae_examples}")
        if any(n < 1 or n > self.sae_d for n in self.ablation_sizes):
            raise ValueError(f"ablation_sizes must lie in [1, sae_d], got {self.ablation_sizes}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA device")
        self.task_config()
        self.train_config()
        ModelConfig.for_task(self.task_config(), **self.model_kwargs())

    @classmethod
    def from_experiment(cls, config, seed: int | None = None, mlp: str | None = None, **overrides
                        ) -> "PartTwoConfig":
        """From validate.execution_manifold.ExperimentConfig (read by attribute): its first seed, and the
        code's unused MLPs when the main setting has none (mlp="same" keeps the main setting's)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {name: getattr(config, name) for name in fields if hasattr(config, name)}
        values.pop("seeds", None)
        values["seed"] = config.seeds[0] if seed is None else seed
        if mlp is None:
            values["mlp"] = "unused" if config.mlp == "none" else config.mlp
        elif mlp != "same":
            values["mlp"] = mlp
        values.update(overrides)
        return cls(**values)

    def task_config(self) -> TaskConfig:
        return TaskConfig(seq_len=self.seq_len, markers=self.markers, modulus=self.modulus,
                          batch_size=self.batch_size)

    def model_kwargs(self) -> dict:
        return dict(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, mlp=self.mlp)

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, snapshot_every=self.snapshot_every, optimizer=self.optimizer,
                           lr=self.lr, weight_decay=self.weight_decay, seed=self.seed, device=self.device)

    def fingerprint(self) -> str:
        """Names the stored result: every field that changes the numbers except the seed (the sweep's seed
        column) and the device and thread count (as ExperimentConfig.fingerprint)."""
        fields = dataclasses.asdict(self)
        for name in ("seed", "device", "threads"):
            fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def layer_for_sae(self) -> int:
        return self.n_layers // 2 if self.sae_layer == -1 else self.sae_layer


QUICK = dict(steps=1500, snapshot_every=50, n_layers=2, d_model=64, lr=1e-3, sae_steps=1000, sae_examples=4096,
             sae_d=128, sae_k=8, ablation_sizes=(1, 3, 6), random_ablation_draws=3, commutator_samples=5)


# ----------------------------------------------------------------------------------------------------------
# Commutators during training
# ----------------------------------------------------------------------------------------------------------

def _loss(model, batch):
    return cross_entropy_and_accuracy(model, batch)[0]


class CommutatorProbe:
    """on_snapshot hook: at every snapshot, n_s commutators of two plain SGD steps on independent training
    minibatches (their own seeded stream, so the training data are untouched), aligned with the accumulated
    and window bases built from the snapshots so far. Keeps the block coordinates of the median-D sample's
    delta and mean gradient for the final basis afterwards."""

    def __init__(self, config: PartTwoConfig, task: TaskConfig):
        self.config, self.task = config, task
        self.generator = torch.Generator().manual_seed(10_007 * (config.seed + 1))
        self.rng = np.random.default_rng(config.seed + 17)
        self.snapshots: dict[str, list] = {}
        self.basis = None
        self.records: list[dict] = []
        self.kept: list[dict] = []
        self.slices = None
        self.total = None
        self.checkpoints: dict[int, dict] = {}
        n_snap = config.steps // config.snapshot_every + 1
        self.checkpoint_indices = sorted({min(n_snap - 1, int(round(f * (n_snap - 1)))) for f in config.sae_stages})
        self.seconds = 0.0

    def __call__(self, step: int, model) -> None:
        started = time.perf_counter()
        cfg = self.config
        index = len(next(iter(self.snapshots.values()))) if self.snapshots else 0
        with torch.no_grad():
            for name, weight in model.attention_weights().items():
                self.snapshots.setdefault(name, []).append(weight.detach().double().cpu().numpy().reshape(-1).copy())
        if self.slices is None:
            self.slices = comm.block_slices(model, model.attention_weights())
            self.total = comm.total_parameters(model)
        if index in self.checkpoint_indices:
            self.checkpoints[step] = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        n_snapshots = index + 1
        trajectories = {k: np.stack(v) for k, v in self.snapshots.items()}
        has_basis = n_snapshots >= cfg.min_basis_snapshots
        if has_basis and (self.basis is None or (n_snapshots - cfg.min_basis_snapshots) % cfg.basis_every == 0):
            self.basis = comm.ExecutionBasis.from_trajectories(trajectories, self.slices, self.total,
                                                               cfg.k_per_block, "accumulated", upto=index)
        window = (comm.ExecutionBasis.from_trajectories(trajectories, self.slices, self.total, cfg.k_per_block,
                                                        "window", upto=index, window=cfg.window)
                  if has_basis else None)
        dtype = torch.float64 if cfg.commutator_precision == "float64" else None
        # one float64 copy per snapshot serves every sample (measure_commutator restores it after each)
        working = copy.deepcopy(model).to(dtype) if dtype is not None else model
        samples, pairs = [], []
        for _ in range(cfg.commutator_samples):
            m_a, m_b = (self.task.markers_at_step(0, self.generator) for _ in range(2))
            a = sample_batch(self.task, m_a, self.generator).to(cfg.device)
            b = sample_batch(self.task, m_b, self.generator).to(cfg.device)
            samples.append(comm.measure_commutator(working, _loss, a, b, cfg.commutator_lr))
            pairs.append((m_a, m_b, a, b))
        del working
        defects = np.array([s.defect for s in samples])
        finite = np.isfinite(defects)
        median_index = (int(np.argsort(np.where(finite, defects, np.inf))[finite.sum() // 2])
                        if finite.any() else 0)
        record = {"step": int(step), "index": index, "defect": defects.tolist(),
                  "same_m": [bool(p[0] == p[1]) for p in pairs], "median_index": median_index,
                  "gradient_cosine": [s.gradient_cosine for s in samples]}
        # float32 in-place paths (the code's) against the float64 ones, on the median sample
        m_a, m_b, a, b = pairs[median_index]
        if dtype is not None:
            single = comm.measure_commutator(model, _loss, a, b, cfg.commutator_lr, dtype=None)
            reference = samples[median_index].delta.to(single.delta.dtype)
            record["float32_relative_error"] = float((single.delta - reference).norm() / reference.norm())
        if has_basis:
            record["accumulated"] = [comm.alignment(self.basis, s, self.rng, cfg.n_random) for s in samples]
            record["window"] = [comm.alignment(window, s, self.rng, cfg.n_random) for s in samples]
        chosen = samples[median_index]
        delta = chosen.delta.detach().double().cpu().numpy()
        mean_gradient = 0.5 * (chosen.grad_a + chosen.grad_b).detach().double().cpu().numpy()
        self.kept.append({"delta_blocks": [delta[s.offset:s.offset + s.size].astype(np.float32)
                                           for s in self.slices],
                          "delta_norm": float(np.linalg.norm(delta)),
                          "gradient_blocks": [mean_gradient[s.offset:s.offset + s.size].astype(np.float32)
                                              for s in self.slices],
                          "gradient_norm": float(np.linalg.norm(mean_gradient)),
                          "support": int(comm.gradient_support(delta, chosen.grad_a.double().cpu().numpy(),
                                                               chosen.grad_b.double().cpu().numpy()).sum())})
        self.records.append(record)
        self.seconds += time.perf_counter() - started

    def final_basis_alignment(self) -> list[dict]:
        """rho_exec of the kept (median-D) samples against the final-trajectory basis, with its block-matched
        expectation; the same for the mean gradient."""
        cfg = self.config
        trajectories = {k: np.stack(v) for k, v in self.snapshots.items()}
        basis = comm.ExecutionBasis.from_trajectories(trajectories, self.slices, self.total, cfg.k_per_block,
                                                      "final")
        out = []
        for kept in self.kept:
            row = {}
            for key, norm_key in (("delta_blocks", "delta_norm"), ("gradient_blocks", "gradient_norm")):
                parts = kept[key]
                energy = sum(float(np.sum((d.T @ p.astype(np.float64)) ** 2))
                             for d, p in zip(basis.directions, parts))
                total = kept[norm_key] ** 2
                rho = np.sqrt(energy / total) if total > 0 else float("nan")
                expected = sum(d.shape[1] / s.size * float(np.sum(p.astype(np.float64) ** 2))
                               for d, s, p in zip(basis.directions, basis.slices, parts)) / total
                row[key.split("_")[0]] = {"rho_exec": float(rho), "ratio_energy_block": float(rho ** 2 / expected)}
            out.append(row)
        return out


# ----------------------------------------------------------------------------------------------------------
# Summaries of the commutator series
# ----------------------------------------------------------------------------------------------------------

def _series(records, basis: str, key: str, how: str = "median_sample") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) over the measurements that have a basis; the median-D sample's value (the code's
    choice) or the median over all samples."""
    steps, values = [], []
    for r in records:
        if basis not in r:
            continue
        entries = [a[key] for a in r[basis]]
        steps.append(r["step"])
        values.append(entries[r["median_index"]] if how == "median_sample" else float(np.nanmedian(entries)))
    return np.array(steps), np.array(values, dtype=np.float64)


def early_late(values, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first and last `fraction` of the valid measurements (the paper's "first / last 20%")."""
    n = max(1, int(round(fraction * len(values))))
    return values[:n], values[-n:]


def bootstrap_median_difference(early, late, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(early) - median(late), resampling measurements in each window."""
    rng = np.random.default_rng(seed)
    early, late = np.asarray(early), np.asarray(late)
    draws = [np.median(rng.choice(early, early.size)) - np.median(rng.choice(late, late.size)) for _ in range(n)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def commutator_summary(probe: CommutatorProbe) -> dict:
    cfg = probe.config
    records = probe.records
    out = {"n_measurements": len(records), "seconds": probe.seconds}
    for basis in ("accumulated", "window"):
        part = {}
        for key in ("ratio_paper", "ratio_support", "ratio_block", "ratio_energy_block", "rho_exec",
                    "rho_rand_paper", "rho_rand_support", "rho_rand_block", "inheritance_ratio",
                    "ratio_energy_block_mean_gradient", "perp_norm_frac", "perp_energy_frac",
                    "perp_complement_frac", "expected_rho_paper", "expected_rho_support"):
            steps, median_sample = _series(records, basis, key, "median_sample")
            _, all_samples = _series(records, basis, key, "all")
            part[key] = {"steps": steps.tolist(), "median_sample": median_sample.tolist(),
                         "median_over_samples": all_samples.tolist()}
            if key.startswith("ratio") or key == "inheritance_ratio":
                for how, values in (("median_sample", median_sample), ("median_over_samples", all_samples)):
                    early, late = early_late(values, cfg.early_fraction)
                    low, high = bootstrap_median_difference(early, late, seed=cfg.seed)
                    part[key][how + "_early"] = float(np.median(early))
                    part[key][how + "_late"] = float(np.median(late))
                    part[key][how + "_difference_ci"] = [low, high]
                    part[key][how + "_spearman_time"] = geo.spearman(np.arange(len(values), dtype=float), values)
        first = next(r for r in records if basis in r)
        part["K"] = first[basis][0]["K"]
        part["P"] = first[basis][0]["P"]
        part["P_support"] = int(np.median([a["P_support"] for r in records if basis in r for a in r[basis]]))
        out[basis] = part
    final = probe.final_basis_alignment()
    valid = [i for i, r in enumerate(records) if "accumulated" in r]
    ratio_final = np.array([final[i]["delta"]["ratio_energy_block"] for i in valid])
    ratio_final_gradient = np.array([final[i]["gradient"]["ratio_energy_block"] for i in valid])
    early, late = early_late(ratio_final, cfg.early_fraction)
    out["final"] = {"steps": [records[i]["step"] for i in valid], "ratio_energy_block": ratio_final.tolist(),
                    "ratio_energy_block_mean_gradient": ratio_final_gradient.tolist(),
                    "early": float(np.median(early)), "late": float(np.median(late))}
    defects = np.array([r["defect"] for r in records])  # (measurements, samples)
    same = np.array([r["same_m"] for r in records])
    out["defect"] = {"steps": [r["step"] for r in records],
                     "median": np.nanmedian(defects, axis=1).tolist(),
                     "p90": np.nanpercentile(defects, 90, axis=1).tolist(),
                     "nan_fraction": float(np.mean(~np.isfinite(defects))),
                     "same_m_median": float(np.nanmedian(defects[same])) if same.any() else float("nan"),
                     "cross_m_median": float(np.nanmedian(defects[~same])) if (~same).any() else float("nan")}
    d_early, d_late = early_late(np.array(out["defect"]["median"]), cfg.early_fraction)
    out["defect"]["early"], out["defect"]["late"] = float(np.nanmedian(d_early)), float(np.nanmedian(d_late))
    errors = [r["float32_relative_error"] for r in records if "float32_relative_error" in r]
    if errors:
        out["float32_relative_error_median"] = float(np.median(errors))
        out["float32_relative_error"] = errors
    out["support_fraction_of_P"] = float(np.median([k["support"] for k in probe.kept]) / probe.total)
    return out


def leading_term_check(model, task: TaskConfig, config: PartTwoConfig) -> dict:
    """At the end of training: how well the leading term eta^2 (H_B g_A - H_A g_B) (Hessian-vector products)
    describes the measured float64 commutator, at eta and eta / 4 (the error should fall about 4x, O(eta))."""
    generator = torch.Generator().manual_seed(99_991 * (config.seed + 1))
    a = sample_batch(task, max(task.markers), generator).to(config.device)
    b = sample_batch(task, min(task.markers), generator).to(config.device)
    working = copy.deepcopy(model).double()
    out = {}
    for label, eta in (("eta", config.commutator_lr), ("eta_over_4", config.commutator_lr / 4)):
        fd = comm.sgd_commutator(working, _loss, a, b, eta)
        hvp = comm.hvp_commutator(working, _loss, a, b, eta)
        out[label] = {"eta": eta, "relative_difference": float((fd - hvp).norm() / hvp.norm())}
    return out


# ----------------------------------------------------------------------------------------------------------
# Sparse autoencoders at the checkpoints
# ----------------------------------------------------------------------------------------------------------

def sae_stage(model, task: TaskConfig, config: PartTwoConfig, seed: int) -> dict:
    """SAEs at one checkpoint: routing capture at the marker/value positions, execution isolation and
    ablations at the readout position of layer `layer_for_sae`, and the paper code's splice."""
    layer = config.layer_for_sae
    out = {"layer": layer}
    sae_config = dict(d_sae=config.sae_d, k=config.sae_k, l1=config.sae_l1, steps=config.sae_steps, seed=seed)
    readout = saes.collect_residuals(model, task, layer, "readout", config.sae_examples, seed=seed)
    targets = saes.collect_residuals(model, task, layer, "targets", config.sae_examples // 4, seed=seed + 1)
    chance = 1.0 / task.modulus
    out["chance"] = chance
    out["dense_probe_y"] = saes.linear_probe_accuracy(readout.vectors, readout.variables["y"], seed=seed)
    for kind in saes.SAE_KINDS:
        stats = {}
        sae = saes.train_sae(readout.vectors, saes.SAEConfig(kind=kind, **sae_config))
        Z = sae.encode(readout.vectors).detach()
        stats["fvu"] = saes.fraction_of_variance_unexplained(sae, readout.vectors)
        stats["dead_fraction"] = saes.dead_latent_fraction(sae, readout.vectors)
        stats["l0"] = saes.mean_active_latents(sae, readout.vectors)
        scores = saes.latent_scores(Z, readout.variables, readout.categorical)
        stats["routing_readout"] = saes.routing_capture(scores, saes.ROUTING_VARIABLES["readout"])
        single = saes.single_latent_probe_accuracy(Z, readout.variables["y"], seed=seed)
        stats["single_latent_probe_y"] = float(single.max())
        stats["all_latent_probe_y"] = saes.linear_probe_accuracy(Z, readout.variables["y"], seed=seed)
        # targets-site SAE for routing capture (m, positions, token identities)
        target_sae = saes.train_sae(targets.vectors, saes.SAEConfig(kind=kind, **sae_config))
        target_scores = saes.latent_scores(target_sae.encode(targets.vectors).detach(), targets.variables,
                                           targets.categorical)
        stats["routing_targets"] = saes.routing_capture(target_scores, saes.ROUTING_VARIABLES["targets"])
        stats["targets_fvu"] = saes.fraction_of_variance_unexplained(target_sae, targets.vectors)
        if kind == "topk":
            stats["ablation"] = ablations(model, task, config, sae, Z, scores, readout, seed)
        out[kind] = stats
    out["paper_code"] = paper_code_splice(model, task, config, seed)
    return out


def ablations(model, task, config, sae, Z, scores, readout, seed) -> dict:
    """Delta accuracy for ablating, at (layer_for_sae, T-1) with the SAE error term kept: the top-n
    routing-correlated latents, the top-n y-correlated latents, n random live latents, and the top-n PCA
    directions of the activations (the dense subspace). Evaluated on held-out batches of every m."""
    layer, position = config.layer_for_sae, task.seq_len - 1
    generator = torch.Generator().manual_seed(31_337 * (seed + 1))
    batches = [sample_batch(task, m, generator, n_examples=512, shared_positions=False) for m in task.markers]
    base = saes.accuracy_with_edit(model, batches, layer, position, lambda x: x)
    routing = np.max(np.stack([scores[v] for v in saes.ROUTING_VARIABLES["readout"]]), axis=0)
    alive = np.nonzero((Z > 0).any(dim=0).numpy())[0]
    rng = np.random.default_rng(seed)
    out = {"base_accuracy": base, "sizes": list(config.ablation_sizes)}
    for label, ranking in (("routing", np.argsort(-routing)), ("y", np.argsort(-scores["y"]))):
        out[label] = [base - saes.accuracy_with_edit(model, batches, layer, position,
                                                     saes.latent_ablation_edit(sae, ranking[:n].tolist()))
                      for n in config.ablation_sizes]
    out["random"] = [float(np.mean([base - saes.accuracy_with_edit(
        model, batches, layer, position,
        saes.latent_ablation_edit(sae, rng.choice(alive, min(n, alive.size), replace=False).tolist()))
        for _ in range(config.random_ablation_draws)])) for n in config.ablation_sizes]
    out["pca"] = []
    for n in config.ablation_sizes:
        directions, mean = saes.principal_axes(readout.vectors, min(n, readout.vectors.shape[1]))
        out["pca"].append(base - saes.accuracy_with_edit(model, batches, layer, position,
                                                         saes.pca_ablation_edit(directions, mean)))
    # a site the readout never reads: the last block's output at position T-2 (regression test of the code bug)
    out["unread_site"] = base - saes.accuracy_with_edit(model, batches, len(model.blocks) - 1, position - 1,
                                                        lambda x: torch.zeros_like(x))
    # binomial standard error of an accuracy difference on these batches: the noise floor of every Delta acc
    n_eval = sum(len(b.labels) for b in batches)
    out["standard_error"] = float(np.sqrt(2 * base * (1 - base) / n_eval)) if 0 < base < 1 else 1.0 / n_eval
    return out


def paper_code_splice(model, task, config, seed) -> dict:
    """The released code's SAE experiment: TopK SAE on post-final-LN residuals at value positions with m = 4
    (the largest m trained), six top-variance latents zeroed, head read at T-1."""
    m = max(task.markers)
    generator = torch.Generator().manual_seed(4_241 * (seed + 1))
    vectors = []
    captured = {}
    handle = model.ln_final.register_forward_hook(lambda module, inputs, output: captured.__setitem__("h", output))
    try:
        for _ in range(max(1, config.sae_examples // (task.batch_size * m))):
            batch = sample_batch(task, m, generator)
            with torch.no_grad():
                model(batch.tokens)
            rows = torch.arange(len(batch.labels))[:, None]
            vectors.append(captured["h"][rows, batch.marker_positions + 1].reshape(-1, captured["h"].shape[-1]))
    finally:
        handle.remove()
    X = torch.cat(vectors).float()
    sae = saes.train_sae(X, saes.SAEConfig(kind="topk", d_sae=config.sae_d, k=config.sae_k,
                                           steps=config.sae_steps, seed=seed))
    latents = saes.top_variance_latents(sae, X, 12)[:6]
    batch = sample_batch(task, m, generator)  # the code: one batch of 128, positions shared
    before, after = saes.paper_code_ablation(model, batch, sae, latents)
    reaches_readout = bool((batch.marker_positions[:, -1] + 1 == task.seq_len - 1).any())
    return {"accuracy_before": before, "accuracy_after": after, "delta": before - after,
            "edit_reaches_readout": reaches_readout, "fvu": saes.fraction_of_variance_unexplained(sae, X)}


# ----------------------------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------------------------

def claim_rows(config: PartTwoConfig, commutators: dict, sae_stages: dict) -> list[dict]:
    rows = []
    acc = commutators["accumulated"]
    paper = acc["ratio_paper"]
    name = "C7 commutator aligned early (<=10x), less late"
    ci = paper["median_sample_difference_ci"]
    rows.append(_row(name, "paper", "rho_exec/rho_rand (whole P), early -> late",
                     "early >= 5 and early > late",
                     f"{paper['median_sample_early']:.2f} -> {paper['median_sample_late']:.2f} "
                     f"(K={acc['K']}, P={acc['P']})",
                     f"95% CI of diff [{ci[0]:+.2f}, {ci[1]:+.2f}]",
                     paper["median_sample_early"] >= 5 and ci[0] > 0))
    for key, label in (("ratio_support", "support-matched"), ("ratio_block", "block-matched")):
        s = acc[key]
        ci = s["median_over_samples_difference_ci"]
        rows.append(_row(name, "null", f"rho_exec / rho_rand {label}, early -> late",
                         "early > late, Spearman(t) < 0",
                         f"{s['median_over_samples_early']:.2f} -> {s['median_over_samples_late']:.2f}; "
                         f"Spearman {s['median_over_samples_spearman_time']:+.2f}"
                         + (f" (P_support={acc['P_support']})" if key == "ratio_support" else ""),
                         f"95% CI of diff [{ci[0]:+.2f}, {ci[1]:+.2f}]",
                         ci[0] > 0 and s["median_over_samples_spearman_time"] < 0))
    delta_energy = acc["ratio_energy_block"]
    gradient_energy = acc["ratio_energy_block_mean_gradient"]
    rows.append(_row(name, "null", "alignment of delta vs of the mean gradient (energy / block E), early",
                     "delta > gradient (not inherited)",
                     f"{delta_energy['median_over_samples_early']:.2f} vs "
                     f"{np.median(early_late(np.array(gradient_energy['median_over_samples']), config.early_fraction)[0]):.2f}"
                     f"; rho ratio {acc['inheritance_ratio']['median_over_samples_early']:.2f}",
                     "a comparison",
                     delta_energy["median_over_samples_early"] >
                     np.median(early_late(np.array(gradient_energy["median_over_samples"]), config.early_fraction)[0])))
    name = "C8 >92% perpendicular throughout"
    complement = np.array(acc["perp_complement_frac"]["median_sample"])
    rows.append(_row(name, "paper", "min_t (1 - rho_exec) (the code's resid_frac)", ">= 0.92",
                     f"{complement.min():.3f}", "a bound", complement.min() >= 0.92))
    for key in ("perp_norm_frac", "perp_energy_frac"):
        values = np.array(acc[key]["median_sample"])
        rows.append(_row(name, "null", f"min_t {key}", ">= 0.92",
                         f"{values.min():.4f} (random vector: {1 - acc['K'] / acc['P']:.4f} energy)", "a bound",
                         values.min() >= 0.92))
    name = "C9 defect D grows over training"
    d = commutators["defect"]
    rows.append(_row(name, "paper", "median D early -> late (NaN-guarded)", "late > early",
                     f"{d['early']:.2f} -> {d['late']:.2f}; same-m {d['same_m_median']:.2f}, "
                     f"cross-m {d['cross_m_median']:.2f}; NaN {d['nan_fraction']:.2f}", "a comparison",
                     d["late"] > d["early"]))
    if "float32_relative_error_median" in commutators:
        rows.append(_row(name, "null", "float32 in-place delta vs float64, relative error", "<< 1",
                         f"{commutators['float32_relative_error_median']:.3f} (median)", "<= 0.1",
                         commutators["float32_relative_error_median"] <= 0.1))
    if "leading_term_check" in commutators:
        check = commutators["leading_term_check"]
        at_eta, at_quarter = check["eta"]["relative_difference"], check["eta_over_4"]["relative_difference"]
        rows.append(_row(name, "null", "delta vs eta^2 (H_B g_A - H_A g_B) (HVP), end of training",
                         "<< 1, ~4x smaller at eta/4",
                         f"{at_eta:.2e} at eta, {at_quarter:.2e} at eta/4 (x{at_eta / at_quarter:.1f})",
                         "<= 0.1; ratio 2.5-6", at_eta <= 0.1 and 2.5 <= at_eta / at_quarter <= 6))
    # SAE claims, per stage
    for step, stage in sorted(sae_stages.items(), key=lambda item: int(item[0])):  # JSON keys are text
        topk, relu = stage["topk"], stage["relu_l1"]
        name = f"C10 SAE captures routing (step {step})"
        capture = topk["routing_targets"]["capture"]
        best = max(capture.get("m", 0.0), capture.get("position", 0.0))
        rows.append(_row(name, "null", "max latent score for m / position (TopK, marker+value sites)",
                         ">= 0.7", f"m {capture.get('m', 0):.2f}, position {capture.get('position', 0):.2f}; "
                         f"{topk['routing_targets']['n_routing_latents']} latents >= 0.5 "
                         f"(L1 SAE: {relu['routing_targets']['n_routing_latents']})", "a bound", best >= 0.7))
        name = f"C11 SAE fails to isolate execution (step {step})"
        # held-out binomial s.e. of an accuracy near 1/2 on the 30% test split: the probes' noise floor
        se = np.sqrt(0.25 / (0.3 * config.sae_examples))
        learned = topk["all_latent_probe_y"] > stage["chance"] + 3 * se  # else there is no execution to isolate
        rows.append(_row(name, "null", "y probe: best single latent | all latents | raw (chance)",
                         "single << all", f"{topk['single_latent_probe_y']:.2f} | {topk['all_latent_probe_y']:.2f}"
                         f" | {stage['dense_probe_y']:.2f} ({stage['chance']:.3f})",
                         f"single <= all / 2; s.e. {se:.3f}",
                         (topk["single_latent_probe_y"] <= topk["all_latent_probe_y"] / 2) if learned else None))
        name = f"C12 SAE ablation barely matters (step {step})"
        paper_code = stage["paper_code"]
        rows.append(_row(name, "paper", "code's splice: acc before -> after", "drop <= 0.05",
                         f"{paper_code['accuracy_before']:.3f} -> {paper_code['accuracy_after']:.3f}"
                         f" (edit reaches T-1: {paper_code['edit_reaches_readout']})", "a bound",
                         paper_code["delta"] <= 0.05))
        ab = topk["ablation"]
        n_index = len(ab["sizes"]) - 1
        tol = 2 * ab["standard_error"]
        rows.append(_row(name, "null", f"Delta acc at L{stage['layer']},T-1, n={ab['sizes'][n_index]}: "
                         "routing | y | random | PCA",
                         "routing small; y << PCA",
                         f"{ab['routing'][n_index]:.3f} | {ab['y'][n_index]:.3f} | {ab['random'][n_index]:.3f} | "
                         f"{ab['pca'][n_index]:.3f} (unread site {ab['unread_site']:.3f})",
                         f"2 s.e. = {tol:.3f}",
                         ab["routing"][n_index] <= 0.05 + tol and ab["y"][n_index] + tol < ab["pca"][n_index]))
    return rows


# ----------------------------------------------------------------------------------------------------------
# The whole second part
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PartTwoResult:
    rows: list
    metrics: dict
    figures: list


def run_part_two(config, out_dir: str, seed: int | None = None, show_progress: bool = False,
                 figures: bool = True, **overrides) -> PartTwoResult:
    """Train one run with commutator probes, fit SAEs at the checkpoints, return the claim rows, the metrics
    and the figure paths. `config` is a PartTwoConfig or validate.execution_manifold.ExperimentConfig
    (converted with PartTwoConfig.from_experiment; overrides are passed on)."""
    if not isinstance(config, PartTwoConfig):
        config = PartTwoConfig.from_experiment(config, seed=seed, **overrides)
    torch.set_num_threads(config.threads)
    os.makedirs(out_dir, exist_ok=True)
    task = config.task_config()
    probe = CommutatorProbe(config, task)
    started = time.perf_counter()
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, desc=f"[{COMMAND}] train + commutators", leave=False, mininterval=1.0)
    run = train_with_snapshots(task, ModelConfig.for_task(task, **config.model_kwargs()), config.train_config(),
                               on_snapshot=probe, progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - started
    commutators = commutator_summary(probe)
    model = run.model
    commutators["leading_term_check"] = leading_term_check(model, task, config)
    stages = {}
    sae_started = time.perf_counter()
    for step, state in sorted(probe.checkpoints.items()):
        model.load_state_dict(state)
        stages[step] = sae_stage(model, task, config, config.seed)
        if show_progress:
            print(f"[{COMMAND}] SAEs at step {step} done", file=sys.stderr)
    sae_seconds = time.perf_counter() - sae_started
    # JSON-safe before the rows are made from it, so that rows remade from a stored copy are the same
    metrics = json_safe({"config": dataclasses.asdict(config), "commutators": commutators,
                         "sae": {str(k): v for k, v in stages.items()},
                         "final_train_loss": float(np.mean(run.loss[-max(1, config.snapshot_every // 5):])),
                         "seconds": {"train_and_commutators": train_seconds, "commutators": probe.seconds,
                                     "sae": sae_seconds}})
    rows = claim_rows(config, metrics["commutators"], metrics["sae"])
    paths = make_figures(config, metrics, out_dir) if figures else []
    return PartTwoResult(rows, metrics, paths)


PART_TWO_POINT = {"part": "two"}  # the one point of part two's sweep (its seed: config.seed)


@dataclass(frozen=True)
class PartTwoRun:
    """The validate.sweep task of part two: one item, (point PART_TWO_POINT, config.seed), gives the metrics of
    run_part_two (JSON-safe; the rows and figures are remade from them, so a resumed run prints the same)."""
    config: PartTwoConfig
    out_dir: str
    show_progress: bool = False

    def __call__(self, items):
        results = []
        for point, seed in items:
            if dict(point) != PART_TWO_POINT or seed != self.config.seed:
                raise ValueError(f"PartTwoRun of seed {self.config.seed} was given ({point}, {seed})")
            results.append(run_part_two(self.config, self.out_dir, show_progress=self.show_progress,
                                        figures=False).metrics)
        return results


def stored_part_two(config: PartTwoConfig, out_dir: str, store_path: str | None = None, fresh: bool = False,
                    max_workers: int = 0, scheduler: str | None = None, show_progress: bool = False,
                    figures: bool = True) -> PartTwoResult:
    """run_part_two through the SQLite store of validate.sweep (default out_dir/sweep.sqlite, the store of
    validate.execution_manifold): the metrics are one row of the sweep `execution_manifold_ii-<fingerprint>`,
    written as soon as the run finishes, so a rerun with the same configuration reads them instead of training
    again (fresh=True recomputes). The rows and figures are remade from the stored metrics."""
    os.makedirs(out_dir, exist_ok=True)
    store = SweepStore(store_path or os.path.join(out_dir, "sweep.sqlite"), sweep=f"{COMMAND}-{config.fingerprint()}")
    task = PartTwoRun(config, out_dir, show_progress=show_progress and max_workers == 0 and scheduler is None)
    row, = run_sweep(task, [PART_TWO_POINT], [config.seed], store, max_workers=max_workers, scheduler=scheduler,
                     fresh=fresh)
    metrics = row["result"]
    metrics["sae"] = dict(sorted(metrics["sae"].items(), key=lambda item: int(item[0])))  # the store sorts keys
    rows = claim_rows(config, metrics["commutators"], metrics["sae"])
    paths = make_figures(config, metrics, out_dir) if figures else []
    return PartTwoResult(rows, metrics, paths)


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------

def make_figures(config: PartTwoConfig, metrics: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = metrics["commutators"]
    acc = c["accumulated"]
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    steps = np.array(acc["rho_exec"]["steps"])
    ax.plot(steps, acc["rho_exec"]["median_sample"], "o-", ms=3, label="rho_exec (median-D sample)")
    ax.plot(steps, acc["rho_exec"]["median_over_samples"], "-", lw=1, label="rho_exec (median over samples)")
    for key, label in (("rho_rand_paper", "random, whole P (paper)"), ("rho_rand_support", "random, support"),
                       ("rho_rand_block", "random, block-matched")):
        ax.plot(steps, acc[key]["median_over_samples"], "--", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("||B B^T delta|| / ||delta||")
    ax.set_title(f"commutator in the accumulated execution basis (K={acc['K']}, P={acc['P']})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for key, label in (("ratio_paper", "/ paper baseline"), ("ratio_support", "/ support-matched"),
                       ("ratio_block", "/ block-matched")):
        line, = ax.plot(steps, acc[key]["median_over_samples"], "o-", ms=3, label=f"rho_exec {label}")
        early, late = early_late(steps, config.early_fraction)
        ax.hlines([acc[key]["median_over_samples_early"]], early[0], early[-1], color=line.get_color(), lw=3)
        ax.hlines([acc[key]["median_over_samples_late"]], late[0], late[-1], color=line.get_color(), lw=3)
    final_steps = np.array(c["final"]["steps"])
    ax.plot(final_steps, np.sqrt(c["final"]["ratio_energy_block"]), ":", color="k",
            label="final basis, sqrt(energy / block E)")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("alignment ratio")
    ax.set_title("ratios (thick bars: early / late medians, first / last 20%)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for key in ("perp_complement_frac", "perp_norm_frac", "perp_energy_frac"):
        ax.plot(steps, acc[key]["median_sample"], "o-", ms=3, label=key)
    ax.axhline(0.92, color="tab:red", ls=":", label="paper: 0.92")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction outside the execution subspace")
    ax.set_title("three readings of '>92% perpendicular'", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    d = c["defect"]
    ax.plot(d["steps"], d["median"], "o-", ms=3, label="median D")
    ax.plot(d["steps"], d["p90"], "--", label="p90 D")
    ax2 = ax.twinx()
    ax2.plot(steps, acc["inheritance_ratio"]["median_over_samples"], color="tab:green", lw=1,
             label="rho_exec(delta) / rho_exec(mean gradient)")
    ax2.set_ylabel("inheritance ratio", color="tab:green")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("D = ||delta|| / (||eta g_A|| ||eta g_B||)")
    ax.set_title("normalized defect (float64 paths) and gradient-inheritance control", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"SGD commutators, {config.n_layers} layers d={config.d_model}, {config.optimizer} lr {config.lr}, "
                 f"{config.commutator_samples} samples per snapshot, eta={config.commutator_lr}", fontsize=10)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, "execution_manifold_commutator.png"))

    stages = metrics["sae"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = sorted(stages, key=int)  # checkpoint steps (JSON keys are text)
    x = np.arange(len(labels))
    ax = axes[0]
    width = 0.2
    for i, (key, label) in enumerate((("m", "m"), ("position", "position"), ("is_value", "is value"),
                                      ("marker_index", "marker index"))):
        ax.bar(x + (i - 1.5) * width, [stages[s]["topk"]["routing_targets"]["capture"][key] for s in labels],
               width, label=label)
    ax.axhline(0.7, color="tab:red", ls=":", lw=1)
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("best single-latent score")
    ax.set_title("routing capture (TopK SAE, marker/value sites)", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    ax = axes[1]
    ax.bar(x - 0.3, [stages[s]["topk"]["single_latent_probe_y"] for s in labels], 0.2, label="best single latent")
    ax.bar(x - 0.1, [stages[s]["relu_l1"]["single_latent_probe_y"] for s in labels], 0.2,
           label="best single latent (L1)")
    ax.bar(x + 0.1, [stages[s]["topk"]["all_latent_probe_y"] for s in labels], 0.2, label="all latents")
    ax.bar(x + 0.3, [stages[s]["dense_probe_y"] for s in labels], 0.2, label="raw residual")
    ax.axhline(stages[labels[0]]["chance"], color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylabel("held-out accuracy for y")
    ax.set_title(f"execution isolation at L{stages[labels[0]]['layer']}, T-1", fontsize=9)
    ax.set_ylim(0, 1.2)                          # room above the bars for the legend
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    ax = axes[2]
    last = stages[labels[-1]]["topk"]["ablation"]
    sizes = last["sizes"]
    for key, label in (("routing", "routing latents"), ("y", "y latents"), ("random", "random latents"),
                       ("pca", "top PCA directions")):
        ax.plot(sizes, last[key], "o-", label=label)
    ax.axhline(stages[labels[-1]]["paper_code"]["delta"], color="k", ls=":",
               label="code's splice (6 top-variance latents)")
    ax.set_xlabel("n ablated")
    ax.set_ylabel("accuracy drop")
    ax.set_title(f"ablation at L{stages[labels[-1]]['layer']}, T-1, error term kept (step {labels[-1]})",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, "execution_manifold_sae.png"))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Command line: a thin alias of `python -m validate.execution_manifold --part two`
# ----------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Part two alone: the flags of `python -m validate.execution_manifold` (without --part), the output in
    runs/execution_manifold_ii/ and execution_manifold_ii.json unless --out says otherwise."""
    from validate import execution_manifold
    return execution_manifold.main(argv, command=COMMAND)


if __name__ == "__main__":
    sys.exit(main())
