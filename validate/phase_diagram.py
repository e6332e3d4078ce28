"""`python -m validate.phase_diagram`: do two exponents at initialization predict the final test loss?

Cowsik, Nebabu, Qi, Ganguli (2024), arXiv:2403.02579, abstract: "the final test loss at the end of training
is well predicted just by these two exponents at the beginning of training, and ... the simultaneous
vanishing of these two exponents yields a simple necessary and sufficient condition to achieve minimal test
loss." This command puts that to a test on one plane of initialization hyperparameters (default: alpha =
alpha_A = alpha_M against sigma_w, the others fixed):

1. Predicted maps of the angle and gradient exponents (sim.signal_prop.exponent_grid, Numba) on a dense
   plane, their zero curves and the predicted critical point (sim.signal_prop.critical_point, bounded to
   the plane's window: where both vanish, or, where they never vanish together, the window's point of
   smallest lambda_a^2 + lambda_g^2).
2. Real training on a coarser grid of the same plane: the canonical deep transformer (validate.transformer,
   inside validate.batched_train.PhaseModel), one model per (point, seed), all trained identically on the
   noisy token-histogram task (validate.phase_task) and batched over a model axis; every (point, seed)
   stored in an SQLite sweep (validate.sweep) as it finishes, so a rerun resumes.
3. The verdict. The predictor is fixed in advance and has no fitted parameter: the distance of the point's
   exponents from the predicted optimum, |lambda| = sqrt(lambda_a^2 + lambda_g^2) (per block, natural log).
   - Spearman correlation between the mean final test loss of each grid point and |lambda|: PASS when
     rho_s >= 0.5 with p < 0.01 (the claim says "well predicted"; 0.5 is the conventional threshold of a
     strong rank correlation). A diverged run counts as the worst loss.
   - Distance, in cells of the training grid, from the loss-minimizing grid point to the predicted critical
     point: PASS when some grid point statistically tied with the minimum (mean loss within 2 standard
     errors, standard errors from the seed-to-seed spread) lies within one cell of the predicted point.
   Also reported, not judged: the seed-to-seed Spearman across points (the ceiling any predictor can reach
   at this noise), and a leave-one-point-out cross-validated quadratic fit of the loss in (lambda_a,
   lambda_g).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from sim.signal_prop import GRID_FIELDS, critical_point, exponent_grid
from theory.signal_prop import ACTIVATIONS, RESIDUALS, BlockParams
from validate.batched_train import TrainConfig, TrainPoints
from validate.phase_task import HistogramTask
from validate.reporting import atomic_savefig, json_safe
from validate.signal_prop import versions, write_json
from validate.sweep import SweepStore, point_key, run_sweep

SPEARMAN_THRESHOLD, SPEARMAN_P_MAX = 0.5, 0.01
TIE_STANDARD_ERRORS, DISTANCE_TOLERANCE_CELLS = 2.0, 1.0
HEADLINE = ("spearman", "spearman_p", "min_loss_point", "predicted_critical_point", "distance_cells")


@dataclass(frozen=True)
class PhaseDiagramConfig:
    """A phase-diagram run: the plane, the dense exponent map, the training grid, the training recipe."""

    x_field: str = "alpha"
    x_range: tuple[float, float] = (0.05, 0.95)
    y_field: str = "sigma_w"
    y_range: tuple[float, float] = (0.5, 5.0)
    map_points: int = 200
    grid: tuple[int, int] = (6, 6)
    seeds: tuple[int, ...] = (0, 1)
    base: BlockParams = field(default_factory=lambda: BlockParams(n_tokens=HistogramTask().n_tokens))
    train: TrainConfig = field(default_factory=TrainConfig)
    models_per_batch: int = 12
    workers: int = 2
    scheduler: str | None = None
    device: str = "cpu"
    out: str = "runs/phase_diagram"
    store: str | None = None
    figure: str | None = "figures/phase_diagram.png"
    fresh: bool = False

    def __post_init__(self):
        for name in ("x_field", "y_field"):
            if getattr(self, name) not in GRID_FIELDS:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed values are {GRID_FIELDS}")
        overlapping = {"alpha": {"alpha_A", "alpha_M", "alpha"}}
        if self.x_field == self.y_field or self.y_field in overlapping.get(self.x_field, ()) \
                or self.x_field in overlapping.get(self.y_field, ()):
            raise ValueError(f"x_field={self.x_field!r} and y_field={self.y_field!r} must set different fields")
        for name in ("x_range", "y_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be finite with 0 <= min < max")
        for name, axis in (("x_range", self.x_field), ("y_range", self.y_field)):
            if axis.startswith("alpha") and self.base.residual == "normalized" and getattr(self, name)[1] > 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: alpha must lie in [0, 1] with "
                                 "residual='normalized'")
        if self.map_points < 2:
            raise ValueError(f"map_points={self.map_points!r}: must be >= 2")
        if len(self.grid) != 2 or min(self.grid) < 2:
            raise ValueError(f"grid={self.grid!r}: must be two integers >= 2")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds={self.seeds!r}: must be distinct non-negative integers")
        if self.models_per_batch < 1:
            raise ValueError(f"models_per_batch={self.models_per_batch!r}: must be >= 1")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers!r}: must be >= 0 (0 trains in this process)")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: allowed values are cpu, cuda, cuda:N")
        if self.base.n_tokens != self.train.task.n_tokens:
            raise ValueError(f"base.n_tokens={self.base.n_tokens} must equal the task's sequence length "
                             f"{self.train.task.n_tokens}")

    # -- the plane ----------------------------------------------------------------------------------------
    def axis_values(self, points: int, axis: str) -> np.ndarray:
        low, high = self.x_range if axis == "x" else self.y_range
        return np.round(np.linspace(low, high, points), 10)

    def train_axes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.axis_values(self.grid[0], "x"), self.axis_values(self.grid[1], "y")

    def map_axes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.axis_values(self.map_points, "x"), self.axis_values(self.map_points, "y")

    def train_points(self) -> list[dict]:
        xs, ys = self.train_axes()
        return [{self.x_field: float(x), self.y_field: float(y)} for y in ys for x in xs]

    def store_path(self) -> str:
        return self.store or os.path.join(self.out, "phase_diagram.sqlite")

    def sweep_name(self) -> str:
        """Identifies every setting besides (point, seed) that changes a trained result."""
        identity = {"base": _params_dict(self.base), "train": self.train.to_dict(), "device": self.device}
        return "phase_diagram-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str)
                                                 .encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["base"] = _params_dict(self.base)
        return d


def _params_dict(h: BlockParams) -> dict:
    d = dataclasses.asdict(h)
    d["activation"] = str(h.activation)
    return d


# ----------------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------------
def exponent_distance(angle, gradient):
    """The parameter-free predictor: distance of (lambda_a, lambda_g) from the predicted optimum (0, 0)."""
    return np.hypot(angle, gradient)


def predicted_critical_point(cfg: PhaseDiagramConfig) -> dict:
    """Where both exponents vanish inside the plane's window (sim.signal_prop.critical_point, bounded to
    the window). If they never vanish together there (exact=False), it is the window's point of smallest
    lambda_a^2 + lambda_g^2, and the record says so."""
    found = critical_point(cfg.base, free=(cfg.x_field, cfg.y_field), bounds=(cfg.x_range, cfg.y_range))
    values = {name: float(getattr(found.params, "alpha_A" if name == "alpha" else name))
              for name in (cfg.x_field, cfg.y_field)}
    return values | {
        "method": "sim.signal_prop.critical_point", "exact": bool(found.exact),
        "angle_exponent": float(found.angle), "gradient_exponent": float(found.gradient),
        "note": ("both exponents vanish here" if found.exact else "the exponents do not both vanish inside "
                 "the window: this is its point of smallest lambda_a^2 + lambda_g^2")}


# ----------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------
def point_losses(cfg: PhaseDiagramConfig, rows: list[dict]) -> dict:
    """Per grid point (y-major, like train_points): mean and standard error of the final test loss over
    seeds (inf if any seed diverged), the per-seed losses, and how many seeds diverged."""
    by_point: dict[str, list[dict]] = {}
    for r in rows:
        by_point.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
    mean, se, per_seed, diverged = [], [], [], []
    for p in cfg.train_points():
        results = [r["result"] for r in sorted(by_point[json.dumps(p, sort_keys=True)], key=lambda r: r["seed"])]
        losses = [math.inf if r["diverged"] or r["final_test_loss"] is None else r["final_test_loss"]
                  for r in results]
        per_seed.append(losses)
        diverged.append(sum(r["diverged"] for r in results))
        finite = np.isfinite(losses).all()
        mean.append(float(np.mean(losses)) if finite else math.inf)
        se.append(float(np.std(losses, ddof=1) / math.sqrt(len(losses))) if finite and len(losses) > 1
                  else math.nan)
    gx, gy = cfg.grid
    return {"mean": np.array(mean).reshape(gy, gx), "se": np.array(se).reshape(gy, gx),
            "per_seed": np.array(per_seed), "diverged": np.array(diverged).reshape(gy, gx)}


def cross_validated_quadratic(angle: np.ndarray, gradient: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Leave-one-point-out predictions of a least-squares quadratic in (lambda_a, lambda_g) (finite losses)."""
    features = np.stack([np.ones_like(angle), angle, gradient, angle**2, gradient**2, angle * gradient], 1)
    predictions = np.full(loss.shape, np.nan)
    for i in range(len(loss)):
        keep = np.arange(len(loss)) != i
        coef, *_ = np.linalg.lstsq(features[keep], loss[keep], rcond=None)
        predictions[i] = features[i] @ coef
    return predictions


def analyse(cfg: PhaseDiagramConfig, rows: list[dict], train_angle, train_gradient, critical: dict) -> dict:
    """The metrics and verdicts of a finished sweep."""
    from scipy.stats import spearmanr

    losses = point_losses(cfg, rows)
    mean, se = losses["mean"], losses["se"]
    predictor = exponent_distance(train_angle, train_gradient)
    rho_s, p_value = spearmanr(predictor.ravel(), mean.ravel())
    xs, ys = cfg.train_axes()
    iy, ix = np.unravel_index(np.argmin(mean), mean.shape)
    cell = np.array([xs[1] - xs[0], ys[1] - ys[0]])
    critical_xy = np.array([critical[cfg.x_field], critical[cfg.y_field]])

    def cells(jx, jy):
        return float(np.hypot(*((np.array([xs[jx], ys[jy]]) - critical_xy) / cell)))

    distance = cells(ix, iy)
    # grid points statistically tied with the minimum: within TIE_STANDARD_ERRORS combined standard errors
    se_filled = np.where(np.isfinite(se), se, 0.0)
    tied = np.isfinite(mean) & (mean <= mean[iy, ix] + TIE_STANDARD_ERRORS
                                * np.sqrt(se_filled**2 + se_filled[iy, ix] ** 2))
    tied_distance = min(cells(jx, jy) for jy, jx in zip(*np.nonzero(tied)))

    per_seed = losses["per_seed"]
    seed_ceiling = (spearmanr(per_seed[:, 0], per_seed[:, 1])[0] if per_seed.shape[1] >= 2 else math.nan)
    finite = np.isfinite(mean.ravel())
    cv = np.full(mean.size, np.nan)
    if finite.sum() >= 8:
        cv[finite] = cross_validated_quadratic(train_angle.ravel()[finite], train_gradient.ravel()[finite],
                                               mean.ravel()[finite])
    cv_rho = float(spearmanr(cv[finite], mean.ravel()[finite])[0]) if finite.sum() >= 8 else math.nan

    # which exponent carries the prediction (reported, not judged)
    angle_only = float(spearmanr(np.abs(train_angle).ravel(), mean.ravel())[0])
    gradient_only = float(spearmanr(np.abs(train_gradient).ravel(), mean.ravel())[0])
    jx = int(np.argmin(np.abs(xs - critical_xy[0])))
    jy = int(np.argmin(np.abs(ys - critical_xy[1])))

    spearman_pass = bool(rho_s >= SPEARMAN_THRESHOLD and p_value < SPEARMAN_P_MAX)
    distance_pass = bool(tied_distance <= DISTANCE_TOLERANCE_CELLS)
    task = cfg.train.task
    metrics = {
        "predictor": "|lambda| = sqrt(lambda_a^2 + lambda_g^2), no fitted parameters",
        "spearman": float(rho_s), "spearman_p": float(p_value),
        "seed_to_seed_spearman": float(seed_ceiling),
        "cv_quadratic_spearman": cv_rho,
        "spearman_abs_angle_only": angle_only, "spearman_abs_gradient_only": gradient_only,
        "loss_at_grid_point_nearest_prediction": {cfg.x_field: float(xs[jx]), cfg.y_field: float(ys[jy]),
                                                  "loss": float(mean[jy, jx]), "se": float(se[jy, jx])},
        "min_loss_point": {cfg.x_field: float(xs[ix]), cfg.y_field: float(ys[iy]), "loss": float(mean[iy, ix]),
                           "se": float(se[iy, ix])},
        "predicted_critical_point": critical,
        "distance_cells": distance,
        "distance_cells_to_nearest_tied_point": tied_distance,
        "tied_with_minimum": int(tied.sum()),
        "diverged_runs": int(losses["diverged"].sum()),
        "bayes_loss": task.bayes_loss(), "context_free_loss": task.context_free_loss(),
    }
    verdicts = [
        {"quantity": "Spearman(final test loss, |lambda|)", "prediction": "strongly positive",
         "measurement": f"{rho_s:+.3f} (p = {p_value:.2g})",
         "tolerance": f">= {SPEARMAN_THRESHOLD}, p < {SPEARMAN_P_MAX}", "pass": spearman_pass},
        {"quantity": "loss minimum to predicted critical point", "prediction": "0 cells",
         "measurement": f"{distance:.2f} cells ({tied_distance:.2f} to a tied point)",
         "tolerance": f"a point within {TIE_STANDARD_ERRORS:g} SE of the min lies <= "
                      f"{DISTANCE_TOLERANCE_CELLS:g} cell away", "pass": distance_pass},
    ]
    return {"metrics": metrics, "verdicts": verdicts, "losses": losses, "predictor": predictor,
            "cv_prediction": cv.reshape(mean.shape)}


def verdict_table(verdicts: list[dict]) -> str:
    """quantity | prediction | measurement | tolerance | PASS/FAIL, as aligned text."""
    columns = ("quantity", "prediction", "measurement", "tolerance", "verdict")
    cells = [columns] + [(v["quantity"], v["prediction"], v["measurement"], v["tolerance"],
                          "PASS" if v["pass"] else "FAIL") for v in verdicts]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [" | ".join(text.ljust(width) for text, width in zip(row, widths)) for row in cells]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])


# ----------------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------------
def _label(name: str) -> str:
    return {"alpha": r"$\alpha=\alpha_A=\alpha_M$", "alpha_A": r"$\alpha_A$", "alpha_M": r"$\alpha_M$",
            "sigma_A": r"$\sigma_A$", "sigma_V": r"$\sigma_V$", "sigma_w": r"$\sigma_w$",
            "sigma_2": r"$\sigma_2$"}[name]


def plot(cfg: PhaseDiagramConfig, maps: dict, analysis: dict, rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    mx, my = cfg.map_axes()
    tx, ty = cfg.train_axes()
    gx_, gy_ = np.meshgrid(tx, ty)
    crit = analysis["metrics"]["predicted_critical_point"]
    best = analysis["metrics"]["min_loss_point"]
    mean = analysis["losses"]["mean"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))

    def zero_curves(ax, legend=False):
        for values, color, name in ((maps["angle"], "k", r"$\lambda_a=0$"), (maps["gradient"], "m",
                                                                               r"$\lambda_g=0$")):
            if np.nanmin(values) < 0 < np.nanmax(values):
                ax.contour(mx, my, values, levels=[0.0], colors=color, linewidths=2)
            ax.plot([], [], color=color, lw=2, label=name + ("" if np.nanmin(values) < 0 < np.nanmax(values)
                                                            else " (not in window)"))
        ax.plot(crit[cfg.x_field], crit[cfg.y_field], "*", ms=18, mfc="gold", mec="k",
                label="predicted critical point")
        if legend:
            ax.legend(loc="upper right", fontsize=8, framealpha=0.85)

    for ax, key, title in ((axes[0, 0], "angle", r"angle exponent $\lambda_a$ (per block)"),
                           (axes[0, 1], "gradient", r"gradient exponent $\lambda_g$ (per block)")):
        values = maps[key]
        span = max(abs(np.nanmin(values)), abs(np.nanmax(values)), 1e-12)
        mesh = ax.pcolormesh(mx, my, values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span), shading="auto")
        fig.colorbar(mesh, ax=ax)
        zero_curves(ax, legend=key == "angle")
        ax.plot(gx_, gy_, ".", color="0.3", ms=4)
        ax.set(title=f"predicted {title}\n{cfg.map_points}x{cfg.map_points} map", xlabel=_label(cfg.x_field),
               ylabel=_label(cfg.y_field))

    ax = axes[0, 2]
    task = cfg.train.task
    finite = np.where(np.isfinite(mean), mean, np.nan)
    mesh = ax.pcolormesh(tx, ty, finite, cmap="viridis", shading="nearest",
                         vmin=task.bayes_loss(), vmax=max(task.context_free_loss(), np.nanmax(finite)))
    fig.colorbar(mesh, ax=ax, label="final test loss (mean over seeds)")
    for jy, jx in zip(*np.nonzero(~np.isfinite(mean))):
        ax.plot(tx[jx], ty[jy], "x", color="r", ms=12, mew=3)
    zero_curves(ax)
    ax.plot(best[cfg.x_field], best[cfg.y_field], "o", ms=14, mfc="none", mec="w", mew=3)
    ax.set(title=f"trained: final test loss, depth {cfg.train.depth}, width {cfg.train.width}\n"
                 f"(o: minimum; x: diverged; floor {task.bayes_loss():.3f}, "
                 f"no mixing {task.context_free_loss():.3f})",
           xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field),
           xlim=(mx[0], mx[-1]), ylim=(my[0], my[-1]))

    ax = axes[1, 0]
    angle, gradient = maps["train_angle"].ravel(), maps["train_gradient"].ravel()
    scatter = ax.scatter(angle, gradient, c=np.where(np.isfinite(mean.ravel()), mean.ravel(), np.nan),
                         s=70, cmap="viridis", edgecolors="k")
    fig.colorbar(scatter, ax=ax, label="final test loss")
    ax.axhline(0, color="m", lw=1)
    ax.axvline(0, color="k", lw=1)
    ax.set(title="final test loss against the two exponents\n(one dot per grid point)",
           xlabel=r"$\lambda_a$", ylabel=r"$\lambda_g$")

    ax = axes[1, 1]
    metrics = analysis["metrics"]
    predictor = analysis["predictor"].ravel()
    per_seed = analysis["losses"]["per_seed"]
    for k, seed in enumerate(cfg.seeds):
        ax.plot(predictor, np.where(np.isfinite(per_seed[:, k]), per_seed[:, k], np.nan), "o", alpha=0.5,
                label=f"seed {seed}")
    ax.plot(predictor, finite.ravel(), "k_", ms=14, mew=2, label="mean")
    ax.axhline(task.bayes_loss(), color="g", ls="--", label="Bayes floor")
    ax.axhline(task.context_free_loss(), color="r", ls="--", label="best without token mixing")
    ax.set(title=f"Spearman {metrics['spearman']:+.2f} (p={metrics['spearman_p']:.1g}); "
                 f"seed-to-seed {metrics['seed_to_seed_spearman']:+.2f}",
           xlabel=r"$|\lambda|=\sqrt{\lambda_a^2+\lambda_g^2}$", ylabel="final test loss")
    ax.legend(fontsize=8, loc="best", framealpha=0.85)

    ax = axes[1, 2]
    colors = plt.cm.plasma((predictor - predictor.min()) / max(np.ptp(predictor), 1e-12))
    first_seed = {json.dumps(r["point"], sort_keys=True): r for r in rows if r["seed"] == cfg.seeds[0]}
    for k, p in enumerate(cfg.train_points()):
        curve = first_seed[json.dumps(p, sort_keys=True)]["result"]["test_loss"]
        steps = first_seed[json.dumps(p, sort_keys=True)]["result"]["eval_steps"]
        ax.plot(steps, [np.nan if v is None else v for v in curve], color=colors[k], lw=1)
    ax.axhline(task.bayes_loss(), color="g", ls="--")
    ax.axhline(task.context_free_loss(), color="r", ls="--")
    ax.set(title=f"test-loss curves, seed {cfg.seeds[0]}\n(colour: |lambda|, dark = near 0)",
           xlabel="step", ylabel="test loss")
    fig.suptitle(f"Trainability phase diagram: canonical transformer, {cfg.base.residual} residual, "
                 f"{cfg.base.activation}, n={cfg.base.n_tokens}; distance min-loss to predicted point "
                 f"{metrics['distance_cells']:.2f} cells", fontsize=12)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------
def run(cfg: PhaseDiagramConfig, quiet: bool = False) -> dict:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    mx, my = cfg.map_axes()
    map_angle, map_gradient = exponent_grid(cfg.base, cfg.x_field, mx, cfg.y_field, my)
    tx, ty = cfg.train_axes()
    train_angle, train_gradient = exponent_grid(cfg.base, cfg.x_field, tx, cfg.y_field, ty)
    critical = predicted_critical_point(cfg)
    map_s = time.perf_counter() - start

    store = SweepStore(cfg.store_path(), cfg.sweep_name())
    points = cfg.train_points()
    task = TrainPoints(cfg.base, cfg.train, cfg.device)
    train_start = time.perf_counter()
    pending = len(points) * len(cfg.seeds) - (0 if cfg.fresh else len(store.done() & {
        (point_key(p), s) for p in points for s in cfg.seeds}))
    with tqdm(total=pending, desc="models trained", unit="model",
              disable=quiet or not sys.stderr.isatty()) as bar:
        rows = run_sweep(task, points, list(cfg.seeds), store, batch_size=cfg.models_per_batch,
                         scheduler=cfg.scheduler, max_workers=cfg.workers, fresh=cfg.fresh,
                         progress=bar.update)
    train_s = time.perf_counter() - train_start

    maps = {"angle": map_angle, "gradient": map_gradient, "train_angle": train_angle,
            "train_gradient": train_gradient}
    analysis = analyse(cfg, rows, train_angle, train_gradient, critical)
    figures = [os.path.join(cfg.out, "phase_diagram.png")] + ([cfg.figure] if cfg.figure else [])
    for path in figures:
        plot(cfg, maps, analysis, rows, path)
    record = {
        "config": cfg.to_dict(),
        "versions": versions(),
        "timings": {"exponent_maps_s": map_s, "training_s": train_s, "models_trained_now": pending,
                    "total_s": time.perf_counter() - start},
        "metrics": analysis["metrics"],
        "verdicts": analysis["verdicts"],
        "all_pass": all(v["pass"] for v in analysis["verdicts"]),
        "table": verdict_table(analysis["verdicts"]),
        "figures": figures,
        "store": {"path": cfg.store_path(), "sweep": cfg.sweep_name()},
        "grid": {"x": tx, "y": ty, "mean_loss": analysis["losses"]["mean"], "se": analysis["losses"]["se"],
                 "angle": train_angle, "gradient": train_gradient,
                 "cv_quadratic_prediction": analysis["cv_prediction"]},
        "points": [{"point": r["point"], "seed": r["seed"], **params_exponents(cfg, r["point"], maps),
                    **r["result"], "elapsed_s": r["elapsed_s"]} for r in rows],
    }
    # the headline numbers also at the top level, where the issue names them
    record.update({key: analysis["metrics"][key] for key in HEADLINE})
    record = json_safe(record, nonfinite_as_none=True)
    write_json(record, os.path.join(cfg.out, "phase_diagram.json"))
    return record


def params_exponents(cfg: PhaseDiagramConfig, point: dict, maps: dict) -> dict:
    tx, ty = cfg.train_axes()
    jx = int(np.argmin(np.abs(tx - point[cfg.x_field])))
    jy = int(np.argmin(np.abs(ty - point[cfg.y_field])))
    return {"angle_exponent": float(maps["train_angle"][jy, jx]),
            "gradient_exponent": float(maps["train_gradient"][jy, jx])}


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
QUICK = {"grid": (3, 3), "map_points": 200, "models_per_batch": 9, "figure": None,
         "train": {"depth": 4, "width": 32, "d_ff": 32, "steps": 150, "batch": 32, "test_size": 256,
                   "eval_every": 50}}


def _parse_base(pairs: list[str], parser) -> dict:
    values = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in BlockParams.__dataclass_fields__ or name in ("n_tokens", "activation", "residual"):
            parser.error(f"--base {pair!r}: FIELD must be one of alpha_A, alpha_M, sigma_A, sigma_V, "
                         "sigma_w, sigma_2 (n_tokens, activation, residual have their own flags)")
        try:
            values[name] = float(value)
        except ValueError:
            parser.error(f"--base {pair!r}: VALUE must be a number")
    return values


def build_parser() -> argparse.ArgumentParser:
    d, t, k = PhaseDiagramConfig(), TrainConfig(), HistogramTask()
    parser = argparse.ArgumentParser(prog="python -m validate.phase_diagram", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    plane = parser.add_argument_group("the plane")
    plane.add_argument("--x-field", default=d.x_field, choices=GRID_FIELDS,
                       help="horizontal axis: a BlockParams field, or alpha = alpha_A = alpha_M "
                            "(default %(default)s)")
    plane.add_argument("--x-range", nargs=2, type=float, default=d.x_range, metavar=("MIN", "MAX"),
                       help="horizontal range (default %(default)s)")
    plane.add_argument("--y-field", default=d.y_field, choices=GRID_FIELDS,
                       help="vertical axis (default %(default)s)")
    plane.add_argument("--y-range", nargs=2, type=float, default=d.y_range, metavar=("MIN", "MAX"),
                       help="vertical range (default %(default)s)")
    plane.add_argument("--map-points", type=int, default=d.map_points,
                       help="points per axis of the predicted exponent maps (default %(default)s)")
    plane.add_argument("--grid", nargs=2, type=int, default=d.grid, metavar=("NX", "NY"),
                       help="training grid points per axis (default %(default)s)")
    plane.add_argument("--base", nargs="*", default=[], metavar="FIELD=VALUE",
                       help="values of the fields held fixed (defaults: those of BlockParams, e.g. "
                            "sigma_A=1.0 sigma_2=1.0)")
    plane.add_argument("--residual", default=d.base.residual, choices=RESIDUALS,
                       help="residual form (default %(default)s)")
    plane.add_argument("--activation", default=d.base.activation, choices=ACTIVATIONS,
                       help="MLP nonlinearity (default %(default)s)")
    training = parser.add_argument_group("training (identical at every point)")
    training.add_argument("--depth", type=int, default=t.depth, help="blocks (default %(default)s)")
    training.add_argument("--width", type=int, default=t.width, help="model width d (default %(default)s)")
    training.add_argument("--d-ff", type=int, default=t.d_ff, help="MLP hidden width (default %(default)s)")
    training.add_argument("--steps", type=int, default=t.steps, help="optimizer steps (default %(default)s)")
    training.add_argument("--batch", type=int, default=t.batch, help="sequences per step (default %(default)s)")
    training.add_argument("--lr", type=float, default=t.lr, help="learning rate (default %(default)s)")
    training.add_argument("--optimizer", default=t.optimizer, choices=("adam", "sgd"),
                          help="optimizer (default %(default)s)")
    training.add_argument("--schedule", default=t.schedule, choices=("cosine", "constant"),
                          help="learning-rate schedule (default %(default)s)")
    training.add_argument("--test-size", type=int, default=t.test_size,
                          help="held-out test sequences (default %(default)s)")
    training.add_argument("--eval-every", type=int, default=t.eval_every,
                          help="steps between test-loss evaluations (default %(default)s)")
    training.add_argument("--n-tokens", type=int, default=k.n_tokens,
                          help="sequence length n = number of classes (default %(default)s)")
    training.add_argument("--vocab", type=int, default=k.vocab, help="alphabet size (default %(default)s)")
    training.add_argument("--noise", type=float, default=k.noise, help="label-noise rate (default %(default)s)")
    training.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds),
                          help="seeds per point (default %(default)s)")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--models-per-batch", type=int, default=d.models_per_batch,
                           help="models trained together per sweep task (default %(default)s)")
    execution.add_argument("--workers", type=int, default=d.workers,
                           help="local worker processes; 0 trains in this process (default %(default)s)")
    execution.add_argument("--threads", type=int, default=t.threads,
                           help="torch threads per worker (default %(default)s)")
    execution.add_argument("--scheduler", default=None, metavar="ADDRESS",
                           help="Dask scheduler address, e.g. tcp://host:8786 (default: local processes)")
    execution.add_argument("--device", default=d.device, help="cpu or cuda (default %(default)s)")
    execution.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    execution.add_argument("--store", default=None,
                           help="SQLite sweep store (default OUT/phase_diagram.sqlite)")
    execution.add_argument("--fresh", action="store_true", help="discard stored rows of this sweep first")
    execution.add_argument("--figure", default=d.figure,
                           help="also write the figure here ('none' to skip; default %(default)s, for the "
                                "default experiment only)")
    execution.add_argument("--quick", action="store_true",
                           help="smoke preset: 3x3 grid, depth 4, width 32, 150 steps (under a minute on a quiet machine)")
    execution.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def same_experiment(a: PhaseDiagramConfig, b: PhaseDiagramConfig) -> bool:
    """Whether a and b train the same models on the same plane: only how and where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, models_per_batch=1, workers=0, scheduler=None, device="cpu", out="",
                                   store=None, figure=None, fresh=False,
                                   train=dataclasses.replace(c.train, threads=1))
    return experiment(a) == experiment(b)


def parse_args(argv=None) -> tuple[PhaseDiagramConfig, bool]:
    parser = build_parser()
    args = parser.parse_args(argv)
    train_values = {"depth": args.depth, "width": args.width, "d_ff": args.d_ff, "steps": args.steps,
                    "batch": args.batch, "lr": args.lr, "optimizer": args.optimizer, "schedule": args.schedule,
                    "test_size": args.test_size, "eval_every": args.eval_every, "threads": args.threads}
    values = {"x_field": args.x_field, "x_range": tuple(args.x_range), "y_field": args.y_field,
              "y_range": tuple(args.y_range), "map_points": args.map_points, "grid": tuple(args.grid),
              "seeds": tuple(args.seeds), "models_per_batch": args.models_per_batch, "workers": args.workers,
              "scheduler": args.scheduler, "device": args.device, "out": args.out, "store": args.store,
              "fresh": args.fresh,
              "figure": None if str(args.figure).lower() == "none" else args.figure}
    if args.quick:
        quick = dict(QUICK)
        train_values.update(quick.pop("train"))
        values.update(quick)
    try:
        task = HistogramTask(n_tokens=args.n_tokens, vocab=args.vocab, noise=args.noise)
        base = BlockParams(n_tokens=args.n_tokens, residual=args.residual, activation=args.activation,
                           **_parse_base(args.base, parser))
        train = TrainConfig(task=task, **train_values)
        cfg = PhaseDiagramConfig(base=base, train=train, **values)
        if args.figure == PhaseDiagramConfig.figure and not same_experiment(cfg, PhaseDiagramConfig()):
            cfg = dataclasses.replace(cfg, figure=None)   # README's figure is the default experiment's only
        return cfg, args.quiet
    except ValueError as error:
        parser.error(str(error))


def main(argv=None) -> int:
    cfg, quiet = parse_args(argv)
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print(f"python -m validate.phase_diagram: error: --device {cfg.device}: CUDA is not available",
                  file=sys.stderr)
            return 2
    record = run(cfg, quiet)
    m = record["metrics"]
    print(record["table"])

    def number(value, spec="+.3f"):
        return "n/a" if value is None else format(value, spec)

    where = {k: v for k, v in m["min_loss_point"].items() if k not in ("loss", "se")}
    predicted = {k: v for k, v in m["predicted_critical_point"].items() if k in (cfg.x_field, cfg.y_field)}
    print(f"\nSpearman {number(m['spearman'])} (p = {number(m['spearman_p'], '.2g')}; seed-to-seed ceiling "
          f"{number(m['seed_to_seed_spearman'])}; |angle| alone {number(m['spearman_abs_angle_only'])}; "
          f"|gradient| alone {number(m['spearman_abs_gradient_only'])}; "
          f"CV quadratic {number(m['cv_quadratic_spearman'])}); "
          f"min loss {number(m['min_loss_point']['loss'], '.3f')} at {where}; predicted critical point "
          f"{predicted} ({m['predicted_critical_point']['method']}, exact={m['predicted_critical_point']['exact']}), "
          f"loss there {number(m['loss_at_grid_point_nearest_prediction']['loss'], '.3f')}; "
          f"distance {number(m['distance_cells'], '.2f')} cells")
    print(f"{'ALL PASS' if record['all_pass'] else 'SOME FAIL'}; {record['timings']['total_s']:.0f} s; "
          f"wrote {os.path.join(cfg.out, 'phase_diagram.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
