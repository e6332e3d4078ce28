"""The phase diagram's verdict: trained losses against the exponents predicted at initialization.

The predictor is fixed in advance and has no fitted parameter: the distance of a point's exponents from the
predicted optimum, |lambda| = sqrt(lambda_a^2 + lambda_g^2) (per block, natural log).
- Spearman correlation between the mean final test loss of each grid point and |lambda|: PASS when
  rho_s >= 0.5 with p < 0.01 (Cowsik et al. 2024, abstract, say "well predicted"; 0.5 is the conventional
  threshold of a strong rank correlation).
- Distance, in cells of the training grid, from the loss-minimizing grid point to the predicted critical
  point: PASS when some grid point statistically tied with the minimum (mean loss within 2 standard errors,
  standard errors from the seed-to-seed spread) lies within one cell of the predicted point.
Also reported, not judged: the seed-to-seed Spearman across points (the ceiling any predictor can reach at
this noise), each exponent alone, and a leave-one-point-out cross-validated quadratic fit of the loss in
(lambda_a, lambda_g).

Divergence (a run whose training loss, gradient or test loss became NaN or inf; validate._signal_prop.
batched_train records the step) counts as the worst outcome: a point with a diverged seed has mean loss +inf,
which ranks above every finite loss in the Spearman (diverged points tie with each other) and never is the
loss minimum. The table's third row says how many runs diverged and where. A verdict that cannot be computed
(every point diverged, the loss or the predictor is the same at every point, fewer than 3 points with a finite
prediction) is FAIL, its measurement the reason. Points whose predicted exponents are NaN are left out of the
Spearman and counted.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np

from validate._common.reporting import Verdict
from validate._common.checks import shown
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
        losses = [math.inf if _diverged(r) else r["final_test_loss"] for r in results]
        per_seed.append(losses)
        diverged.append(sum(_diverged(r) for r in results))
        finite = np.isfinite(losses).all()
        mean.append(float(np.mean(losses)) if finite else math.inf)
        se.append(float(np.std(losses, ddof=1) / math.sqrt(len(losses))) if finite and len(losses) > 1
                  else math.nan)
    gx, gy = cfg.grid
    return {"mean": np.array(mean).reshape(gy, gx), "se": np.array(se).reshape(gy, gx),
            "per_seed": np.array(per_seed), "diverged": np.array(diverged).reshape(gy, gx)}


def _diverged(result: dict) -> bool:
    """A run that diverged, or whose final test loss is missing or not finite (rows stored by older versions
    marked only a non-finite training loss or gradient)."""
    loss = result.get("final_test_loss")
    return bool(result.get("diverged")) or loss is None or not math.isfinite(loss)


def rank_correlation(x, y) -> tuple[float | None, float | None, str | None]:
    """Spearman (rho, p) of x and y over the pairs where neither is NaN (+-inf rank at the ends), or
    (None, None, why) when it cannot be computed."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3:
        return None, None, f"only {int(keep.sum())} point(s) with a prediction and a loss (3 needed)"
    if np.unique(y[keep]).size == 1:
        return None, None, ("every point diverged" if np.isinf(y[keep]).all()
                            else "the loss is the same at every point")
    if np.unique(x[keep]).size == 1:
        return None, None, "the prediction is the same at every point"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ties are expected (diverged points); spearmanr handles them
        rho, p_value = spearmanr(x[keep], y[keep])
    return float(rho), float(p_value), None


def cross_validated_quadratic(angle: np.ndarray, gradient: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Leave-one-point-out predictions of a least-squares quadratic in (lambda_a, lambda_g) (finite losses)."""
    features = np.stack([np.ones_like(angle), angle, gradient, angle**2, gradient**2, angle * gradient], 1)
    predictions = np.full(loss.shape, np.nan)
    for i in range(len(loss)):
        keep = np.arange(len(loss)) != i
        coef, *_ = np.linalg.lstsq(features[keep], loss[keep], rcond=None)
        predictions[i] = features[i] @ coef
    return predictions


def divergence_summary(rows: list[dict]) -> dict:
    """Every diverged run with the step it diverged at, and the counts."""
    runs = [{"point": r["point"], "seed": r["seed"], "diverged_at": r["result"].get("diverged_at")}
            for r in rows if _diverged(r["result"])]
    return {"runs": len(rows), "diverged_runs": len(runs),
            "diverged_points": len({json.dumps(r["point"], sort_keys=True) for r in runs}), "diverged": runs}


def _number(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def analyse(cfg: PhaseDiagramConfig, rows: list[dict], train_angle, train_gradient, critical: dict) -> dict:
    """The metrics and verdicts of a finished sweep (whatever fraction of it diverged)."""
    losses = point_losses(cfg, rows)
    mean, se = losses["mean"], losses["se"]
    predictor = exponent_distance(train_angle, train_gradient)
    rho_s, p_value, spearman_reason = rank_correlation(predictor, mean)
    xs, ys = cfg.train_axes()
    cell = np.array([xs[1] - xs[0], ys[1] - ys[0]])
    critical_xy = np.array([critical[cfg.x_field], critical[cfg.y_field]], float)

    def cells(jx, jy):
        return float(np.hypot(*((np.array([xs[jx], ys[jy]]) - critical_xy) / cell)))

    trained = np.isfinite(mean)
    if trained.any():
        iy, ix = np.unravel_index(np.argmin(np.where(trained, mean, np.inf)), mean.shape)
        distance = cells(ix, iy)
        # grid points statistically tied with the minimum: within TIE_STANDARD_ERRORS combined standard errors
        se_filled = np.where(np.isfinite(se), se, 0.0)
        tied = trained & (mean <= mean[iy, ix] + TIE_STANDARD_ERRORS * np.sqrt(se_filled**2 + se_filled[iy, ix]**2))
        tied_distance = min(cells(jx, jy) for jy, jx in zip(*np.nonzero(tied)))
        minimum = {cfg.x_field: float(xs[ix]), cfg.y_field: float(ys[iy]), "loss": float(mean[iy, ix]),
                   "se": _number(se[iy, ix])}
        distance_reason = None if np.isfinite(distance) else "the predicted critical point is not finite"
    else:
        tied, distance, tied_distance = trained, None, None
        minimum = {cfg.x_field: None, cfg.y_field: None, "loss": None, "se": None}
        distance_reason = "every grid point diverged: there is no loss minimum"

    per_seed = losses["per_seed"]
    seed_ceiling = rank_correlation(per_seed[:, 0], per_seed[:, 1])[0] if per_seed.shape[1] >= 2 else None
    usable = (trained & np.isfinite(train_angle) & np.isfinite(train_gradient)).ravel()
    cv, cv_rho = np.full(mean.size, np.nan), None
    if usable.sum() >= 8:
        cv[usable] = cross_validated_quadratic(train_angle.ravel()[usable], train_gradient.ravel()[usable],
                                               mean.ravel()[usable])
        cv_rho = rank_correlation(cv[usable], mean.ravel()[usable])[0]

    # which exponent carries the prediction (reported, not judged)
    angle_only = rank_correlation(np.abs(train_angle), mean)[0]
    gradient_only = rank_correlation(np.abs(train_gradient), mean)[0]
    jx = int(np.nanargmin(np.abs(xs - critical_xy[0]))) if np.isfinite(critical_xy[0]) else 0
    jy = int(np.nanargmin(np.abs(ys - critical_xy[1]))) if np.isfinite(critical_xy[1]) else 0

    task = cfg.train.task
    divergence = divergence_summary(rows)
    metrics = {
        "predictor": "|lambda| = sqrt(lambda_a^2 + lambda_g^2), no fitted parameters",
        "spearman": rho_s, "spearman_p": p_value, "spearman_not_computable": spearman_reason,
        "points_without_prediction": int(np.isnan(predictor).sum()),
        "seed_to_seed_spearman": seed_ceiling,
        "cv_quadratic_spearman": cv_rho,
        "spearman_abs_angle_only": angle_only, "spearman_abs_gradient_only": gradient_only,
        "loss_at_grid_point_nearest_prediction": {cfg.x_field: float(xs[jx]), cfg.y_field: float(ys[jy]),
                                                  "loss": _number(mean[jy, jx]), "se": _number(se[jy, jx])},
        "min_loss_point": minimum,
        "predicted_critical_point": critical,
        "distance_cells": distance,
        "distance_cells_to_nearest_tied_point": tied_distance,
        "distance_not_computable": distance_reason,
        "tied_with_minimum": int(tied.sum()),
        **divergence,
        "bayes_loss": task.bayes_loss(), "context_free_loss": task.context_free_loss(),
    }
    return {"metrics": metrics, "verdicts": verdict_rows(metrics), "losses": losses, "predictor": predictor,
            "cv_prediction": cv.reshape(mean.shape)}


def verdict_rows(metrics: dict) -> list[Verdict]:
    """The two judged rows and the divergence row (INFO)."""
    rho_s, p_value = metrics["spearman"], metrics["spearman_p"]
    spearman = (f"not computable: {metrics['spearman_not_computable']}" if rho_s is None
                else f"{rho_s:+.3f} (p = {p_value:.2g})")
    if metrics["points_without_prediction"]:
        spearman += f"; {metrics['points_without_prediction']} point(s) without a finite prediction left out"
    distance = metrics["distance_cells"]
    where = (f"not computable: {metrics['distance_not_computable']}" if metrics["distance_not_computable"]
             else f"{distance:.2f} cells ({metrics['distance_cells_to_nearest_tied_point']:.2f} to a tied point)")
    steps = [r["diverged_at"] for r in metrics["diverged"] if r["diverged_at"] is not None]
    diverged = (f"{metrics['diverged_runs']} of {metrics['runs']} runs at {metrics['diverged_points']} point(s)"
                + ("" if not steps else f", at step {steps[0]}" if min(steps) == max(steps)
                   else f", at steps {min(steps)} to {max(steps)}"))
    return [
        Verdict.check("Spearman(final test loss, |lambda|)", "strongly positive", spearman,
                      f">= {SPEARMAN_THRESHOLD}, p < {SPEARMAN_P_MAX}",
                      rho_s is not None and rho_s >= SPEARMAN_THRESHOLD and p_value < SPEARMAN_P_MAX),
        Verdict.check("loss minimum to predicted critical point", "0 cells", where,
                      f"a point within {TIE_STANDARD_ERRORS:g} SE of the min lies <= "
                      f"{DISTANCE_TOLERANCE_CELLS:g} cell away",
                      metrics["distance_not_computable"] is None
                      and metrics["distance_cells_to_nearest_tied_point"] <= DISTANCE_TOLERANCE_CELLS),
        Verdict.check("runs diverged (NaN or inf loss, gradient or test loss)", "", diverged,
                      "counted as the worst loss", None),
    ]


def headline(metrics: dict, cfg: PhaseDiagramConfig) -> str:
    """The numbers behind the verdicts in one paragraph, for the terminal."""
    where = {k: v for k, v in metrics["min_loss_point"].items() if k not in ("loss", "se")}
    critical = metrics["predicted_critical_point"]
    predicted = {k: v for k, v in critical.items() if k in (cfg.x_field, cfg.y_field)}
    rank = {key: shown(metrics[key], "+.3f") for key in ("spearman", "seed_to_seed_spearman", "cv_quadratic_spearman",
                                                          "spearman_abs_angle_only", "spearman_abs_gradient_only")}
    return (f"Spearman {rank['spearman']} (p = {shown(metrics['spearman_p'], '.2g')}; seed-to-seed ceiling "
            f"{rank['seed_to_seed_spearman']}; |angle| alone {rank['spearman_abs_angle_only']}; |gradient| alone "
            f"{rank['spearman_abs_gradient_only']}; CV quadratic {rank['cv_quadratic_spearman']}); min loss "
            f"{shown(metrics['min_loss_point']['loss'], '.3f')} at {where}; predicted critical point {predicted} "
            f"({critical['method']}, exact={critical['exact']}), loss there "
            f"{shown(metrics['loss_at_grid_point_nearest_prediction']['loss'], '.3f')}; distance "
            f"{shown(metrics['distance_cells'], '.2f')} cells; {metrics['diverged_runs']} of {metrics['runs']} runs "
            "diverged")
