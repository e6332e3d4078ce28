"""Part one of the execution-manifold experiment (claims C1-C6 of Xu 2026): train every seed of the main
setting and of the difficulty sweep, recording the W_Q, W_K, W_V, W_O trajectory of every layer and the
attention at the readout query, and analyse each run against null models.

    config = PartOneConfig(run=RunConfig(steps=1500, ...), seeds=(0, 1, 2))
    runs = run_part_one(config, out_dir)       # {"m=1,2,3,4 C=8": [per-seed result, ...], ...}

Every (setting, seed) is one row of the SQLite store out_dir/sweep.sqlite (validate._common.sweep), so a rerun
resumes; the heavy per-seed arrays (PC directions, increment Grams, routing coordinates) are saved beside it.
The claims and figures are made from `runs` by validate._execution_manifold.claims and .figures.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from validate._common import checks
from validate._common.cli import prepare_output_directory
from validate._common.reporting import atomic_savez, progress
from validate._common.sweep import SweepStore, run_sweep
from validate._execution_manifold import geometry as geo
from validate._execution_manifold.modular import probe_sets
from validate._execution_manifold.stacked_training import train_stacked
from validate._execution_manifold.trajectory import Diverged, RunConfig, diverged_result, loss_curve

SWEEP = "execution_manifold"  # the store's name prefix of part one's rows
BLOCK_KINDS = ("W_Q", "W_K", "W_V", "W_O")
# top PCs per block compared across seeds: the paper's execution basis keeps 3 per block (Xu 2026, section 3.3.2)
ORIENTATION_K = 3


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartOneConfig:
    """Part one: `run` trained with every seed (the main setting), then the difficulty sweep (mixed m in 1..M for
    M in sweep_max_markers, and the other moduli) with the first `difficulty_seeds` seeds. Defaults are the
    released code's run (github.com/skydancerosel/bubble-modadd) with the five seeds of the paper's Figure 1.

    q: the variance fraction of r_q (the paper's r90: q = 0.9, section 3.3.1); null_draws: draws per null
    model; window: snapshots per sliding window of the collapse curve; probe_examples: probe sequences per m;
    sparsify_k: the top-k attention sparsifications evaluated (the code's `eval_with_k`)."""
    run: RunConfig = field(default_factory=RunConfig)
    seeds: tuple = (0, 1, 2, 3, 4)
    q: float = 0.9
    null_draws: int = 200
    window: int = 10
    probe_examples: int = 128
    sparsify_k: tuple = (8, 4, 2, 1)
    sweep_max_markers: tuple = (2, 6)
    sweep_moduli: tuple = (16,)
    difficulty_seeds: int = 2

    def __post_init__(self):
        checks.field(self, "seeds", checks.seeds)
        n_snapshots = self.run.n_snapshots
        if n_snapshots < 6:
            raise ValueError(f"steps / snapshot_every must give >= 6 snapshots, got {n_snapshots} "
                             f"(steps={self.run.steps}, snapshot_every={self.run.snapshot_every})")
        task = self.run.task_config()
        checks.field(self, "q", checks.fraction)
        checks.field(self, "window", checks.integer, 3, n_snapshots)  # snapshots per window
        checks.field(self, "null_draws", checks.integer, 20)  # p-values below 0.05 need >= 20 draws
        checks.field(self, "probe_examples", checks.integer, 1)
        checks.field(self, "sparsify_k", checks.sequence, lambda name, k: checks.integer(name, k, 1))
        checks.field(self, "sweep_max_markers", checks.sequence,
                     lambda name, M: checks.integer(name, M, 1, task.largest_marker_count), empty=True)
        checks.field(self, "sweep_moduli", checks.sequence,
                     lambda name, C: checks.integer(name, C, 2, task.marker_offset), empty=True)
        checks.field(self, "difficulty_seeds", checks.integer, 0, len(self.seeds))  # the first seeds of --seeds
        for markers, modulus in self.points():  # each setting's task checks its own fields now, not in a worker
            self.run.task_config(markers, modulus)

    def points(self) -> list[tuple[tuple, int]]:
        """(markers, modulus) of the main setting, then the difficulty sweep (mixed m in 1..M; other C)."""
        points = [(self.run.markers, self.run.modulus)]
        if self.difficulty_seeds:
            points += [(tuple(range(1, M + 1)), self.run.modulus) for M in self.sweep_max_markers]
            points += [(self.run.markers, C) for C in self.sweep_moduli]
        unique = []
        for p in points:
            if p not in unique:
                unique.append(p)
        return unique

    def fingerprint(self) -> str:
        """Names the sweep in the SQLite store: everything that changes a per-seed result except the point
        (markers, modulus) and the seed."""
        values = {name: value for name, value in self.run.numbers_fields().items()
                  if name not in ("markers", "modulus")}
        values.update(q=self.q, null_draws=self.null_draws, window=self.window, probe_examples=self.probe_examples,
                      sparsify_k=self.sparsify_k)
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def point_name(markers, modulus) -> str:
    return f"m={','.join(map(str, markers))} C={modulus}"


def block_names(n_layers: int) -> list[str]:
    return [f"L{layer}.{kind}" for layer in range(n_layers) for kind in BLOCK_KINDS]


def stat_matrix(results, names, key, kind=None, field="observed") -> np.ndarray:
    """(n_seeds, n_blocks) of a block statistic, or of a null comparison's field when kind is given."""
    if kind is None:
        return np.array([[r["blocks"][n][key] for n in names] for r in results])
    return np.array([[r["blocks"][n]["nulls"][kind][key][field] for n in names] for r in results])


# ----------------------------------------------------------------------------------------------------------
# Attention probes at the readout query (the released code's `bubble_metrics` and `eval_with_k`)
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
# One (setting, seed): train, record, analyse. A picklable task for validate._common.sweep.
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
    summary["null_seed"] = seed  # claims.refresh_stored_nulls redraws summaries stored without one
    return summary


def _window_null(gram, ambient_dim: int, window: int, q: float, n_draws: int, seed: int) -> np.ndarray:
    """Window-r_q curves of random-walk null trajectories with the observed step norms: (n_draws, n_windows)."""
    rng = np.random.default_rng(seed)
    return np.stack([geo.window_dimension_curve(geo.null_increment_gram(gram, "random_walk", ambient_dim, rng),
                                                window, q) for _ in range(n_draws)])


def _saturation_fit(coordinate, entropy, seq_len: int) -> dict:
    """The routing saturation fit, with the plateaus kept inside the reachable entropy range [0, ln T]; every
    field NaN where the coordinate or the entropy never moved (a frozen run: nothing to fit) or is not finite."""
    series = np.concatenate([coordinate, entropy])
    if not np.all(np.isfinite(series)) or np.ptp(coordinate) == 0 or np.ptp(entropy) == 0:
        return {name: float("nan") for name in geo.SaturationFit.__dataclass_fields__}
    return geo.fit_saturation(coordinate, entropy, h_bounds=(0.0, float(np.log(seq_len)))).as_dict()


def refit_saturation(config: PartOneConfig, runs: dict, out_dir: str) -> None:
    """Recompute every stored routing saturation fit from the saved coordinate and entropy series, so that
    rows stored by an earlier version of the fit are summarised with the current one (diverged runs have none)."""
    for results in runs.values():
        for result in finished(results):
            arrays = np.load(os.path.join(out_dir, result["arrays"]))
            for routing in result["routing"]:
                layer = routing["layer"]
                routing["saturation"] = _saturation_fit(arrays[f"routing:{layer}"],
                                                        np.array(result["attention"]["entropy"][layer]),
                                                        config.run.seq_len)


def finished(results: list[dict]) -> list[dict]:
    """The per-seed results that did not diverge (rows stored before divergence was recorded have no key)."""
    return [r for r in results if not r.get("diverged")]


def diverged_runs(runs: dict) -> list[dict]:
    """[{"setting", "seed", "step", "where"}] of every (setting, seed) of run_part_one's `runs` that diverged."""
    return [{"setting": key, "seed": r.get("seed"), **r["diverged"]} for key, results in runs.items()
            for r in results if r.get("diverged")]


def stored_arrays_missing(config: PartOneConfig, out_dir: str) -> list[str]:
    """The per-seed array files that stored rows of this configuration name but that are not in out_dir (deleted
    by hand): the claims and figures need them, so the command stops before any compute and says so."""
    path = os.path.join(out_dir, "sweep.sqlite")
    if not os.path.exists(path):
        return []
    rows = SweepStore(path, sweep=f"{SWEEP}-{config.fingerprint()}").rows()
    return [row["result"]["arrays"] for row in rows if not row["result"].get("diverged")
            and not os.path.exists(os.path.join(out_dir, row["result"]["arrays"]))]


def _checked_probe(step: int, metrics: dict) -> dict:
    """The attention probe of one snapshot; Diverged where a measurement is NaN or inf."""
    numbers = [metrics[key] for key in ("entropy", "top1_mass", "top2_mass", "top4_mass", "target_mass", "accuracy")]
    if not np.all(np.isfinite(np.concatenate([np.ravel(n) for n in numbers]))):
        raise Diverged(step, "attention")
    return metrics


def _first_step_below(series, steps, fraction=0.5) -> int:
    """t_bubble: first snapshot step with h(t) <= h(0) - fraction (h(0) - min h). Our definition: the paper
    says bubble timing "correlates with the stabilization of the execution manifold" but defines neither."""
    series = np.asarray(series)
    threshold = series[0] - fraction * (series[0] - series.min())
    return int(steps[int(np.argmax(series <= threshold))])


@dataclass(frozen=True)
class SeedRun:
    """Trains and analyses one (setting, seed); `__call__(items)` is the validate._common.sweep task."""
    config: PartOneConfig
    out_dir: str
    quiet: bool = True

    def __call__(self, items):
        return [self.run_one(tuple(int(m) for m in point["markers"].split(",")), int(point["modulus"]), seed)
                for point, seed in items]

    def run_one(self, markers, modulus, seed) -> dict:
        cfg = self.config
        torch.set_num_threads(cfg.run.threads)
        task = cfg.run.task_config(markers, modulus)
        probes = probe_sets(task, seed, n_examples=cfg.probe_examples)
        probe_log = []
        started = time.perf_counter()
        # the stacked path of one seed: train_with_snapshots's run, computed faster (stacked_training's docstring)
        with progress(cfg.run.steps, f"{point_name(markers, modulus)} seed={seed}", self.quiet) as bar:
            run, = train_stacked(task, cfg.run.model_config(task), [cfg.run.train_config(seed)],
                                 on_snapshot=lambda index, step, model: probe_log.append(_checked_probe(
                                     step, probe_attention(model, probes, cfg.sparsify_k))),
                                 progress=bar.update)
        if isinstance(run, Diverged):
            return diverged_result(run, cfg.run, time.perf_counter() - started)
        train_seconds = time.perf_counter() - started
        result = self.analyse(run, probe_log, seed, markers, modulus)
        result["seconds"] = {"train": train_seconds, "analysis": time.perf_counter() - started - train_seconds}
        return result

    def analyse(self, run, probe_log, seed, markers, modulus) -> dict:
        cfg = self.config
        steps = run.snapshot_steps
        grams = {name: geo.increment_gram(X) for name, X in run.trajectories.items()}
        dims = {name: X.shape[1] for name, X in run.trajectories.items()}
        # every null draws from its own seed (shares over blocks count independent draws; seed + 1 was the next
        # seed's run): the block's index, "joint", "window" under the run's seed (geometry.derived_seed)
        names = block_names(cfg.run.n_layers)
        blocks = {name: _block_summary(grams[name], dims[name], cfg.q, cfg.null_draws,
                                       geo.derived_seed(seed, names.index(name))) for name in grams}
        joint_gram = sum(grams.values())
        joint_dim = sum(dims.values())
        joint = _block_summary(joint_gram, joint_dim, cfg.q, cfg.null_draws, geo.derived_seed(seed, "joint"))
        window_curve = geo.window_dimension_curve(joint_gram, cfg.window, cfg.q)
        window_null = _window_null(joint_gram, joint_dim, cfg.window, cfg.q, cfg.null_draws,
                                   geo.derived_seed(seed, "window"))
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
                                          steps, seed) for layer in range(cfg.run.n_layers)]
        directions = {name: geo.principal_directions(X, ORIENTATION_K).astype(np.float32)
                      for name, X in run.trajectories.items()}
        arrays_path = self.save_arrays(markers, modulus, seed, grams, directions, routing)
        for r in routing:
            r.pop("coordinate")
        t_bubble = _first_step_below(attention["entropy"][-1], steps)
        return {
            "snapshot_steps": steps.tolist(),
            "final_probe_accuracy": attention["accuracy"][-1],
            "final_train_loss": float(np.mean(run.loss[-max(1, cfg.run.snapshot_every // 5):])),
            "loss_curve": loss_curve(run.loss, steps, cfg.run.snapshot_every), "diverged": None,
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
        found = geo.routing_coordinate(candidates, entropy, seed=geo.derived_seed(seed, "routing", layer))
        fit = _saturation_fit(found.coordinate, entropy, self.config.run.seq_len)
        return {"layer": layer, "coordinate_name": names[found.index], "rho": found.rho,
                "p_value": found.p_value, "null": geo.ROUTING_NULLS[0], "time_rho": found.time_rho, "saturation": fit,
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
# Every (setting, seed), through the store
# ----------------------------------------------------------------------------------------------------------

def run_part_one(config: PartOneConfig, out_dir: str, workers: int = 0, scheduler: str | None = None,
                 fresh: bool = False, quiet: bool = True, log=None) -> dict[str, list[dict]]:
    """Every (setting, seed) through the SQLite store out_dir/sweep.sqlite (resumable): {setting name: the
    per-seed results, in seed order}. log(text), if given, reports each batch of runs; a progress bar per run
    when the runs are computed in this process and not quiet.

    Every (setting, seed) is a batch of its own, stored the moment it finishes (validate._common.sweep), so a
    killed run loses only the runs in flight. A run that diverges is stored too, as {"diverged": {"step",
    "where"}, "loss_curve", ...}: a rerun does not train it again. Holds the store for the whole part (one run
    per store) and first removes the temporary files a killed run left in out_dir/arrays."""
    os.makedirs(out_dir, exist_ok=True)
    store = SweepStore(os.path.join(out_dir, "sweep.sqlite"), sweep=f"{SWEEP}-{config.fingerprint()}")
    task = SeedRun(config, out_dir, quiet=quiet or workers > 0 or scheduler is not None)
    runs = {}
    points = [{"markers": ",".join(map(str, markers)), "modulus": modulus} for markers, modulus in config.points()]
    with store.lock():
        prepare_output_directory(os.path.join(out_dir, "arrays"))
        # the main setting with every seed, then all difficulty settings together with the first few seeds
        for index, (batch, seeds) in enumerate(((points[:1], config.seeds),
                                                (points[1:], config.seeds[:config.difficulty_seeds]))):
            if not batch or not seeds:
                continue
            if log is not None:
                log("; ".join(point_name(p["markers"].split(","), p["modulus"]) for p in batch)
                    + f": seeds {list(seeds)}")
            rows = run_sweep(task, batch, list(seeds), store, batch_size=1, max_workers=workers, scheduler=scheduler,
                             fresh=fresh and index == 0)  # one sweep name: the first call clears all its rows
            for row in rows:
                runs.setdefault(point_name(row["point"]["markers"].split(","), row["point"]["modulus"]),
                                []).append(dict(row["result"], seed=row["seed"]))
    refit_saturation(config, runs, out_dir)
    return runs
