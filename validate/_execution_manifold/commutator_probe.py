"""Part two's probe of a training run: SGD commutators at every snapshot, aligned with the execution subspace
(Xu 2026, section 3.3.2; the commutator and its alignment are measured by validate._execution_manifold.commutator).

    probe = CommutatorProbe(config, task)      the on_snapshot hook of train_with_snapshots
    commutator_summary(probe)                  the series over training: ratios against the three baselines,
                                               the perpendicular fractions, the defect D, early and late medians
    leading_term_check(model, task, config)    the measured delta against its leading term (HVPs)

`config` is part two's configuration (validate._execution_manifold.part_two.PartTwoConfig). The paper's "early"
and "late" are the first and last 20% of the measurements (Xu 2026 reports medians of 9.7x and 2.1x over them);
`early_late` takes them.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from validate._execution_manifold import commutator as comm
from validate._execution_manifold import geometry as geo
from validate._execution_manifold.modular import TaskConfig, cross_entropy_and_accuracy, sample_batch
from validate._execution_manifold.trajectory import Diverged


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

    def __init__(self, config, task: TaskConfig):
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
        n_snap = config.run.n_snapshots
        self.checkpoint_indices = sorted({min(n_snap - 1, int(round(f * (n_snap - 1)))) for f in config.sae_stages})
        self.seconds = 0.0

    def __call__(self, step: int, model) -> None:
        """Measure at this snapshot; Diverged where a commutator leaves the finite numbers (a model whose loss
        or gradient is NaN or inf, or an eta too large for the steps)."""
        try:
            self._measure(step, model)
        except comm.NonFiniteCommutator:
            raise Diverged(step, "commutator") from None

    def _measure(self, step: int, model) -> None:
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
            a = sample_batch(self.task, m_a, self.generator).to(cfg.run.device)
            b = sample_batch(self.task, m_b, self.generator).to(cfg.run.device)
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
                expected = comm.ratio(sum(d.shape[1] / s.size * float(np.sum(p.astype(np.float64) ** 2))
                                     for d, s, p in zip(basis.directions, basis.slices, parts)), total)
                row[key.split("_")[0]] = {"rho_exec": float(rho),
                                          "ratio_energy_block": comm.ratio(float(rho ** 2), expected)}
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


def _spearman_with_time(values: np.ndarray) -> float:
    """Spearman of a series with its measurement index, over its finite entries (NaN with fewer than 2: a ratio
    is NaN where its baseline is 0, e.g. an empty basis)."""
    finite = np.isfinite(values)
    if finite.sum() < 2:
        return float("nan")
    return geo.spearman(np.arange(len(values), dtype=float)[finite], values[finite])


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
                    part[key][how + "_spearman_time"] = _spearman_with_time(values)
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


def leading_term_check(model, task: TaskConfig, config) -> dict:
    """At the end of training: how well the leading term eta^2 (H_B g_A - H_A g_B) (Hessian-vector products)
    describes the measured float64 commutator, at eta and eta / 4 (the error should fall about 4x, O(eta))."""
    generator = torch.Generator().manual_seed(99_991 * (config.seed + 1))
    a = sample_batch(task, max(task.markers), generator).to(config.run.device)
    b = sample_batch(task, min(task.markers), generator).to(config.run.device)
    working = copy.deepcopy(model).double()
    out = {}
    for label, eta in (("eta", config.commutator_lr), ("eta_over_4", config.commutator_lr / 4)):
        fd = comm.sgd_commutator(working, _loss, a, b, eta)
        hvp = comm.hvp_commutator(working, _loss, a, b, eta)
        out[label] = {"eta": eta, "relative_difference": float((fd - hvp).norm() / hvp.norm())}
    return out

