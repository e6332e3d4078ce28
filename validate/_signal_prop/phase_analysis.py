"""The phase diagram's verdict: trained losses against the exponents predicted at initialization.

The predictor is fixed in advance and has no fitted parameter: the distance of a point's exponents from the
predicted optimum, |lambda| = sqrt(lambda_a^2 + lambda_g^2) (per block, natural log).
- Spearman correlation between the mean final test loss of each grid point and |lambda|: PASS when
  rho_s >= 0.5 with p < 0.01 (Cowsik et al. 2024, abstract, say "well predicted"; 0.5 is the conventional
  threshold of a strong rank correlation). A diverged run counts as the worst loss.
- Distance, in cells of the training grid, from the loss-minimizing grid point to the predicted critical
  point: PASS when some grid point statistically tied with the minimum (mean loss within 2 standard errors,
  standard errors from the seed-to-seed spread) lies within one cell of the predicted point.
Also reported, not judged: the seed-to-seed Spearman across points (the ceiling any predictor can reach at
this noise), each exponent alone, and a leave-one-point-out cross-validated quadratic fit of the loss in
(lambda_a, lambda_g).
"""
from __future__ import annotations

import json
import math

import numpy as np

from validate._common.reporting import Verdict
from validate._signal_prop.phase_experiment import PhaseDiagramConfig

SPEARMAN_THRESHOLD, SPEARMAN_P_MAX = 0.5, 0.01
TIE_STANDARD_ERRORS, DISTANCE_TOLERANCE_CELLS = 2.0, 1.0
HEADLINE = ("spearman", "spearman_p", "min_loss_point", "predicted_critical_point", "distance_cells")


def exponent_distance(angle, gradient):
    """The parameter-free predictor: distance of (lambda_a, lambda_g) from the predicted optimum (0, 0)."""
    return np.hypot(angle, gradient)


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
        Verdict.check("Spearman(final test loss, |lambda|)", "strongly positive",
                      f"{rho_s:+.3f} (p = {p_value:.2g})", f">= {SPEARMAN_THRESHOLD}, p < {SPEARMAN_P_MAX}",
                      rho_s >= SPEARMAN_THRESHOLD and p_value < SPEARMAN_P_MAX),
        Verdict.check("loss minimum to predicted critical point", "0 cells",
                      f"{distance:.2f} cells ({tied_distance:.2f} to a tied point)",
                      f"a point within {TIE_STANDARD_ERRORS:g} SE of the min lies <= "
                      f"{DISTANCE_TOLERANCE_CELLS:g} cell away", tied_distance <= DISTANCE_TOLERANCE_CELLS),
    ]
    return {"metrics": metrics, "verdicts": verdicts, "losses": losses, "predictor": predictor,
            "cv_prediction": cv.reshape(mean.shape)}


def headline(metrics: dict, cfg: PhaseDiagramConfig) -> str:
    """The numbers behind the verdicts in one paragraph, for the terminal."""
    def number(value, spec="+.3f"):
        return "n/a" if value is None or not math.isfinite(value) else format(value, spec)

    where = {k: v for k, v in metrics["min_loss_point"].items() if k not in ("loss", "se")}
    critical = metrics["predicted_critical_point"]
    predicted = {k: v for k, v in critical.items() if k in (cfg.x_field, cfg.y_field)}
    return (f"Spearman {number(metrics['spearman'])} (p = {number(metrics['spearman_p'], '.2g')}; seed-to-seed "
            f"ceiling {number(metrics['seed_to_seed_spearman'])}; |angle| alone "
            f"{number(metrics['spearman_abs_angle_only'])}; |gradient| alone "
            f"{number(metrics['spearman_abs_gradient_only'])}; CV quadratic "
            f"{number(metrics['cv_quadratic_spearman'])}); min loss {number(metrics['min_loss_point']['loss'], '.3f')}"
            f" at {where}; predicted critical point {predicted} ({critical['method']}, exact={critical['exact']}), "
            f"loss there {number(metrics['loss_at_grid_point_nearest_prediction']['loss'], '.3f')}; "
            f"distance {number(metrics['distance_cells'], '.2f')} cells")
