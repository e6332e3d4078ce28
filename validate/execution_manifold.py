"""`python -m validate.execution_manifold`: the claims of Xu (2026) about execution manifolds, measured as the
paper does and against null models (reference sections 2 and 5).

For every seed (and difficulty setting) a transformer is trained on marker-based modular addition while the
W_Q, W_K, W_V, W_O trajectory of every layer and the attention at the readout query on fixed probe sets are
recorded. Then, per claim, the paper-faithful figure and the null-corrected figure are put side by side:

  C1 dimension 3-4             r90 per block        vs  r90 against random-walk / shuffled-increment nulls
  C2 robust across seeds, m, C seed and m/C spread  vs  the same spread of the null-corrected dimension
  C3 orientation varies        top-3 PC overlap     vs  its random-subspace expectation K / n_b
  C4 routing saturation        entropy drop         vs  routing coordinate (permutation p, clock control,
                                                        saturation fit R^2 and late-slope ratio)
  C5 collapse in first 20-30%  window-r90 collapse  vs  the same windows of the random-walk null
  C6 W_V/W_O below W_Q/W_K     r90 difference       vs  the difference of null-corrected dimensions

Part two (validate.execution_manifold_ii: SGD commutators and sparse autoencoders, C7-C12) then runs once, on
the main setting with its first seed, and its rows join the same table:

  C7 commutators aligned with the execution subspace early, less late     C10 SAEs capture routing
  C8 >92% of non-commutativity perpendicular to it                         C11 SAEs do not isolate execution
  C9 the normalized defect D grows over training                           C12 ablating SAE latents barely matters

`--part one` or `--part two` runs one part alone (`python -m validate.execution_manifold_ii` is `--part two`).
Seeds and difficulty settings run through validate.sweep (one SQLite row per (setting, seed), resumable); so does
part two's run (one row keyed by its configuration's fingerprint), in the same store.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from validate import execution_manifold_ii as em2
from validate import geometry as geo
from validate.modular import MLP_MODES, ModelConfig, TaskConfig, probe_sets
from validate.reporting import (atomic_savez, atomic_write_text, format_table, package_versions, save_figure,
                                verdict_row as _row)
from validate.sweep import SweepStore, run_sweep
from validate.trajectory import OPTIMIZERS, TrainConfig, train_with_snapshots

COMMAND = "execution_manifold"
BLOCK_KINDS = ("W_Q", "W_K", "W_V", "W_O")
DEFAULT_LR = {"adamw": 3e-4, "sgd": 1e-3}  # the released code / the paper text
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 0.0}  # PyTorch's AdamW default (code) / "standard SGD" (text)
ORIENTATION_K = 3  # top PCs per block, as the paper's execution basis (reference section 2.8)
SIGNIFICANCE = 0.05


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on. Defaults reproduce the released code's run (reference section 5.8)."""
    steps: int = 20_000
    snapshot_every: int = 500
    seeds: tuple = (0, 1, 2, 3, 4)
    markers: tuple = (1, 2, 3, 4)
    modulus: int = 8
    seq_len: int = 16
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.01
    mlp: str = "none"
    n_layers: int = 5
    d_model: int = 128
    n_heads: int = 4
    q: float = 0.9
    null_draws: int = 200
    window: int = 10
    probe_examples: int = 128
    sparsify_k: tuple = (8, 4, 2, 1)
    sweep_max_markers: tuple = (2, 6)
    sweep_moduli: tuple = (16,)
    difficulty_seeds: int = 2
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self):
        for name in ("seeds", "markers", "sparsify_k", "sweep_max_markers", "sweep_moduli"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mlp not in MLP_MODES:
            raise ValueError(f"mlp must be one of {MLP_MODES}, got {self.mlp!r}")
        n_snapshots = self.steps // self.snapshot_every + 1
        if self.snapshot_every < 1 or n_snapshots < 6:
            raise ValueError(f"steps / snapshot_every must give >= 6 snapshots, got {n_snapshots} "
                             f"(steps={self.steps}, snapshot_every={self.snapshot_every})")
        if not 3 <= self.window <= n_snapshots:
            raise ValueError(f"window must be in [3, n_snapshots = {n_snapshots}], got {self.window}")
        if self.null_draws < 20:
            raise ValueError(f"null_draws must be >= 20 (p-values below 0.05 need them), got {self.null_draws}")
        if not 0 < self.q <= 1:
            raise ValueError(f"q must be in (0, 1], got {self.q}")
        if self.difficulty_seeds < 0:
            raise ValueError(f"difficulty_seeds must be >= 0, got {self.difficulty_seeds}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA device")
        # build the sub-configs once so that their own checks name a bad field now, not in a worker
        for markers, modulus in self.points():
            self.task_config(markers, modulus)
        self.train_config(self.seeds[0])
        ModelConfig.for_task(self.task_config(self.markers, self.modulus), **self.model_kwargs())

    @property
    def n_snapshots(self) -> int:
        return self.steps // self.snapshot_every + 1

    def points(self) -> list[tuple[tuple, int]]:
        """(markers, modulus) of the main setting, then the difficulty sweep (mixed m in 1..M; other C)."""
        points = [(self.markers, self.modulus)]
        if self.difficulty_seeds:
            points += [(tuple(range(1, M + 1)), self.modulus) for M in self.sweep_max_markers]
            points += [(self.markers, C) for C in self.sweep_moduli]
        unique = []
        for p in points:
            if p not in unique:
                unique.append(p)
        return unique

    def task_config(self, markers, modulus) -> TaskConfig:
        return TaskConfig(seq_len=self.seq_len, markers=tuple(markers), modulus=modulus,
                          batch_size=self.batch_size)

    def model_kwargs(self) -> dict:
        return dict(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, mlp=self.mlp)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(steps=self.steps, snapshot_every=self.snapshot_every, optimizer=self.optimizer,
                           lr=self.lr, weight_decay=self.weight_decay, seed=seed, device=self.device)

    def fingerprint(self) -> str:
        """Names the sweep in the SQLite store: everything that changes a per-seed result except the point."""
        fields = dataclasses.asdict(self)
        for name in ("seeds", "sweep_max_markers", "sweep_moduli", "difficulty_seeds", "device", "threads",
                     "markers", "modulus"):
            fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


QUICK = dict(steps=1500, snapshot_every=50, seeds=(0, 1, 2), n_layers=2, d_model=64, lr=1e-3, null_draws=100,
             window=8, sweep_max_markers=(2,), sweep_moduli=(), difficulty_seeds=1)


# ----------------------------------------------------------------------------------------------------------
# Attention probes at the readout query (reference section 5.3)
# ----------------------------------------------------------------------------------------------------------

def probe_attention(model, probes: dict, sparsify_k) -> dict:
    """Per layer, at the readout query T-1 averaged over batch and heads: entropy, top-1/2/4 mass, mass on the
    marker and value positions; per m the probe accuracy; accuracy with every layer's attention sparsified to
    its top-k weights (the code's `eval_with_k`), averaged over m."""
    device = next(model.parameters()).device
    per_m = []
    with torch.no_grad():
        for m, batch in probes.items():
            batch = batch.to(device)
            out = model(batch.tokens, return_attention=True)
            readout = [a[:, :, -1, :].double().cpu().numpy() for a in out.attention]  # (B, heads, T) per layer
            mask = batch.target_mask.cpu().numpy()[:, None, :]
            sparse = {k: (model(batch.tokens, top_k=k).logits.argmax(-1) == batch.labels).float().mean().item()
                      for k in sparsify_k}
            per_m.append({
                "m": m,
                "entropy": [float(geo.attention_entropy(a).mean()) for a in readout],
                "top1_mass": [float(geo.top_k_mass(a, 1).mean()) for a in readout],
                "top2_mass": [float(geo.top_k_mass(a, 2).mean()) for a in readout],
                "top4_mass": [float(geo.top_k_mass(a, 4).mean()) for a in readout],
                "target_mass": [float(geo.target_mass(a, mask).mean()) for a in readout],
                "accuracy": (out.logits.argmax(-1) == batch.labels).float().mean().item(),
                "sparsified_accuracy": sparse,
            })
    mean = {key: np.mean([p[key] for p in per_m], axis=0).tolist()
            for key in ("entropy", "top1_mass", "top2_mass", "top4_mass", "target_mass", "accuracy")}
    mean["sparsified_accuracy"] = {str(k): float(np.mean([p["sparsified_accuracy"][k] for p in per_m]))
                                   for k in sparsify_k}
    mean["accuracy_by_m"] = {str(p["m"]): p["accuracy"] for p in per_m}
    mean["entropy_by_m"] = {str(p["m"]): p["entropy"] for p in per_m}
    return mean


# ----------------------------------------------------------------------------------------------------------
# One (setting, seed): train, record, analyse. A picklable task for validate.sweep.
# ----------------------------------------------------------------------------------------------------------

def _block_summary(gram, ambient_dim: int, q: float, null_draws: int, seed: int) -> dict:
    spectrum = geo.spectrum_from_increment_gram(gram)
    summary = geo.trajectory_statistics(gram, q)
    summary["r_q_code"] = float(geo.capped_rank_at_fraction(spectrum, q))
    singular = np.sqrt(spectrum * (gram.shape[0] + 1))
    p = singular[singular > 0] / singular.sum()
    summary["entropy_rank_code"] = float(np.exp(-np.sum(p * np.log(p))))
    nulls = geo.null_calibration(gram, ambient_dim, q=q, n_draws=null_draws, seed=seed)
    summary["nulls"] = {kind: {stat: c.as_dict() for stat, c in stats.items()} for kind, stats in nulls.items()}
    return summary


def _window_null(gram, ambient_dim: int, window: int, q: float, n_draws: int, seed: int) -> np.ndarray:
    """Window-r_q curves of random-walk null trajectories with the observed step norms: (n_draws, n_windows)."""
    rng = np.random.default_rng(seed)
    return np.stack([geo.window_dimension_curve(geo.null_increment_gram(gram, "random_walk", ambient_dim, rng),
                                                window, q) for _ in range(n_draws)])


def _saturation_fit(coordinate, entropy, seq_len: int) -> geo.SaturationFit:
    """The routing saturation fit, with the plateaus kept inside the reachable entropy range [0, ln T]."""
    return geo.fit_saturation(coordinate, entropy, h_bounds=(0.0, float(np.log(seq_len))))


def refit_saturation(config: ExperimentConfig, rows_by_point: dict, out_dir: str) -> None:
    """Recompute every stored routing saturation fit from the saved coordinate and entropy series, so that
    rows stored by an earlier version of the fit are summarised with the current one."""
    for results in rows_by_point.values():
        for result in results:
            arrays = np.load(os.path.join(out_dir, result["arrays"]))
            for routing in result["routing"]:
                layer = routing["layer"]
                fit = _saturation_fit(arrays[f"routing:{layer}"], np.array(result["attention"]["entropy"][layer]),
                                      config.seq_len)
                routing["saturation"] = fit.as_dict()


def _first_step_below(series, steps, fraction=0.5) -> int:
    """t_bubble: first snapshot step with h(t) <= h(0) - fraction (h(0) - min h) (reference section 5.3)."""
    series = np.asarray(series)
    threshold = series[0] - fraction * (series[0] - series.min())
    return int(steps[int(np.argmax(series <= threshold))])


@dataclass(frozen=True)
class SeedRun:
    """Trains and analyses one (setting, seed); `__call__(items)` is the validate.sweep task."""
    config: ExperimentConfig
    out_dir: str
    show_progress: bool = False

    def __call__(self, items):
        return [self.run_one(tuple(int(m) for m in point["markers"].split(",")), int(point["modulus"]), seed)
                for point, seed in items]

    def run_one(self, markers, modulus, seed) -> dict:
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        task = cfg.task_config(markers, modulus)
        probes = probe_sets(task, seed)
        probe_log = []
        started = time.perf_counter()
        bar = None
        if self.show_progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, desc=f"m={','.join(map(str, markers))} C={modulus} seed={seed}",
                       leave=False, mininterval=1.0)
        run = train_with_snapshots(task, ModelConfig.for_task(task, **cfg.model_kwargs()), cfg.train_config(seed),
                                   on_snapshot=lambda step, model: probe_log.append(
                                       probe_attention(model, probes, cfg.sparsify_k)),
                                   progress=None if bar is None else bar.update)
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - started
        result = self.analyse(run, probe_log, seed, markers, modulus)
        result["seconds"] = {"train": train_seconds, "analysis": time.perf_counter() - started - train_seconds}
        return result

    def analyse(self, run, probe_log, seed, markers, modulus) -> dict:
        cfg = self.config
        steps = run.snapshot_steps
        grams = {name: geo.increment_gram(X) for name, X in run.trajectories.items()}
        dims = {name: X.shape[1] for name, X in run.trajectories.items()}
        blocks = {name: _block_summary(grams[name], dims[name], cfg.q, cfg.null_draws, seed)
                  for name in grams}
        joint_gram = sum(grams.values())
        joint_dim = sum(dims.values())
        joint = _block_summary(joint_gram, joint_dim, cfg.q, cfg.null_draws, seed)
        window_curve = geo.window_dimension_curve(joint_gram, cfg.window, cfg.q)
        window_null = _window_null(joint_gram, joint_dim, cfg.window, cfg.q, cfg.null_draws, seed + 1)
        collapse = geo.collapse_index(window_curve, window_curve[-1])
        null_collapse = [geo.collapse_index(c, c[-1]) for c in window_null]
        null_sd = np.maximum(window_null.std(axis=0, ddof=1), 0.5)  # r_q is an integer: sd floor of half a unit
        late_z = float(np.mean((window_curve[collapse:] - window_null.mean(axis=0)[collapse:])
                               / null_sd[collapse:]))
        joint.update({
            "prefix_curve": geo.prefix_dimension_curve(joint_gram, cfg.q).tolist(),
            "window_curve": window_curve.tolist(),
            "window_null_mean": window_null.mean(axis=0).tolist(),
            "window_null_sd": window_null.std(axis=0, ddof=1).tolist(),
            "collapse_index": collapse,
            "collapse_step": int(steps[collapse + cfg.window - 1]),  # the window ending where it stays low
            "collapse_fraction": float(steps[collapse + cfg.window - 1] / steps[-1]),
            "null_collapse_fraction_median": float(np.median([steps[c + cfg.window - 1] / steps[-1]
                                                              for c in null_collapse])),
            "late_window_z": late_z,
        })
        attention = {key: np.array([p[key] for p in probe_log]).T.tolist()  # (layer, snapshot)
                     for key in ("entropy", "top1_mass", "top2_mass", "top4_mass", "target_mass")}
        attention["accuracy"] = [p["accuracy"] for p in probe_log]
        attention["accuracy_by_m"] = {m: [p["accuracy_by_m"][m] for p in probe_log]
                                      for m in probe_log[0]["accuracy_by_m"]}
        attention["entropy_by_m_last_layer"] = {m: [p["entropy_by_m"][m][-1] for p in probe_log]
                                                for m in probe_log[0]["entropy_by_m"]}
        attention["sparsified_accuracy_final"] = probe_log[-1]["sparsified_accuracy"]
        routing = [self.routing_for_layer(layer, run.trajectories, blocks, np.array(attention["entropy"][layer]),
                                          steps, seed) for layer in range(cfg.n_layers)]
        directions = {name: geo.principal_directions(X, ORIENTATION_K).astype(np.float32)
                      for name, X in run.trajectories.items()}
        arrays_path = self.save_arrays(markers, modulus, seed, grams, directions, routing)
        for r in routing:
            r.pop("coordinate")
        t_bubble = _first_step_below(attention["entropy"][-1], steps)
        return {
            "snapshot_steps": steps.tolist(),
            "final_probe_accuracy": attention["accuracy"][-1],
            "final_train_loss": float(np.mean(run.loss[-max(1, cfg.snapshot_every // 5):])),
            "loss_curve": [float(run.loss[max(0, s - cfg.snapshot_every):max(1, s)].mean()) for s in steps],
            "blocks": blocks, "joint": joint, "attention": attention, "routing": routing,
            "t_bubble_step": t_bubble, "arrays": arrays_path,
        }

    def routing_for_layer(self, layer, trajectories, blocks, entropy, steps, seed) -> dict:
        """The routing coordinate of one layer: among the PC coordinates (k <= r90) of its W_Q and W_K
        trajectories, the one that best tracks that layer's readout entropy; its saturation fit."""
        names, columns = [], []
        for kind in ("W_Q", "W_K"):
            name = f"L{layer}.{kind}"
            k = int(max(1, min(blocks[name]["r_q"], len(steps) - 1)))
            coordinates = geo.pc_coordinates(trajectories[name], k)
            columns.append(coordinates)
            names += [f"{name}.PC{j + 1}" for j in range(k)]
        candidates = np.concatenate(columns, axis=1)
        found = geo.routing_coordinate(candidates, entropy, n_permutations=2000,
                                       block_length=max(2, len(steps) // 10), seed=seed)
        fit = _saturation_fit(found.coordinate, entropy, self.config.seq_len)
        return {"layer": layer, "coordinate_name": names[found.index], "rho": found.rho,
                "p_value": found.p_value, "time_rho": found.time_rho, "saturation": fit.as_dict(),
                "entropy_start": float(entropy[0]), "entropy_min": float(entropy.min()),
                "entropy_final": float(entropy[-1]), "coordinate": found.coordinate}

    def save_arrays(self, markers, modulus, seed, grams, directions, routing) -> str:
        """Heavy per-seed arrays (top-3 PC directions, increment Grams, routing coordinates) beside the store."""
        os.makedirs(os.path.join(self.out_dir, "arrays"), exist_ok=True)
        name = f"{self.config.fingerprint()}_m{''.join(map(str, markers))}_C{modulus}_s{seed}.npz"
        path = os.path.join(self.out_dir, "arrays", name)
        payload = {f"dir:{k}": v for k, v in directions.items()}
        payload.update({f"gram:{k}": v for k, v in grams.items()})
        payload.update({f"routing:{r['layer']}": r["coordinate"] for r in routing})
        atomic_savez(path, payload)
        return os.path.relpath(path, self.out_dir)


# ----------------------------------------------------------------------------------------------------------
# Across seeds: the claims table (paper-faithful figure, null-corrected figure, verdict each)
# ----------------------------------------------------------------------------------------------------------

def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


def _with_se(mean: float, se: float, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} +- {se:.2f}" if np.isfinite(se) else f"{text} (one seed: no s.e.)"


def _tolerance_text(tol: float, se: float) -> str:
    return f"2 s.e. = {tol:.2f}" if np.isfinite(se) else "0 (one seed)"


def _block_names(n_layers: int) -> list[str]:
    return [f"L{layer}.{kind}" for layer in range(n_layers) for kind in BLOCK_KINDS]


def _stat_matrix(results, names, key, kind=None, field="observed") -> np.ndarray:
    """(n_seeds, n_blocks) of a block statistic, or of a null comparison's field when kind is given."""
    if kind is None:
        return np.array([[r["blocks"][n][key] for n in names] for r in results])
    return np.array([[r["blocks"][n]["nulls"][kind][key][field] for n in names] for r in results])


def orientation_overlaps(results, names, out_dir) -> dict:
    """Mean pairwise overlap of the top-3 PC subspaces across seeds, per block (reference section 5.2)."""
    directions = [np.load(os.path.join(out_dir, r["arrays"])) for r in results]
    per_block = {}
    for name in names:
        bases = [d[f"dir:{name}"].astype(np.float64) for d in directions]
        pairs = [geo.subspace_overlap(bases[i], bases[j]) for i in range(len(bases))
                 for j in range(i + 1, len(bases))]
        per_block[name] = float(np.mean(pairs)) if pairs else float("nan")
    return per_block


def claims_table(config: ExperimentConfig, rows_by_point: dict, out_dir: str) -> tuple[list, dict]:
    """The verdict rows and the aggregated metrics behind them."""
    main_key = _point_name(config.markers, config.modulus)
    main = rows_by_point[main_key]
    names = _block_names(config.n_layers)
    n_seeds = len(main)
    r90 = _stat_matrix(main, names, "r_q")
    r90_code = _stat_matrix(main, names, "r_q_code")
    null_mean = {k: _stat_matrix(main, names, "r_q", k, "null_mean") for k in geo.NULL_KINDS}
    null_sd = {k: _stat_matrix(main, names, "r_q", k, "null_sd") for k in geo.NULL_KINDS}
    p_low = {k: _stat_matrix(main, names, "r_q", k, "p_low") for k in geo.NULL_KINDS}
    pr_p_low = {k: _stat_matrix(main, names, "participation_ratio", k, "p_low") for k in geo.NULL_KINDS}
    increment_p = _stat_matrix(main, names, "increment_r_q", "random_walk", "p_low")
    metrics = {"blocks": names, "r90_mean_per_block": r90.mean(axis=0).tolist(),
               "r90_code_mean_per_block": r90_code.mean(axis=0).tolist(),
               "null_r90_mean_per_block": {k: v.mean(axis=0).tolist() for k, v in null_mean.items()},
               "null_r90_sd_per_block": {k: v.mean(axis=0).tolist() for k, v in null_sd.items()},
               "fraction_below_null": {k: float(np.mean(v < SIGNIFICANCE)) for k, v in p_low.items()},
               "fraction_pr_below_null": {k: float(np.mean(v < SIGNIFICANCE)) for k, v in pr_p_low.items()},
               "fraction_increment_r90_below_random_walk": float(np.mean(increment_p < SIGNIFICANCE)),
               "joint_r90": [r["joint"]["r_q"] for r in main],
               "joint_null_r90_mean": {k: float(np.mean([r["joint"]["nulls"][k]["r_q"]["null_mean"]
                                                         for r in main])) for k in geo.NULL_KINDS},
               "joint_p_low": {k: [r["joint"]["nulls"][k]["r_q"]["p_low"] for r in main] for k in geo.NULL_KINDS}}
    rows = []

    # C1 dimension 3-4 -------------------------------------------------------------------------------------
    mean, se = _mean_se(r90.mean(axis=1))
    tol = 2 * se if np.isfinite(se) else 0.0  # two standard errors over seeds of the block-averaged r90
    rows.append(_row("C1 dimension 3-4", "paper", "r90 per block, mean over blocks",
                     "3 <= r90 <= 4", f"{_with_se(mean, se)} (code's 8-PC r90: {r90_code.mean():.2f})",
                     _tolerance_text(tol, se), mean + tol >= 3 and mean - tol <= 4))
    for kind, label in (("random_walk", "N1 random walk"), ("shuffled_increments", "N2 shuffled incr.")):
        fraction = float(np.mean(p_low[kind] < SIGNIFICANCE))
        excess = float(np.mean(r90 - null_mean[kind]))
        rows.append(_row("C1 dimension 3-4", "null", f"share of blocks with r90 below {label}",
                         ">= 0.5 of (block, seed)",
                         f"{fraction:.2f} (null r90 {null_mean[kind].mean():.2f}; r90 - null {excess:+.2f})",
                         f"p < {SIGNIFICANCE}, {config.null_draws} draws", fraction >= 0.5))

    # C2 robustness ------------------------------------------------------------------------------------------
    if n_seeds > 1:
        seed_sd = float(r90.std(axis=0, ddof=1).mean())
        null_spread = float(null_sd["random_walk"].mean())
        rows.append(_row("C2 robust across seeds", "paper", "seed s.d. of r90, mean over blocks", "<= 1",
                         f"{seed_sd:.2f} (N1's own s.d. {null_spread:.2f})", "a bound", seed_sd <= 1))
        all_seeds_below = float(np.mean(np.all(p_low["random_walk"] < SIGNIFICANCE, axis=0)))
        rows.append(_row("C2 robust across seeds", "null", "share of blocks below N1 in every seed",
                         ">= 0.5", f"{all_seeds_below:.2f}", f"p < {SIGNIFICANCE} each seed",
                         all_seeds_below >= 0.5))
        metrics["seed_sd_r90"] = seed_sd
    else:
        rows.append(_row("C2 robust across seeds", "paper", "seed s.d. of r90", "<= 1", "one seed only", "-",
                         None))
    difficulty = {}
    for key, results in rows_by_point.items():
        if key == main_key:
            continue
        other = _stat_matrix(results, names, "r_q")
        other_null = _stat_matrix(results, names, "r_q", "random_walk", "null_mean")
        difficulty[key] = {"delta_r90": float(other.mean() - r90.mean()),
                           "delta_excess_over_null": float((other - other_null).mean()
                                                           - (r90 - null_mean["random_walk"]).mean()),
                           "r90_mean": float(other.mean()), "seeds": len(results),
                           "final_probe_accuracy": float(np.mean([r["final_probe_accuracy"] for r in results]))}
    metrics["difficulty"] = difficulty
    if difficulty:
        worst = max(difficulty.values(), key=lambda d: abs(d["delta_r90"]))
        worst_excess = max(difficulty.values(), key=lambda d: abs(d["delta_excess_over_null"]))
        rows.append(_row("C2 robust across m and C", "paper", "max |delta r90| over the m, C settings", "<= 1",
                         f"{abs(worst['delta_r90']):.2f} ({len(difficulty)} settings)", "a bound",
                         abs(worst["delta_r90"]) <= 1))
        rows.append(_row("C2 robust across m and C", "null", "max |delta (r90 - N1 mean)| over m, C", "<= 1",
                         f"{abs(worst_excess['delta_excess_over_null']):.2f}", "a bound",
                         abs(worst_excess["delta_excess_over_null"]) <= 1))

    # C3 orientation varies with the seed --------------------------------------------------------------------
    if n_seeds > 1:
        overlaps = orientation_overlaps(main, names, out_dir)
        block_dim = config.d_model ** 2
        random_overlaps = geo.random_subspace_overlaps(block_dim, ORIENTATION_K, n_draws=200, seed=0)
        observed = np.array(list(overlaps.values()))
        p_high = np.array([(1 + np.sum(random_overlaps >= o)) / (1 + random_overlaps.size) for o in observed])
        expectation = ORIENTATION_K / block_dim
        metrics["orientation_overlap_per_block"] = overlaps
        metrics["orientation_random_expectation"] = expectation
        rows.append(_row("C3 orientation varies", "paper", "top-3 PC overlap O across seeds",
                         "O << 1", f"{observed.mean():.4f} (max block {observed.max():.4f})",
                         "O <= 0.5", observed.mean() <= 0.5))
        fraction_above = float(np.mean(p_high < SIGNIFICANCE))
        rows.append(_row("C3 orientation varies", "null", "O / random expectation K/n_b",
                         "~ 1 in most blocks",
                         f"{observed.mean() / expectation:.1f}x; {fraction_above:.2f} of blocks above",
                         f"p < {SIGNIFICANCE}; K/n_b {expectation:.1e}", fraction_above < 0.5))
    else:
        rows.append(_row("C3 orientation varies", "paper", "overlap across seeds", "O << 1", "one seed only",
                         "-", None))

    # C4 routing saturation (last layer's readout entropy, as the code's bubble_metrics) ---------------------
    last = [r["routing"][-1] for r in main]
    h0 = np.array([l["entropy_start"] for l in last])
    hmin = np.array([l["entropy_min"] for l in last])
    hfinal = np.array([l["entropy_final"] for l in last])
    rows.append(_row("C4 routing saturation", "paper", "last-layer entropy start -> min -> final",
                     "min <= H(0) / 2", f"{h0.mean():.2f} -> {hmin.mean():.2f} -> {hfinal.mean():.2f}",
                     "a bound", bool(np.mean(hmin <= h0 / 2) >= 0.5)))
    passes = [l["p_value"] < SIGNIFICANCE and l["saturation"]["r_squared"] >= 0.8
              and l["saturation"]["late_slope_ratio"] <= 0.1 and abs(l["rho"]) > abs(l["time_rho"])
              for l in last]
    rows.append(_row("C4 routing saturation", "null", "routing coordinate vs entropy (medians)",
                     "p<.05 R2>=.8 S<=.1 |rho|>clock",
                     f"|rho| {np.median([abs(l['rho']) for l in last]):.2f} "
                     f"(clock {np.median([abs(l['time_rho']) for l in last]):.2f}) "
                     f"p {np.median([l['p_value'] for l in last]):.3f} "
                     f"R2 {np.median([l['saturation']['r_squared'] for l in last]):.2f} "
                     f"S {np.median([l['saturation']['late_slope_ratio'] for l in last]):.2f}; "
                     f"{sum(passes)}/{len(passes)} seeds", "most seeds", sum(passes) > len(passes) / 2))
    metrics["routing_last_layer"] = last
    # the paper: bubble timing "correlates with the stabilization of the execution manifold" (no number given)
    metrics["bubble_vs_collapse_steps"] = [{"t_bubble": r["t_bubble_step"], "collapse": r["joint"]["collapse_step"]}
                                           for r in main]

    # C5 collapse within the first 20-30% of training ---------------------------------------------------------
    fractions = np.array([r["joint"]["collapse_fraction"] for r in main])
    null_fractions = np.array([r["joint"]["null_collapse_fraction_median"] for r in main])
    late_z = np.array([r["joint"]["late_window_z"] for r in main])
    rows.append(_row("C5 collapse in first 20-30%", "paper",
                     f"window-r90 collapse step / total ({config.window} snap.)",
                     "<= 0.3", f"{np.median(fractions):.2f} (median over seeds)", "a bound",
                     bool(np.median(fractions) <= 0.3)))
    # the null-corrected claim: after the collapse the windows sit below the random walk with the same step
    # norms, and the collapse comes earlier than that null's own (else the step-size schedule explains it)
    rows.append(_row("C5 collapse in first 20-30%", "null", "late window-r90 z vs N1; N1's collapse",
                     "z <= -2, earlier than N1",
                     f"z {np.median(late_z):+.2f}; N1 collapses at {np.median(null_fractions):.2f}",
                     "2 null s.d.", bool(np.median(late_z) <= -2 and np.median(fractions) < np.median(null_fractions)
                                         and np.median(fractions) <= 0.3)))

    # C6 W_V / W_O lower than W_Q / W_K --------------------------------------------------------------------
    kinds = np.array([n.split(".")[1] for n in names])
    qk, vo = np.isin(kinds, ["W_Q", "W_K"]), np.isin(kinds, ["W_V", "W_O"])
    difference = r90[:, qk].mean(axis=1) - r90[:, vo].mean(axis=1)
    excess = r90 - null_mean["random_walk"]
    excess_difference = excess[:, qk].mean(axis=1) - excess[:, vo].mean(axis=1)
    for figure, label, values in (("paper", "r90(QK) - r90(VO)", difference),
                                  ("null", "(r90 - N1 mean): QK - VO", excess_difference)):
        mean, se = _mean_se(values)
        tol = 2 * se if np.isfinite(se) else 0.0
        rows.append(_row("C6 W_V/W_O below W_Q/W_K", figure, label, "> 0", _with_se(mean, se, signed=True),
                         _tolerance_text(tol, se), mean - tol > 0))
    return rows, metrics


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------

def make_figures(config: ExperimentConfig, rows_by_point: dict, metrics: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = rows_by_point[_point_name(config.markers, config.modulus)]
    names = _block_names(config.n_layers)
    layers = np.arange(config.n_layers)
    paths = []

    # r90 per block and layer with null bands --------------------------------------------------------------
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True)
    for ax, kind in zip(axes, BLOCK_KINDS):
        index = [names.index(f"L{l}.{kind}") for l in layers]
        observed = _stat_matrix(main, names, "r_q")[:, index]
        for null_kind, color, label in (("random_walk", "0.6", "N1 random walk"),
                                        ("shuffled_increments", "tab:cyan", "N2 shuffled increments")):
            mean = _stat_matrix(main, names, "r_q", null_kind, "null_mean")[:, index].mean(axis=0)
            sd = _stat_matrix(main, names, "r_q", null_kind, "null_sd")[:, index].mean(axis=0)
            ax.fill_between(layers, mean - 2 * sd, mean + 2 * sd, color=color, alpha=0.35,
                            label=f"{label} (mean +- 2 s.d.)")
            ax.plot(layers, mean, color=color, lw=1)
        ax.axhspan(3, 4, color="tab:orange", alpha=0.15, label="paper: 3-4")
        for seed_values in observed:
            ax.plot(layers, seed_values, "o", color="tab:blue", alpha=0.35, ms=3)
        mean_obs = observed.mean(axis=0)
        err = observed.std(axis=0, ddof=1) / np.sqrt(len(observed)) if len(observed) > 1 else 0 * mean_obs
        ax.errorbar(layers, mean_obs, yerr=err, color="tab:blue", marker="s", lw=2, capsize=3,
                    label="measured r90 (seeds, mean +- s.e.)")
        ax.set_title(kind)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].set_ylabel(f"r{int(round(config.q * 100))} (PCs for {config.q:.0%} of variance)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Trajectory dimension per block against null models with the same {config.n_snapshots} "
                 f"snapshots ({len(main)} seeds)", fontsize=10)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, "execution_manifold_dimension.png"))

    # entropy and routing coordinate over training -----------------------------------------------------------
    steps = np.array(main[0]["snapshot_steps"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    entropy = np.array([r["attention"]["entropy"] for r in main])  # (seeds, layers, snapshots)
    for layer in layers:
        axes[0, 0].plot(steps, entropy[:, layer].mean(axis=0), label=f"layer {layer}")
    axes[0, 0].axhline(np.log(config.seq_len), color="k", ls=":", lw=1, label="ln T (uniform)")
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("readout-query attention entropy (nats)")
    axes[0, 0].set_title("attention concentration (mean over seeds and m)")
    axes[0, 0].legend(fontsize=7)
    for m, acc in main[0]["attention"]["accuracy_by_m"].items():
        axes[0, 1].plot(steps, acc, label=f"m = {m}")
    for m, h in main[0]["attention"]["entropy_by_m_last_layer"].items():
        axes[0, 1].plot(steps, np.array(h) / np.log(config.seq_len), ls="--", lw=1,
                        label=f"last-layer entropy / ln T, m = {m}")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_title(f"seed {config.seeds[0]}: probe accuracy (solid), entropy (dashed)")
    axes[0, 1].legend(fontsize=6, ncol=2)
    arrays = np.load(os.path.join(out_dir, main[0]["arrays"]))
    last = main[0]["routing"][-1]
    coordinate = arrays[f"routing:{config.n_layers - 1}"]
    h_last = entropy[0, -1]
    axes[1, 0].plot(steps, coordinate, color="tab:purple")
    axes[1, 0].set_xlabel("step")
    axes[1, 0].set_ylabel(f"routing coordinate {last['coordinate_name']}")
    axes[1, 0].set_title(f"seed {config.seeds[0]}: routing coordinate, rho_S = {last['rho']:+.2f} "
                         f"(p = {last['p_value']:.3f}; clock {last['time_rho']:+.2f})", fontsize=9)
    sat = last["saturation"]
    grid = np.linspace(coordinate.min(), coordinate.max(), 200)
    points = axes[1, 1].scatter(coordinate, h_last, c=steps, cmap="viridis", s=18, label="snapshots")
    fig.colorbar(points, ax=axes[1, 1], label="step")
    axes[1, 1].plot(grid, geo.saturation_curve(grid, sat["h_min"], sat["h_max"], sat["r0"], sat["tau"]),
                    color="tab:red", label=f"sigmoid fit R^2 = {sat['r_squared']:.2f}, S = "
                                           f"{sat['late_slope_ratio']:.2f}")
    axes[1, 1].set_xlabel("routing coordinate")
    axes[1, 1].set_ylabel("last-layer entropy (nats)")
    axes[1, 1].set_title("saturation along the routing coordinate", fontsize=9)
    axes[1, 1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, "execution_manifold_routing.png"))

    # collapse: window r90 of the joint trajectory against the random-walk null ------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    window_end = steps[config.window - 1:]
    for i, r in enumerate(main):
        axes[0].plot(window_end, r["joint"]["window_curve"], color="tab:blue", alpha=0.6,
                     label="measured (each seed)" if i == 0 else None)
        axes[1].plot(steps[2:], r["joint"]["prefix_curve"], color="tab:blue", alpha=0.6,
                     label="measured prefix r90 (each seed)" if i == 0 else None)
    null_mean = np.mean([r["joint"]["window_null_mean"] for r in main], axis=0)
    null_sd = np.mean([r["joint"]["window_null_sd"] for r in main], axis=0)
    axes[0].fill_between(window_end, null_mean - 2 * null_sd, null_mean + 2 * null_sd, color="0.6", alpha=0.4,
                         label="N1 random walk, same step norms (mean +- 2 s.d.)")
    axes[0].plot(window_end, null_mean, color="0.3", ls="--", lw=1)
    for r in main:
        axes[0].axvline(r["joint"]["collapse_step"], color="tab:red", lw=0.8, alpha=0.6)
    axes[0].axvspan(0, 0.3 * steps[-1], color="tab:orange", alpha=0.1, label="paper: first 30%")
    axes[0].set_xlabel("step at window end")
    axes[0].set_ylabel(f"r90 of the last {config.window} snapshots (all blocks jointly)")
    axes[0].set_title("sliding-window dimension; red lines: collapse step", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].axhline(metrics["joint_null_r90_mean"]["random_walk"], color="0.4", ls="--",
                    label="N1 null r90 of the whole trajectory")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("r90 of snapshots 0..t (all blocks jointly)")
    axes[1].set_title("prefix dimension", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, "execution_manifold_collapse.png"))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def _point_name(markers, modulus) -> str:
    return f"m={','.join(map(str, markers))} C={modulus}"


def _int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


# flag -> config field, for the flags whose default the --quick preset changes
_PRESET_FLAGS = {"steps": "steps", "snapshot_every": "snapshot_every", "seeds": "seeds", "layers": "n_layers",
                 "d_model": "d_model", "null_draws": "null_draws", "window": "window", "lr": "lr",
                 "sweep_max_markers": "sweep_max_markers", "sweep_moduli": "sweep_moduli",
                 "difficulty_seeds": "difficulty_seeds"}


# part-two flag -> PartTwoConfig field; the training of part two comes from the part-one flags
_PART_TWO_FLAGS = {"commutator_lr": "commutator_lr", "commutator_samples": "commutator_samples",
                   "commutator_precision": "commutator_precision", "k_per_block": "k_per_block",
                   "sae_steps": "sae_steps", "sae_examples": "sae_examples", "sae_d": "sae_d", "sae_k": "sae_k",
                   "ablation_sizes": "ablation_sizes"}
PARTS = ("both", "one", "two")
# the flags that only part one reads (hidden from the part-two alias, python -m validate.execution_manifold_ii)
_PART_ONE_ONLY = ("--q", "--null-draws", "--sweep-max-markers", "--sweep-moduli", "--difficulty-seeds")


def _k_per_block(text: str):
    if text == "r90":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'r90', got {text!r}")


def build_parser(command: str = COMMAND) -> argparse.ArgumentParser:
    """The flags of both parts; command "execution_manifold_ii" (the part-two alias) has no --part and hides the
    flags only part one reads."""
    d, d2 = ExperimentConfig(), em2.PartTwoConfig()
    both = command == COMMAND

    def preset(field, text):  # help for a flag whose default --quick changes
        quick = QUICK.get(field, "per optimizer" if field == "lr" else getattr(d, field))
        default = "3e-4 (adamw) / 1e-3 (sgd)" if field == "lr" else getattr(d, field)
        return f"{text} (default {default}; with --quick {quick})"

    def preset_two(field, text):
        default = getattr(d2, field)
        quick = em2.QUICK.get(field, default)
        return f"{text} (default {default}" + (f"; with --quick {quick})" if quick != default else ")")

    doc = " ".join((__doc__ if both else em2.__doc__).split("\n\n")[0].split())
    if not both:
        doc += f" The same as `python -m validate.{COMMAND} --part two`, writing {command}.json."
    p = argparse.ArgumentParser(prog=f"python -m validate.{command}", usage="%(prog)s [options]", description=doc)
    if both:
        p.add_argument("--part", choices=PARTS, default="both",
                       help="both (default): part one (C1-C6, every seed and setting), then part two (C7-C12, "
                            "one run of the main setting's first seed); one: C1-C6 only; two: C7-C12 only")
    t = p.add_argument_group("training (part one's runs; part two's run uses the same, with its first seed)")
    t.add_argument("--steps", type=int, help=preset("steps", "training steps per run"))
    t.add_argument("--snapshot-every", type=int, help=preset("snapshot_every", "steps between weight snapshots"))
    t.add_argument("--seeds", type=int, nargs="+", help=preset("seeds", "seeds of the main setting"))
    t.add_argument("--seed", type=int, default=None, help="run this single seed instead of --seeds (default: none)")
    t.add_argument("--markers", type=_int_list, default=d.markers,
                   help=f"marker counts m mixed in training, e.g. 1,2,3,4 (default {d.markers})")
    t.add_argument("--modulus", type=int, default=d.modulus, help=f"C: labels are sums mod C (default {d.modulus})")
    t.add_argument("--seq-len", type=int, default=d.seq_len, help="T (default 16 as the code; paper text: 32)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw (the code, default) or sgd (the paper text)")
    t.add_argument("--lr", type=float, help=preset("lr", "learning rate"))
    t.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default 0.01 with adamw, as the code; 0 with sgd, as the paper text)")
    t.add_argument("--mlp", choices=MLP_MODES, default=d.mlp,
                   help="none (attention-only, default), on (standard blocks), unused (built, never called: code's P)")
    t.add_argument("--layers", type=int, help=preset("n_layers", "transformer layers"))
    t.add_argument("--d-model", type=int, help=preset("d_model", "model width"))
    t.add_argument("--heads", type=int, default=d.n_heads, help=f"attention heads (default {d.n_heads})")
    t.add_argument("--window", type=int,
                   help=preset("window", "snapshots per sliding window (part one) and per window basis (part two)"))
    one = p.add_argument_group("part one: trajectory dimension, nulls, routing (C1-C6)")
    one.add_argument("--q", type=float, default=d.q, help=f"variance fraction of r_q (default {d.q})")
    one.add_argument("--null-draws", type=int, help=preset("null_draws", "draws per null model"))
    one.add_argument("--sweep-max-markers", type=_int_list,
                     help=preset("sweep_max_markers", "difficulty sweep: extra settings with mixed m in 1..M"))
    one.add_argument("--sweep-moduli", type=_int_list, help=preset("sweep_moduli", "difficulty sweep: other C"))
    one.add_argument("--difficulty-seeds", type=int,
                     help=preset("difficulty_seeds", "seeds per difficulty setting, 0 skips the sweep"))
    if not both:
        for action in one._group_actions:
            action.help = argparse.SUPPRESS
    two = p.add_argument_group("part two: SGD commutators and sparse autoencoders (C7-C12)")
    two.add_argument("--part-two-mlp", choices=("auto",) + MLP_MODES, default="auto",
                     help="MLPs of part two's run (default auto: the code's never-called MLPs, which dilute its "
                          "whole-vector baseline, when --mlp is none; else as --mlp)")
    two.add_argument("--commutator-lr", type=float, help=preset_two("commutator_lr", "eta of the SGD probe steps"))
    two.add_argument("--commutator-samples", type=int,
                     help=preset_two("commutator_samples", "commutators per snapshot"))
    two.add_argument("--commutator-precision", choices=("float64", "float32"),
                     help=preset_two("commutator_precision", "float64: paths on a float64 copy; float32: in place, "
                                                             "as the code"))
    two.add_argument("--k-per-block", type=_k_per_block,
                     help=preset_two("k_per_block", "K_b, trajectory PCs per block of the execution basis: an "
                                                    "integer or r90"))
    two.add_argument("--sae-steps", type=int, help=preset_two("sae_steps", "SAE training steps"))
    two.add_argument("--sae-examples", type=int, help=preset_two("sae_examples", "activation vectors per SAE"))
    two.add_argument("--sae-d", type=int, help=preset_two("sae_d", "SAE latents"))
    two.add_argument("--sae-k", type=int, help=preset_two("sae_k", "TopK k"))
    two.add_argument("--ablation-sizes", type=_int_list,
                     help=preset_two("ablation_sizes", "numbers of latents / PCA directions ablated"))
    r = p.add_argument_group("running")
    r.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    r.add_argument("--threads", type=int, default=d.threads, help=f"torch CPU threads per run (default {d.threads})")
    r.add_argument("--workers", type=int, default=0,
                   help="worker processes for the runs (default 0: in this process, with a progress bar)")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address for the runs (default: local)")
    r.add_argument("--fresh", action="store_true", help="discard the stored results of this configuration first")
    r.add_argument("--out", default=None, help=f"output directory (default runs/{command}/)")
    r.add_argument("--quick", action="store_true",
                   help="small presets of both parts for smoke tests: 2 layers, d=64, 1500 steps, 3 seeds, "
                        "lr 1e-3; smaller SAEs, 5 commutators per snapshot (both parts: 3.2-3.5 min measured on 2 "
                        "shared CPU cores)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return p


def config_from_args(args) -> ExperimentConfig:
    weight_decay = args.weight_decay if args.weight_decay is not None else DEFAULT_WEIGHT_DECAY[args.optimizer]
    values = dict(markers=args.markers, modulus=args.modulus, seq_len=args.seq_len, batch_size=args.batch_size,
                  optimizer=args.optimizer, weight_decay=weight_decay, mlp=args.mlp, n_heads=args.heads,
                  q=args.q, device=args.device, threads=args.threads)
    defaults = dict(dataclasses.asdict(ExperimentConfig()), lr=DEFAULT_LR[args.optimizer])
    for flag, field in _PRESET_FLAGS.items():
        given = getattr(args, flag)
        if given is not None:
            values[field] = tuple(given) if isinstance(given, list) else given
        elif args.quick and field in QUICK:
            values[field] = QUICK[field]
        else:
            values[field] = defaults[field]
    if args.seed is not None:
        values["seeds"] = (args.seed,)
    return ExperimentConfig(**values)


def part_two_config_from_args(args, config: ExperimentConfig) -> em2.PartTwoConfig:
    """Part two's run: the training of part one's main setting with its first seed (PartTwoConfig.from_experiment),
    part two's --quick preset for its own fields, then the part-two flags."""
    experiment_fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    overrides = {k: v for k, v in em2.QUICK.items() if k not in experiment_fields} if args.quick else {}
    for flag, field in _PART_TWO_FLAGS.items():
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    mlp = None if args.part_two_mlp == "auto" else args.part_two_mlp
    return em2.PartTwoConfig.from_experiment(config, mlp=mlp, **overrides)


@dataclass
class PartOneResult:
    rows: list
    metrics: dict
    figures: list
    runs: dict  # "m=... C=..." -> the per-seed results


def run_part_one(config: ExperimentConfig, out_dir: str, workers: int = 0, scheduler: str | None = None,
                 fresh: bool = False, show_progress: bool = False, log=None) -> PartOneResult:
    """Every (setting, seed) through the SQLite store out_dir/sweep.sqlite (resumable), then the claims table
    and the figures. log(text), if given, reports each batch of runs."""
    os.makedirs(out_dir, exist_ok=True)
    store = SweepStore(os.path.join(out_dir, "sweep.sqlite"), sweep=f"{COMMAND}-{config.fingerprint()}")
    task = SeedRun(config, out_dir, show_progress=show_progress and workers == 0 and scheduler is None)
    rows_by_point = {}
    points = [{"markers": ",".join(map(str, markers)), "modulus": modulus} for markers, modulus in config.points()]
    # the main setting with every seed, then all difficulty settings together with the first few seeds
    for index, (batch, seeds) in enumerate(((points[:1], config.seeds),
                                            (points[1:], config.seeds[:config.difficulty_seeds]))):
        if not batch or not seeds:
            continue
        if log is not None:
            names = [_point_name(p["markers"].split(","), p["modulus"]) for p in batch]
            log(f"{'; '.join(names)}: seeds {list(seeds)}")
        rows = run_sweep(task, batch, list(seeds), store, max_workers=workers, scheduler=scheduler,
                         fresh=fresh and index == 0)  # one sweep name: the first call clears all its rows
        for row in rows:
            key = _point_name(row["point"]["markers"].split(","), row["point"]["modulus"])
            rows_by_point.setdefault(key, []).append(row["result"])
    refit_saturation(config, rows_by_point, out_dir)
    rows, metrics = claims_table(config, rows_by_point, out_dir)
    figures = make_figures(config, rows_by_point, metrics, out_dir)
    return PartOneResult(rows, metrics, figures, rows_by_point)


def main(argv=None, command: str = COMMAND) -> int:
    """The command line of both parts; command "execution_manifold_ii" runs part two alone under that name."""
    parser = build_parser(command)
    args = parser.parse_args(argv)
    part = getattr(args, "part", "two")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    config_two = None
    if part in ("both", "two"):
        try:
            config_two = part_two_config_from_args(args, config)
        except ValueError as error:
            parser.error(f"part two: {error}" + (" (--part one runs part one alone)" if part == "both" else ""))
    out_dir = args.out or os.path.join("runs", command)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        parser.error(f"--out {out_dir!r} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(config.threads)
    show_progress = not args.quiet and sys.stderr.isatty()
    log = None if args.quiet else (lambda text: print(f"[{command}] {text}", file=sys.stderr))
    started = time.perf_counter()
    record = {"command": command, "parts": ["one", "two"] if part == "both" else [part]}
    rows, figures, timings = [], [], {}

    if part in ("both", "one"):
        one = run_part_one(config, out_dir, workers=args.workers, scheduler=args.scheduler, fresh=args.fresh,
                           show_progress=show_progress, log=log)
        rows += one.rows
        figures += one.figures
        record["config"] = dataclasses.asdict(config)
        timings["train_seconds_per_run"] = {k: [r["seconds"]["train"] for r in v] for k, v in one.runs.items()}
        timings["part_one_seconds"] = time.perf_counter() - started
    if part in ("both", "two"):
        started_two = time.perf_counter()
        if log is not None:
            log(f"part two: {config_two.n_layers} layers d={config_two.d_model}, {config_two.steps} steps, "
                f"seed {config_two.seed}, mlp {config_two.mlp}: commutators at every snapshot, SAEs at "
                f"{len(config_two.sae_stages)} checkpoints")
        two = em2.stored_part_two(config_two, out_dir, fresh=args.fresh, max_workers=args.workers,
                                  scheduler=args.scheduler, show_progress=show_progress)
        rows += two.rows
        figures += two.figures
        record["config_part_two"] = dataclasses.asdict(config_two)
        timings["part_two_run_seconds"] = two.metrics["seconds"]  # as computed, also when read from the store
        timings["part_two_seconds"] = time.perf_counter() - started_two
    timings["total_seconds"] = time.perf_counter() - started

    print(format_table(rows))
    record.update(versions=package_versions(), timings=timings, claims=rows)
    if part in ("both", "one"):
        record["metrics"] = one.metrics
        record["runs"] = {key: [{k: v for k, v in r.items() if k != "loss_curve"} for r in results]
                          for key, results in one.runs.items()}
    if part in ("both", "two"):
        record["metrics_part_two"] = two.metrics
    record["figures"] = [os.path.basename(p) for p in figures]
    path = os.path.join(out_dir, f"{command}.json")
    atomic_write_text(path, json.dumps(record, indent=1, default=float))
    if log is not None:
        log(f"wrote {path} and {len(figures)} figures in {timings['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
